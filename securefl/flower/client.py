"""The client side: a Flower mod that runs a securefl party in front of the user's train function.

``ClientApp(mods=[secure.client_mod])``: a ``train`` message carrying securefl's record is answered
by a :class:`~securefl.party.PartyNode` (the same state machine the in-process, network and Ray
transports drive); any other ``train`` message is refused with an error reply — the app's train
function is reached only through the secure sum, so its raw update never leaves the node (found by
an attacker: a plain ``train`` message got it back bit for bit) — and messages of other types
(``evaluate``, ``query``) pass through to the app untouched. When the secure
sum needs this round's protected vector, the party calls the app's own train function through
``call_next`` — with a Flower ``train`` message holding the global model as an ArrayRecord and the
round in a ConfigRecord, exactly what a quickstart ``@app.train()`` expects — and takes the
returned ArrayRecord and ``num-examples`` as its update. The update then goes through the privacy
transforms and the secure sum; only protected bytes leave.

Secrets (SecAgg keys, self-mask seeds, DP noise state) live in this process's memory for the
party's life, never in Flower's ``Context.state``, which the SuperNode stores and, in simulation,
ships between processes. So a node's messages must reach the process that holds its party: in
Flower's simulation engine, one ClientApp actor (:func:`securefl.flower.backend_config`); a message
that reaches a process without its party is answered with a withdraw (the party drops out, the
round goes on).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from securefl.codec import HonestBounds, VectorLayout
from securefl.crypto.keyfiles import private_directory
from securefl.errors import UpdateError, WireError
from securefl.federation import build_stack, party_strategy, party_weight_bound, validate_stack
from securefl.flower.identities import hello_signature, identity_keys, resolve
from securefl.flower.records import (
    Setup,
    arrays_to_named,
    envelope_of,
    hello_content,
    is_hello,
    is_securefl,
    named_to_arrays,
    party_id,
    reply_content,
    setup_of,
)
from securefl.fusion import build_strategy
from securefl.logtext import RateLimitedLog, printable
from securefl.network.round_log import RoundLog
from securefl.party import Client, PartyNode, TrainResult
from securefl.roundinfo import RoundInfo
from securefl.selection import build_selection
from securefl.wire import WITHDRAW, Envelope, check_name, check_session, unpack_array

log = logging.getLogger(__name__)

NUM_EXAMPLES = "num-examples"  # the metric Flower's strategies weight by


@dataclass
class _Current:
    """The message being answered: the party's train callback reaches the app through it."""

    message: Message | None = None
    context: Context | None = None
    call_next: Callable[[Message, Context], Message] | None = None


@dataclass
class _Hosted:
    node: PartyNode
    current: _Current = field(default_factory=_Current)


# (node id, session) -> the party this process hosts for that node in that session, the newest
# _SESSIONS_KEPT sessions of each node. Not keyed by run: a server that sent a node another session,
# or the same session in another Flower run, would otherwise get a fresh party that runs a finished
# round again (for SecAgg, a second signed survivor list: the attack of tests/test_secagg_restarts.py,
# found through the network client's welcomes, then through Flower runs). A session evicted (each one
# holds the model's size in memory: an attacker's sessions grew the process by 1 GB each) cannot run
# its rounds again either: every round a party starts is claimed in its round log (below), in this
# process's memory or, with SecureFL(round_log=...), on disk across restarts.
_PARTIES: OrderedDict[tuple[int, str], _Hosted] = OrderedDict()
_SESSIONS_KEPT = 2
_ROUND_LOGS: dict[tuple[str, str], RoundLog] = {}  # (party, path or "") -> its one log in this process
_LOCK = threading.Lock()
_REFUSALS = RateLimitedLog(log)  # one line per node and kind every 10 s, whatever it is sent


def hosted_parties() -> int:
    """How many parties this process holds (for tests)."""
    return len(_PARTIES)


