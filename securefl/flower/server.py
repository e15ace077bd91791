"""The server side: securefl's aggregator driving a round over a Flower :class:`~flwr.serverapp.Grid`.

:class:`FlowerTransport` is one more implementation of securefl's transport interface: each
request envelope goes to its node inside a Flower ``train`` message and each reply envelope comes
back the same way (``protocols/flower.md``). :class:`SecureFLServer` builds the very
:class:`~securefl.aggregator.Aggregator` the in-process :class:`~securefl.federation.Federation`
builds — the same stack validation, selection, phases, deadlines, dropout handling, fusion, privacy
guard and ledger — on top of that transport. A Flower ``ServerApp``'s ``@app.main()`` calls
:meth:`SecureFLServer.run` where a quickstart calls ``strategy.start``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from securefl.aggregator import Aggregator, ReleaseGuard, RoundReport
from securefl.codec import ArraySpec, HonestBounds, VectorLayout
from securefl.errors import BudgetExhausted, ConfigError, WireError
from securefl.federation import History, build_stack, party_strategy, party_weight_bound, validate_stack
from securefl.flower.identities import (
    HELLO_CHALLENGE_BYTES,
    IdentityKeys,
    hello_verified,
    identity_keys,
    resolve,
)
from securefl.flower.records import (
    MESSAGE_TYPE,
    Setup,
    arrays_to_named,
    envelope_of,
    hello_content,
    hello_name,
    hello_reply_signature,
    message_bytes,
    named_to_arrays,
    node_id,
    party_id,
    request_content,
)
from securefl.fusion import build_strategy
from securefl.logtext import printable
from securefl.selection import build_selection
from securefl.transcript import Transcript
from securefl.transport import Reply, Traffic, Transport
from securefl.wire import WITHDRAW, Envelope, check_name

log = logging.getLogger(__name__)


@dataclass
class PhaseTiming:
    """One exchange over the grid: the securefl phase, its wall time and Flower payload bytes."""

    round: int
    phase: str
    seconds: float
    bytes_down: int
    bytes_up: int
    replies: int
    errors: int


@dataclass
class FlowerTransport(Transport):
    """securefl's transport over a Flower grid: one ``train`` message per request, replies pulled
    until the phase deadline. A Flower error reply (the ClientApp raised, the node is gone) or a
    reply without securefl's record is no reply: that party drops out."""

    grid: Grid
    setup: str
    # party id -> Flower node id (default: the node id's digits are the party id)
    nodes: dict[str, int] | None = None
    traffic: Traffic = field(default_factory=Traffic)
    timings: list[PhaseTiming] = field(default_factory=list)
    pull_interval: float | None = None  # None: the grid's kind decides (default_pull_interval)

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> list[Reply]:
        messages = []
        round_, phase = 0, "?"
        for party, data in requests.items():
            self.traffic.bytes_down += len(data)
            self.traffic.messages += 1
            round_, phase, opens = _round_phase(data, round_, phase)
            messages.append(
                Message(
                    # The setup rides with a round's first request (the one carrying the model).
                    request_content(data, self.setup if opens else None),
                    dst_node_id=self.nodes[party] if self.nodes is not None else node_id(party),
                    message_type=MESSAGE_TYPE,
                    group_id=str(round_),
                )
            )
        down = sum(message_bytes(m) for m in messages)
        started = time.perf_counter()
        interval = self.pull_interval if self.pull_interval is not None else default_pull_interval(self.grid)
        replies = send_and_collect(self.grid, messages, timeout, interval)
        seconds = time.perf_counter() - started
        out: list[Reply] = []
        errors = fabricated = 0
        names = None if self.nodes is None else {n: p for p, n in self.nodes.items()}
        for reply in replies:
            try:
                source = reply.metadata.src_node_id
                sender = party_id(source) if names is None else names[source]
                if reply.has_error():
                    errors += 1
                    # The node is out of this round. Say so in the round report: a withdraw in its
                    # name, with Flower's error code only (the reason may describe its data).
                    log.info("node %s answered with a Flower error: %s", sender, reply.error.reason)
                    data = _flower_error(requests.get(sender), sender, reply.error.code)
                    if data is not None:
                        out.append(Reply(sender, data, seconds))
                        fabricated += 1
                    continue
                data = envelope_of(reply)
            except Exception as exc:
                errors += 1
                log.info("dropping a Flower reply: %s", exc)
                continue
            self.traffic.bytes_up += len(data)
            self.traffic.messages += 1
            out.append(Reply(sender, data, seconds))
        self.timings.append(
            PhaseTiming(
                round_,
                phase,
                seconds,
                down,
                sum(message_bytes(r) for r in replies),
                len(out) - fabricated,
                errors,
            )
        )
        return out


