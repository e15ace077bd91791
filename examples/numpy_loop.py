"""A NumPy training loop (softmax regression on digits) behind a clip → quantize → plain stack.

Nothing here is PyTorch: the model is a dict of numpy arrays and the loop is plain gradient
descent. The stack clips each update (L2), quantizes it to 24-bit fixed point and sums integers
modulo 2^64 — the same path an integer secure sum (SecAgg) takes — and uses FedAdam on the server.

    python examples/numpy_loop.py --rounds 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import securefl


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_client(x: np.ndarray, y: np.ndarray):
    onehot = np.eye(10)[y]

    def train(weights, info):
        w, b = weights["w"].copy(), weights["b"].copy()
        for _ in range(20):  # full-batch gradient descent, the user's own loop
            p = softmax(x @ w + b)
            w -= 0.5 * x.T @ (p - onehot) / len(y)
            b -= 0.5 * (p - onehot).mean(axis=0)
        loss = float(-np.mean(np.log(softmax(x @ w + b)[np.arange(len(y)), y] + 1e-12)))
        return {"w": w, "b": b}, len(y), {"loss": loss}

    return train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=0
    )
    shards = np.array_split(np.argsort(y_train, kind="stable"), 4)  # each party: a few digits only
    clients = {f"lab-{i}": make_client(x_train[s], y_train[s]) for i, s in enumerate(shards)}
    model = {"w": np.zeros((64, 10)), "b": np.zeros(10)}

    federation = securefl.Federation(
        model,
        clients,
        [securefl.Clip(norm=5.0), securefl.Quantize(bits=24), securefl.Plain()],
        train_metrics=["loss"],
        metric_bounds={"loss": 50.0},
        weight_bound=max(len(s) for s in shards),
        strategy=securefl.FedAdam(lr=0.1),
    )
    history = federation.run(args.rounds)

    weights = federation.global_weights
    accuracy = float((np.argmax(x_test @ weights["w"] + weights["b"], axis=1) == y_test).mean())
    print(
        json.dumps(
            {
                "example": "numpy",
                "rounds": args.rounds,
                "accuracy": accuracy,
                "train_loss": history.rounds[-1].train_metrics["loss"],
            }
        )
    )


if __name__ == "__main__":
    main()
