"""``clip``: bound each party's update in L2 norm, so that its influence on the sum is bounded.

The update is clipped before weighting: a party's weighted update ``w * delta`` is scaled so that
``||w * delta|| <= norm * w``. With weights at most ``weight_bound``, every party contributes at
most ``norm * weight_bound`` in L2 (and so in every coordinate) — the bound that quantize and DP
noise are calibrated to.

Clipping is reported where it happens, on the party: its log says when its update was clipped.
No count leaves the party (a count sent to the aggregator would tell which party clipped, or cost
privacy budget under DP); a simulation, which runs the parties itself, reads :attr:`Clip.clipped`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np

from securefl.errors import ConfigError
from securefl.layers.base import ImpossibleSum, RoundContext, SecureSum, StackContext, Transform

log = logging.getLogger(__name__)


class Clip(Transform):
    name = "clip"

    def __init__(self, norm: float) -> None:
        if not (isinstance(norm, (int, float)) and np.isfinite(norm) and norm > 0):
            raise ConfigError(f"clip norm must be a positive finite number, got {norm!r}")
        self.norm = float(norm)
        self._layout = None
        self._checked = False  # set once the stack is validated
        self._step: float | np.ndarray = 0.0
        # Updates this instance clipped, per round index: the parties a simulation runs in one
        # process share the stack, so this counts them all (securefl.federation reads and clears it).
        self.clipped: Counter[int] = Counter()
        self._round = 0
        self._lock = threading.Lock()

    def start_round(self, ctx: RoundContext) -> None:
        self._round = ctx.round

    def __getstate__(self) -> dict:
        # A stack travels to Ray actors by pickling: the lock stays behind, a fresh one is made there.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
        with self._lock:
            self.clipped[self._round] += 1
        weight = float(vector[self._layout.weight_index])
        log.info(
            "round %d: this party's update was clipped from L2 norm %.4g to the clip norm %g",
            self._round + 1,
            norm / weight,
            self.norm,
        )
        out = vector.copy()
        out[self._layout.update_slice] = update * (limit / norm)
        return out

    def stack_validated(self, stack) -> None:
        # Not with DP noise (central, added to the revealed sum, or on the parties): it legitimately
        # moves the norm. Fixed-point and CKKS rounding is allowed for, one step per party.
        self._checked = not any(t.name == "dp" for t in stack.transforms)
        self._step = stack.resolution()

    def check_sum(self, total: np.ndarray, contributors: int, headroom: float | np.ndarray) -> None:
        """A sum of clipped updates has L2 norm at most norm × the summed weight (triangle inequality),
        up to each party's rounding (one fixed-point or CKKS step per coordinate, in L2) and float32
        slack. A negative or inflated weight hidden in a secure sum shows up here as an update too
        long for its weight."""
        if self._layout is None or not self._checked:
            return
        total = np.asarray(total, dtype=np.float64)
        update = total[self._layout.update_slice]
        weight = max(float(total[self._layout.weight_index]), 0.0)
        noise = np.broadcast_to(np.asarray(headroom, dtype=np.float64), total.shape)[
            self._layout.update_slice
        ]
        step = np.broadcast_to(np.asarray(self._step, dtype=np.float64), total.shape)[
            self._layout.update_slice
        ]
        rounding = max(contributors, 1) * (float(np.linalg.norm(step)) + 1e-4 * np.sqrt(update.size))
        allowance = float(np.linalg.norm(noise)) + rounding
        norm = float(np.linalg.norm(update))
        if not norm <= self.norm * weight * (1 + 1e-5) + allowance:
            raise ImpossibleSum(
                f"the revealed sum cannot come from {contributors} honest parties: its update has L2 norm "
                f"beyond clip norm {self.norm:g} × the summed weight; some party sent an unclipped update"
            )

    def __repr__(self) -> str:
        return f"Clip(norm={self.norm})"
