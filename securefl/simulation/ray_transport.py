"""The Ray transport: parties on long-lived Ray actors, many virtual parties per actor.

Each :class:`PartyHost` actor builds the :class:`~securefl.party.PartyNode` of each of its parties
once (on first use: an unselected party stays dormant) and keeps it for the federation's life, as a
party process would. :meth:`RayTransport.exchange` sends each actor its parties' requests in
batches, collects the replies as the batches complete (``ray.wait``) and applies the deadline to
each party's own time, as the in-process transport does. A party that raises, or whose actor
dies, does not reply: the aggregator counts it as a dropout. Messages stay bytes end to end; the
large parts every request of a phase shares (the global model and the round's info of a round's
first phase) are put in the object store once and joined back into each party's bytes on its actor.

Ray moves the party objects (train functions, the stack, fault injectors) to the actors, and every
call's arguments and results, with its own pickle-based serialization, inside the cluster: a
simulation is one trust domain (protocols/simulation.md, "What a simulation trusts"). securefl's
messages are bytes inside those calls, and the driver reads only checked bytes out of an actor's
answer; parties that must not trust each other run as their own processes (``securefl party``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefl.deadlines import DeadlineCaller, Hung
from securefl.errors import ConfigError, ProtocolError, SecureFLError
from securefl.party import Client, PartyNode
from securefl.randomness import SecureRandom
from securefl.simulation import RayBackend
from securefl.simulation.allocator import keep_freed_memory
from securefl.transport import Reply, Segments, SharedRequests, Traffic, Transport, join_segments
from securefl.wire import ENVELOPE_MAGIC

log = logging.getLogger(__name__)

_PREFIX = struct.Struct(">4sHI")  # the record prefix of securefl.wire: magic, version, header length
SHARED_MIN_BYTES = 1 << 14  # a part at least this large, identical in every request, travels once
STATE_TIMEOUT = 60.0  # seconds to wait for a party's state from its actor (reports, fail_fast)


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigError(
            "the ray backend needs Ray: pip install 'securefl[simulation]' (ray==2.55.1)"
        ) from None
    return ray


# -- moving the stack to the actors ------------------------------------------------------------
# A SecureRandom over the OS CSPRNG has no state to copy: on the actor it is a fresh one over the
# actor's OS CSPRNG (design invariant 5). A seeded one (known-answer tests only) keeps its state.


def _random_state(rng: SecureRandom) -> dict | None:
    return dict(vars(rng)) if rng.seeded else None


def _random_from(state: dict | None) -> SecureRandom:
    if state is None:
        return SecureRandom()
    rng = SecureRandom.__new__(SecureRandom)
    vars(rng).update(state)
    return rng


def _as_client(client: Any) -> Client:
    return client if isinstance(client, Client) else Client(train=client)


class PartyHost:
    """A Ray actor holding some parties' nodes (built once, on first use)."""

    def __init__(
        self,
        clients: Mapping[str, Any],
        factory: Any,
        node_options: Mapping[str, Any],
        faults: Any,
        log_level: int,
    ) -> None:
        keep_freed_memory()  # this actor's parties allocate and free model-sized buffers every phase
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("securefl").setLevel(log_level)
        self.clients = dict(clients)
        self.factory = factory
        self.node_options = dict(node_options)
        self.faults = faults
        self.nodes: dict[str, PartyNode] = {}
        self._caller = DeadlineCaller()

    def ready(self) -> int:
        return len(self.clients)

    def _node(self, party: str) -> PartyNode:
        node = self.nodes.get(party)
        if node is None:
            if party not in self.clients:
                raise KeyError(f"party {party!r} is not hosted here")
            client = self.clients[party]
            if self.factory is not None:
                client = self.factory(party)
            node = PartyNode(party, _as_client(client), **self.node_options)
            self.nodes[party] = node
            if self.factory is not None:
                self.clients[party] = None  # the node holds the client now
        return node

    def handle(
        self, items: list[tuple[str, Segments]], shared: list[bytes], timeout: float | None = None
    ) -> list[tuple[str, list[tuple[bytes, float]], float]]:
        """Answer each party's request, one after another: ``(party, [(reply, extra s)], seconds)``.
        With ``timeout``, a party's call that overruns it is abandoned (``securefl.deadlines``) and
        the actor goes on with its next party: a hung party costs itself alone."""
        out: dict[str, tuple[str, list, float]] = {}
        calls = []
        for party, segments in items:
            request = join_segments(segments, shared)
            try:  # building a party (on its first request) is not part of its answer's time
                node = self._node(party)
            except Exception as exc:  # its client could not be built: a dropout
                log.warning("party %s could not be built: %s", party, type(exc).__name__)
                out[party] = (party, [], 0.0)
                continue

            def answer(node: PartyNode = node, party: str = party, request: bytes = request) -> tuple:
                start = time.perf_counter()
                if self.faults is None:
                    raw = [(node.handle(request), 0.0)]
                else:
                    raw = self.faults(party, request, node.handle)
                return [(_as_bytes(data), float(extra)) for data, extra in raw], time.perf_counter() - start

            calls.append((party, answer))
        if timeout is None:
            outcomes = []
            for _, answer in calls:
                try:
                    outcomes.append((True, answer()))
                except Exception as exc:
                    outcomes.append((False, exc))
        else:  # one after another on one worker, each with its own deadline
            outcomes = self._caller.call_many(calls, timeout)
        for (party, _), (ok, value) in zip(calls, outcomes, strict=True):
            if ok:
                out[party] = (party, *value)
                continue
            if isinstance(value, Hung):
                log.warning("%s", value)
            else:  # a crashed party is a dropout, never a crashed actor
                log.warning("party %s crashed: %s", party, type(value).__name__)
            out[party] = (party, [], timeout or 0.0)
        return [out[party] for party, _ in items]

    def open_global(self, party: str, data: bytes) -> tuple[bool, Any]:
        try:
            return True, self._node(party).open_global(data)
        except SecureFLError as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def apply(self, fn: Any, *args: Any) -> Any:
        """``fn(self, *args)`` on the actor: instrumentation (``securefl bench``) and tests."""
        return fn(self, *args)

    def state(self, party: str, name: str) -> Any:
        """An attribute of one party's node (for tests and reports): e.g. ``last_fused``."""
        return getattr(self.nodes[party], name, None) if party in self.nodes else None


