"""The privacy guard: enforces a budget on a federation's DP releases and records each in the ledger.

The aggregator calls :meth:`PrivacyGuard.admit` before it selects any party (design invariant 6):
the ε the round would reach is computed, and a round that would exceed the budget is refused — the
refusal is written to the ledger and nobody trains. After the secure sum is revealed and before the
result is stored or sent anywhere, :meth:`PrivacyGuard.record_release` steps the accountant and
writes (and fsyncs) the release record, so a crash can over-report a release, never under-report it.

Sampling: amplification by subsampling is claimed only for ``central`` noise with Poisson selection,
where those who see the released model do not know who was sampled. With ``distributed`` or
``local`` noise the aggregator, who sees the noised sum, knows who took part: those releases are
accounted at sampling rate 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from securefl.errors import BudgetExhausted, ConfigError
from securefl.layers.base import PrivacyStack
from securefl.layers.dp import NEIGHBOURING, DPNoise, Mechanism
from securefl.privacy.accountants import DEFAULT, RDP, Accountant, for_mechanism
from securefl.privacy.accountants.base import BeyondAccountant, check_delta
from securefl.privacy.ledger import Ledger, open_ledger
from securefl.runner import BudgetSettings
from securefl.selection import Selection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """(ε, δ) per privacy unit (one party) for the whole life of a federation. ``epsilon=math.inf``
    accounts and records every release but refuses none."""

    epsilon: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0):  # NaN fails this too
            raise ConfigError(f"budget epsilon must be a positive number, got {self.epsilon!r}")
        check_delta(self.delta)

    @property
    def limited(self) -> bool:
        return math.isfinite(self.epsilon)


class PrivacyGuard:
    """Budget, accountant and ledger of one federation; bound to its stack by the federation."""

    def __init__(self, budget: Budget, ledger: Ledger | None = None, accountant: str = DEFAULT) -> None:
        self.budget = budget
        self.ledger = ledger
        self.preferred = accountant
        self.accountant: Accountant | None = None
        self.mechanism: Mechanism | None = None
        self.sampling = "none"
        self.sample_rate = 1.0
        # Ledger rounds continue across federations bound to this guard (a resumed run, successive
        # analytics queries): a federation's round r is ledger round first_round + r.
        self.first_round = 0
        self.next_round = 0
        self.tags: dict[str, Any] = {}  # extra fields for the records of the current binding

    def bind(self, stack: PrivacyStack, selection: Selection, population: int) -> None:
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
        self.mechanism = layers[0].mechanism
        previous = self.accountant
        if previous is not None and self.mechanism.mechanism in previous.mechanisms:
            self.accountant = previous
        else:
            self.accountant = for_mechanism(self.mechanism.mechanism, self.preferred)
            if previous is not None:  # e.g. Skellam after Gaussian: RDP takes over the history
                self._take_over(previous)
        if self.mechanism.placement == "central" and selection.name == "poisson":
            self.sampling, self.sample_rate = "poisson", selection.sample_rate(population)
        else:
            self.sampling = (
                "none: the aggregator knows who took part"
                if self.mechanism.placement != "central"
                else f"{selection.name}: not Poisson, no amplification claimed"
            )
            self.sample_rate = 1.0
        if previous is None and self.ledger is not None:
            for record in self.ledger.records:
                if isinstance(record.get("round"), int):
                    self.next_round = max(self.next_round, record["round"] + 1)
                if record.get("decision") == "released" and record.get("unit") == "party":
                    self.accountant.step_release(record, int(record.get("steps", 1)))
        self.first_round = self.next_round

    def _release_fields(self) -> dict[str, Any]:
        return {**self.mechanism.fields(), "sample_rate": self.sample_rate}

    def _take_over(self, previous: Accountant) -> None:
        for entry, steps in previous.history.items():
            self.accountant._add(entry, steps)

    def _computed(self, compute: Callable[[], float]) -> float:
        """``compute()``; when the accountant cannot (PRV with very little noise), RDP takes over the
        history from then on — an upper bound, so never an under-report; the records name it."""
        try:
            return compute()
        except BeyondAccountant as exc:
            previous, self.accountant = self.accountant, RDP()
            self._take_over(previous)
            log.warning("%s; accounting with %s from here on", exc, self.accountant.version)
            return compute()

    @property
    def spent(self) -> float:
        return self._computed(lambda: self.accountant.epsilon(self.budget.delta))

    def admit(self, round: int) -> None:
        """Raise :class:`BudgetExhausted` (after recording the refusal) if ``round`` would overspend."""
        projected = self._computed(
            lambda: self.accountant.would_spend_release(self._release_fields(), 1, self.budget.delta)
        )
        if projected <= self.budget.epsilon:
            return
        spent = self.spent
        self._write(round, "refused", epsilon=spent, parties_summed=0, projected=projected)
        raise BudgetExhausted(
            f"round {self.first_round + round} (the ledger's count, from 0) refused before any party "
            f"trained: it would bring ε to {projected:.4g}, over the budget ε={self.budget.epsilon:g} "
            f"(δ={self.budget.delta:g}); spent {spent:.4g}, "
            f"remaining {max(0.0, self.budget.epsilon - spent):.4g}. Raise the noise multiplier or the "
            "budget, or stop training here"
        )

    def record_release(self, round: int, parties_summed: int) -> float:
        """Account one release and write its record (fsynced); return the cumulative ε."""
        self.accountant.step_release(self._release_fields())
        epsilon = self.spent
        self._write(round, "released", epsilon=epsilon, parties_summed=parties_summed)
        return epsilon

    def _write(self, round: int, decision: str, **extra: Any) -> None:
        self.next_round = max(self.next_round, self.first_round + round + 1)
        if self.ledger is None:
            return
        m = self.mechanism
        self.ledger.append(
            {
                **self._release_fields(),
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
                "accountant": self.accountant.version,
                "noise": f"{m.mechanism} ({m.placement})",
            }
        )


def guard_for(settings: BudgetSettings) -> PrivacyGuard:
    """The guard of a run's budget settings: the budget (unlimited if none), accountant and ledger
    (its signing key kept next to it, created on first use)."""
    budget = Budget(math.inf if settings.epsilon is None else settings.epsilon, settings.delta)
    ledger = open_ledger(settings.ledger) if settings.ledger else None
    return PrivacyGuard(budget, ledger, settings.accountant)