def default_pull_interval(grid: Grid) -> float:
    """0.01 s on Flower's in-memory grid (a pull reads a local table), 0.25 s on any other grid (a
    pull is a request to the SuperLink)."""
    try:
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
    except ImportError:  # another Flower layout: treat every grid as remote
        return 0.25
    return 0.01 if isinstance(grid, InMemoryGrid) else 0.25


def send_and_collect(grid: Grid, messages: list[Message], timeout: float, interval: float) -> list[Message]:
    """Push ``messages`` and pull their replies every ``interval`` seconds until all are in or
    ``timeout`` seconds have passed: Flower's ``send_and_receive`` with the server's own interval."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while True:
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(reply.metadata.reply_to_message_id for reply in pulled)
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            return replies
        time.sleep(min(interval, left))


_ERRORS = {
    1: "could not load the ClientApp",
    2: "the ClientApp raised",
    5: "the node is unavailable",
    8: "the ClientApp crashed",
}


def _flower_error(request: bytes | None, party: str, code: int) -> bytes | None:
    """A withdraw for ``party`` answering ``request``: its node's Flower reply was an error."""
    try:
        envelope = Envelope.decode(request or b"")
    except WireError:
        return None
    what = _ERRORS.get(code, "Flower error")
    reason = f"Flower error reply (code {code}: {what})".encode()
    return Envelope(
        WITHDRAW, envelope.session, envelope.round, envelope.phase, party, {"reason": reason}
    ).encode()


