"""The party: the user's training loop behind a state machine that speaks the wire protocol.

A user supplies a :class:`Client` — a ``train`` function from the global weights to new weights,
an example count and metrics, and optionally an ``evaluate`` function. The :class:`PartyNode` turns
each request from the aggregator into a reply: at the first phase of a round it evaluates the
global model, trains, packs ``[w·Δ, w, metrics…]``, runs the privacy transforms and hands the result
to its side of the secure sum; later phases go straight to the secure sum. Anything that goes
wrong becomes a *withdraw* reply with the reason, so the aggregator drops this party and goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefl.codec import ArraySpec, FusedSum, HonestBounds, NamedArrays, VectorLayout, check_finite
from securefl.errors import ProtocolError, SecureFLError, UpdateError, WireError
from securefl.fusion import FedAvg, Strategy
from securefl.layers.base import ImpossibleSum, PrivacyStack, Provider, RoundContext
from securefl.logtext import RateLimitedLog, printable
from securefl.roundinfo import RoundInfo
from securefl.wire import REPLY, REQUEST, WITHDRAW, Envelope, unpack_array

log = logging.getLogger(__name__)
_KEPT_LOCAL = "details stay in its log: they may describe its data"
# A withdraw part: this party refuses the sum it was shown (no honest parties can have made it).
REFUSED_SUM = "refused_sum"


@dataclass
class TrainResult:
    """What a training loop returns: the new weights, how many examples it used, and metrics."""

    weights: NamedArrays
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """What an evaluation returns: how many examples it scored, and metrics (e.g. loss, accuracy)."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


TrainFn = Callable[[NamedArrays, RoundInfo], "TrainResult | tuple"]
EvalFn = Callable[[NamedArrays, RoundInfo], "EvalResult | tuple"]


@dataclass
class Client:
    """A party's training loop (and optional evaluation) as plain functions; the data stay inside."""

    train: TrainFn
    evaluate: EvalFn | None = None


def as_train_result(value: Any) -> TrainResult:
    if isinstance(value, TrainResult):
        return value
    if isinstance(value, tuple) and len(value) in (2, 3):
        return TrainResult(value[0], value[1], dict(value[2]) if len(value) == 3 else {})
    raise UpdateError(
        "train must return TrainResult(weights, num_examples, metrics) or a tuple "
        f"(weights, num_examples[, metrics]); got {type(value).__name__}"
    )


def _as_eval_result(value: Any) -> EvalResult:
    if isinstance(value, EvalResult):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return EvalResult(value[0], dict(value[1]))
    raise UpdateError(
        "evaluate must return EvalResult(num_examples, metrics) or (num_examples, metrics); "
        f"got {type(value).__name__}"
    )


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise UpdateError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


