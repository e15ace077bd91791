"""Save a federation and resume it after a stop: the global model, the server strategy's state and
the number of rounds run, in one ``.npz`` file (NumPy arrays and one JSON header; never pickle).

What a checkpoint holds is what the aggregator holds. It resumes layers that fuse on the aggregator
(``plain``, ``secagg``, ``secagg+``, with or without DP noise); layers that seal the model to the
parties (``paillier``, ``paillier-threshold``, ``ckks``) keep the model and the strategy on the
parties, so their checkpoint would need every key holder's state, and they are refused with that
reason. The privacy budget is not in the checkpoint: it is in the ledger, which a resumed run keeps
appending to (securefl announces how much of the budget it records).

Resuming continues the round numbering (round 11 follows round 10), so that the ledger, the logs and
sampling schedules keyed by the round go on as if the run had never stopped. Each save writes a
temporary file and renames it over the old one: a crash while saving leaves the previous checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.errors import ConfigError

if TYPE_CHECKING:
    from securefl.federation import Federation

FORMAT = "securefl-checkpoint"
VERSION = 1
_HEADER = "securefl_checkpoint"  # the JSON header, stored as a uint8 array
_MODEL = "model/"
_STRATEGY = "strategy/"
_EXACT = "aggregator/weights"  # the aggregator's float64 vector: resuming is exact, not float32-rounded


def save(federation: Federation, path: str | Path) -> Path:
    """Write ``federation``'s model, strategy state and round count to ``path`` (atomically)."""
    aggregator = federation.aggregator
    _require_resumable(federation)
    path = Path(path)
    weights = federation.global_weights
    names = [e.name for e in federation.spec.entries]
    values = [weights[name] for name in names] if isinstance(weights, dict) else list(weights)
    arrays: dict[str, np.ndarray] = {
        _MODEL + name: np.asarray(value) for name, value in zip(names, values, strict=True)
    }
    arrays[_EXACT] = np.asarray(aggregator.weights, dtype=np.float64)
    scalars: dict[str, Any] = {}
    for key, value in aggregator.strategy.state_dict().items():
        if isinstance(value, np.ndarray):
            arrays[_STRATEGY + key] = value
        else:
            scalars[key] = value  # numbers, or None (an optimizer not stepped yet)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "rounds": federation.rounds_run,
        "strategy": type(aggregator.strategy).__name__,
        "strategy_scalars": scalars,
        "model": [[e.name, list(e.shape), e.dtype] for e in federation.spec.entries],
    }
    arrays[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return path


def load(federation: Federation, path: str | Path) -> int:
    """Restore ``federation`` from the checkpoint at ``path``; return the rounds it had run.

    Refuses (ConfigError, naming the difference) a file that is not a securefl checkpoint, a model
    of other arrays or shapes, or another server strategy."""
    _require_resumable(federation)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path} (write one with --save or Federation.save)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a securefl checkpoint (.npz): {exc}") from None
    header = _header(arrays.pop(_HEADER, None), path)
    expected = [[e.name, list(e.shape), e.dtype] for e in federation.spec.entries]
    if header["model"] != expected:
        raise ConfigError(
            f"{path} holds a model of other arrays or shapes ({_describe(header['model'])}) than this "
            f"federation's ({_describe(expected)}): not a checkpoint of this task"
        )
    strategy = federation.aggregator.strategy
    if header["strategy"] != type(strategy).__name__:
        raise ConfigError(
            f"{path} was saved with strategy {header['strategy']}, this federation uses "
            f"{type(strategy).__name__}: resume with the same strategy"
        )
    state = dict(header["strategy_scalars"])
    state.update({k[len(_STRATEGY) :]: v for k, v in arrays.items() if k.startswith(_STRATEGY)})
    model = {k[len(_MODEL) :]: v for k, v in arrays.items() if k.startswith(_MODEL)}
    entries = federation.spec.entries
    if sorted(model) != sorted(e.name for e in entries) or any(
        model[e.name].shape != tuple(e.shape) for e in entries
    ):
        raise ConfigError(f"{path}: the checkpoint's arrays do not match its own header")
    weights = np.concatenate([model[e.name].astype(np.float64).ravel() for e in entries])
    exact = arrays.get(_EXACT)
    if exact is not None:
        # The model's arrays are the exact vector rounded to their dtypes: anything else was edited.
        if exact.shape != weights.shape or not np.allclose(exact, weights, rtol=1e-6, atol=1e-6):
            raise ConfigError(f"{path}: the checkpoint's model and its exact weights disagree")
        weights = exact
    if not np.all(np.isfinite(weights)):
        raise ConfigError(f"{path} holds a model with NaN or infinite values: not resumable")
    strategy.load_state_dict(state)
    federation.aggregator.weights = weights.astype(np.float64)
    federation.first_round = header["rounds"]
    continue_from = getattr(federation.guard, "continue_from", None)
    if continue_from is not None:
        continue_from(header["rounds"])  # the ledger's rounds stay consecutive
    return header["rounds"]


def _require_resumable(federation: Federation) -> None:
    if federation.stack.secure_sum.fuses_on_parties:
        raise ConfigError(
            f"{federation.stack.secure_sum.name} seals the model to the parties, which also keep the "
            "server strategy: its federation cannot be saved and resumed from the aggregator's side "
            "(use plain, secagg or secagg+, with or without DP)"
        )


def _header(raw: np.ndarray | None, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw.astype(np.uint8)).decode()) if raw is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a securefl checkpoint (no securefl header)")
    if header.get("version") != VERSION:
        raise ConfigError(
            f"{path} is a version {header.get('version')} checkpoint; this securefl reads {VERSION}"
        )
    rounds = header.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"{path}: the checkpoint's round count {rounds!r} is not a round count")
    if not isinstance(header.get("strategy_scalars"), dict) or not isinstance(header.get("model"), list):
        raise ConfigError(f"{path}: the checkpoint's header is incomplete")
    return header


def _describe(entries: list) -> str:
    return ", ".join(f"{name} {tuple(shape)}" for name, shape, _ in entries) or "nothing"
