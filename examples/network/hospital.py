"""What each hospital process runs: the demo's breast-cancer training loop, on its own shard.

``initial_model`` is the aggregator's starting point (``model = "hospital:initial_model"`` in
fed.toml); ``make_client`` is the train factory of ``securefl party --train hospital:make_client``,
called with the party's ``[train]`` table. Each process loads only its own hospital's records.
"""

from __future__ import annotations

from typing import Any

from securefl.codec import NamedArrays
from securefl.party import Client
from securefl.tasks import load_task

HOSPITALS = 3


def initial_model() -> NamedArrays:
    return load_task("breast-cancer", HOSPITALS).model


def make_client(config: dict[str, Any]) -> Client:
    task = load_task("breast-cancer", HOSPITALS, int(config.get("seed", 0)))
    return task.clients[config["party"]]


def held_out_accuracy(weights: NamedArrays) -> float:
    return load_task("breast-cancer", HOSPITALS).evaluate(weights)["accuracy"]
