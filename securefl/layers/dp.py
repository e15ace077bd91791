"""``dp``: noise for party-level differential privacy (DP-FedAvg, McMahan et al. 2018), placed where
the threat model needs it.

* ``central`` — the aggregator adds N(0, (z·C)²) to the revealed sum. It sees the un-noised sum, so
  this protects only against those who receive the released model; ``plain`` only.
* ``distributed`` (the default) — each party adds a share of the noise before the secure sum, so the
  aggregator never sees an un-noised sum. Shares are sized on the fewest parties a successful round
  can sum (:meth:`~securefl.layers.base.SecureSum.min_contributors`: the SecAgg threshold, or
  ``min_parties``), never on the number invited: any t survivors' shares add up to the full noise.
  With an integer sum (after ``quantize``) the noise is Skellam — the difference of two Poisson
  draws — whose sums are exactly Skellam (Agarwal, Kairouz, Liu 2021), so the accounting is exact
  on what is added; with a real-valued sum it is Gaussian.
* ``local`` — each party adds the whole noise itself: private even against the aggregator alone
  seeing one update, at n times the variance in the sum.

The unit of privacy is one party, under the *zero-out* relation (one party's update replaced by
zero; Kairouz et al. 2021): the clip bounds the update's L2 norm by C, each party weighs 1
(``weighting="uniform"``), so the number of parties summed carries no information about any
party's data, and the released average is (sum + noise) / count. Metrics computed on party data
would be released without noise, so a DP stack refuses declared metrics: evaluate the released
model on held-out data instead. Noise comes from :meth:`SecureRandom.generator` (AES-CTR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from securefl.crypto import fixedpoint
from securefl.errors import ConfigError
from securefl.layers.base import RoundContext, SecureSum, StackContext, Transform
from securefl.layers.clip import Clip
from securefl.randomness import SecureRandom

PLACEMENTS = ("central", "distributed", "local")
NEIGHBOURING = "zero-out: one party's clipped update replaced by zeros (Kairouz et al. 2021)"
# Tail allowance for the overflow check: a sum of Skellam noise leaves ±TAIL standard deviations
# with probability below 1e-15 (Gaussian tail; Skellam's is lighter at these variances).
TAIL = 8.0


@dataclass(frozen=True)
class Mechanism:
    """One release of a ``dp`` layer, as the accountant and the ledger need it."""

    mechanism: str  # "gaussian" or "skellam"
    placement: str
    noise_multiplier: float  # z: the total noise's std over the clip norm
    clip_norm: float
    noise_std: float  # std of the total noise on the summed update, in update units (at least)
    # Skellam only, in the integer units of quantize: the total variance at the fewest survivors,
    # and one party's L2 / L1 sensitivity after stochastic rounding.
    variance: float | None = None
    l2_sensitivity: float | None = None
    l1_sensitivity: float | None = None
    # ``distributed`` only: the largest coalition of summed parties the figures hold against (their
    # shares are sized on t − colluders parties); None for one party alone, the default.
    colluders: int | None = None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class DPNoise(Transform):
    name = "dp"

    def __init__(self, noise_multiplier: float, placement: str = "distributed", colluders: int = 0) -> None:
        """``colluders`` (``distributed`` only): the figures against the parties hold for coalitions of
        up to this many summed parties, each knowing its own noise share — the shares are sized on
        t − colluders parties instead of t (t the fewest the secure sum can sum), so that any t
        summed leave a coalition at least the calibrated noise, at (t / (t − colluders)) times the
        variance in the released sum. By default (0) a party alone is covered (its own share is
        accounted for); a coalition takes out one share per member."""
        if not (
            isinstance(noise_multiplier, (int, float))
            and math.isfinite(noise_multiplier)
            and noise_multiplier > 0
        ):
            raise ConfigError(
                f"dp noise_multiplier must be a positive number (noise std over the clip norm), "
                f"got {noise_multiplier!r}"
            )
        if placement not in PLACEMENTS:
            raise ConfigError(f"dp placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if type(colluders) is not int or colluders < 0:
            raise ConfigError(f"dp colluders must be a whole number ≥ 0, got {colluders!r}")
        if colluders and placement != "distributed":
            raise ConfigError(
                f"dp colluders is for 'distributed' noise: with {placement!r} no party knows a share of "
                "the noise in the sum, so coalitions take nothing out"
            )
        self.noise_multiplier = float(noise_multiplier)
        self.placement = placement
        self.colluders = colluders
        self._rng = SecureRandom()
        self._mechanism: Mechanism | None = None
        self._update: slice | None = None
        self._size = 0  # the protected vector's length
        self._sum_layer: SecureSum | None = None
        self._min_parties = 1
        self._integer_scale: float | None = None  # quantize's scale of the update, integer mode only
        self._modulus_bits = 64
        self._share = 0.0  # this round's per-party noise variance (integer units) or std (real)

    @property
    def noise_on_party(self) -> bool:
        return self.placement != "central"

    @property
    def mechanism(self) -> Mechanism:
        if self._mechanism is None:
            raise ConfigError("dp was used before its stack was validated")
        return self._mechanism

    def validate(self, ctx: StackContext, before: Sequence[Transform], sum_layer: SecureSum) -> None:
        clips = [t for t in before if isinstance(t, Clip)]
        if not clips:
            raise ConfigError("dp needs 'clip' before it: the noise is calibrated to the clip norm")
        if ctx.weight_bound != 1:
            raise ConfigError(
                "dp bounds each party's influence by the clip norm at weight 1: use weighting='uniform' "
                f"(weight_bound 1), not weight_bound={ctx.weight_bound}"
            )
        metrics = [*ctx.layout.train_metrics, *ctx.layout.eval_metrics]
        if metrics:
            raise ConfigError(
                f"dp would release the metrics {metrics} computed on party data without noise; declare no "
                "train/eval metrics and evaluate the released model on held-out data instead"
            )
        if self.placement == "central" and sum_layer.name != "plain":
            raise ConfigError(
                f"central DP adds noise to a sum the aggregator can read, but {sum_layer.name!r} hides it; "
                "use placement 'distributed' (or 'local') with a secure sum"
            )
        if self.noise_on_party and (sum_layer.fuses_on_parties or sum_layer.name == "paillier"):
            raise ConfigError(
                f"{self.placement} DP is supported with sums of integers modulo 2^k (secagg, secagg+, "
                f"plain); {sum_layer.name!r} packs bounded values that party noise would overflow"
            )
        integer = any(t.produces_integers for t in before)
        if self.placement == "central" and integer:
            raise ConfigError("central dp works on real values: put it before quantize")
        if self.noise_on_party and not integer and not sum_layer.accepts_floats:
            raise ConfigError(
                f"{sum_layer.name!r} adds integers: put dp after quantize, so the noise is integer (Skellam)"
            )
        clip = min(c.norm for c in clips)
        self._update = ctx.layout.update_slice
        self._size = ctx.layout.size
        self._sum_layer = sum_layer
        self._min_parties = ctx.min_parties
        z = self.noise_multiplier
        if not integer:
            self._integer_scale = None
            self._mechanism = Mechanism(
                "gaussian", self.placement, z, clip, z * clip, colluders=self.colluders or None
            )
            return
        quantize = [t for t in before if t.produces_integers][-1]
        scale = float(quantize.scale[ctx.layout.update_slice][0])
        self._integer_scale, self._modulus_bits = scale, quantize.modulus_bits
        root_d = math.sqrt(ctx.layout.update_size)
        # Stochastic rounding moves each coordinate by less than 1: ||round(s·x)||₂ ≤ s·C + √d, and
        # for an integer vector ||v||₁ ≤ min(√d·||v||₂, ||v||₂²).
        l2 = clip * scale + root_d
        self._mechanism = Mechanism(
            "skellam",
            self.placement,
            z,
            clip,
            z * clip,
            (z * clip * scale) ** 2,
            l2,
            min(root_d * l2, l2**2),
            colluders=self.colluders or None,
        )
        self._check_headroom(ctx, quantize)

    def _check_headroom(self, ctx: StackContext, quantize: Transform) -> None:
        """The noised sum must still fit the modulus: n parties at the bound plus TAIL std of the most
        noise any round can carry (every selected party adding a share sized for the fewest)."""
        largest = float(fixedpoint.max_level(quantize.bits))  # every coordinate's bound, in levels
        worst = 0.0
        for n in range(1, ctx.max_parties + 1):
            worst = max(worst, n * largest + self.noise_bound(n, n))
        if worst > 2 ** (self._modulus_bits - 1) - 1:
            raise ConfigError(
                f"dp noise (z={self.noise_multiplier}) on top of quantize(bits={quantize.bits}) for "
                f"{ctx.max_parties} parties can overflow the 2^{self._modulus_bits} sum: lower quantize "
                "bits, the noise multiplier or the party count"
            )

    def noise_bound(self, selected: int, summed: int) -> float:
        """The most noise (integer levels, per update coordinate) a sum of ``summed`` parties from a
        round of ``selected`` carries, but for a ~1e-15 tail: TAIL std of the summed shares."""
        if self._integer_scale is None or not self.noise_on_party:
            return 0.0
        return TAIL * math.sqrt(self.mechanism.variance * summed / self.parties_sharing(selected))

    def sum_headroom(self, selected: int, contributors: int) -> np.ndarray | float:
        """Integer noise added on the parties lets a sum exceed the parties' bounds on the update
        coordinates by up to :meth:`noise_bound` (zero elsewhere, and for real-valued noise). TAIL more
        levels cover a Skellam sum of tiny variance, whose tail is heavier than the Gaussian's."""
        bound = self.noise_bound(selected, contributors)
        if not bound:
            return 0.0
        bound += TAIL
        headroom = np.zeros(self._size, dtype=np.float64)
        headroom[self._update] = bound
        return headroom

    def fewest_summed(self, selected: int) -> int:
        """The fewest parties a round of ``selected`` can sum (the secure sum's threshold, or
        ``min_parties``)."""
        return max(1, min(selected, self._sum_layer.min_contributors(selected, self._min_parties)))

    def parties_sharing(self, selected: int) -> int:
        """Over how many parties the noise is split in a round of ``selected``: the fewest the sum
        can hold, less the coalition the figures hold against (at least 1: then each summed party
        adds the whole noise)."""
        if self.placement == "local":
            return 1
        return max(1, self.fewest_summed(selected) - self.colluders)

    def sum_noise_std(self, selected: int, summed: int) -> float:
        """Std of the noise in a sum of ``summed`` parties from a round of ``selected``, in update units:
        every summed party's share (each sized for the fewest survivors), or the one central draw."""
        if self.placement == "central":
            return self.mechanism.noise_std
        return self.mechanism.noise_std * math.sqrt(summed / self.parties_sharing(selected))

    def start_round(self, ctx: RoundContext) -> None:
        # min_parties is this party's own configuration, not the aggregator's claim: a larger claim
        # would shrink every party's share of the noise.
        t = self.parties_sharing(len(ctx.parties))
        m = self.mechanism
        self._share = m.variance / t if m.variance is not None else m.noise_std / math.sqrt(t)

    def encode(self, vector: np.ndarray) -> np.ndarray:
        if not self.noise_on_party:
            return vector
        if self._share <= 0:
            raise ConfigError("dp noise was requested before the round started")
        out = vector.copy()
        size = self._update.stop - self._update.start
        if self._integer_scale is None:
            out[self._update] += self._rng.gaussian(size, self._share)
            return out
        noise = self._rng.skellam(size, self._share).astype(np.uint64)  # two's complement wraps mod 2^k
        mask = np.uint64((1 << self._modulus_bits) - 1)
        out[self._update] = (out[self._update].astype(np.uint64) + noise) & mask
        return out

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        if self.noise_on_party:
            return total
        out = np.asarray(total, dtype=np.float64).copy()
        out[self._update] += self._rng.gaussian(
            self._update.stop - self._update.start, self.mechanism.noise_std
        )
        return out

    def __repr__(self) -> str:
        extra = f", colluders={self.colluders}" if self.colluders else ""
        return f"DPNoise(noise_multiplier={self.noise_multiplier}, placement={self.placement!r}{extra})"
