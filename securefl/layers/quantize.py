"""``quantize``: real vector to fixed-point integers modulo the secure sum's 2**k.

Each group of coordinates gets its own scale from its bound: the update from the preceding
``clip`` (``norm * weight_bound``) or an explicit ``update_bound``; the weight and the evaluation
count from ``weight_bound``; each metric from its declared bound times ``weight_bound``. Values
outside their bound are refused (never wrapped), and the stack is refused when the sum of
``max_parties`` parties could overflow the modulus (design invariant 3). A revealed sum is checked
the other way round: each coordinate must be within ``contributors × 2^(bits-1)`` levels (plus the
headroom of DP noise added after quantize), or no honest parties produced it and it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefl.crypto import fixedpoint
from securefl.errors import ConfigError
from securefl.layers.base import ImpossibleSum, SecureSum, StackContext, Transform
from securefl.layers.bounds import CoordinateBounds, coordinate_bounds
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
        self._limits: CoordinateBounds | None = None
        self._scale: np.ndarray | None = None  # per coordinate, fixed once the stack is validated
        self._rng = SecureRandom()

    @property
    def produces_integers(self) -> bool:
        return True

    def validate(self, ctx: StackContext, before: Sequence[Transform], sum_layer: SecureSum) -> None:
        if any(t.produces_integers for t in before):
            raise ConfigError("quantize appears twice in the stack; keep one, last before the sum")
        if any(getattr(t, "noise_on_party", False) for t in before):
            raise ConfigError(
                "put dp after quantize: noise added on the party must be integer (Skellam) to be summed "
                "exactly, and real noise before quantize would break its range"
            )
        self._limits = coordinate_bounds(ctx, before, self.update_bound, "quantize")
        self.modulus_bits = sum_layer.modulus_bits
        if not fixedpoint.sum_fits(self.bits, ctx.max_parties, self.modulus_bits):
            raise ConfigError(
                f"quantize(bits={self.bits}) summed over {ctx.max_parties} parties needs a "
                f"{fixedpoint.min_modulus_bits(self.bits, ctx.max_parties)}-bit modulus, but "
                f"{sum_layer.name!r} sums modulo 2^{self.modulus_bits}: lower bits or the party count"
            )
        self._scale = fixedpoint.max_level(self.bits) / self._limits.bounds
        self._resolution = 1.0 / self._scale  # computed once: every revealed sum and plain input uses it

    @property
    def scale(self) -> np.ndarray:
        if self._scale is None:
            raise ConfigError("quantize was used before its stack was validated")
        return self._scale

    def encode(self, vector: np.ndarray) -> np.ndarray:
        scale = self.scale
        self._check_range(vector)
        return fixedpoint.encode(vector, scale, self.modulus_bits, self._rng)

    def _check_range(self, vector: np.ndarray) -> None:
        self._limits.check(vector)

    def check_sum(self, total: np.ndarray, contributors: int, headroom: float | np.ndarray) -> None:
        """Refuse a revealed sum outside ``contributors`` × the per-party range (+ ``headroom`` levels)."""
        if self._limits is None or self._scale is None:
            raise ConfigError("quantize was used before its stack was validated")
        total = np.asarray(total)
        if total.shape != self._limits.bounds.shape:
            raise ImpossibleSum(
                f"the revealed sum has shape {total.shape}, the protected vector {self._limits.bounds.shape}"
            )
        headroom = np.broadcast_to(np.asarray(headroom, dtype=np.float64), total.shape)
        limit = float(fixedpoint.sum_limit(self.bits, contributors)) + headroom
        excess = fixedpoint.out_of_range(total, self.modulus_bits, limit)
        if not excess.any():
            return
        index = int(np.flatnonzero(excess)[0])
        group = next(name for name, s in self._limits.groups if s.start <= index < s.stop)
        noise = headroom[index] / self._scale[index]
        allowance = f" plus {noise:.6g} of DP noise headroom" if noise else ""
        raise ImpossibleSum(
            f"the revealed sum cannot come from {contributors} honest parties: {group} coordinate {index} "
            f"is outside ±{contributors} × {self._limits.bounds[index]:.6g} (the quantize bound of one "
            f"party){allowance}; some party sent a value outside its bound or corrupted a protocol "
            "message, so the sum is refused and the global model is unchanged"
        )

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        return fixedpoint.decode(total, self.scale, self.modulus_bits)

    def resolution(self) -> np.ndarray:
        if self._scale is None:
            raise ConfigError("quantize was used before its stack was validated")
        return self._resolution

    def __repr__(self) -> str:
        return f"Quantize(bits={self.bits}, update_bound={self.update_bound})"
