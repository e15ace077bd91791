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

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.durable import write_replacing
from securefl.errors import ConfigError
from securefl.logtext import counted

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
        "privacy": _budget_of(federation),
        "format": FORMAT,
        "version": VERSION,
        "rounds": federation.rounds_run,
        "strategy": type(aggregator.strategy).__name__,
        "strategy_scalars": scalars,
        "model": [[e.name, list(e.shape), e.dtype] for e in federation.spec.entries],
    }
    arrays[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    # Under a fresh exclusive name, never through a link, 0600 (a checkpoint holds the model, which
    # may be as private as a party's data), renamed into place (found by an attacker: a planted link
    # at the fixed ".tmp" name was followed, and the file took the umask's mode).
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_replacing(path, buffer.getvalue(), mode=0o600)
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
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
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
    _require_same_budget(federation, header, path, weights)
    strategy.load_state_dict(state)
    federation.aggregator.weights = weights.astype(np.float64)
    federation.first_round = header["rounds"]
    continue_from = getattr(federation.guard, "continue_from", None)
    if continue_from is not None:
        continue_from(header["rounds"])  # the ledger's rounds stay consecutive
    return header["rounds"]


def require_savable(guard: Any) -> None:
    """A budgeted run is checkpointed only with a ledger: the budget it spent lives there, not in the
    checkpoint, and without it a resumed run would start spending again from zero (found by an
    attacker: five runs resumed from one checkpoint each reported ε 4.0 against a budget of 8 for
    fifteen releases, ε ≥ 9.6)."""
    if guard is not None and getattr(guard, "ledger", None) is None:
        raise ConfigError(
            "a run with a privacy budget keeps what it spent in its ledger, and this one has none: a "
            "checkpoint of it would resume spending from zero. Give it a ledger (--ledger FILE) to save "
            "and resume it"
        )


def _budget_of(federation: Federation) -> dict[str, Any] | None:
    """What a resumed run must continue: the ledger (its signer and how many records it held)."""
    guard = federation.guard
    if guard is None:
        return None
    require_savable(guard)
    ledger = guard.ledger
    statement = {
        "ledger_signer": ledger.signer,
        "ledger_records": ledger.count,
        "ledger_last": ledger.last,
        "model": _model_digest(np.asarray(federation.aggregator.weights, dtype=np.float64)),
    }
    # Signed with the ledger's key: an edited entry (say 0 records, which any ledger of the key
    # follows) or this entry moved onto another model is refused (found by an attacker).
    return {**statement, "signature": ledger.attest(statement)}


def _model_digest(weights: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f8").tobytes()).hexdigest()


def _require_same_budget(
    federation: Federation, header: dict[str, Any], path: Path, weights: np.ndarray
) -> None:
    """A run saved with a budget resumes only with its ledger (the same signing key, no record
    fewer); a run saved without one resumes without one: its releases were never accounted, so no
    budget can hold for the federation's whole life."""
    recorded, guard, rounds = header.get("privacy"), federation.guard, header["rounds"]
    if recorded is None:
        if guard is not None and rounds > 0:
            raise ConfigError(
                f"{path} was saved by a run without a privacy budget: its {counted(rounds, 'round')} "
                "released models no budget accounted, so a budget cannot hold for this federation's "
                "whole life. Resume it without a budget, or enforce one from a new federation"
            )
        return
    entry = recorded if isinstance(recorded, dict) else {}
    signer, records, last = entry.get("ledger_signer"), entry.get("ledger_records"), entry.get("ledger_last")
    if not isinstance(signer, str) or type(records) is not int or records < 0 or not isinstance(last, str):
        raise ConfigError(f"{path}: the checkpoint's privacy entry is not one securefl writes")
    from securefl.privacy.ledger import attested  # (the ledger's signatures: privacy, not the core)

    ledger = getattr(guard, "ledger", None) if guard is not None else None
    statement = {k: entry.get(k) for k in ("ledger_signer", "ledger_records", "ledger_last", "model")}
    signed = attested(statement, entry.get("signature"), signer)
    if not signed or statement["model"] != _model_digest(weights):
        raise ConfigError(
            f"{path}: its privacy entry is not signed by the ledger it names for this model (edited, or "
            "taken from another checkpoint): resume from the checkpoint the run wrote"
        )
    if ledger is None:
        raise ConfigError(
            f"{path} was saved by a run with a privacy budget, which its ledger carries (signer "
            f"{signer[:16]}…, {counted(records, 'record')}): resume with that ledger and a budget "
            "(--ledger FILE --budget-epsilon E), or the budget would start again from zero"
        )
    if ledger.signer != signer:
        raise ConfigError(
            f"{path} was saved with the ledger signed by {signer[:16]}…, not this one "
            f"({ledger.signer[:16]}…): resume with the ledger the run wrote"
        )
    # The ledger must hold, in place, the very record that was its last when the checkpoint was saved:
    # an older copy of it (rolled back with its head) holds fewer, another ledger of the same key
    # another chain (found by an attacker: restoring the files a run had started from, every resume
    # spent the budget again).
    if ledger.count < records:
        raise ConfigError(
            f"the ledger {ledger.path} holds {counted(ledger.count, 'record')}, fewer than the "
            f"{records} it held when {path} was saved: an older copy of it; restore the current one"
        )
    at_save = ledger.last if ledger.count == records else ledger.records[records].get("prev")
    if at_save != last:
        raise ConfigError(
            f"the ledger {ledger.path} is not the one {path} was saved with (its record {records} "
            "does not follow the record the checkpoint names): resume with the ledger the run wrote"
        )


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
    for entry in header["model"]:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], list)
            and all(type(d) is int and d >= 0 for d in entry[1])
            and isinstance(entry[2], str)
        ):
            raise ConfigError(f"{path}: the checkpoint's header describes its model wrongly: {entry!s:.80}")
    return header


def _describe(entries: list) -> str:
    return ", ".join(f"{name} {tuple(shape)}" for name, shape, _ in entries) or "nothing"
