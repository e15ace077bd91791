"""The aggregator: runs rounds, moves opaque payloads between phases, and fuses the revealed sum.

It never holds a secret key and never sees an individual update in the clear unless the stack is
``plain``: what it gets from parties goes straight to the secure sum's aggregator side. One round:

1. select parties; fewer than ``min_parties`` fails the round at once;
2. for each phase the layer names: send each live party its request (the first phase also
   carries the global model and the round info), collect replies until the deadline, check each
   envelope (size, version, session, round, phase, sender; duplicates), hand valid payloads to
   the layer; a party with no valid reply is a dropout from then on;
3. reveal the sum, undo the transforms, divide by the summed weight, and let the strategy step —
   or, for a layer that ``fuses_on_parties``, store the sealed next model the parties return
   (the aggregator then never holds the global model after round 0, nor any metric).

If survivors fall below ``min_parties`` at any phase, or the layer aborts, the round fails and the
global model is unchanged. With a privacy ``guard`` (DP with a budget), the round is first checked
against the budget — a refused round selects nobody — and the release is recorded in the ledger
after the sum is revealed and before the result is stored (design invariant 6).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from securefl.codec import ArraySpec, FusedSum, HonestBounds, VectorLayout, check_finite
from securefl.errors import BudgetExhausted, ProtocolError, RoundFailed, SecureFLError, UpdateError, WireError
from securefl.fusion import Strategy
from securefl.layers.base import ImpossibleSum, PrivacyStack, RoundContext, SealedModel
from securefl.logtext import printable
from securefl.party import REFUSED_SUM, withdraw_reason
from securefl.roundinfo import RoundInfo
from securefl.selection import Selection
from securefl.transcript import Transcript
from securefl.transport import Reply, SharedRequests, Transport, join_segments
from securefl.wire import REPLY, REQUEST, WITHDRAW, Envelope, pack_array

log = logging.getLogger(__name__)
_NO_REPLY = "no reply before the deadline"
_ENVELOPE_OVERHEAD = 4096


class ReleaseGuard(Protocol):
    """What the aggregator asks of a privacy budget (implemented by ``securefl.privacy.guard``)."""

    def bind(self, stack: PrivacyStack, selection: Selection, population: int) -> None:
        """Learn the mechanism and sampling of the federation it guards (called once, at set-up)."""

    def admit(self, round: int) -> None:
        """Raise BudgetExhausted if the round would overspend (after recording the refusal)."""

    def admit_selection(self, round: int, selected: Sequence[str]) -> None:
        """The same, once the round's parties are chosen and before any is contacted."""

    def record_release(
        self,
        round: int,
        parties_summed: int,
        selected: Sequence[str] | None = None,
        contributors: Sequence[str] | None = None,
    ) -> float:
        """Record the round's release durably; return the cumulative ε."""


@dataclass
class RoundReport:
    """What happened in one round, as the aggregator saw it."""

    round: int
    status: str  # "ok", "failed", or "refused" (over the privacy budget; nobody was selected)
    selected: list[str]
    survivors: list[str] = field(default_factory=list)  # the parties whose updates are in the result
    dropouts: dict[str, str] = field(default_factory=dict)  # party -> phase: reason
    # Parties the layer left out through no fault of their own (e.g. too few neighbours left after
    # others dropped): not dropouts, not in the sum.
    sidelined: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    total_weight: float = 0.0
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_count: float = 0.0
    eval_metrics: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    sealed: bool = False  # fused on the parties: the aggregator saw neither sums nor metrics
    epsilon: float | None = None  # cumulative ε after this round (DP with a budget only)
    # Updates the clip layer shortened this round, counted on the parties by a simulation that runs
    # them in its own process (never sent to the aggregator; None where the parties run elsewhere,
    # each of which logs its own clipping).
    clipped: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def number(self) -> int:
        """The round as securefl prints it everywhere (terminal, logs, ledger audit), counting from
        1; ``round`` is the protocol's index, counting from 0."""
        return self.round + 1


