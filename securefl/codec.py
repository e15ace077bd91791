"""The update codec: named arrays (dict, list, PyTorch ``state_dict``) to one float vector and back.

A model is described once by an :class:`ArraySpec` (names, shapes, dtypes in order); every update
is checked against it, so a party with the wrong architecture is caught by name, not by a
misaligned sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefl.errors import UpdateError

NamedArrays = Mapping[str, Any] | Sequence[Any]
_FLOAT_KINDS = "f"


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """Accept numpy arrays, scalars and torch tensors (without importing torch)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise UpdateError(f"array {name!r} has dtype object; give numeric arrays")
    return array


def _items(arrays: NamedArrays) -> list[tuple[str, np.ndarray]]:
    if isinstance(arrays, Mapping):
        return [(str(k), _to_numpy(v, str(k))) for k, v in arrays.items()]
    if isinstance(arrays, (list, tuple)):
        return [(str(i), _to_numpy(v, str(i))) for i, v in enumerate(arrays)]
    raise UpdateError(
        f"expected named arrays (a dict, a state_dict or a list of arrays), got {type(arrays).__name__}"
    )


@dataclass(frozen=True)
class ArrayEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


# The dtypes a model's arrays travel as (ArraySpec.of writes ``dtype.str``), and the most values a
# layout read from a peer may declare (2^33 float32 values are 32 GiB: beyond any federated model).
_WIRE_FLOAT_DTYPES = frozenset(np.dtype(t).str for t in ("<f4", ">f4", "<f8", ">f8"))
MAX_LAYOUT_VALUES = 2**33


@dataclass(frozen=True)
class ArraySpec:
    """The names, shapes and dtypes of a model's arrays, in a fixed order."""

    entries: tuple[ArrayEntry, ...]
    as_list: bool = False

    @classmethod
    def of(cls, arrays: NamedArrays) -> ArraySpec:
        items = _items(arrays)
        if not items:
            raise UpdateError("a model needs at least one array")
        entries = []
        for name, array in items:
            if array.dtype.kind not in _FLOAT_KINDS:
                raise UpdateError(
                    f"array {name!r} has dtype {array.dtype}; only floating-point arrays are "
                    "averaged (keep integer buffers such as counters out of the update)"
                )
            if array.dtype.itemsize < 4:
                raise UpdateError(
                    f"array {name!r} has dtype {array.dtype}; models travel as float32 or float64: "
                    "convert it (e.g. model.float()) before building the federation"
                )
            entries.append(ArrayEntry(name, tuple(int(d) for d in array.shape), array.dtype.str))
        return cls(tuple(entries), as_list=not isinstance(arrays, Mapping))

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def flatten(self, arrays: NamedArrays) -> np.ndarray:
        """One float64 vector of all arrays, in spec order; shapes and names checked."""
        items = dict(_items(arrays))
        missing = [e.name for e in self.entries if e.name not in items]
        extra = sorted(set(items) - set(self.names))
        if missing or extra:
            raise UpdateError(
                f"arrays do not match the model: missing {missing or 'none'}, unexpected {extra or 'none'}"
            )
        out = np.empty(self.size, dtype=np.float64)
        offset = 0
        for entry in self.entries:
            array = items[entry.name]
            if tuple(array.shape) != entry.shape:
                raise UpdateError(
                    f"array {entry.name!r} has shape {tuple(array.shape)}, the model expects {entry.shape}"
                )
            if array.dtype.kind not in _FLOAT_KINDS:
                raise UpdateError(f"array {entry.name!r} has dtype {array.dtype}, expected float")
            out[offset : offset + entry.size] = array.reshape(-1)
            offset += entry.size
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray] | list[np.ndarray]:
        """The arrays back from a vector, each in its original shape and dtype."""
        vector = np.asarray(vector)
        if vector.shape != (self.size,):
            raise UpdateError(f"vector has shape {vector.shape}, the model needs ({self.size},)")
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        for entry in self.entries:
            chunk = vector[offset : offset + entry.size]
            arrays[entry.name] = chunk.astype(np.dtype(entry.dtype)).reshape(entry.shape)
            offset += entry.size
        return list(arrays.values()) if self.as_list else arrays

    @property
    def wire_dtype(self) -> np.dtype:
        """The widest float dtype of the model: global weights travel at that precision."""
        return np.dtype(max((np.dtype(e.dtype) for e in self.entries), key=lambda d: d.itemsize))

    def to_json(self) -> dict:
        return {
            "as_list": self.as_list,
            "entries": [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype} for e in self.entries],
        }

    @classmethod
    def from_json(cls, data: dict) -> ArraySpec:
        """A layout as :meth:`to_json` wrote it, checked whole: it comes from the other side of a
        connection (a party reads it from the aggregator's welcome), so anything else — a shape of
        "abc", a negative or boolean dimension, an integer dtype, a name twice, an absurd size —
        is a ValueError naming what is wrong, here, not a failure later in whatever uses it."""
        if not isinstance(data, dict) or set(data) - {"as_list", "entries"}:
            raise ValueError("a model layout is an object with 'entries' (and 'as_list')")
        raw_entries, as_list = data.get("entries"), data.get("as_list", False)
        if not isinstance(as_list, bool):
            raise ValueError("the layout's 'as_list' must be true or false")
        if not isinstance(raw_entries, list) or not raw_entries:
            raise ValueError("a model layout lists at least one array")
        entries, names, total = [], set(), 0
        for i, e in enumerate(raw_entries):
            if not isinstance(e, dict) or set(e) != {"name", "shape", "dtype"}:
                raise ValueError(f"array {i} of the layout must have exactly 'name', 'shape' and 'dtype'")
            name, shape, dtype = e["name"], e["shape"], e["dtype"]
            if not isinstance(name, str) or not name or name in names:
                raise ValueError(f"array {i} of the layout has an empty, non-text or repeated name")
            if (
                not isinstance(shape, list)
                or len(shape) > 32
                or not all(type(d) is int and 0 <= d < 2**40 for d in shape)
            ):
                raise ValueError(f"array {name!r} has shape {shape!r}: a list of at most 32 dimensions ≥ 0")
            if dtype not in _WIRE_FLOAT_DTYPES:
                raise ValueError(f"array {name!r} has dtype {dtype!r}; a model travels as float32 or float64")
            entry = ArrayEntry(name, tuple(shape), dtype)
            total += math.prod(shape)  # exact (numpy's product would wrap past 2^63)
            if total > MAX_LAYOUT_VALUES:
                raise ValueError(f"the layout holds more than {MAX_LAYOUT_VALUES:,} values")
            names.add(name)
            entries.append(entry)
        return cls(tuple(entries), as_list=as_list)


