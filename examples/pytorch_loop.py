"""Wrap an existing PyTorch training loop with securefl: three clinics classify handwritten digits.

The loop below is ordinary PyTorch; securefl only needs it as a function from the global weights
to new weights, an example count and metrics. The FedProx term keeps each clinic's model close to
the global one when their data differ (here each clinic sees mostly its own digits).

    python examples/pytorch_loop.py --rounds 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import securefl
from securefl.adapters.torch import FedProx, arrays_to_model, model_to_arrays


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def make_client(x: np.ndarray, y: np.ndarray) -> securefl.Client:
    features, targets = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = make_model()

    def train(weights, info):
        arrays_to_model(model, weights)
        prox = FedProx(model, mu=0.01)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):  # local epochs: the user's own loop, unchanged
            for batch in torch.randperm(len(targets)).split(32):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(features[batch]), targets[batch])
                (loss + prox.penalty()).backward()
                optimizer.step()
        return securefl.TrainResult(model_to_arrays(model), len(targets), {"loss": loss.item()})

    return securefl.Client(train=train)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=0
    )
    # Clinic k sees mostly digits 3k..3k+3 plus a little of everything: a non-IID split.
    rng = np.random.default_rng(0)
    owner = np.where(
        rng.random(len(y_train)) < 0.8, np.minimum(y_train // 4, 2), rng.integers(0, 3, len(y_train))
    )
    clients = {f"clinic-{k}": make_client(x_train[owner == k], y_train[owner == k]) for k in range(3)}

    federation = securefl.Federation(make_model().state_dict(), clients, "plain", train_metrics=["loss"])
    federation.run(args.rounds)

    scorer = arrays_to_model(make_model(), federation.global_weights)
    with torch.no_grad():
        predictions = scorer(torch.tensor(x_test, dtype=torch.float32)).argmax(1).numpy()
    accuracy = float((predictions == y_test).mean())
    print(json.dumps({"example": "pytorch", "rounds": args.rounds, "accuracy": accuracy}))


if __name__ == "__main__":
    main()