class PartyNode:
    """One party's state machine. ``handle`` takes a request's bytes and returns the reply's bytes."""

    def __init__(
        self,
        party_id: str,
        client: Client,
        spec: ArraySpec,
        layout: VectorLayout,
        stack: PrivacyStack,
        session: str,
        weighting: str = "examples",
        weight_bound: float | None = None,
        max_request_bytes: int | None = None,
        strategy: Strategy | None = None,
        min_parties: int = 1,
        honest: HonestBounds | None = None,
        round_log: Any = None,
    ) -> None:
        self.party_id = party_id
        # Deployed parties: the rounds started, on disk (securefl.network.round_log.RoundLog), so
        # that a restarted party never takes part in a round twice. None: this node's memory only.
        self.round_log = round_log
        # The party's own floor: the aggregator's round info may only raise it (a lying aggregator
        # must not get a single party's update decrypted, or noise calibrated to fewer parties).
        self.min_parties = min_parties
        # What one honest party can send: a revealed sum no set of them can make is refused.
        self.honest = honest or HonestBounds.of(weighting, weight_bound)
        self.client = client
        self.spec = spec
        self.layout = layout
        self.stack = stack
        self.session = session
        self.weighting = weighting
        self.weight_bound = weight_bound
        self.max_request_bytes = max_request_bytes or 16 * layout.size + (64 << 20)
        self.secure_sum = stack.secure_sum.party(party_id)
        self.round: int | None = None
        self.last_error: str | None = None
        # Used only when the layer fuses on the parties (the aggregator cannot read the sum).
        self.strategy = strategy or FedAvg()
        self.round_global: np.ndarray | None = None
        self.round_parties: tuple[str, ...] = ()
        self.last_fused: FusedSum | None = None
        # A layer that fuses on the parties seals every model after the initial one. Its parties
        # take a clear model only while they have opened no sealed one, and only the one they saw
        # first (by digest): otherwise the aggregator could choose what an honest party trains on —
        # e.g. a model it acknowledged a sum on, nudged by one ulp, to get the same update into a
        # second sum (paillier-threshold, third attacker).
        self._clear_model_digest: bytes | None = None
        self.user_error: BaseException | None = None  # what the user's train/evaluate last raised
        self._say = RateLimitedLog(log)  # its withdrawals: one line per 10 s, the rest counted
        self.withdrawals = 0  # requests answered with a withdrawal (the network client's progress)
        self._opened_sealed = False
        if stack.secure_sum.fuses_on_parties:
            self.secure_sum.attach_fuser(self._fuse_revealed, base=lambda: self.round_global)

    # -- the state machine -------------------------------------------------------------------

    def handle(self, data: bytes) -> bytes:
        """Answer one request. Whatever bytes arrive, the answer is a reply or a withdraw envelope;
        nothing the aggregator sends makes this raise."""
        try:
            return self._handle(data)
        except Exception as exc:  # a bug on the way to a withdraw: still withdraw, never raise
            log.error("party %s failed to answer a request", self.party_id, exc_info=True)
            return self._withdraw(
                self.round or 0,
                "invalid",
                f"{type(exc).__name__}: {exc}",
                f"{type(exc).__name__} on the party",
            )

    def _handle(self, data: bytes) -> bytes:
        try:
            request = Envelope.decode(data, max_bytes=self.max_request_bytes)
            if request.kind != REQUEST or request.party != self.party_id or request.session != self.session:
                raise WireError(
                    f"request not addressed to this party's session ({request.kind} for "
                    f"{request.party!r} in session {request.session})"
                )
        except WireError as exc:
            # Without a trustworthy header there is no round to withdraw from; say why anyway (in the
            # log at most once per 10 s, as every withdrawal).
            return self._withdraw(self.round or 0, "invalid", f"rejected a request: {exc}")
        try:
            if "model" in request.parts or "sealed_model" in request.parts:
                payload = self._start_round(request)
            else:
                if request.round != self.round:
                    raise WireError(
                        f"request for round {request.round + 1}, but this party is "
                        + (f"in round {self.round + 1}" if self.round is not None else "in no round yet")
                    )
                payload = self.secure_sum.respond(request.phase, request.parts.get("layer", b""))
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            shared = detail if _shareable(exc) else f"{type(exc).__name__} on the party ({_KEPT_LOCAL})"
            return self._withdraw(
                request.round, request.phase, detail, shared, refused=isinstance(exc, ImpossibleSum)
            )
        return Envelope(
            REPLY, self.session, request.round, request.phase, self.party_id, {"layer": payload}
        ).encode()

    def _withdraw(
        self, round: int, phase: str, reason: str, shared: str | None = None, refused: bool = False
    ) -> bytes:
        """Tell the aggregator this party stops for the round. The full ``reason`` stays here; the
        aggregator gets ``shared``, which must not describe the party's data (an out-of-range
        coordinate, a user exception's message). ``refused``: the party refuses a revealed sum that
        honest parties cannot have made (the aggregator then fails the round rather than blame it)."""
        self.last_error = reason
        self.withdrawals += 1
        # At most one line per 10 s per party, the rest counted: an aggregator can send requests this
        # party refuses without end (found by an attacker: 23,674 lines in 3 s of wrong-round
        # requests) — and under any phase name it likes, so the phase is no part of the key.
        self._say(
            logging.WARNING,
            self.party_id,
            "withdraw",
            "party %s withdraws from round %s: %s",
            self.party_id,
            round + 1,
            printable(reason),
        )
        shared = reason if shared is None else shared
        # At most MAX_REASON_BYTES, cut on a character boundary: the reason stays valid UTF-8.
        parts = {"reason": shared.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode()}
        if refused:
            parts[REFUSED_SUM] = b""
        return Envelope(WITHDRAW, self.session, round, phase, self.party_id, parts).encode()

    def _start_round(self, request: Envelope) -> bytes:
        if self.round is not None and request.round <= self.round:
            raise ProtocolError(
                f"round {request.round + 1} was already started (this party is at round {self.round + 1}); "
                "replay refused"
            )
        info = RoundInfo.decode(request.parts.get("round", b""))
        if info.round != request.round:
            raise WireError(f"round info says round {info.round + 1}, envelope says {request.round + 1}")
        if self.party_id not in info.parties:
            raise ProtocolError(f"party {self.party_id!r} is not in round {info.round + 1}'s party list")
        min_parties = max(self.min_parties, info.min_parties)
        if len(info.parties) < min_parties:
            raise ProtocolError(
                f"round {info.round + 1} selects {len(info.parties)} parties; this party takes part only in "
                f"rounds of at least {min_parties}"
            )
        if self.round_log is not None:
            # Durably, before anything of the round is answered: each round once, across restarts.
            self.round_log.claim(self.session, request.round)
        self.round = request.round
        self.round_global = None
        self.round_parties = info.parties
        provided: list[np.ndarray] = []
        # Only the model part is kept until the update is needed, not the whole request; a clear
        # model is the one copy this process holds for every party it hosts (SHARED_MODELS).
        if "sealed_model" in request.parts:
            sealed = request.parts["sealed_model"]
            source = lambda: self.open_global(sealed)  # noqa: E731
        else:
            entry = SHARED_MODELS.entry(self.spec, request.parts["model"])
            source = lambda: SHARED_MODELS.vector(entry, self.spec)  # noqa: E731
            self._check_clear_model(request.parts["model"], source)

        def provide() -> np.ndarray:
            if not provided:
                global_vector = source()
                self.round_global = global_vector
                provided.append(self.stack.encode(self._local_update(global_vector, info)))
            return provided[0]

        ctx = RoundContext(
            self.session, info.round, info.parties, self.layout.size, self.stack.integer, min_parties
        )
        self.stack.start_round(ctx)
        self.secure_sum.start_round(ctx, provide)
        return self.secure_sum.respond(request.phase, request.parts.get("layer", b""))

    def _global_from(self, request: Envelope) -> np.ndarray:
        if "sealed_model" in request.parts:
            return self.open_global(request.parts["sealed_model"])
        return _clear_model(request.parts["model"], self.spec)

    def _check_clear_model(self, model: bytes, vector: Provider) -> None:
        if not self.stack.secure_sum.fuses_on_parties:
            return
        self.secure_sum.check_clear_model(vector, self.session)
        if self._opened_sealed:
            raise ProtocolError(
                "this federation's model is sealed and this party has opened a sealed model already; "
                "a model in the clear now is refused (the aggregator would choose what it trains on)"
            )
        digest = hashlib.sha256(model).digest()
        if self._clear_model_digest is None:
            self._clear_model_digest = digest
        elif not hmac.compare_digest(digest, self._clear_model_digest):
            raise ProtocolError(
                "a model in the clear other than the initial one this party was sent; refused (only "
                "sealed models follow the initial one)"
            )

    def open_global(self, sealed: bytes) -> np.ndarray:
        """The global vector inside a sealed model (layers that fuse on the parties)."""
        vector = np.asarray(self.secure_sum.open_model(sealed), dtype=np.float64)
        self._opened_sealed = True
        if vector.shape != (self.spec.size,):
            raise WireError(f"sealed model holds {vector.shape} values, the model needs ({self.spec.size},)")
        check_finite(vector, "sealed global model")
        return vector

    def _fuse_revealed(self, total: np.ndarray, contributors: int | None = None) -> np.ndarray:
        """Decode a sum revealed to this party, average it and step: the next global vector.

        The sum is first checked against what ``contributors`` honest parties can produce (the count
        the decrypt request states, capped at the round's invited parties: an aggregator claiming
        more cannot widen the bound; without a count, the invited parties) and refused with
        :class:`ImpossibleSum` if it cannot be theirs."""
        if self.round_global is None:
            raise ProtocolError("a sum was revealed before this party started a round")
        invited = len(self.round_parties)
        if contributors is None:
            contributors = invited
        if (
            isinstance(contributors, bool)
            or not isinstance(contributors, (int, np.integer))
            or contributors < 1
        ):
            raise ProtocolError(f"the decrypt request names {contributors!r} contributors")
        total = np.asarray(total)
        if total.shape != (self.layout.size,):
            raise ProtocolError(f"the revealed sum has shape {total.shape}, expected ({self.layout.size},)")
        count = min(int(contributors), invited)
        decoded = self.stack.decode_sum(total, count, invited)
        try:
            fused = self.layout.unpack_sum(decoded, count, self.honest, self.stack.resolution())
            new_global = self.strategy.step(self.round_global, fused.mean_delta)
            check_finite(new_global.astype(self.spec.wire_dtype), "fused model")
        except UpdateError:
            # No positive total weight, or a non-finite model: impossible from honest parties. The
            # reason goes to the aggregator, which must not learn the sum: no value in it.
            raise ImpossibleSum(
                f"the revealed sum cannot come from {count} honest parties: it does not average to a "
                "finite model, or its total weight or evaluation count is less than they can have"
            ) from None
        self.last_fused = fused
        return new_global

    def _user_code(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """Call the user's own ``train``/``evaluate``. What it raises is their bug, not the protocol's:
        the whole traceback goes to this party's log (the aggregator is told only the exception's
        type), and is kept in ``user_error`` for a federation run with ``fail_fast``."""
        try:
            return function(*args)
        except SecureFLError:
            raise
        except Exception as exc:
            self.user_error = exc
            log.warning(
                "party %s: its %s function raised %s (it withdraws from the round):\n%s",
                self.party_id,
                what,
                type(exc).__name__,
                "".join(traceback.format_exception(exc)),
            )
            raise

    def _local_update(self, global_vector: np.ndarray, info: RoundInfo) -> np.ndarray:
        """Evaluate the global model, train, and pack the weighted delta with weight and metrics."""
        eval_count, eval_metrics = 0, {}
        if self.client.evaluate is not None and self.layout.eval_metrics:
            result = _as_eval_result(
                self._user_code("evaluate", self.client.evaluate, self.spec.unflatten(global_vector), info)
            )
            eval_count, eval_metrics = (
                _check_count(result.num_examples, "evaluation num_examples"),
                result.metrics,
            )
        trained = as_train_result(
            self._user_code("train", self.client.train, self.spec.unflatten(global_vector), info)
        )
        examples = _check_count(trained.num_examples, "num_examples")
        if examples == 0:
            raise UpdateError("train reported 0 examples; a party with no data should not take part")
        delta = self.spec.flatten(trained.weights) - global_vector
        check_finite(delta, f"update of {self.party_id!r}")
        weight = float(examples) if self.weighting == "examples" else 1.0
        if self.weight_bound is not None:
            # Weights are capped, as in DP-FedAvg: a bound every layer can be calibrated to.
            weight = min(weight, self.weight_bound)
            eval_count = min(eval_count, self.weight_bound)
        return self.layout.pack(delta, weight, trained.metrics, eval_count, eval_metrics)


def _clear_model(part: bytes, spec: ArraySpec) -> np.ndarray:
    """The global vector in a request's ``model`` part, read-only (float64)."""
    model = unpack_array(part, spec.wire_dtype, (spec.size,))
    if not np.isfinite(model).all():
        raise WireError("the global model in the request holds NaN or infinite values; not training on it")
    vector = model.astype(np.float64)
    vector.setflags(write=False)
    return vector


class SharedModels:
    """The last few clear global models this process received, each kept once: the thousands of
    parties a Ray actor hosts get the same model part every round, and each would otherwise hold
    its own copy of the bytes and of the float64 vector from the round's first phase to the one
    that trains. Keyed by the exact bytes (and the model's dtype and size), checked once, shared
    read-only (training gets its own arrays: ``ArraySpec.unflatten`` copies)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._entries: OrderedDict[tuple, list] = OrderedDict()
        self._lock = threading.Lock()

    def entry(self, spec: ArraySpec, part: bytes) -> list:
        """``[part, vector or None, error or None]``: the one held for these bytes."""
        key = (np.dtype(spec.wire_dtype).str, spec.size, bytes(part))
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                found = self._entries[key] = [key[2], None, None]
                while len(self._entries) > self.keep:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            return found

    def vector(self, entry: list, spec: ArraySpec) -> np.ndarray:
        if entry[1] is None and entry[2] is None:
            try:
                entry[1] = _clear_model(entry[0], spec)
            except WireError as exc:
                entry[2] = exc
        if entry[2] is not None:
            raise WireError(str(entry[2]))
        return entry[1]


SHARED_MODELS = SharedModels()


def _shareable(exc: Exception) -> bool:
    """Errors about the messages the aggregator sent can be told to it; others may leak data. An
    :class:`ImpossibleSum` names a coordinate group and a bound, never a value."""
    return isinstance(exc, (WireError, ProtocolError, ImpossibleSum))


MAX_REASON_BYTES = 4096  # a withdraw reason (wire.md)


def withdraw_reason(envelope: Envelope) -> str:
    """The withdraw's reason; WireError (the sender is dropped) if over 4,096 bytes or not UTF-8."""
    reason = envelope.parts.get("reason", b"")
    if len(reason) > MAX_REASON_BYTES:
        raise WireError(f"withdraw reason of {len(reason)} bytes, over the {MAX_REASON_BYTES} allowed")
    try:
        return reason.decode("utf-8") or "no reason given"
    except UnicodeDecodeError as exc:
        raise WireError(f"withdraw reason is not UTF-8 (byte {exc.start})") from None


__all__ = [
    "REFUSED_SUM",
    "Client",
    "EvalResult",
    "PartyNode",
    "TrainResult",
    "as_train_result",
    "withdraw_reason",
]
