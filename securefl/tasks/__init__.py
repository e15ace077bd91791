"""Federated learning tasks: a model, one client per party, and a held-out evaluation.

``load_task("breast-cancer", parties=5, seed=0)`` gives the demo task; ``"package.module:function"``
loads a user's task factory, called as ``function(parties=N, seed=S)`` and returning a :class:`Task`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from securefl.codec import NamedArrays
from securefl.errors import ConfigError
from securefl.party import Client


@dataclass
class Task:
    name: str
    model: NamedArrays
    clients: dict[str, Client]
    train_metrics: tuple[str, ...] = ()
    eval_metrics: tuple[str, ...] = ()
    metric_bounds: dict[str, float] = field(default_factory=dict)
    weight_bound: float | None = None
    # Scores global weights on held-out data: {"accuracy": ..., "loss": ...}.
    evaluate: Callable[[NamedArrays], Mapping[str, float]] | None = None


BUILTIN = {"breast-cancer": "securefl.tasks.breast_cancer:make_task"}


def load_callable(spec: str, what: str) -> Callable:
    """``package.module:function`` from the current directory or the installed packages (the
    user's own module next to their config, as ``python -m`` finds it)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"{what} must look like 'module:function', got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        value = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} {spec!r} cannot be loaded: {exc}") from None
    if not callable(value):
        raise ConfigError(f"{what} {spec!r} is not callable")
    return value


def load_task(name: str, parties: int, seed: int = 0) -> Task:
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise ConfigError(f"unknown task {name!r}: use one of {sorted(BUILTIN)} or 'package.module:function'")
    factory = load_callable(target, "task")
    task = factory(parties=parties, seed=seed)
    if not isinstance(task, Task):
        raise ConfigError(f"task factory {target!r} returned {type(task).__name__}, not securefl.tasks.Task")
    return task