class Aggregator:
    def __init__(
        self,
        spec: ArraySpec,
        initial: np.ndarray,
        layout: VectorLayout,
        stack: PrivacyStack,
        transport: Transport,
        parties: list[str],
        session: str,
        selection: Selection,
        strategy: Strategy,
        min_parties: int = 1,
        phase_timeout: float = 600.0,
        round_config: dict | None = None,
        transcript: Transcript | None = None,
        guard: ReleaseGuard | None = None,
        honest: HonestBounds | None = None,
    ) -> None:
        self.spec = spec
        self.weights = np.asarray(initial, dtype=np.float64).copy()
        self.layout = layout
        self.stack = stack
        self.transport = transport
        self.parties = list(parties)
        self.session = session
        self.selection = selection
        self.strategy = strategy
        self.min_parties = min_parties
        self.phase_timeout = phase_timeout
        self.round_config = dict(round_config or {})
        self.transcript = transcript
        self.guard = guard
        self.honest = honest or HonestBounds()  # what one honest party can send (see unpack_sum)
        self.secure_sum = stack.secure_sum.aggregator()
        self.secure_sum.check_input = self._check_input
        self.sealed: SealedModel | None = None
        self._phase = ""  # where the current round is, for the error of a round that fails
        self._culprits: set[str] = set()
        # Per phase, the parties whose inputs this round's requests exposed to the aggregator.
        self._exposed: dict[str, frozenset[str]] = {}

    def run_round(self, round: int) -> RoundReport:
        """Run one round and report it. Never raises because of what a party sent: a bad message
        drops its sender; anything else that goes wrong fails the round (status ``"failed"``, the
        error says what happened and names the parties the layer blamed), the global model unchanged."""
        started = time.perf_counter()
        before = self.transport.traffic.snapshot()
        if self.guard is not None:
            try:
                self.guard.admit(round)
            except BudgetExhausted as exc:
                log.warning("round %d refused: %s", round + 1, exc)
                return RoundReport(round, "refused", [], error=str(exc))
        selected = self.selection.select(self.parties, round)
        # Left out by the layer (sitting out after a fault): the roster, and everything counted over
        # it (the guard's admission included), is the parties actually invited.
        resting = {p: why for p, why in self.secure_sum.resting(round).items() if p in selected}
        selected = [p for p in selected if p not in resting]
        if self.guard is not None:
            try:
                self.guard.admit_selection(round, selected)
            except BudgetExhausted as exc:
                log.warning("round %d refused: %s", round + 1, exc)
                return RoundReport(round, "refused", [], error=str(exc))
        report = RoundReport(round, "failed", list(selected))
        report.sidelined = {p: f"selection: {resting[p]}" for p in sorted(resting)}
        self._phase = "selection"
        self._culprits = set()
        self._exposed = {}
        self._release_attempted = False  # a release of this round's inputs went to the guard
        try:
            self._secure_sum_round(round, selected, report)
            self._phase = "fusion"
            fused = self._fuse(round, report, len(selected))
            report.survivors = sorted(self.secure_sum.contributors())
            if fused is None:
                report.sealed = True
            else:
                report.total_weight = fused.total_weight
                report.train_metrics, report.eval_metrics = fused.train_metrics, fused.eval_metrics
                report.eval_count = fused.eval_count
            report.status = "ok"
        except (RoundFailed, UpdateError) as exc:
            report.error = str(exc) + self._blame(report)
            log.warning("round %d failed: %s", round + 1, printable(report.error))
        except Exception as exc:  # a layer or strategy bug: never out of run_round (invariant 7)
            report.error = (
                f"{self._phase}: {type(exc).__name__}: {exc}; the round is abandoned and the global model "
                f"is unchanged" + self._blame(report)
            )
            log.error("round %d failed unexpectedly: %s", round + 1, printable(report.error), exc_info=True)
        if report.status != "ok":
            self._record_exposed_inputs(round, report)
            report.survivors = []
            report.total_weight, report.train_metrics, report.eval_metrics = 0.0, {}, {}
            report.eval_count, report.sealed = 0.0, False
        traffic = self.transport.traffic.since(before)
        report.bytes_up, report.bytes_down = traffic.bytes_up, traffic.bytes_down
        report.seconds = time.perf_counter() - started
        return report

    def _record_exposed_inputs(self, round: int, report: RoundReport) -> None:
        """A failed round whose requests asked for replies that expose inputs noised on the parties
        has released them to the aggregator: record them — a faulty party must not let the
        aggregator learn round after round while the budget stands still. Which inputs a phase
        exposes is the layer's answer (``exposed_by``), counted from the requests sent: with
        ``plain`` each input asked for, less the parties whose one reply was a withdrawal; with
        SecAgg the contributors' sum once t parties are asked to unmask, withdrawals included — a
        reply refused (answered twice, a bad envelope) or late is in the aggregator's
        hands all the same (found by attackers: a round abandoned for want of ``min_parties`` unmask
        replies, or with duplicated ones, gave a curious aggregator the sum with nothing recorded).
        Central noise is added only to a stored result."""
        noised_on_parties = any(getattr(t, "noise_on_party", False) for t in self.stack.transforms)
        if self.guard is None or not noised_on_parties or self._release_attempted:
            # Recorded already — or its recording failed (a ledger write error): the guard counted it
            # before writing, and recording the same inputs again would count them twice (found by
            # an attacker: an I/O error in the ledger's fsync was retried here as a second release,
            # and blamed on "another process writing the ledger").
            return
        exposed = sorted(set().union(*self._exposed.values()))  # summed or not, before or after the sum
        if exposed:
            report.epsilon = self.guard.record_release(round, len(exposed), report.selected, exposed)

    def _blame(self, report: RoundReport) -> str:
        """The parties the layer found misbehaving this round, for a failed round's error."""
        if not self._culprits:
            return ""
        named = "; ".join(f"{p}: {report.dropouts.get(p, '')}" for p in sorted(self._culprits))
        return f" (the layer found misbehaving: {named})"

    def _secure_sum_round(self, round: int, selected: list[str], report: RoundReport) -> None:
        self._require_enough(len(selected), "selection", len(selected))
        info = RoundInfo(round, tuple(sorted(selected)), self.min_parties, self.round_config)
        ctx = RoundContext(
            self.session, round, info.parties, self.layout.size, self.stack.integer, self.min_parties
        )
        self.secure_sum.start_round(ctx)
        live = set(selected)
        phases = self.secure_sum.phases(ctx)
        for index, phase in enumerate(phases):
            if index and self.secure_sum.finished():
                break  # the result is final: later phases must not undo it
            self._phase = phase
            extra = self._model_parts(info) if index == 0 else {}
            # The parts every request of the phase carries (the global model, the round's info)
            # are held once, not once per party: each request is its own bytes and indices into them.
            shared = {name: i for i, name in enumerate(extra)}
            pieces = {}
            for party in sorted(live):
                parts = {"layer": self.secure_sum.request(phase, party), **extra}
                envelope = Envelope(REQUEST, self.session, round, phase, party, parts)
                pieces[party] = envelope.encode_segments(shared)
                if self.transcript is not None:
                    self._record(
                        round, phase, "out", party, join_segments(pieces[party], list(extra.values()))
                    )
            requests = SharedRequests(list(extra.values()), pieces)
            asked = frozenset(live)
            # Counted before the exchange (a transport that fails midway may have delivered replies),
            # then again knowing which parties' one reply was a withdrawal.
            self._exposed[phase] = self.secure_sum.exposed_by(phase, asked, frozenset())
            replies = self.transport.exchange(requests, self.phase_timeout)
            refusals: dict[str, str] = {}
            withdrawn: set[str] = set()
            valid = self._accept(
                round, phase, live, replies, report, refusals, index == len(phases) - 1, withdrawn
            )
            # What the replies to these requests expose to the aggregator, counted from the requests
            # sent — not from the replies kept: a reply read and then refused (answered twice, a bad
            # envelope) or arriving after the deadline is in the aggregator's hands all the same
            # (found by attackers: duplicated unmask replies left a failed round's sum unrecorded).
            self._exposed[phase] = self.secure_sum.exposed_by(phase, asked, frozenset(withdrawn))
            for party in sorted(live - set(valid) - set(refusals)):
                report.dropouts.setdefault(party, f"{phase}: {_NO_REPLY}")
            live = set(valid)
            try:
                self._require_enough(
                    self.secure_sum.inputs_summed(phase, frozenset(live)), phase, len(selected)
                )
                for party in sorted(valid):
                    try:
                        self.secure_sum.receive(phase, party, valid[party])
                    except Exception as exc:
                        if not isinstance(exc, (SecureFLError, ValueError)):
                            log.warning(
                                "round %d: layer raised %s on %s's payload",
                                round + 1,
                                type(exc).__name__,
                                party,
                            )
                        report.dropouts[party] = f"{phase}: {type(exc).__name__}: {exc}"
                        live.discard(party)
                self._require_enough(
                    self.secure_sum.inputs_summed(phase, frozenset(live)), phase, len(selected)
                )
                try:
                    self.secure_sum.close_phase(phase, frozenset(live))
                finally:
                    for party, reason in sorted(self.secure_sum.culprits().items()):
                        if report.dropouts.get(party, "").endswith(_NO_REPLY):
                            # What the layer proved says more than the silence that came after it.
                            report.dropouts[party] = f"{phase}: {reason} (then: {report.dropouts[party]})"
                        report.dropouts.setdefault(party, f"{phase}: {reason}")
                        self._culprits.add(party)
                        live.discard(party)
                    for party, reason in sorted(self.secure_sum.sidelined().items()):
                        if party in live and party not in report.dropouts:
                            report.sidelined.setdefault(party, f"{phase}: {reason}")
                            live.discard(party)
            except RoundFailed as exc:
                if refusals:
                    # The round ends because these parties refused what they were shown: they are
                    # named in the error, not blamed as dropouts.
                    said = "; ".join(
                        f"{p} refused the revealed sum: {r}" for p, r in sorted(refusals.items())
                    )
                    raise RoundFailed(f"{exc}; {said}") from exc
                raise
            for party, reason in sorted(refusals.items()):
                # The round went on without them: their refusal did not decide anything.
                report.dropouts.setdefault(party, f"{phase}: withdrew: {reason}")

    def _accept(
        self,
        round: int,
        phase: str,
        live: set[str],
        replies: list[Reply],
        report: RoundReport,
        refusals: dict[str, str] | None = None,
        last_phase: bool = False,
        withdrawn: set[str] | None = None,
    ) -> dict[str, bytes]:
        """Check each reply's envelope; duplicates and impostors drop the party. In the last phase, a
        party that withdraws because it refused the sum revealed to it goes to ``refusals``. A party
        whose one and only reply is a withdrawal (it sent nothing else) goes to ``withdrawn``."""
        max_bytes = self.secure_sum.max_reply_bytes(phase) + _ENVELOPE_OVERHEAD
        valid: dict[str, bytes] = {}
        seen: set[str] = set()
        refusals = {} if refusals is None else refusals
        # Each reply is let go once read (only its payload is kept): a phase's replies are not all
        # held twice (a masked phase at 1,000 parties × 100k parameters holds 400 MB of them).
        if not isinstance(replies, list):
            replies = list(replies)
        senders = Counter(reply.sender for reply in replies)
        replies.reverse()
        while replies:
            reply = replies.pop()
            party = reply.sender
            try:
                self._record(round, phase, "in", party, reply.data)
                if party not in live:
                    raise ProtocolError(f"party {party!r} is not live in this phase")
                if party in seen:
                    raise ProtocolError(f"party {party!r} answered phase {phase!r} twice")
                seen.add(party)
                envelope = Envelope.decode(reply.data, max_bytes=max_bytes).expect(
                    kind=REPLY, session=self.session, round=round, phase=phase, party=party
                )
                if envelope.kind == WITHDRAW:
                    if withdrawn is not None and senders[party] == 1:
                        withdrawn.add(party)
                    # Only a layer that reveals the sum to its parties can have it refused by them.
                    fuses_on_parties = self.stack.secure_sum.fuses_on_parties
                    if last_phase and fuses_on_parties and REFUSED_SUM in envelope.parts:
                        refusals[party] = withdraw_reason(envelope)
                        continue
                    raise ProtocolError(f"withdrew: {withdraw_reason(envelope)}")
                if set(envelope.parts) != {"layer"}:
                    raise WireError(f"reply parts {sorted(envelope.parts)} should be ['layer']")
                valid[party] = envelope.parts["layer"]
            except Exception as exc:
                if not isinstance(exc, (WireError, ProtocolError)):
                    log.warning("round %d: %s checking %s's reply", round + 1, type(exc).__name__, party)
                valid.pop(party, None)
                refusals.pop(party, None)
                report.dropouts.setdefault(party, f"{phase}: {exc}")
                log.info("round %d: dropping %s: %s", round + 1, party, printable(exc))
        for party in report.dropouts:
            valid.pop(party, None)
            refusals.pop(party, None)
        return valid

    def _require_enough(self, count: int, phase: str, selected: int) -> None:
        if count < self.min_parties:
            raise RoundFailed(
                f"only {count} of {selected} parties left after {phase}; at least {self.min_parties} "
                "are needed, so the round is abandoned and the global model is unchanged"
            )

    def _model_parts(self, info: RoundInfo) -> dict[str, bytes]:
        """The first request of a round carries the global model: in the clear, or sealed."""
        if self.sealed is not None:
            return {"sealed_model": self.sealed.data, "round": info.encode()}
        return {"model": pack_array(self.weights.astype(self.spec.wire_dtype)), "round": info.encode()}

    def _fuse(self, round: int, report: RoundReport, selected: int) -> FusedSum | None:
        """Store the round's result: the sealed model, or the revealed sum decoded, checked against
        what its contributors can have produced, averaged and stepped. Nothing changes on failure."""
        outcome = self.secure_sum.result()
        summed = sorted(self.secure_sum.contributors())
        contributors = len(summed)
        # Noise added on the parties (or a sealed result) has been released once the aggregator
        # holds the result, refused below or not: record it now. Central noise is released only
        # when the result is stored, so a sum refused below releases nothing and spends nothing.
        noised_on_parties = any(getattr(t, "noise_on_party", False) for t in self.stack.transforms)
        if self.guard is not None and (noised_on_parties or isinstance(outcome, SealedModel)):
            # Written and fsynced before the result is stored: it leaves only after this.
            self._release_attempted = True
            report.epsilon = self.guard.record_release(round, contributors, report.selected, summed)
        if isinstance(outcome, SealedModel):
            if not isinstance(outcome.data, bytes) or not outcome.data:
                raise RoundFailed(f"{self.stack.secure_sum.name}: no sealed model came back")
            self.sealed = outcome
            return None
        if not isinstance(outcome, np.ndarray) or outcome.shape != (self.layout.size,):
            raise RoundFailed(
                f"{self.stack.secure_sum.name} revealed a sum of shape "
                f"{getattr(outcome, 'shape', type(outcome).__name__)}, expected ({self.layout.size},)"
            )
        total = self.stack.decode_sum(outcome, contributors, selected)
        try:
            fused = self.layout.unpack_sum(total, contributors, self.honest, self.stack.resolution())
        except UpdateError as exc:
            raise ImpossibleSum(
                f"the revealed sum cannot come from {contributors} honest parties: {exc}"
            ) from exc
        state = self.strategy.state_dict()
        try:
            new_weights = self.strategy.step(self.weights, fused.mean_delta)
            # As it will travel (float32 models overflow to inf beyond 3.4e38), and the optimizer's
            # state too: one round must not poison the rounds after it.
            check_finite(new_weights.astype(self.spec.wire_dtype), "fused model")
            _check_finite_state(self.strategy.state_dict())
            if self.guard is not None and not noised_on_parties:
                # Before it is stored:
                self._release_attempted = True
                report.epsilon = self.guard.record_release(round, contributors, report.selected, summed)
        except BaseException:
            self.strategy.load_state_dict(state)  # an optimizer's moments stay as they were
            raise
        self.weights = new_weights
        return fused

    def _check_input(self, vector: np.ndarray, selected: int) -> None:
        """One party's protected vector must be what one honest party can send (see check_input)."""
        try:
            decoded = self.stack.decode_sum(vector, 1, selected)
            self.layout.unpack_sum(decoded, 1, self.honest, self.stack.resolution())
        except (ImpossibleSum, UpdateError) as exc:
            raise UpdateError(f"its input cannot come from an honest party: {exc}") from None

    def _record(self, round: int, phase: str, direction: str, party: str, data: bytes) -> None:
        if self.transcript is not None:
            self.transcript.record(round, phase, direction, party, data)

    def global_weights(self):
        if self.sealed is not None:
            raise ProtocolError(
                f"the global model is sealed by {self.stack.secure_sum.name!r}: only key-holding "
                "parties can open it; the aggregator never sees it"
            )
        return self.spec.unflatten(self.weights)


def _check_finite_state(state: dict) -> None:
    """Refuse an optimizer state holding NaN or infinite values (it would poison later rounds)."""
    for name, value in state.items():
        if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise ImpossibleSum(f"the fused step left the optimizer's {name!r} state non-finite")
