"""Record-level DP-SGD inside one party with Opacus, accounted across every round of a federation.

The mistake this prevents: making a new ``PrivacyEngine`` each round starts a new accountant each
round, and the ε it reports covers that round only — an under-report by a factor of up to the
number of rounds. :class:`PrivateTraining` makes the engine once, for the party's whole life;
each round it loads the global weights into the same private model, refuses the round *before*
training if its steps would take the party's record-level ε over the budget, and afterwards
accounts exactly the steps taken (and, with a ledger, records them with ``unit = "record"``)::

    private = PrivateTraining(model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                              budget=Budget(epsilon=8.0, delta=1e-5))

    def train(weights, info):
        private.begin_round(weights, epochs=1)          # BudgetExhausted → the party withdraws
        for x, y in private.loader:
            private.optimizer.zero_grad()
            loss_fn(private.model(x), y).backward()
            private.optimizer.step()
        private.end_round(info.round)
        return TrainResult(private.weights(), private.examples, {})

Opacus draws its noise from a torch generator; it is seeded here from ``os.urandom`` each time
the engine is made. Opacus's own ``secure_mode`` needs torchcsprng, which does not build for the
torch this project pins; the Mersenne-Twister generator is therefore the weak point of record-level
noise, stated in the ledger's ``noise`` field.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from opacus import PrivacyEngine

from securefl.adapters.torch import arrays_to_model, model_to_arrays
from securefl.codec import NamedArrays
from securefl.errors import BudgetExhausted, ConfigError
from securefl.privacy.accountants import create
from securefl.privacy.guard import Budget
from securefl.privacy.ledger import Ledger

NEIGHBOURING = "add/remove one record of this party's data"


class PrivateTraining:
    """One party's DP-SGD: a private model, optimizer and Poisson-sampled loader, one accountant."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: torch.utils.data.DataLoader,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        budget: Budget | None = None,
        accountant: str = "prv",
        ledger: Ledger | None = None,
        party: str | None = None,
    ) -> None:
        if not noise_multiplier > 0 or not max_grad_norm > 0:
            raise ConfigError("DP-SGD needs a positive noise_multiplier and max_grad_norm")
        self.base_model = model
        self.examples = len(data_loader.dataset)
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.budget = budget or Budget(float("inf"))
        self.ledger = ledger
        self.party = party
        self.engine = PrivacyEngine(accountant=accountant)
        noise = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        self.model, self.optimizer, self.loader = self.engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            noise_generator=noise,
        )
        self.sample_rate = 1.0 / len(data_loader)  # opacus's Poisson rate: one expected batch
        self.accountant = create(accountant)  # grouped: fast budget checks over many rounds
        self._steps_before: int | None = None

    def _steps_taken(self) -> int:
        return sum(steps for _, _, steps in self.engine.accountant.history)

    def epsilon(self, delta: float | None = None) -> float:
        """Record-level ε of everything this party has trained so far."""
        return self.accountant.epsilon(self.budget.delta if delta is None else delta)

    def begin_round(self, weights: NamedArrays, epochs: int = 1) -> None:
        """Load the global weights; refuse (BudgetExhausted) if ``epochs`` more would overspend."""
        steps = max(1, epochs * len(self.loader))
        projected = self.accountant.would_spend(
            self.noise_multiplier, self.sample_rate, steps, self.budget.delta
        )
        if projected > self.budget.epsilon:
            spent = self.epsilon()
            self._record(None, "refused", steps, spent, projected=projected)
            raise BudgetExhausted(
                f"record-level budget: {epochs} more epoch(s) would bring this party's ε to {projected:.4g} "
                f"> {self.budget.epsilon:g} (spent {spent:.4g}); it stops training"
            )
        arrays_to_model(self.base_model, weights)
        self._steps_before = self._steps_taken()

    def end_round(self, round: int | None = None) -> float:
        """Account the steps taken since :meth:`begin_round`; return the cumulative ε."""
        if self._steps_before is None:
            raise ConfigError("end_round() without begin_round()")
        steps = self._steps_taken() - self._steps_before
        self._steps_before = None
        if steps:
            self.accountant.step(self.noise_multiplier, self.sample_rate, steps)
            self._record(round, "released", steps, self.epsilon())
        return self.epsilon()

    def weights(self) -> dict[str, Any]:
        return model_to_arrays(self.base_model)

    def _record(self, round: int | None, decision: str, steps: int, epsilon: float, **extra: Any) -> None:
        if self.ledger is None:
            return
        self.ledger.append(
            {
                **extra,
                "round": round,
                "party": self.party,
                "decision": decision,
                "unit": "record",
                "neighbouring": NEIGHBOURING,
                "mechanism": "gaussian",
                "noise": "gaussian (DP-SGD, opacus; torch generator)",
                "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.max_grad_norm,
                "noise_std": self.noise_multiplier * self.max_grad_norm,
                "sampling": "poisson",
                "sample_rate": self.sample_rate,
                "steps": steps,
                "parties_summed": 1,
                "delta": self.budget.delta,
                "budget_epsilon": self.budget.epsilon if self.budget.limited else None,
                "accountant": self.accountant.version,
                "epsilon": epsilon,
            }
        )
