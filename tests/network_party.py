"""Train factory for the network tests' party processes: the demo task over four hospitals, and a
party that kills itself (SIGKILL, no goodbye) while training in ``die_in_round``."""

from __future__ import annotations

import os
import signal

from securefl.party import Client
from securefl.tasks import load_task

HOSPITALS = 4


def initial_model():
    return load_task("breast-cancer", HOSPITALS).model


def make_client(config: dict) -> Client:
    client = load_task("breast-cancer", HOSPITALS).clients[config["party"]]
    die_in_round = config.get("die_in_round")
    metrics = config.get("metrics", True)  # false under DP: nothing computed on the data leaves un-noised

    def train(weights, info):
        if info.round == die_in_round:
            os.kill(os.getpid(), signal.SIGKILL)
        result = client.train(weights, info)
        return result if metrics else (result.weights, result.num_examples)

    return Client(train=train, evaluate=client.evaluate if metrics else None)
