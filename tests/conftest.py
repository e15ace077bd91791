"""Shared test helpers. Fixed seeds are allowed here, and only here (design invariant 5)."""

from __future__ import annotations

import os

os.environ["SECUREFL_ALLOW_TEST_SEEDS"] = "1"

import numpy as np
import pytest
from hypothesis import settings

import securefl

# CI draws the same examples every run (reproducible); developers' runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# Modules whose tests start Ray (directly, or through Flower's simulation engine): under
# pytest-xdist (`make test` runs `-n auto --dist loadgroup`) they share one worker, so no two local
# Ray clusters start at once on a 2-core machine.
_RAY_MODULES = frozenset(
    {"test_simulation_ray", "test_flower", "test_flower_bench", "test_flower_example", "test_readme"}
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in _RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))


def fixed_delta_client(delta: np.ndarray, examples: int, metrics: dict | None = None, eval_metrics=None):
    """A client whose training adds a known delta: fused results can be computed by hand."""

    def train(weights, info):
        return {"w": weights["w"] + delta}, examples, dict(metrics or {})

    def evaluate(weights, info):
        return examples, dict(eval_metrics or {})

    return securefl.Client(train=train, evaluate=evaluate if eval_metrics is not None else None)


@pytest.fixture
def three_parties():
    """Three parties with deltas 1, 2, 3 (times ones) and 10, 20, 30 examples."""
    dim = 4
    deltas = {f"p{i}": np.full(dim, float(i + 1)) for i in range(3)}
    examples = {f"p{i}": 10 * (i + 1) for i in range(3)}
    clients = {
        p: fixed_delta_client(deltas[p], examples[p], {"loss": 0.1 * (i + 1)}) for i, p in enumerate(deltas)
    }
    model = {"w": np.zeros(dim)}
    return model, clients, deltas, examples


def weighted_mean(deltas: dict, examples: dict, parties) -> np.ndarray:
    total = sum(examples[p] for p in parties)
    return sum(examples[p] * deltas[p] for p in parties) / total


def reachable(root, max_depth: int = 6) -> list:
    """Every object reachable from ``root`` through attributes, containers and bound methods:
    what an aggregator-side object could get hold of."""
    found, seen = [], set()

    def walk(obj, depth):
        if depth > max_depth or id(obj) in seen:
            return
        seen.add(id(obj))
        found.append(obj)
        for value in getattr(obj, "__dict__", {}).values():
            walk(value, depth + 1)
        if hasattr(obj, "__self__"):
            walk(obj.__self__, depth + 1)
        if isinstance(obj, dict):
            for value in obj.values():
                walk(value, depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for value in obj:
                walk(value, depth + 1)

    walk(root, 0)
    return found


def assert_moved_by_ulps(model, before):
    """A refusal marker's model: the previous one, moved by a few ulps (shared_key._labelled_values:
    every record's model is moved by a PRF of its request, at most 255 ulps a coordinate)."""
    model, before = np.asarray(model, dtype=np.float64), np.asarray(before, dtype=np.float64)
    assert np.isfinite(model).all() and not np.array_equal(model, before)
    assert np.all(np.abs(model - before) <= 2**8 * np.spacing(np.abs(before)))
