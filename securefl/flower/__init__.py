"""securefl's secure sums and accounted DP inside Flower apps (``pip install securefl[flower]``).

One :class:`SecureFL` configuration, shared by both sides of a Flower app::

    secure = SecureFL(privacy="secagg+", min_parties=3)

    app = ClientApp(mods=[secure.client_mod])          # client: the user's @app.train() unchanged

    @server.main()
    def main(grid, context):                           # server: instead of strategy.start(...)
        result = secure.run(grid, ArrayRecord(initial), num_rounds=3)

The client mod runs a securefl party (:mod:`securefl.flower.client`); the server side runs
securefl's aggregator over the Flower grid (:mod:`securefl.flower.server`). securefl's protocol
bytes travel inside Flower records (``protocols/flower.md``); no layer changes, and the threat
models are those of ``protocols/secagg.md`` and ``protocols/dp.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from securefl.errors import ConfigError
from securefl.flower.client import NUM_EXAMPLES, ClientMod, hosted_parties
from securefl.flower.identities import IdentityKeys
from securefl.flower.server import FlowerRun, FlowerTransport, PhaseTiming, SecureFLServer


@dataclass
class SecureFL:
    """The privacy stack and federation settings both sides of a Flower app agree on; the same
    meaning as :class:`securefl.federation.Federation`'s arguments. ``privacy``: a preset name
    (``"secagg+"``, ``"secagg"``), or layers / config entries (``[{"layer": "clip", ...}, ...]``).
    Each party builds and validates its own stack from this (the aggregator only tells it the
    model's shape and the federation's size). Active SecAgg: ``{"layer": "secagg+", "identities":
    IdentityKeys}`` with ``party_name`` giving the names the identities are registered under."""

    privacy: str | Sequence[Any] | Mapping[str, Any] = "secagg+"
    min_parties: int = 1
    weighting: str = "examples"
    weight_bound: float | None = None
    train_metrics: Sequence[str] = ()
    metric_bounds: Mapping[str, float] | None = None
    selection: str | Mapping[str, Any] | None = None
    strategy: str | Mapping[str, Any] | None = None
    phase_timeout: float = 600.0
    # Each node names its party ``party_name(context)`` (e.g. from its node config) instead of using
    # its Flower node id: stable names, as active mode's registered identities need.
    party_name: Callable[[Any], str] | None = None
    # A directory where each party records the rounds it starts (``<party>.rounds``, as a network
    # party does beside its key): a restarted ClientApp process then refuses a round it took part in.
    # Without it that holds only while the process lives (active SecAgg's one list per round).
    round_log: str | os.PathLike | None = None
    # The rounds the federation agrees on: each party takes part in at most this many, over every
    # session and Flower run of its ClientApp process (and across restarts with ``round_log``). A
    # server that starts a new session per round otherwise gets a new noised release each time
    # (found by an attacker: 300 one-round sessions averaged a party's DP noise away). Required with
    # a ``dp`` layer; without one, sums across sessions are not hidden from each other anyway
    # (protocols/secagg.md) and None leaves the count open.
    rounds: int | None = None
    # Seconds between the server's pulls for a phase's replies. Flower's own ``send_and_receive``
    # sleeps its grid's interval between pulls (0.1 s in memory, 3 s against a remote SuperLink), so
    # a phase whose replies are all in waits up to that long for nothing, four times a round. None:
    # 0.01 s on the in-memory (simulation) grid, 0.25 s on a remote one.
    pull_interval: float | None = None
    _mod: ClientMod | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rounds is not None and (type(self.rounds) is not int or self.rounds < 1):
            raise ConfigError(
                f"rounds must be a whole number ≥ 1 (the rounds agreed on), got {self.rounds!r}"
            )
        if self.rounds is not None and self.party_name is None:
            # The rounds are counted per party; a Flower node id is routing, drawn anew for each run
            # (found by an attacker: each run's new ids started each party's count again).
            raise ConfigError(
                "rounds needs party_name: each party's rounds are counted under its name, and Flower's "
                "node ids change from run to run (e.g. party_name=lambda ctx: "
                "f\"client-{ctx.node_config['partition-id']}\")"
            )
        interval = self.pull_interval
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval < 3600
        ):
            raise ConfigError(
                f"pull_interval must be a number of seconds between 0 and 3600 (or None for the grid's "
                f"default), got {interval!r}"
            )

    @property
    def client_mod(self) -> ClientMod:
        """The Flower mod for ``ClientApp(mods=[...])``."""
        if self._mod is None:
            self._mod = ClientMod(self)
        return self._mod

    def server(self) -> SecureFLServer:
        return SecureFLServer(self)

    def require_rounds_for(self, stack: Any) -> None:
        """A stack that noises releases must be bounded in how many it makes (``rounds``)."""
        if self.rounds is None and "dp" in stack.names:
            raise ConfigError(
                "a dp layer inside Flower needs SecureFL(rounds=N, party_name=...), the rounds the "
                "federation agrees on: each party then releases at most N noised updates over every "
                "session and run, which is what its accounted ε assumes"
            )

    def run(self, grid, initial_arrays, num_rounds: int, **kwargs) -> FlowerRun:
        """Run ``num_rounds`` securefl rounds over ``grid`` (see :meth:`SecureFLServer.run`)."""
        return SecureFLServer(self).run(grid, initial_arrays, num_rounds, **kwargs)


def backend_config(cpus: int | None = None) -> dict[str, Any]:
    """A ``run_simulation`` backend config with one ClientApp actor holding every node's party (the
    parties' secrets stay in that process's memory, never in Flower's Context.state)."""
    cpus = cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False},
    }


__all__ = [
    "NUM_EXAMPLES",
    "ClientMod",
    "FlowerRun",
    "FlowerTransport",
    "IdentityKeys",
    "PhaseTiming",
    "SecureFL",
    "SecureFLServer",
    "backend_config",
    "hosted_parties",
]
