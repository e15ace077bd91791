"""The privacy guard: enforces a budget on a federation's DP releases and records each in the ledger.

The aggregator calls :meth:`PrivacyGuard.admit` before it selects any party (design invariant 6):
the ε the round would reach is computed, and a round that would exceed the budget is refused — the
refusal is written to the ledger and nobody trains. Once the parties are chosen, and before any is
contacted, :meth:`PrivacyGuard.admit_selection` checks again with the real selection (the count and
the parties it holds are known then). After the secure sum is revealed and before the result is
stored or sent anywhere, :meth:`PrivacyGuard.record_release` steps the accountants and writes (and
fsyncs) the release record, so a crash can over-report a release, never under-report it.

Observers: the ε of a release depends on who looks (:mod:`securefl.privacy.observers`): those who
see only the released models, those who also see each round's count, the parties (who are handed
each round's selection), the aggregator. Every record carries the ε of each; the budget holds
against one — the strictest the deployment exposes unless the user chooses another.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from securefl.errors import BudgetExhausted, ConfigError
from securefl.layers.base import PrivacyStack
from securefl.layers.dp import NEIGHBOURING, DPNoise, Mechanism
from securefl.privacy.accountants import DEFAULT, GAUSSIAN, Accountant, create
from securefl.privacy.accountants.base import check_delta
from securefl.privacy.accounts import ObserverAccounts, seen_by_a_party
from securefl.privacy.ledger import Ledger, open_ledger
from securefl.privacy.observers import (
    AGGREGATOR,
    COUNT,
    MODEL,
    PARTICIPANTS,
    check_observer,
)
from securefl.runner import BudgetSettings
from securefl.selection import Selection

log = logging.getLogger(__name__)

# Sums that hide each input from the aggregator (distributed noise then holds against it).
HIDING_SUMS = frozenset({"secagg", "secagg+"})


@dataclass(frozen=True)
class Budget:
    """(ε, δ) per privacy unit (one party) for the whole life of a federation. ``epsilon=math.inf``
    accounts and records every release but refuses none. ``observer`` is the observer class the
    budget holds against (:data:`securefl.privacy.observers.OBSERVERS`); None: the strictest the
    deployment exposes (:func:`~securefl.privacy.observers.default_observer`)."""

    epsilon: float
    delta: float = 1e-5
    observer: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0):  # NaN fails this too
            raise ConfigError(f"budget epsilon must be a positive number, got {self.epsilon!r}")
        check_delta(self.delta)
        check_observer(self.observer)

    @property
    def limited(self) -> bool:
        return math.isfinite(self.epsilon)


class PrivacyGuard:
    """Budget, accountants and ledger of one federation; bound to its stack by the federation."""

    def __init__(self, budget: Budget, ledger: Ledger | None = None, accountant: str = DEFAULT) -> None:
        self.budget = budget
        self.ledger = ledger
        self._release_failed: str | None = None  # why recording a counted release failed
        self.preferred = accountant
        self.accounts: ObserverAccounts | None = None
        self._colluders = 0  # the coalition (DPNoise colluders) every release accounted holds for
        self.layer: DPNoise | None = None
        self.mechanism: Mechanism | None = None
        self.observer = budget.observer or PARTICIPANTS
        self.sampling = "none"
        self.sample_rate = 1.0
        self.population = 0
        self.secure_sum = "plain"
        self.aggregator_protected = False
        self.binding: GuardBinding | None = None
        # Ledger rounds continue across federations bound to this guard (a resumed run, successive
        # analytics queries): a federation's round r is ledger round first_round + r.
        self.first_round = 0
        self.next_round = 0
        self.tags: dict[str, Any] = {}  # extra fields for the records of the current binding

    @property
    def accountant(self) -> Accountant | None:
        """The accountant holding every release of this guard (the count and released-model classes,
        at k/n); the records name the one behind the enforced figure (:meth:`_accountant_version`)."""
        if self.accounts is None:
            return None
        return self.accounts.count.accountant

    def _accountant_version(self) -> str:
        if self.observer in (MODEL, COUNT):
            return self.accounts.count.version
        return create(self.accounts.worst_accountant).version

    def bind(self, stack: PrivacyStack, selection: Selection, population: int) -> GuardBinding:
        """Learn the mechanism from the stack's ``dp`` layer and the sampling from the selection.
        The first binding replays the releases already in the ledger, so a resumed federation keeps
        spending from where it stopped; a later binding (the next analytics query) keeps composing
        onto what this guard has accounted. One federation at a time: binding moves the guard."""
        layers = [t for t in stack.transforms if isinstance(t, DPNoise)]
        if len(layers) != 1:
            raise ConfigError(
                f"a privacy budget needs exactly one 'dp' layer in the stack, found {len(layers)}; add "
                "DPNoise(noise_multiplier=...) after the clip"
            )
        self.layer = layers[0]
        self.mechanism = self.layer.mechanism
        self.population = population
        placement = self.mechanism.placement
        # Against the aggregator the recorded noise holds only if it cannot see less-noised data:
        # not with central noise (it reads the sum before noising it), nor with distributed noise
        # and a sum that shows it each input (each carries only a 1/t share of the noise).
        self.secure_sum = stack.secure_sum.name
        hides_inputs = self.secure_sum in HIDING_SUMS
        self.aggregator_protected = placement == "local" or (placement == "distributed" and hides_inputs)
        # Default: the parties, who are all handed their rounds' selection. Where the aggregator is
        # protected its figure is the same, so the default does not change between bindings.
        self.observer = self.budget.observer or PARTICIPANTS
        if self.observer == AGGREGATOR and not self.aggregator_protected:
            raise ConfigError(
                "a budget against the aggregator needs noise the aggregator cannot see around: with "
                f"{placement} noise and the {stack.secure_sum.name!r} sum it reads "
                + ("the sum before noising it" if placement == "central" else "each noised share")
                + ". Use 'distributed' noise with secagg/secagg+, or 'local' noise, or hold the budget "
                "against 'participants'"
            )
        amplified = selection.name == "poisson" and self.mechanism.mechanism == GAUSSIAN
        self.sample_rate = selection.sample_rate(population) if amplified else 1.0
        self.sampling = "poisson" if amplified else f"{selection.name}: no amplification by sampling claimed"
        previous = self.accounts
        colluders = self.mechanism.colluders or 0
        if previous is not None and colluders > self._colluders:
            # What this guard composed so far was accounted for a smaller coalition; the larger one
            # would see those releases with less noise (replay handles a resumed ledger instead).
            raise ConfigError(
                f"this guard accounted its releases for coalitions of {max(1, self._colluders)} summed "
                f"part(ies); a stack with DPNoise(colluders={colluders}) cannot keep composing onto it: "
                "keep the same colluders, or give it a new guard and ledger"
            )
        self._colluders = colluders  # what everything composed so far holds for (the smallest yet)
        accounts = ObserverAccounts(
            self.preferred,
            self.mechanism.mechanism,
            self.mechanism.placement,
            population,
            self.sample_rate if amplified else None,
            self.aggregator_protected,
        )
        if previous is not None:  # the next query of an analytics session: keep composing
            accounts.take_over(previous)
        self.accounts = accounts
        if previous is None and self.ledger is not None:
            for record in self.ledger.records:
                if isinstance(record.get("round"), int):
                    self.next_round = max(self.next_round, record["round"] + 1)
                if record.get("unit") != "party":
                    # A federation's guard writes only per-party records; anything else is another
                    # ledger's (opacus's per-record one) or an edit, and skipping it would drop
                    # what it accounts (an attacker's edit to unit="record" reset the budget).
                    raise ConfigError(
                        f"the ledger {self.ledger.path} holds a record of privacy unit "
                        f"{str(record.get('unit'))[:40]!r} (round {record.get('round')}), not 'party': a "
                        "federation's budget is accounted per party in a ledger of its own; audit it with "
                        "'securefl audit', and give this federation another ledger"
                    )
                if record.get("delta") not in (None, self.budget.delta):
                    raise ConfigError(
                        f"the ledger {self.ledger.path} accounts δ={record.get('delta')}, this budget "
                        f"δ={self.budget.delta}: resume with the same δ (ε at another δ is another figure)"
                    )
                if record.get("decision") == "released":
                    self.accounts.replay(record, self.mechanism.colluders or 0)
                self.accounts.floor(record)
        self.first_round = self.next_round
        self.binding = GuardBinding(self)
        return self.binding

    def continue_from(self, rounds: int) -> None:
        """The bound federation was resumed from a checkpoint after ``rounds`` rounds, so its round
        indices start there: its round ``rounds`` is the ledger's next round (securefl.checkpoint)."""
        self.first_round = self.next_round - rounds

    def _fields(self) -> dict[str, Any]:
        return {**self.mechanism.fields(), "sample_rate": self.sample_rate}

    def epsilons(self) -> dict[str, float | None]:
        """ε spent so far against each observer class."""
        return self.accounts.epsilons(self.budget.delta)

    @property
    def spent(self) -> float:
        """ε spent so far against the observer class the budget holds against."""
        return self.accounts.epsilons(self.budget.delta, [self.observer])[self.observer]

    def _require_a_working_ledger(self) -> None:
        """Fail closed after an append failed part-way: a round admitted now would reach the
        aggregator with no durable record (found by an attacker: after one I/O error, four rounds
        were unmasked and each failed only when its release could not be written — a guard reopened
        on the ledger saw ε 7.09 of the 13.80 spent)."""
        failed = self._release_failed
        if failed is None and self.ledger is not None:
            failed = self.ledger.failed
        if failed is not None:
            raise BudgetExhausted(
                f"no round is admitted: recording the last release failed ({failed}); reopen the "
                "privacy ledger (a new guard, or `securefl audit LEDGER --repair`) once the cause is fixed"
            )

    def admit(self, round: int) -> None:
        """Raise :class:`BudgetExhausted` (after recording the refusal) if ``round`` would overspend.
        Before the selection, the round is projected with the expected count and the worst party in."""
        self._require_a_working_ledger()
        expected = max(1, round_half(self.sample_rate * self.population)) if self.population else 1
        self._check(
            round,
            self.accounts.projected(
                self._fields(), self.budget.delta, expected, None, [self.observer], self._party_sees(expected)
            ),
        )

    def admit_selection(self, round: int, selected: Sequence[str]) -> None:
        """The same check once the round's parties are chosen (nobody contacted yet): the count and the
        parties are known, so the count and participants classes are projected exactly."""
        self._require_a_working_ledger()
        self._check(
            round,
            self.accounts.projected(
                self._fields(),
                self.budget.delta,
                len(selected),
                list(selected),
                [self.observer],
                self._party_sees(len(selected)),
            ),
        )

    def _party_sees(self, selected: int, summed: int | None = None) -> dict[str, Any]:
        """The release as a summed party sees it (accounts.seen_by_a_party); before the round, at
        its fewest survivors (the most a party's own share can take away)."""
        if self.layer is None or self.mechanism.placement == "central":
            return self._fields()
        sharing = self.layer.parties_sharing(selected)
        fewest = self.layer.fewest_summed(selected)
        return seen_by_a_party(
            self._fields(), fewest if summed is None else summed, sharing, self.mechanism.placement
        )

    def _check(self, round: int, projected: dict[str, float | None]) -> None:
        value = projected[self.observer]
        finite = value is not None and math.isfinite(value)
        if finite and value <= self.budget.epsilon:
            return
        spent = self.spent
        self._write(round, "refused", epsilon=spent, parties_summed=0, projected=value if finite else None)
        if value is not None and not finite:
            # Even an unlimited budget refuses it: no ledger can record an infinite ε (a third
            # attacker's σ = 1e-155 was admitted, and every release then failed to be written).
            raise BudgetExhausted(
                f"round {self.first_round + round + 1} refused before any party trained: its ε against "
                f"{self.observer} is not finite (the noise is too small to account for); raise the noise "
                "multiplier"
            )
        raise BudgetExhausted(
            f"round {self.first_round + round + 1} (counting every round of this ledger) refused before "
            f"any party trained: it would bring ε against {self.observer} to {value:.4g}, over the budget "
            f"ε={self.budget.epsilon:g} (δ={self.budget.delta:g}); spent {spent:.4g}, "
            f"remaining {max(0.0, self.budget.epsilon - spent):.4g}. Raise the noise multiplier or the "
            "budget, or stop training here"
        )

    def record_release(
        self,
        round: int,
        parties_summed: int,
        selected: Sequence[str] | None = None,
        contributors: Sequence[str] | None = None,
    ) -> float:
        """Account one release and write its record (fsynced); return the cumulative ε against the
        enforced observer. ``selected`` and ``contributors`` (party ids) make the count and
        participants classes exact; without them the worst party is assumed in every release."""
        count = len(selected) if selected is not None else parties_summed
        self.accounts.record(self._fields(), count, contributors, self._party_sees(count, parties_summed))
        try:
            return self._write_release(round, parties_summed, count)
        except BaseException as exc:
            # Counted above, not durably recorded: whatever failed (a ledger write, a record that
            # cannot be built — a third attacker's ε of inf was no JSON), no further round is admitted
            # until the guard is rebuilt from its ledger.
            self._release_failed = f"{type(exc).__name__}: {exc}"
            raise

    def _write_release(self, round: int, parties_summed: int, count: int) -> float:
        figures = self.epsilons()
        extra: dict[str, Any] = {"parties_summed": parties_summed, "parties_selected": count}
        if self.layer is not None and self.mechanism.placement != "central":
            # What the sum actually carries: each summed party's share is sized for the fewest (t).
            extra["noise_threshold"] = self.layer.parties_sharing(count)
            extra["noise_std_in_sum"] = self.layer.sum_noise_std(count, parties_summed)
            if self.mechanism.variance is not None:
                extra["variance_in_sum"] = self.mechanism.variance * parties_summed / extra["noise_threshold"]
        self._write(round, "released", epsilon=figures[self.observer], figures=figures, **extra)
        return figures[self.observer]

    def _observers_field(self, figures: dict[str, float | None], count: int) -> dict[str, Any]:
        rates = self.accounts.rates(count)
        releases = self.accounts.most_selected
        return {
            MODEL: {"epsilon": figures[MODEL], "sample_rate": rates[MODEL]},
            COUNT: {"epsilon": figures[COUNT], "sample_rate": rates[COUNT]},
            PARTICIPANTS: {"epsilon": figures[PARTICIPANTS], "releases": releases, "sample_rate": 1.0},
            AGGREGATOR: {"epsilon": figures[AGGREGATOR], "releases": releases, "sample_rate": 1.0},
        }

    def _write(
        self, round: int, decision: str, figures: dict[str, float | None] | None = None, **extra: Any
    ) -> None:
        self.next_round = max(self.next_round, self.first_round + round + 1)
        if self.ledger is None:
            return
        m = self.mechanism
        figures = figures or self.epsilons()
        count = extra.get("parties_selected", 1)
        self.ledger.append(
            {
                **self._fields(),
                **self.tags,
                **extra,
                "round": self.first_round + round,
                "decision": decision,
                "unit": "party",
                "neighbouring": NEIGHBOURING,
                "sampling": self.sampling,
                "steps": 1,
                "delta": self.budget.delta,
                "budget_epsilon": self.budget.epsilon if self.budget.limited else None,
                "observer": self.observer,
                "observers": self._observers_field(figures, count),
                "population": self.population,
                "secure_sum": self.secure_sum,
                "accountant": self._accountant_version(),
                "noise": f"{m.mechanism} ({m.placement})",
            }
        )