def _as_bytes(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"a reply must be bytes, got {type(data).__name__}")
    return bytes(data)


def _seconds(value: object) -> float:
    """A time an actor reported: a finite, non-negative number of seconds (a negative one would let
    a late reply pass the deadline)."""
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"a reply's time must be finite seconds ≥ 0, got {value!r}")
    return float(value)


def split_shared(requests: Mapping[str, bytes]) -> tuple[list[bytes], dict[str, Segments]]:
    """Find the large parts of the first request that every request carries byte for byte (the
    global model, the round's info listing its parties); return them and each request as segments:
    its own bytes, and indices into the shared parts. A request that does not carry them travels
    whole, as ``[request]``."""
    whole: dict[str, Segments] = {party: [data] for party, data in requests.items()}
    if len(requests) < 2:
        return [], whole
    offsets = {}
    for party, data in requests.items():
        located = _parts(data)
        if located is None:
            return [], whole
        offsets[party] = located
    first = next(iter(requests))
    candidates = [(name, at) for name, at in offsets[first].items() if at[1] >= SHARED_MIN_BYTES]
    shared_parts = {name: requests[first][start : start + length] for name, (start, length) in candidates}
    in_all = [
        name
        for name in shared_parts
        if all(
            (at := offsets[p].get(name)) is not None
            and at[1] == len(shared_parts[name])
            and data.startswith(shared_parts[name], at[0])
            for p, data in requests.items()
        )
    ]
    if not in_all:
        return [], whole
    shared = [shared_parts[name] for name in in_all]
    pieces: dict[str, Segments] = {}
    for party, data in requests.items():
        cuts = sorted((offsets[party][name][0], offsets[party][name][1], i) for i, name in enumerate(in_all))
        segments: Segments = []
        position = 0
        for start, length, index in cuts:
            segments.extend([data[position:start], index])
            position = start + length
        segments.append(data[position:])
        pieces[party] = segments
    return shared, pieces


