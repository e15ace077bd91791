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

import math
from dataclasses import dataclass
from typing import Any

from securefl.errors import BudgetExhausted, ConfigError
from securefl.layers.base import PrivacyStack
from securefl.layers.dp import NEIGHBOURING, DPNoise, Mechanism
from securefl.privacy.accountants import DEFAULT, Accountant, for_mechanism
from securefl.privacy.accountants.base import check_delta
from securefl.privacy.ledger import Ledger, open_ledger
from securefl.runner import BudgetSettings
from securefl.selection import Selection


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

    def bind(self, stack: PrivacyStack, selection: Selection, population: int) -> None:
        """Learn the mechanism from the stack's ``dp`` layer and the sampling from the selection;
        replay the releases already in the ledger, so a resumed federation keeps spending from
        where it stopped."""
        layers = [t for t in stack.transforms if isinstance(t, DPNoise)]
        if len(layers) != 1:
            raise ConfigError(
                f"a privacy budget needs exactly one 'dp' layer in the stack, found {len(layers)}; add "
                "DPNoise(noise_multiplier=...) after the clip"
            )
        self.mechanism = layers[0].mechanism
        self.accountant = for_mechanism(self.mechanism.mechanism, self.preferred)
        if self.mechanism.placement == "central" and selection.name == "poisson":
            self.sampling, self.sample_rate = "poisson", selection.sample_rate(population)
        else:
            self.sampling = (
                "none: the aggregator knows who took part"
                if self.mechanism.placement != "central"
                else f"{selection.name}: not Poisson, no amplification claimed"
            )
            self.sample_rate = 1.0
        if self.ledger is not None:
            for record in self.ledger.records:
                if record.get("decision") == "released" and record.get("unit") == "party":
                    self.accountant.step_release(record, int(record.get("steps", 1)))

    def _release_fields(self) -> dict[str, Any]:
        return {**self.mechanism.fields(), "sample_rate": self.sample_rate}

    @property
    def spent(self) -> float:
        return self.accountant.epsilon(self.budget.delta)

    def admit(self, round: int) -> None:
        """Raise :class:`BudgetExhausted` (after recording the refusal) if ``round`` would overspend."""
        projected = self.accountant.would_spend_release(self._release_fields(), 1, self.budget.delta)
        if projected <= self.budget.epsilon:
            return
        spent = self.spent
        self._write(round, "refused", epsilon=spent, parties_summed=0, projected=projected)
        raise BudgetExhausted(
            f"round {round} (counted from 0, as in the ledger) refused before any party trained: it "
            f"would bring ε to {projected:.4g}, over "
            f"the budget ε={self.budget.epsilon:g} (δ={self.budget.delta:g}); spent {spent:.4g}, "
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
        if self.ledger is None:
            return
        m = self.mechanism
        self.ledger.append(
            {
                **self._release_fields(),
                **extra,
                "round": round,
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