class GuardBinding:
    """A guard as one federation sees it (what :meth:`PrivacyGuard.bind` returns). Binding the guard
    to another federation retires this one: a federation that goes on releasing through a retired
    binding would be accounted with the other federation's mechanism, so it is refused."""

    def __init__(self, guard: PrivacyGuard) -> None:
        self.guard = guard

    def _current(self) -> PrivacyGuard:
        if self.guard.binding is not self:
            raise ConfigError(
                "this privacy guard has since been bound to another federation: one federation at a time "
                "(its releases would be accounted with the other's mechanism); give each its own guard"
            )
        return self.guard

    def bind(self, stack: PrivacyStack, selection: Selection, population: int) -> GuardBinding:
        return self.guard.bind(stack, selection, population)

    @property
    def ledger(self):
        """The guard's ledger (None: its budget lives in memory only)."""
        return self.guard.ledger

    def admit(self, round: int) -> None:
        self._current().admit(round)

    def admit_selection(self, round: int, selected: Sequence[str]) -> None:
        self._current().admit_selection(round, selected)

    def record_release(
        self,
        round: int,
        parties_summed: int,
        selected: Sequence[str] | None = None,
        contributors: Sequence[str] | None = None,
    ) -> float:
        return self._current().record_release(round, parties_summed, selected, contributors)

    def __getattr__(self, name: str) -> Any:  # budget, ledger, spent, epsilons(), …: the guard's
        return getattr(self.guard, name)