def _parts(data: bytes) -> dict[str, tuple[int, int]] | None:
    """Offsets and lengths of an envelope's parts (our own outgoing requests), or None."""
    try:
        magic, _version, hlen = _PREFIX.unpack_from(data)
        if magic != ENVELOPE_MAGIC:
            return None
        header = json.loads(data[_PREFIX.size : _PREFIX.size + hlen])
        offset, parts = _PREFIX.size + hlen, {}
        for name, length in header["parts"]:
            parts[name] = (offset, length)
            offset += length
        return parts if offset == len(data) else None
    except (struct.error, ValueError, KeyError, TypeError):
        return None


@dataclass
class RayTransport(Transport):
    """Requests to parties hosted on Ray actors; see the module's documentation."""

    actors: list[Any]
    placement: dict[str, int]  # party -> index of its actor
    batch: int = 16
    traffic: Traffic = field(default_factory=Traffic)
    dead: set[int] = field(default_factory=set)  # actors found dead

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> list[Reply]:
        ray = _ray()
        unknown = sorted(set(requests) - set(self.placement))
        if unknown:
            raise KeyError(f"no route to parties {unknown}")
        if isinstance(requests, SharedRequests):  # the aggregator's: shared parts already apart
            shared, pieces = requests.shared, requests.pieces
            self.traffic.bytes_down += sum(requests.size(p) for p in pieces)
        else:
            self.traffic.bytes_down += sum(len(data) for data in requests.values())
            shared, pieces = split_shared(requests)
        self.traffic.messages += len(requests)
        shared_ref = ray.put(shared)  # once per phase, whatever the number of actors and calls
        per_actor: dict[int, list[str]] = {}
        for party in requests:
            per_actor.setdefault(self.placement[party], []).append(party)
        calls: dict[Any, tuple[int, list[str]]] = {}
        longest = 0
        for index, parties in per_actor.items():
            longest = max(longest, len(parties))
            for i in range(0, len(parties), self.batch):
                chunk = parties[i : i + self.batch]
                items = [(p, pieces[p]) for p in chunk]
                calls[self.actors[index].handle.remote(items, shared_ref, timeout)] = (index, chunk)
        # Each party may use the whole deadline of its own time; an actor answers its parties one
        # after another. Beyond that, an actor that has not answered is hung: its parties drop.
        wall = time.monotonic() + timeout * max(longest, 1) + 5.0
        pending = list(calls)
        replies: list[Reply] = []
        while pending:
            left = wall - time.monotonic()
            if left <= 0:
                break
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            for ref in ready:
                index, chunk = calls[ref]
                try:
                    batch = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if isinstance(exc, ray.exceptions.RayActorError):
                        self.dead.add(index)
                    log.warning(
                        "actor %d failed (%s): its %d parties of this call drop",
                        index,
                        type(exc).__name__,
                        len(chunk),
                    )
                    continue
                replies.extend(self._accept(batch, timeout, chunk))
        for ref in pending:
            index, chunk = calls[ref]
            log.warning("actor %d did not answer in time: %d parties drop", index, len(chunk))
            try:  # a queued call is dropped; Ray cannot interrupt one running on a synchronous actor
                ray.cancel(ref)
            except Exception as exc:  # best effort: the parties are dropped either way
                log.info("could not cancel a call to actor %d: %s", index, type(exc).__name__)
        return replies

    def _accept(self, batch: object, timeout: float, chunk: list[str]) -> list[Reply]:
        """The replies of one call, checked item by item: only the call's own parties, each once,
        bytes with a finite non-negative time. Anything else drops that party alone (found by an
        attacker: a non-bytes item failed the whole round with nobody named; an item relabelled
        as a party of another actor got that honest party dropped as answering twice)."""
        replies: list[Reply] = []
        if not isinstance(batch, list):
            log.warning(
                "an actor answered with %s, not a list: its %d parties drop", type(batch).__name__, len(chunk)
            )
            return replies
        expected, seen = set(chunk), set()
        for item in batch:
            try:
                party, raw, elapsed = item
                if party not in expected or party in seen:
                    raise ValueError("a party outside this call, or twice")
                seen.add(party)
                checked = [(_as_bytes(data), _seconds(elapsed) + _seconds(extra)) for data, extra in raw]
            except (TypeError, ValueError) as exc:
                log.warning("a malformed item in an actor's answer drops its party: %s", exc)
                continue
            for data, seconds in checked:
                if seconds > timeout:
                    log.info("reply from %s after %.3fs missed the %.3fs deadline", party, seconds, timeout)
                    continue
                self.traffic.bytes_up += len(data)
                self.traffic.messages += 1
                replies.append(Reply(party, data, seconds))
        return replies

    def apply(self, fn: Any, *args: Any) -> list[Any]:
        """``fn(host, *args)`` on every live actor; the results in actor order."""
        ray = _ray()
        live = [actor for index, actor in enumerate(self.actors) if index not in self.dead]
        return ray.get([actor.apply.remote(fn, *args) for actor in live])

    def shutdown(self) -> None:
        """Stop the actors (their parties' state is gone)."""
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor)
        self.dead.update(range(len(self.actors)))


