"""A federation described in TOML, run with ``securefl run CONFIG``.

Example::

    task = "breast-cancer"        # or "package.module:function" returning a securefl.tasks.Task
    rounds = 10
    seed = 0                      # data split only

    [federation]
    parties = 5
    min_parties = 3
    selection = "all"             # or { kind = "fixed", count = 3 } / { kind = "poisson", rate = 0.5 }
    phase_timeout = 60.0
    weight_bound = 200            # largest weight (examples) a party may claim; needed by quantize

    [[privacy]]                   # the stack, in order, ending with a secure sum
    layer = "clip"
    norm = 5.0
    [[privacy]]
    layer = "quantize"
    bits = 24
    [[privacy]]
    layer = "plain"

    [strategy]
    name = "fedavg"               # fedadam, fedyogi, fedadagrad take lr, beta1, beta2, tau

    [simulation]                  # where the parties run (default: this process)
    backend = "ray"               # "inprocess" or "ray" (pip install 'securefl[simulation]')
    actors = 8                    # Ray actors hosting the parties (default: the cluster's CPUs)
    address = "10.0.0.5:6379"     # join a running Ray cluster (default: a private local Ray)
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from securefl.deadlines import check_deadline
from securefl.errors import ConfigError
from securefl.layers import LAYERS
from securefl.privacy.observers import check_observer
from securefl.registry import check_entry
from securefl.runner import BudgetSettings, RunSettings

_TOP = {
    "task",
    "rounds",
    "seed",
    "federation",
    "privacy",
    "strategy",
    "budget",
    "plot",
    "simulation",
    "save",
    "resume",
}
_FEDERATION = {"parties", "min_parties", "selection", "phase_timeout", "weight_bound"}
# Layers that release DP noise; a budget means nothing without one.
DP_LAYERS = {"dp"}
_BUDGET = {"epsilon", "delta", "ledger", "accountant", "observer", "allow_budget_change"}
_SIMULATION = {"backend", "actors", "address", "cpus_per_actor", "batch"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's table; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded): a TOML file is UTF-8; "
            "save it as UTF-8"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give the TOML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None


def load_config(path: str | Path) -> RunSettings:
    return settings_from_dict(read_toml(path), source=str(path))


def settings_from_dict(data: dict[str, Any], source: str = "config") -> RunSettings:
    no_unknown(data, _TOP, source)
    federation = data.get("federation", {})
    if not isinstance(federation, dict):
        raise ConfigError(f"{source}: [federation] must be a table")
    no_unknown(federation, _FEDERATION, f"{source} [federation]")
    privacy = data.get("privacy", "plain")
    if not (
        isinstance(privacy, str) or (isinstance(privacy, list) and all(isinstance(p, dict) for p in privacy))
    ):
        raise ConfigError(f'{source}: privacy must be a preset name or [[privacy]] tables with layer = "..."')
    settings = RunSettings(
        task=typed_value(data, "task", str, "breast-cancer", source),
        rounds=typed_value(data, "rounds", int, 10, source),
        seed=typed_value(data, "seed", int, 0, source),
        privacy=privacy,
        parties=typed_value(federation, "parties", int, 5, source),
        min_parties=typed_value(federation, "min_parties", int, 1, source),
        selection=federation.get("selection", "all"),
        phase_timeout=check_deadline(
            typed_value(federation, "phase_timeout", (int, float), 600.0, source), f"{source}: phase_timeout"
        ),
        weight_bound=federation.get("weight_bound"),
        strategy=data.get("strategy", "fedavg"),
        plot=data.get("plot"),
        save=typed_value(data, "save", str, None, source) if "save" in data else None,
        resume=typed_value(data, "resume", str, None, source) if "resume" in data else None,
        budget=budget_settings(data["budget"], privacy, source) if "budget" in data else None,
        backend=simulation_backend(data.get("simulation", {}), source),
    )
    if settings.parties < 1 or settings.rounds < 1:
        raise ConfigError(f"{source}: parties and rounds must be at least 1")
    if "privacy" not in data:
        # Never a silent "plain": the first thing a secure-aggregation config must say is how.
        raise ConfigError(
            f"{source}: no privacy stack: add [[privacy]] tables (see examples/configs), a preset such "
            f'as privacy = "secagg+", or privacy = "plain" to run without protection on purpose'
        )
    if isinstance(privacy, list):
        for entry in privacy:  # names and options checked now, not rounds later
            check_entry("privacy layer", LAYERS, entry, "layer")
    return settings


def budget_settings(budget: Any, privacy: Any, source: str) -> BudgetSettings:
    """A ``[budget]`` table, checked: known keys of the right types, and a dp layer to spend on."""
    layers = [p.get("layer") for p in privacy] if isinstance(privacy, list) else [privacy]
    if not DP_LAYERS.intersection(layers):
        raise ConfigError(
            f"{source}: a [budget] is given but no layer of the privacy stack releases DP noise, "
            "so there is nothing to spend it on; add a DP noise layer or remove [budget]"
        )
    if not isinstance(budget, dict):
        raise ConfigError(f"{source}: [budget] must be a table")
    no_unknown(budget, _BUDGET, f"{source} [budget]")
    return BudgetSettings(
        epsilon=typed_value(budget, "epsilon", (int, float), None, source) if "epsilon" in budget else None,
        delta=float(typed_value(budget, "delta", (int, float), 1e-5, source)),
        ledger=typed_value(budget, "ledger", str, None, source) if "ledger" in budget else None,
        accountant=typed_value(budget, "accountant", str, "prv", source),
        allow_budget_change=typed_value(budget, "allow_budget_change", bool, False, source),
        observer=check_observer(typed_value(budget, "observer", str, None, source))
        if "observer" in budget
        else None,
    )


def simulation_backend(table: Any, source: str) -> Any:
    """A ``[simulation]`` table (backend = "inprocess" | "ray", actors, address, cpus_per_actor,
    batch): None for the in-process default, else the Ray backend's options."""
    from securefl.simulation import backend_options

    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [simulation] must be a table")
    no_unknown(table, _SIMULATION, f"{source} [simulation]")
    if not table:
        return None
    try:
        return backend_options(dict(table))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source} [simulation]: {exc}") from None


def no_unknown(table: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def typed_value(table: dict, key: str, kind, default, source: str):
    """``table[key]`` (or ``default``) if it has the type ``kind`` (a type or a tuple of types).
    A TOML boolean is never taken for a number (Python's True is an int)."""
    value = table.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        named = [k for k in kinds if not (k is int and float in kinds)]  # an integer is a number too
        expected = " or ".join(dict.fromkeys(_TYPE_NAMES.get(k, k.__name__) for k in named))
        raise ConfigError(f"{source}: {key} = {_toml_text(value)} has the wrong type: expected {expected}")
    return value


def _toml_text(value: Any) -> str:
    """A value as the user wrote it in TOML (true, "text", 1.5), not as Python prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)