def round_half(value: float) -> int:
    return math.floor(value + 0.5)


def guard_for(settings: BudgetSettings) -> PrivacyGuard:
    """The guard of a run's budget settings: the budget (unlimited if none), accountant and ledger
    (its signing key kept next to it, created on first use)."""
    if settings.epsilon is not None and not _finite_positive(settings.epsilon):
        # inf would be read as "no limit": a typo'd or computed budget must not silently turn the
        # limit off. Leaving the budget out is how a run accounts without refusing.
        raise ConfigError(
            f"the budget ε must be a finite positive number, got {settings.epsilon!r}; to account and "
            "record every release without refusing any, give no budget (no --budget-epsilon, no "
            "[budget] epsilon)"
        )
    budget = Budget(
        math.inf if settings.epsilon is None else settings.epsilon,
        settings.delta,
        settings.observer,
    )
    if settings.ledger and os.path.isdir(settings.ledger):
        raise ConfigError(
            f"the ledger {settings.ledger} is a directory; give a file in it "
            f"(e.g. {settings.ledger}/dp-ledger.jsonl)"
        )
    ledger = open_ledger(settings.ledger) if settings.ledger else None
    if ledger is not None and ledger.records:
        recorded = ledger.records[-1].get("budget_epsilon")
        recorded = math.inf if recorded is None else recorded
        if recorded != budget.epsilon and not settings.allow_budget_change:
            spent = continuation(ledger)
            raise ConfigError(
                f"{settings.ledger} already {spent} under a budget of ε={_budget_text(recorded)}; this run's "
                f"budget is ε={_budget_text(budget.epsilon)}. Use a new ledger for a new federation, keep "
                "the recorded budget to continue this one, or change it on purpose with --budget-change "
                "([budget] allow_budget_change = true)"
            )
    return PrivacyGuard(budget, ledger, settings.accountant)


def _finite_positive(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _budget_text(epsilon: float) -> str:
    return "unlimited" if math.isinf(epsilon) else f"{epsilon:g}"


def continuation(ledger: Ledger) -> str:
    """What an existing ledger already holds, in words: "records 6 releases (ε 13.8 spent) and 1
    refusal"."""
    released = [r for r in ledger.records if r.get("decision") == "released"]
    refused = len(ledger.records) - len(released)
    spent = released[-1].get("epsilon") if released else 0.0
    text = f"records {len(released)} release{'s' if len(released) != 1 else ''} (ε {spent:.3g} spent)"
    if refused:
        text += f" and {refused} refusal{'s' if refused != 1 else ''}"
    return text
