"""Record-level DP-SGD with Opacus inside each party, on top of secure aggregation.

Three clinics classify handwritten digits. Each trains with DP-SGD (per-example clipping and
Gaussian noise, via Opacus) through :class:`securefl.adapters.opacus.PrivateTraining`, which keeps
one privacy engine per clinic for the whole federation — so the ε it reports covers every round,
not just the last — and refuses a round before training if it would exceed the clinic's
record-level budget. Updates are summed with SecAgg, so the aggregator sees only the sum. Each
clinic writes its own signed ledger (unit: one record), which ``securefl audit`` verifies.

    python examples/dpsgd_opacus.py --rounds 5 --ledger-dir ledgers/
    securefl audit ledgers/clinic-0.jsonl --public-key ledgers/clinic-0.jsonl.pub
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import securefl
from securefl.adapters.opacus import PrivateTraining
from securefl.adapters.torch import arrays_to_model
from securefl.errors import BudgetExhausted
from securefl.privacy.guard import Budget
from securefl.privacy.ledger import open_ledger

EPOCHS = 1
# Benign here: the inputs of the first layer need no gradient. Opacus's warning that its secure_mode
# is off is stated in securefl.adapters.opacus (it needs torchcsprng, which this torch lacks).
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Secure RNG turned off")


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def make_clinic(name: str, x: np.ndarray, y: np.ndarray, budget: Budget, ledger_dir: Path | None):
    data = torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    model = make_model()
    private = PrivateTraining(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        torch.utils.data.DataLoader(data, batch_size=64),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        budget=budget,
        ledger=open_ledger(ledger_dir / f"{name}.jsonl") if ledger_dir else None,
        party=name,
    )

    def train(weights, info):
        private.begin_round(weights, epochs=EPOCHS)  # refuses before training if over budget
        for _ in range(EPOCHS):
            for features, labels in private.loader:
                private.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(private.model(features), labels).backward()
                private.optimizer.step()
        private.end_round(info.round)
        return securefl.TrainResult(private.weights(), private.examples, {})

    return securefl.Client(train=train), private


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget-epsilon", type=float, default=10.0, help="record-level ε per clinic")
    parser.add_argument("--ledger-dir", type=Path, help="write one signed ledger per clinic here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.ledger_dir:
        args.ledger_dir.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=0
    )
    shards = np.array_split(np.random.default_rng(0).permutation(len(y_train)), 3)
    budget = Budget(args.budget_epsilon, 1e-5)
    clinics, engines = {}, {}
    for k, shard in enumerate(shards):
        name = f"clinic-{k}"
        clinics[name], engines[name] = make_clinic(
            name, x_train[shard], y_train[shard], budget, args.ledger_dir
        )

    federation = securefl.Federation(make_model().state_dict(), clinics, "secagg", weight_bound=1000)
    rounds_run = 0
    for _ in range(args.rounds):
        report = federation.run_round()
        if not report.ok:
            print(f"round {report.round + 1}: {report.error}")
            break
        rounds_run += 1
        spent = ", ".join(f"{n} ε={e.epsilon():.2f}" for n, e in engines.items())
        print(f"round {report.round + 1}: parties {len(report.survivors)}, record-level {spent}")

    scorer = arrays_to_model(make_model(), federation.global_weights)
    with torch.no_grad():
        predictions = scorer(torch.tensor(x_test, dtype=torch.float32)).argmax(1).numpy()
    accuracy = float((predictions == y_test).mean())
    summary = {
        "example": "dpsgd-opacus",
        "rounds": rounds_run,
        "accuracy": accuracy,
        "epsilon": {n: e.epsilon() for n, e in engines.items()},
        "delta": budget.delta,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except BudgetExhausted as exc:
        raise SystemExit(f"error: {exc}") from None
