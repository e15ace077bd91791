"""``clip``: bound each party's update in L2 norm, so that its influence on the sum is bounded.

The update is clipped before weighting: a party's weighted update ``w * delta`` is scaled so that
``||w * delta|| <= norm * w``. With weights at most ``weight_bound``, every party contributes at
most ``norm * weight_bound`` in L2 (and so in every coordinate) — the bound that quantize and DP
noise are calibrated to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefl.errors import ConfigError
from securefl.layers.base import SecureSum, StackContext, Transform


class Clip(Transform):
    name = "clip"

    def __init__(self, norm: float) -> None:
        if not (isinstance(norm, (int, float)) and np.isfinite(norm) and norm > 0):
            raise ConfigError(f"clip norm must be a positive finite number, got {norm!r}")
        self.norm = float(norm)
        self._layout = None

    def validate(self, ctx: StackContext, before: Sequence[Transform], sum_layer: SecureSum) -> None:
        if any(t.produces_integers for t in before):
            raise ConfigError("clip must come before quantize: it works on real values")
        self._layout = ctx.layout

    def encode(self, vector: np.ndarray) -> np.ndarray:
        if self._layout is None:
            raise ConfigError("clip was used before its stack was validated")
        update = vector[self._layout.update_slice]
        limit = self.norm * vector[self._layout.weight_index]
        norm = float(np.linalg.norm(update))
        if norm <= limit:
            return vector
        out = vector.copy()
        out[self._layout.update_slice] = update * (limit / norm)
        return out

    def __repr__(self) -> str:
        return f"Clip(norm={self.norm})"
