"""Many simulated parties on Ray, on one machine or a cluster, behind the transport interface.

``Federation(..., backend="ray")`` (or ``backend=RayBackend(actors=8, address="HOST:PORT")``) hosts
the parties on long-lived Ray actors instead of in this process; the aggregator, the privacy layers
and every message (bytes, design invariant 4) are the same. Ray is an optional extra
(``pip install securefl[simulation]``); it is imported only when this backend is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from securefl.errors import ConfigError

BACKENDS = ("inprocess", "ray")


@dataclass(frozen=True)
class RayBackend:
    """Options of the Ray backend.

    ``actors``: how many actors host the parties (default: the cluster's CPUs over
    ``cpus_per_actor``, at most one per party); parties are dealt to them round-robin.
    ``address``: join a running cluster (``"HOST:PORT"``, ``"auto"`` or ``"ray://HOST:PORT"``);
    ``None`` starts a private local Ray unless this process already called ``ray.init``.
    ``client_factory``: called on the actor as ``factory(party_id)`` to build that party's client
    (its data stay on the actor and are never built in this process); ``clients`` may then be just
    the party ids. ``batch``: parties per actor call (replies come back call by call).
    ``init``: extra ``ray.init`` arguments (e.g. ``{"num_cpus": 2}``) when this backend starts Ray.
    """

    actors: int | None = None
    address: str | None = None
    cpus_per_actor: float = 1.0
    client_factory: Callable[[str], Any] | None = None
    batch: int = 16
    init: Mapping[str, Any] = field(default_factory=dict)

    name = "ray"

    def __post_init__(self) -> None:
        # (bool is an int to Python: `actors = true` in a config is refused, not read as 1)
        if self.actors is not None and (type(self.actors) is not int or self.actors < 1):
            raise ConfigError(f"actors must be a positive integer, got {self.actors!r}")
        if type(self.batch) is not int or self.batch < 1:
            raise ConfigError(f"batch must be a positive integer, got {self.batch!r}")
        if type(self.cpus_per_actor) not in (int, float) or not 0 < self.cpus_per_actor < math.inf:
            raise ConfigError(f"cpus_per_actor must be a positive number, got {self.cpus_per_actor!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise ConfigError(
                f"address must be a cluster address such as 'HOST:PORT', 'auto' or 'ray://HOST:PORT', got "
                f"{self.address!r}"
            )


def backend_options(backend: Any) -> RayBackend | None:
    """``None`` for the in-process transport; the Ray options otherwise. Accepts a backend name,
    a :class:`RayBackend`, or a mapping ``{"backend": "ray", "actors": ..., "address": ...}``."""
    if backend is None or backend == "inprocess":
        return None
    if isinstance(backend, RayBackend):
        return backend
    if backend == "ray":
        return RayBackend()
    if isinstance(backend, Mapping):
        options = dict(backend)
        name = options.pop("backend", "ray")
        if name == "inprocess":
            return None
        if name != "ray":
            raise ConfigError(f"unknown backend {name!r}; use one of {BACKENDS}")
        known = {"actors", "address", "cpus_per_actor", "batch", "init"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown ray backend option(s) {unknown}; known: {sorted(known)}")
        return RayBackend(**options)
    raise ConfigError(f"unknown backend {backend!r}; use one of {BACKENDS} or a RayBackend")


def simulated_parties(
    backend: RayBackend,
    clients: Mapping[str, Any] | Iterable[str],
    node_options: Mapping[str, Any],
    faults: Any = None,
):
    """The transport and party proxies of a simulated federation (see :mod:`.ray_transport`)."""
    from securefl.simulation.ray_transport import start

    return start(backend, clients, node_options, faults)


__all__ = ["BACKENDS", "RayBackend", "backend_options", "simulated_parties"]