class ClientMod:
    """The Flower mod of one :class:`~securefl.flower.SecureFL` configuration (picklable: it holds
    only configuration, so Flower can ship it to its ClientApp processes)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def name(self, message: Message, context: Context) -> str:
        """This node's securefl party id: ``settings.party_name(context)``, or its node id."""
        if self.settings.party_name is None:
            return party_id(message.metadata.dst_node_id)
        return check_name(self.settings.party_name(context), "party id")

    def __call__(self, message: Message, context: Context, call_next: Callable) -> Message:
        kind = message.metadata.message_type
        if kind != "train" and not kind.startswith("train."):
            return call_next(message, context)  # evaluate, query: the app's own (its update never)
        if is_hello(message):
            try:
                name = self.name(message, context)
                signature = hello_signature(identity_keys(self.settings.privacy), name, message)
            except Exception as exc:  # a malformed hello (a challenge of 64 KiB): refused, never raised
                node = party_id(message.metadata.dst_node_id)
                _REFUSALS(logging.WARNING, node, "hello", "securefl hello refused: %s", printable(exc))
                return Message(
                    error=Error(ErrorCode.MOD_FAILED_PRECONDITION, printable(exc)), reply_to=message
                )
            return Message(hello_content(name, signature), reply_to=message)
        if not is_securefl(message):
            # The app's train function is reached only through the secure sum: a plain train message
            # would get its raw update back (found by an attacker, bit for bit).
            _REFUSALS(logging.WARNING, party_id(message.metadata.dst_node_id), "plain", "%s", _PLAIN_TRAIN)
            return Message(error=Error(ErrorCode.MOD_FAILED_PRECONDITION, _PLAIN_TRAIN), reply_to=message)
        me = self.name(message, context)
        try:
            data = envelope_of(message)
            hosted = self._party(message, data, me)
        except Exception as exc:  # a request it cannot even start on: withdraw, never raise
            _REFUSALS(logging.WARNING, me, "start", "securefl party %s cannot answer: %s", me, printable(exc))
            return Message(reply_content(_withdraw(data_or_empty(message), me, str(exc))), reply_to=message)
        hosted.current.message, hosted.current.context, hosted.current.call_next = message, context, call_next
        try:
            reply = hosted.node.handle(data)  # never raises: a reply or a withdraw
        finally:
            hosted.current.message = hosted.current.context = hosted.current.call_next = None
        return Message(reply_content(reply), reply_to=message)

    def _party(self, message: Message, data: bytes, me: str) -> _Hosted:
        session = check_session(_peek_session(data))
        key = (message.metadata.dst_node_id, session)
        with _LOCK:
            hosted = _PARTIES.get(key)
            if hosted is not None:
                _PARTIES.move_to_end(key)
                return hosted
            setup = setup_of(message)
            if setup is None:
                raise WireError(
                    "this ClientApp process holds no securefl party for this node and session (its "
                    "secrets never leave the process that made them): route the node's messages to one "
                    "process, e.g. securefl.flower.backend_config() in simulation"
                )
            for old in [k for k in _PARTIES if k[0] == key[0]][: -_SESSIONS_KEPT + 1 or None]:
                del _PARTIES[old]  # the node's oldest sessions first: at most _SESSIONS_KEPT kept
            hosted = self._build(me, session, setup, data)
            _PARTIES[key] = hosted
            return hosted

    def _build(self, me: str, session: str, setup: Setup, data: bytes) -> _Hosted:
        s = self.settings
        spec = setup.spec
        layout = VectorLayout(spec.size, tuple(s.train_metrics), ())
        stack = build_stack(resolve(s.privacy, me))
        s.require_rounds_for(stack)
        _require_round_opening(data, setup, stack.secure_sum.fuses_on_parties)
        weight_bound = party_weight_bound(s.weighting, s.weight_bound)
        # The party checks its own stack (invariant 3): the aggregator only tells it the model's shape
        # and the federation's size.
        validate_stack(
            stack,
            layout,
            build_selection(s.selection),
            setup.population,
            s.min_parties,
            weight_bound,
            s.metric_bounds,
        )
        current = _Current()

        def train(weights: Any, info: RoundInfo) -> TrainResult:
            return _train_through_app(current, weights, info, tuple(s.train_metrics))

        node = PartyNode(
            me,
            Client(train=train),
            spec=spec,
            layout=layout,
            stack=stack,
            session=session,
            weighting=s.weighting,
            weight_bound=weight_bound,
            strategy=party_strategy(stack, build_strategy(s.strategy)),
            min_parties=s.min_parties,
            honest=HonestBounds.of(s.weighting, weight_bound, s.metric_bounds),
            round_log=_round_log(s.round_log, me, s.rounds),
        )
        return _Hosted(node, current)


_PLAIN_TRAIN = (
    "securefl refuses a train message without its securefl record: this node's update leaves only "
    "inside the secure sum (run the rounds with SecureFL.run)"
)


