"""The example's model and data: logistic regression in NumPy on scikit-learn's bundled
breast-cancer data (569 patients, 30 features), dealt to the Flower partitions in equal shares.

Training is deterministic (full-batch gradient descent from the weights it is given), so the same
federation run through Flower and through securefl alone differs only by what the privacy layers
do to the updates.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer

NUM_CLIENTS = 5
NUM_ROUNDS = 3
LOCAL_STEPS = 10
LEARNING_RATE = 0.5
MAX_EXAMPLES = 200  # the most records one partition holds: securefl's weight bound


def load_data() -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    x = (data.data - data.data.mean(axis=0)) / (data.data.std(axis=0) + 1e-12)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], data.target[order].astype(np.float64)


def load_partition(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_data()
    index = np.array_split(np.arange(len(y)), num_partitions)[partition_id]
    return x[index], y[index]


def initial_weights() -> list[np.ndarray]:
    return [np.zeros(30), np.zeros(1)]


def train_locally(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """A few steps of full-batch gradient descent on the logistic loss."""
    w, b = (np.array(a, dtype=np.float64) for a in weights)
    for _ in range(LOCAL_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b[0])))
        w -= LEARNING_RATE * x.T @ (p - y) / len(y)
        b -= LEARNING_RATE * np.array([np.mean(p - y)])
    return [w, b]


def accuracy(weights: list[np.ndarray]) -> float:
    x, y = load_data()
    return float((((x @ weights[0] + weights[1][0]) > 0) == (y > 0.5)).mean())
