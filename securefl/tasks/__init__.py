"""Federated learning tasks: a model, one client per party, and a held-out evaluation.

``load_task("breast-cancer", parties=5, seed=0)`` gives the demo task; ``"package.module:function"``
loads a user's task factory, called as ``function(parties=N, seed=S)`` and returning a :class:`Task`.
"""

from __future__ import annotations

import importlib
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


def load_task(name: str, parties: int, seed: int = 0) -> Task:
    target = BUILTIN.get(name, name)
    module_name, _, func_name = target.partition(":")
    if not func_name:
        raise ConfigError(f"unknown task {name!r}: use one of {sorted(BUILTIN)} or 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load task {name!r}: {exc}") from None
    task = factory(parties=parties, seed=seed)
    if not isinstance(task, Task):
        raise ConfigError(f"task factory {target!r} returned {type(task).__name__}, not securefl.tasks.Task")
    return task
