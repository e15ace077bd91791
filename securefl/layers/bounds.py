"""How large each coordinate of a party's protected vector can be: what overflow checks size on.

The update is bounded by a preceding ``clip`` (norm × weight_bound) or an explicit bound; the
weight and the evaluation count by ``weight_bound``; each metric by its declared bound ×
``weight_bound``. Layers that must fit a sum into a finite range (``quantize``, ``ckks``) size
themselves on these bounds and refuse values outside them, never wrapping (design invariant 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from securefl.errors import ConfigError, UpdateError
from securefl.layers.base import StackContext, Transform
from securefl.layers.clip import Clip


@dataclass(frozen=True)
class CoordinateBounds:
    bounds: np.ndarray
    groups: tuple[tuple[str, slice], ...]
    who: str

    def check(self, vector: np.ndarray) -> None:
        """Raise an UpdateError naming the first coordinate outside its bound."""
        excess = np.abs(vector) > self.bounds * (1 + 1e-12)
        if not excess.any():
            return
        index = int(np.flatnonzero(excess)[0])
        group = next(name for name, s in self.groups if s.start <= index < s.stop)
        raise UpdateError(
            f"{group} coordinate {index} is {vector[index]:.6g}, outside the {self.who} bound "
            f"±{self.bounds[index]:.6g}; clip the update or raise the bound (weight_bound, metric_bounds "
            "or update_bound)"
        )


def coordinate_bounds(
    ctx: StackContext, before: Sequence[Transform], update_bound: float | None, who: str
) -> CoordinateBounds:
    """The bounds for the layer ``who`` that comes after the transforms ``before``."""
    if ctx.weight_bound is None:
        raise ConfigError(
            f"{who} needs weight_bound (the largest weight, e.g. examples per party) to size its range; "
            "set it in the federation"
        )
    clips = [t for t in before if isinstance(t, Clip)]
    if update_bound is None:
        if not clips:
            raise ConfigError(
                f"{who} needs a bound on the update: put 'clip' before it, or give {who}(update_bound=...)"
            )
        update_bound = min(c.norm for c in clips) * ctx.weight_bound
    layout = ctx.layout
    unbounded = [m for m in (*layout.train_metrics, *layout.eval_metrics) if m not in ctx.metric_bounds]
    if unbounded:
        raise ConfigError(
            f"{who} needs a bound for every metric; missing for {unbounded}: declare "
            "metric_bounds={name: largest absolute value}"
        )
    bounds = np.empty(layout.size, dtype=np.float64)
    bounds[layout.update_slice] = update_bound
    bounds[layout.weight_index] = ctx.weight_bound
    bounds[layout.eval_count_index] = ctx.weight_bound
    for s, names in (
        (layout.train_metrics_slice, layout.train_metrics),
        (layout.eval_metrics_slice, layout.eval_metrics),
    ):
        bounds[s] = [ctx.metric_bounds[m] * ctx.weight_bound for m in names]
    groups = (
        ("update", layout.update_slice),
        ("weight", slice(layout.weight_index, layout.weight_index + 1)),
        ("training metrics", layout.train_metrics_slice),
        ("evaluation count", slice(layout.eval_count_index, layout.eval_count_index + 1)),
        ("evaluation metrics", layout.eval_metrics_slice),
    )
    return CoordinateBounds(bounds, groups, who)
