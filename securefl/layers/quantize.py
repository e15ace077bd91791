"""``quantize``: real vector to fixed-point integers modulo the secure sum's 2**k.

Each group of coordinates gets its own scale from its bound: the update from the preceding
``clip`` (``norm * weight_bound``) or an explicit ``update_bound``; the weight and the evaluation
count from ``weight_bound``; each metric from its declared bound times ``weight_bound``. Values
outside their bound are refused (never wrapped), and the stack is refused when the sum of
``max_parties`` parties could overflow the modulus (design invariant 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefl.crypto import fixedpoint
from securefl.errors import ConfigError, UpdateError
from securefl.layers.base import SecureSum, StackContext, Transform
from securefl.layers.clip import Clip
from securefl.randomness import SecureRandom


class Quantize(Transform):
    name = "quantize"

    def __init__(self, bits: int = 24, update_bound: float | None = None) -> None:
        if not isinstance(bits, int) or not 2 <= bits <= 62:
            raise ConfigError(f"quantize bits must be an integer from 2 to 62, got {bits!r}")
        if update_bound is not None and not update_bound > 0:
            raise ConfigError(f"quantize update_bound must be positive, got {update_bound!r}")
        self.bits = bits
        self.update_bound = update_bound
        self.modulus_bits = 64
        self._bounds: np.ndarray | None = None
        self._groups: list[tuple[str, slice]] = []
        self._rng = SecureRandom()

    @property
    def produces_integers(self) -> bool:
        return True

    def validate(self, ctx: StackContext, before: Sequence[Transform], sum_layer: SecureSum) -> None:
        if any(t.produces_integers for t in before):
            raise ConfigError("quantize appears twice in the stack; keep one, last before the sum")
        if ctx.weight_bound is None:
            raise ConfigError(
                "quantize needs weight_bound (the largest weight, e.g. examples per party) to "
                "size its range; set it in the federation"
            )
        clips = [t for t in before if isinstance(t, Clip)]
        if self.update_bound is not None:
            update_bound = self.update_bound
        elif clips:
            update_bound = min(c.norm for c in clips) * ctx.weight_bound
        else:
            raise ConfigError(
                "quantize needs a bound on the update: put 'clip' before it, or give "
                "quantize(update_bound=...)"
            )
        layout = ctx.layout
        unbounded = [m for m in (*layout.train_metrics, *layout.eval_metrics) if m not in ctx.metric_bounds]
        if unbounded:
            raise ConfigError(
                f"quantize needs a bound for every metric; missing for {unbounded}: declare "
                "metric_bounds={name: largest absolute value}"
            )
        self.modulus_bits = sum_layer.modulus_bits
        if not fixedpoint.sum_fits(self.bits, ctx.max_parties, self.modulus_bits):
            raise ConfigError(
                f"quantize(bits={self.bits}) summed over {ctx.max_parties} parties needs a "
                f"{fixedpoint.min_modulus_bits(self.bits, ctx.max_parties)}-bit modulus, but "
                f"{sum_layer.name!r} sums modulo 2^{self.modulus_bits}: lower bits or the party count"
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
        self._bounds = bounds
        self._groups = [
            ("update", layout.update_slice),
            ("weight", slice(layout.weight_index, layout.weight_index + 1)),
            ("training metrics", layout.train_metrics_slice),
            ("evaluation count", slice(layout.eval_count_index, layout.eval_count_index + 1)),
            ("evaluation metrics", layout.eval_metrics_slice),
        ]

    @property
    def scale(self) -> np.ndarray:
        if self._bounds is None:
            raise ConfigError("quantize was used before its stack was validated")
        return fixedpoint.max_level(self.bits) / self._bounds

    def encode(self, vector: np.ndarray) -> np.ndarray:
        scale = self.scale
        self._check_range(vector)
        return fixedpoint.encode(vector, scale, self.modulus_bits, self._rng)

    def _check_range(self, vector: np.ndarray) -> None:
        excess = np.abs(vector) > self._bounds * (1 + 1e-12)
        if not excess.any():
            return
        index = int(np.flatnonzero(excess)[0])
        group = next(name for name, s in self._groups if s.start <= index < s.stop)
        raise UpdateError(
            f"{group} coordinate {index} is {vector[index]:.6g}, outside the quantize bound "
            f"±{self._bounds[index]:.6g}; clip the update or raise the bound (weight_bound, "
            "metric_bounds or update_bound)"
        )

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        return fixedpoint.decode(total, self.scale, self.modulus_bits)

    def __repr__(self) -> str:
        return f"Quantize(bits={self.bits}, update_bound={self.update_bound})"
