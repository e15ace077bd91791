"""Where securefl's randomness comes from: the operating system's CSPRNG, always.

Design invariant 5: masks, keys, noise, shares, selection and rounding use ``os.urandom`` (or
keystreams seeded from it). Fixed seeds exist for known-answer tests only; they are refused unless
``SECUREFL_ALLOW_TEST_SEEDS=1`` is set, which the test suite does and nothing else should.
"""

from __future__ import annotations

import os
import random

import numpy as np
from randomgen import AESCounter

from securefl.errors import SeedRefused

_TEST_SEEDS_ENV = "SECUREFL_ALLOW_TEST_SEEDS"


def test_seeds_allowed() -> bool:
    """True only when the test suite has opted in to deterministic randomness."""
    return os.environ.get(_TEST_SEEDS_ENV) == "1"


def require_test_seed_permission(what: str) -> None:
    """Raise unless fixed seeds are allowed; ``what`` names the seeded thing in the message."""
    if not test_seeds_allowed():
        raise SeedRefused(
            f"a fixed seed was given for {what}, but seeds are for known-answer tests only and "
            f"would make it predictable; drop the seed (securefl uses os.urandom), or set "
            f"{_TEST_SEEDS_ENV}=1 inside a test suite"
        )


class SecureRandom:
    """A source of uniform randomness: the OS CSPRNG, or (tests only) a seeded generator."""

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None:
            require_test_seed_permission("SecureRandom")
            self._test_gen: np.random.Generator | None = np.random.default_rng(seed)
            self._py = random.Random(seed)  # noqa: S311 - test seeds only, guarded above
        else:
            self._test_gen = None
            self._py = random.SystemRandom()

    @property
    def seeded(self) -> bool:
        return self._test_gen is not None

    def bytes(self, n: int) -> bytes:
        if self._test_gen is not None:
            return self._test_gen.bytes(n)
        return os.urandom(n)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` floats uniform in [0, 1) with 53 random bits each: from an AES-CTR keystream under
        a fresh key from the OS (a CSPRNG, 12× faster than ``os.urandom`` at 1M values — it was a
        quarter of a party's time in stochastic rounding), or from the test seed."""
        if self._test_gen is None:
            return self.generator().random(n)
        words = np.frombuffer(self.bytes(8 * n), dtype="<u8")
        return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def generator(self) -> np.random.Generator:
        """A numpy generator over AES-128 in counter mode keyed from this source: what DP noise is
        drawn from. numpy's default PCG64 is fast but not a CSPRNG (its state is recoverable from
        its output); an AES-CTR keystream under a fresh random key is."""
        return np.random.Generator(AESCounter(key=int.from_bytes(self.bytes(16), "little")))

    def gaussian(self, n: int, std: float) -> np.ndarray:
        """``n`` draws of N(0, std²) (float64)."""
        return self.generator().normal(0.0, std, size=n)

    def skellam(self, n: int, variance: float) -> np.ndarray:
        """``n`` draws of the symmetric Skellam distribution of the given variance: the difference
        of two independent Poisson(variance / 2) draws, an integer-valued noise whose sums are
        again Skellam (what makes distributed integer noise exactly accountable)."""
        gen = self.generator()
        half = variance / 2.0
        return gen.poisson(half, size=n).astype(np.int64) - gen.poisson(half, size=n).astype(np.int64)

    def random(self) -> float:
        return self._py.random()

    def sample(self, population: list, k: int) -> list:
        return self._py.sample(population, k)