@dataclass(frozen=True)
class VectorLayout:
    """Where the update, the weight and the metrics sit in the protected vector.

    The vector a party protects is ``[w * delta, w, w * train_metrics, n_eval, n_eval *
    eval_metrics]``: weighted so that a plain sum followed by one division per group gives the
    weighted averages. Weight and metrics are coordinates, never plaintext fields (design).
    """

    update_size: int
    train_metrics: tuple[str, ...] = ()
    eval_metrics: tuple[str, ...] = ()

    @property
    def weight_index(self) -> int:
        return self.update_size

    @property
    def train_metrics_slice(self) -> slice:
        start = self.update_size + 1
        return slice(start, start + len(self.train_metrics))

    @property
    def eval_count_index(self) -> int:
        return self.train_metrics_slice.stop

    @property
    def eval_metrics_slice(self) -> slice:
        start = self.eval_count_index + 1
        return slice(start, start + len(self.eval_metrics))

    @property
    def size(self) -> int:
        return self.eval_metrics_slice.stop

    @property
    def update_slice(self) -> slice:
        return slice(0, self.update_size)

    def pack(
        self,
        delta: np.ndarray,
        weight: float,
        train_metrics: Mapping[str, float],
        eval_count: float = 0.0,
        eval_metrics: Mapping[str, float] | None = None,
    ) -> np.ndarray:
        """Build one party's protected vector, checking names and finiteness."""
        eval_metrics = dict(eval_metrics or {})
        _check_metric_names("training", train_metrics, self.train_metrics)
        _check_metric_names("evaluation", eval_metrics, self.eval_metrics)
        if not (np.isfinite(weight) and weight > 0):
            raise UpdateError(f"weight must be a positive finite number, got {weight!r}")
        if not (np.isfinite(eval_count) and eval_count >= 0):
            raise UpdateError(f"evaluation count must be finite and >= 0, got {eval_count!r}")
        vector = np.empty(self.size, dtype=np.float64)
        vector[self.update_slice] = weight * np.asarray(delta, dtype=np.float64)
        vector[self.weight_index] = weight
        vector[self.train_metrics_slice] = [weight * float(train_metrics[m]) for m in self.train_metrics]
        vector[self.eval_count_index] = eval_count
        vector[self.eval_metrics_slice] = [eval_count * float(eval_metrics[m]) for m in self.eval_metrics]
        check_finite(vector, "update")
        return vector

    def unpack_sum(
        self,
        total: np.ndarray,
        contributors: int | None = None,
        honest: HonestBounds | None = None,
        resolution: float | np.ndarray = 0.0,
    ) -> FusedSum:
        """Split a summed vector into the weighted averages it encodes.

        With ``contributors``, also refuse what that many honest parties cannot produce (``honest``
        says what one can send): a summed weight outside contributors × [min_weight, max_weight] —
        a tiny, negative or huge weight would otherwise rescale every average; an evaluation count
        that is neither 0 nor within [min_weight, contributors × max_eval]; an average metric beyond
        its declared bound (a weighted average of bounded values stays within the bound); anything
        non-finite. ``resolution`` is the decoded value of one fixed-point step per coordinate
        (``PrivacyStack.resolution``): each party's rounding moves a coordinate by less than one
        step, so every check allows contributors steps."""
        total = np.asarray(total, dtype=np.float64)
        if not np.isfinite(total).all():
            raise UpdateError("the sum holds non-finite values")
        weight = float(total[self.weight_index])
        if not weight > 0:
            raise UpdateError(f"the summed weight is {weight}; nothing to average")
        eval_count = float(total[self.eval_count_index])
        step = np.broadcast_to(np.asarray(resolution, dtype=np.float64), total.shape)
        if contributors is not None:
            honest = honest or HonestBounds()
            eval_count = honest.check_counts(self, total, contributors, step)
        train = {
            m: float(v)
            for m, v in zip(self.train_metrics, total[self.train_metrics_slice] / weight, strict=True)
        }
        if eval_count > 0:
            evals = {
                m: float(v)
                for m, v in zip(self.eval_metrics, total[self.eval_metrics_slice] / eval_count, strict=True)
            }
        else:
            evals = {}
        fused = FusedSum(total[self.update_slice] / weight, weight, train, eval_count, evals)
        if not all(np.isfinite(v) for v in (*train.values(), *evals.values())):
            raise UpdateError("a fused metric is not finite")
        if contributors is not None:
            honest.check_metrics(self, fused, total, contributors, step)
        return fused


