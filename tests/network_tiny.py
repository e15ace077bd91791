"""Train factory for the abuse tests' party processes: a model of 8 numbers and a training step
that imports nothing heavy (a process starts in about a second) and takes ``train_seconds``, so
that the rounds last while an attack runs beside them."""

from __future__ import annotations

import time

import numpy as np

from securefl.party import Client


def initial_model():
    return {"w": np.zeros(8, dtype=np.float32)}


def make_client(config: dict) -> Client:
    seconds = float(config.get("train_seconds", 0.0))
    step = 0.01 * (1 + sum(map(ord, config["party"])) % 7)

    def train(weights, info):
        time.sleep(seconds)
        return {"w": weights["w"] + step}, 1

    return Client(train=train)
