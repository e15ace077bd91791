"""Run the example in Flower's simulation engine and check it against securefl alone.

1. ``secure.py`` (the quickstart app with securefl's secagg+ swapped in) in ``run_simulation``;
2. the same federation — same partitions, same local training, same privacy stack — through
   securefl alone (an in-process :class:`securefl.Federation`);
3. the two fused models must agree to the quantization step (each round, each party's rounding
   moves the average by at most one step over the total weight); ``--plain`` also runs Flower's
   own FedAvg (``quickstart.py``) for reference (it differs by securefl's clipping and rounding).

    python examples/flower/run.py [--plain]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import secure  # the example's own modules, next to this file
import task
from flwr.simulation import run_simulation

from securefl import Federation
from securefl.codec import VectorLayout
from securefl.federation import build_stack, validate_stack
from securefl.flower import backend_config
from securefl.selection import build_selection


def securefl_alone(clients: int, rounds: int) -> list[np.ndarray]:
    """The same federation through securefl alone: one party per Flower partition."""

    def party(partition: int):
        x, y = task.load_partition(partition, clients)

        def train(weights, info):
            new = task.train_locally([weights["0"], weights["1"]], x, y)
            return {"0": new[0], "1": new[1]}, len(y)

        return train

    settings = secure.secure
    fed = Federation(
        {"0": task.initial_weights()[0], "1": task.initial_weights()[1]},
        {f"partition-{p}": party(p) for p in range(clients)},
        settings.privacy,
        weight_bound=settings.weight_bound,
        min_parties=settings.min_parties,
    )
    history = fed.run(rounds)
    assert all(r.ok for r in history.rounds), [r.error for r in history.rounds]
    return [fed.global_weights["0"], fed.global_weights["1"]]


def quantization_tolerance(clients: int, rounds: int) -> float:
    """One quantization step per party and round, over the smallest total weight, in model units."""
    settings = secure.secure
    stack = build_stack(settings.privacy)
    layout = VectorLayout(31)
    validate_stack(stack, layout, build_selection(None), clients, 1, settings.weight_bound, None)
    total = sum(len(task.load_partition(p, clients)[1]) for p in range(clients))
    return rounds * clients * float(np.max(stack.resolution())) / total


def run(clients: int = task.NUM_CLIENTS, plain: bool = False) -> dict:
    rounds = task.NUM_ROUNDS  # the apps run task.NUM_ROUNDS rounds
    secure.FINAL.clear()
    run_simulation(secure.server, secure.app, num_supernodes=clients, backend_config=backend_config())
    flower = secure.FINAL[-1].to_numpy_ndarrays()
    alone = securefl_alone(clients, rounds)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(flower, alone, strict=True))
    out = {
        "clients": clients,
        "rounds": rounds,
        "max_abs_difference": difference,
        "quantization_tolerance": quantization_tolerance(clients, rounds),
        "accuracy_flower_securefl": task.accuracy(flower),
        "accuracy_securefl_alone": task.accuracy(alone),
    }
    if plain:
        import quickstart

        quickstart.FINAL.clear()
        run_simulation(
            quickstart.server, quickstart.app, num_supernodes=clients, backend_config=backend_config()
        )
        fedavg = quickstart.FINAL[-1].to_numpy_ndarrays()
        out["accuracy_flower_fedavg"] = task.accuracy(fedavg)
        out["max_abs_difference_to_flower_fedavg"] = max(
            float(np.max(np.abs(a - b))) for a, b in zip(flower, fedavg, strict=True)
        )
    out["same_model"] = out["max_abs_difference"] <= out["quantization_tolerance"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=task.NUM_CLIENTS)
    parser.add_argument("--plain", action="store_true", help="also run Flower's own FedAvg app")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = run(args.clients, args.plain)
    print(json.dumps(out, indent=2))
    sys.exit(0 if out["same_model"] else 1)


if __name__ == "__main__":
    main()