def hello(grid: Grid, ids: list[int], timeout: float, keys: IdentityKeys | None = None) -> dict[str, int]:
    """Ask every node for its securefl party name: name -> node id. Each hello carries a fresh
    challenge; with ``keys`` (active mode) a name counts only with its registered identity's
    signature over that node's challenge, so a node claiming another's name is refused alone (found
    by an attacker: a squatter had the honest party refused, or the run ended for too few parties).
    Otherwise (passive mode: names are unauthenticated) a name two nodes claim is refused for both.
    A name that is not a valid party id is refused."""
    challenges = {i: secrets.token_bytes(HELLO_CHALLENGE_BYTES) for i in ids}
    messages = [
        Message(hello_content(challenge=challenges[i]), dst_node_id=i, message_type=MESSAGE_TYPE) for i in ids
    ]
    claims: dict[str, list[int]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise WireError(reply.error.reason)
            name = check_name(hello_name(reply), "party id")
            if keys is not None and not hello_verified(
                keys, name, challenges.get(node, b""), hello_reply_signature(reply)
            ):
                raise WireError(f"its claim to be {name!r} is not signed by that party's identity key")
        except Exception as exc:
            log.warning("node %s gave no valid party name: %s", node, printable(exc))
            continue
        claims.setdefault(name, []).append(node)
    for name, claimants in sorted(claims.items()):
        if len(set(claimants)) > 1:
            log.warning("party name %r is claimed by nodes %s: refused for all of them", name, claimants)
    return {name: claimants[0] for name, claimants in claims.items() if len(set(claimants)) == 1}


def _wait_for_nodes(grid: Grid, wanted: int, seconds: float, settle: float = 0.5) -> list[int]:
    """The grid's nodes once at least ``wanted`` are there and none joined for ``settle`` seconds."""
    deadline = time.monotonic() + seconds
    ids = set(grid.get_node_ids())
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = set(grid.get_node_ids())
        if now != ids:
            ids, stable_since = now, time.monotonic()
        elif len(ids) >= max(wanted, 1) and time.monotonic() - stable_since >= settle:
            break
    return sorted(ids)


def _round_phase(data: bytes, round_: int, phase: str) -> tuple[int, str, bool]:
    """The request's round and phase, and whether it opens a round (carries the global model)."""
    try:
        envelope = Envelope.decode(data)
    except Exception:
        return round_, phase, True
    return envelope.round, envelope.phase, bool({"model", "sealed_model"} & set(envelope.parts))


@dataclass
class FlowerRun:
    """What :meth:`SecureFLServer.run` returns: the final model as Flower arrays, each round's report
    (dropouts, survivors, ε, bytes) and each phase's time and bytes over the grid."""

    arrays: ArrayRecord | None
    history: History
    timings: list[PhaseTiming]
    session: str


class SecureFLServer:
    """securefl's aggregator over a Flower grid, for one :class:`~securefl.flower.SecureFL`."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def run(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int,
        *,
        guard: ReleaseGuard | None = None,
        round_config: Mapping | None = None,
        node_ids: list[int] | None = None,
        min_nodes: int | None = None,
        wait_seconds: float = 60.0,
        transcript: Transcript | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        stop_when_refused: bool = True,
    ) -> FlowerRun:
        """Run ``num_rounds`` rounds with the grid's nodes (or ``node_ids``) as parties; return the
        final model. A round refused by the privacy guard ends the run (it is in the history and
        the ledger). A failed round leaves the model unchanged and the run goes on, as in securefl.
        Without ``node_ids``, waits up to ``wait_seconds`` for ``min_nodes`` (default: min_parties)
        nodes to connect, as Flower's strategies wait for their minimum available nodes."""
        if not isinstance(num_rounds, int) or num_rounds < 0:
            raise ConfigError(f"num_rounds must be a non-negative integer, got {num_rounds!r}")
        s = self.settings
        if s.rounds is not None and num_rounds > s.rounds:
            raise ConfigError(
                f"num_rounds {num_rounds} is more than the {s.rounds} rounds the parties agree on "
                "(SecureFL(rounds=...)): they would refuse the rest"
            )
        if node_ids is None:
            node_ids = _wait_for_nodes(grid, min_nodes or s.min_parties, wait_seconds)
        ids = sorted(node_ids)
        if not ids:
            raise ConfigError("the Flower grid has no nodes")
        nodes = None
        if s.party_name is None:
            parties = [party_id(i) for i in ids]
        else:
            nodes = hello(grid, ids, s.phase_timeout, identity_keys(s.privacy))
            parties = sorted(nodes)
            if not parties:
                raise ConfigError("no Flower node answered the securefl hello with a valid party name")
        model = arrays_to_named(initial_arrays)
        spec = ArraySpec.of(model)
        layout = VectorLayout(spec.size, tuple(s.train_metrics), ())
        stack = build_stack(resolve(s.privacy, None))
        s.require_rounds_for(stack)
        selection = build_selection(s.selection)
        weight_bound = party_weight_bound(s.weighting, s.weight_bound)
        validate_stack(stack, layout, selection, len(parties), s.min_parties, weight_bound, s.metric_bounds)
        strategy = build_strategy(s.strategy)
        party_strategy(stack, strategy)  # refuses a server optimizer where the parties fuse
        if guard is not None:
            guard = guard.bind(stack, selection, len(parties)) or guard
        session = secrets.token_hex(16)
        setup = Setup(spec, len(parties)).encode()
        transport = FlowerTransport(grid, setup, nodes, pull_interval=s.pull_interval)
        aggregator = Aggregator(
            spec,
            spec.flatten(model),
            layout,
            stack,
            transport,
            parties,
            session,
            selection,
            strategy,
            min_parties=s.min_parties,
            phase_timeout=s.phase_timeout,
            round_config=dict(round_config or {}),
            transcript=transcript,
            guard=guard,
            honest=HonestBounds.of(s.weighting, weight_bound, s.metric_bounds),
        )
        history = History()
        for round_ in range(num_rounds):
            report = aggregator.run_round(round_)
            history.rounds.append(report)
            if on_round is not None:
                on_round(report)
            log.info(
                "securefl round %d: %s, %d summed, dropouts %s%s",
                report.number,
                report.status,
                len(report.survivors),
                sorted(report.dropouts),
                f", error: {report.error}" if report.error else "",
            )
            if report.status == "refused" and stop_when_refused:
                break
        arrays = None if aggregator.sealed is not None else named_to_arrays(aggregator.global_weights())
        return FlowerRun(arrays, history, transport.timings, session)


__all__ = ["BudgetExhausted", "FlowerRun", "FlowerTransport", "PhaseTiming", "SecureFLServer"]