class RemoteParty:
    """This process's handle on a party hosted on an actor: what Federation asks of its nodes."""

    def __init__(self, party_id: str, actor: Any) -> None:
        self.party_id = party_id
        self._actor = actor

    def open_global(self, data: bytes) -> np.ndarray:
        ray = _ray()
        try:
            ok, value = ray.get(self._actor.open_global.remote(self.party_id, data), timeout=STATE_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ProtocolError(
                f"party {self.party_id}'s actor did not answer in {STATE_TIMEOUT:.0f} s"
            ) from None
        except ray.exceptions.RayError as exc:
            raise ProtocolError(f"party {self.party_id}'s actor is gone: {type(exc).__name__}") from None
        if not ok:
            raise ProtocolError(value)
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        ray = _ray()
        try:
            return ray.get(self._actor.state.remote(self.party_id, name), timeout=STATE_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ProtocolError(
                f"party {self.party_id}'s actor did not answer in {STATE_TIMEOUT:.0f} s (a party it hosts "
                "is hung)"
            ) from None
        except ray.exceptions.RayError as exc:
            raise ProtocolError(f"party {self.party_id}'s actor is gone: {type(exc).__name__}") from None


def _connect(options: RayBackend) -> None:
    ray = _ray()
    if ray.is_initialized():
        return
    # "local": a private Ray of this process, never someone else's cluster found on this machine.
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    kwargs.update(options.init)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs are used: keep Ray quiet
    ray.init(address=options.address or "local", **kwargs)


def start(
    options: RayBackend,
    clients: Mapping[str, Any] | Iterable[str],
    node_options: Mapping[str, Any],
    faults: Any = None,
) -> tuple[RayTransport, dict[str, RemoteParty]]:
    """Start the actors, deal the parties to them, and wait until every actor is up."""
    ray = _ray()
    _connect(options)
    ray.util.register_serializer(SecureRandom, serializer=_random_state, deserializer=_random_from)
    ids = list(clients)
    if options.client_factory is None and not isinstance(clients, Mapping):
        raise ConfigError("clients must map party ids to clients, unless RayBackend.client_factory is given")
    if options.actors is not None:
        count = options.actors
    else:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        count = max(1, math.floor(cpus / options.cpus_per_actor))
    count = min(count, len(ids))
    host = ray.remote(PartyHost).options(
        num_cpus=options.cpus_per_actor,
        max_restarts=0,
        scheduling_strategy="SPREAD" if count > 1 else "DEFAULT",
    )
    placement = {party: i % count for i, party in enumerate(ids)}
    level = logging.getLogger("securefl").getEffectiveLevel()
    actors = []
    for index in range(count):
        mine = [p for p in ids if placement[p] == index]
        hosted = {p: (None if options.client_factory else clients[p]) for p in mine}
        actors.append(host.remote(hosted, options.client_factory, dict(node_options), faults, level))
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayError as exc:
        for actor in actors:
            ray.kill(actor)
        raise ConfigError(f"the ray backend could not start its actors: {exc}") from None
    transport = RayTransport(actors, placement, batch=options.batch)
    nodes = {party: RemoteParty(party, actors[placement[party]]) for party in ids}
    return transport, nodes