@dataclass(frozen=True)
class HonestBounds:
    """What one honest party's protected vector can carry: its weight is one example or more,
    capped by the weight bound (min(1, bound) .. bound; exactly 1 under uniform weighting); its
    evaluation count 0 or min_weight .. max_eval; each metric within its declared bound."""

    min_weight: float = 1.0
    max_weight: float = math.inf
    max_eval: float = math.inf
    metric_bounds: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls, weighting: str, weight_bound: float | None, metric_bounds: Mapping[str, float] | None = None
    ) -> HonestBounds:
        low = min(1.0, weight_bound) if weight_bound else 1.0
        cap = weight_bound if weight_bound else math.inf
        high = low if weighting == "uniform" else cap
        return cls(low, high, cap, dict(metric_bounds or {}))

    def check_counts(self, layout: VectorLayout, total: np.ndarray, n: int, step: np.ndarray) -> float:
        """Check the summed weight and evaluation count; return the count (0 if only rounding)."""
        weight, count = float(total[layout.weight_index]), float(total[layout.eval_count_index])
        slack_w = n * float(step[layout.weight_index]) + 1e-9 * n * self.min_weight
        slack_e = n * float(step[layout.eval_count_index]) + 1e-9 * n * self.min_weight
        if not n * self.min_weight - slack_w <= weight <= n * self.max_weight + slack_w:
            raise UpdateError(
                f"the summed weight {weight:.6g} is outside {n} × [{self.min_weight:.6g}, "
                f"{self.max_weight:.6g}], what {n} honest parties can have"
            )
        if abs(count) <= slack_e:
            return 0.0  # nobody evaluated (fixed-point rounding around zero)
        if not self.min_weight - slack_e <= count <= n * self.max_eval + slack_e:
            raise UpdateError(
                f"the summed evaluation count is {count:.6g}: each party counts 0 or between "
                f"{self.min_weight:.6g} and {self.max_eval:.6g}"
            )
        return count

    def check_metrics(
        self, layout: VectorLayout, fused: FusedSum, total: np.ndarray, n: int, step: np.ndarray
    ) -> None:
        """A declared metric's average must lie within its bound (up to rounding)."""
        groups = (
            (fused.train_metrics, layout.train_metrics, layout.train_metrics_slice, fused.total_weight),
            (fused.eval_metrics, layout.eval_metrics, layout.eval_metrics_slice, fused.eval_count),
        )
        for averages, names, where, divisor in groups:
            steps = step[where]
            for name, value_step in zip(names, steps, strict=True):
                bound = self.metric_bounds.get(name)
                if bound is None or name not in averages or divisor <= 0:
                    continue
                if abs(averages[name]) > bound * (1 + 1e-9) + n * float(value_step) / divisor:
                    raise UpdateError(f"the average {name!r} lies beyond its declared bound ±{bound:g}")


@dataclass(frozen=True)
class FusedSum:
    """The weighted averages recovered from a secure sum."""

    mean_delta: np.ndarray
    total_weight: float
    train_metrics: dict[str, float]
    eval_count: float
    eval_metrics: dict[str, float]


def _check_metric_names(kind: str, given: Mapping[str, float], expected: tuple[str, ...]) -> None:
    if set(given) != set(expected):
        raise UpdateError(
            f"{kind} metrics {sorted(given)} do not match the federation's declared "
            f"{kind} metrics {sorted(expected)}; every party must report the same names"
        )
    for name in expected:
        value = given[name]
        if not isinstance(value, (int, float, np.floating, np.integer)) or not np.isfinite(value):
            raise UpdateError(f"{kind} metric {name!r} is {value!r}; metrics must be finite numbers")


def check_finite(vector: np.ndarray, what: str) -> None:
    """Raise an UpdateError naming the first NaN or infinite coordinate."""
    bad = ~np.isfinite(vector)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise UpdateError(
            f"{what} has {int(bad.sum())} non-finite value(s) (first at coordinate {index}: "
            f"{vector[index]}); the party's training diverged — lower the learning rate or clip"
        )