def _require_round_opening(data: bytes, setup: Setup, sealed_models: bool) -> None:
    """A party is built only for a request that opens a round and carries the model the setup
    declares: the values in the clear, or — for a stack whose parties fuse the sum, the only ones
    sent sealed models — a sealed record of at least 8 bytes a value (it holds them as float64). The
    aggregator then pays for the memory it makes a party hold, up to a constant: the stack's
    per-coordinate bounds, about 32 bytes a value (a second attacker sent 1 byte a value as a
    sealed model to a stack that never opens one, and the process held 33 times that)."""
    parts = Envelope.decode(data).parts
    if "model" in parts:
        unpack_array(parts["model"], setup.spec.wire_dtype, (setup.spec.size,))
        return
    if not (sealed_models and "sealed_model" in parts and len(parts["sealed_model"]) >= 8 * setup.spec.size):
        raise WireError(
            "a securefl party is built from a round's first request, which carries the model the setup "
            "declares; this request does not"
        )


def _round_log(directory: Any, party: str, rounds: int | None) -> RoundLog:
    """This party's round log (one per party and path in this process): in ``directory`` if given,
    else in memory. It refuses a round of a session the party started before and, with ``rounds``,
    more rounds than that over every session (found by an attacker: 300 sessions of one round each
    averaged the DP noise away)."""
    agreement = None
    if rounds is not None:
        agreement = hashlib.sha256(f"securefl/flower/rounds/{rounds}".encode()).hexdigest()
    path = "" if directory is None else str(Path(directory) / f"{party}.rounds")
    key = (party, path)  # (called under _LOCK, from ClientMod._party)
    if key not in _ROUND_LOGS:
        if directory is not None:
            private_directory(directory)
        _ROUND_LOGS[key] = RoundLog(path or None, agreement, rounds)
    round_log = _ROUND_LOGS[key]
    round_log.agreement, round_log.rounds = agreement, rounds
    return round_log


def _train_through_app(
    current: _Current, weights: Any, info: RoundInfo, train_metrics: tuple[str, ...]
) -> TrainResult:
    """Call the app's train function (through the rest of the mod chain) on the global weights."""
    if current.message is None or current.call_next is None or current.context is None:
        raise UpdateError("no Flower message to train on")
    config = {"server-round": info.round + 1}
    config.update({k: v for k, v in info.config.items() if isinstance(v, (int, float, str, bool))})
    content = RecordDict({"arrays": named_to_arrays(weights), "config": ConfigRecord(config)})
    inner = Message(content=content, metadata=copy.copy(current.message.metadata))
    out = current.call_next(inner, current.context)
    if out.has_error():
        raise UpdateError(f"the app's train function failed: {out.error.reason}")
    arrays = list(out.content.array_records.values())
    if len(arrays) != 1:
        raise UpdateError(f"the app's train reply must hold one ArrayRecord, it holds {len(arrays)}")
    metrics: dict[str, Any] = {}
    for record in out.content.metric_records.values():
        metrics.update(record)
    examples = metrics.get(NUM_EXAMPLES)
    if isinstance(examples, float) and examples.is_integer():
        examples = int(examples)
    if isinstance(examples, bool) or not isinstance(examples, int):
        raise UpdateError(f"the app's train reply must report an integer {NUM_EXAMPLES!r} metric")
    named = arrays_to_named(arrays[0])
    return TrainResult(
        {k: np.asarray(v, dtype=np.float64) for k, v in named.items()},
        examples,
        {k: float(metrics[k]) for k in train_metrics if k in metrics},
    )


def _peek_session(data: bytes) -> str:
    return Envelope.decode(data).session


def data_or_empty(message: Message) -> bytes:
    try:
        return envelope_of(message)
    except WireError:
        return b""


def _withdraw(request: bytes, me: str, reason: str) -> bytes:
    """A withdraw answering ``request`` (its header echoed when it parses)."""
    try:
        envelope = Envelope.decode(request)
        session, round, phase = envelope.session, envelope.round, envelope.phase
    except WireError:
        session, round, phase = "0" * 32, 0, "invalid"
    text = reason.encode()[:4096].decode("utf-8", "ignore").encode()
    return Envelope(WITHDRAW, session, round, phase, me, {"reason": text}).encode()


__all__ = ["NUM_EXAMPLES", "ClientMod", "hosted_parties"]
