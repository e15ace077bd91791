"""Fixed-point encoding of real vectors as integers modulo 2**k, with stochastic rounding.

A value ``x`` with ``|x| <= bound`` becomes ``q = round_stochastic(x * scale)`` with
``scale = (2**(bits-1) - 1) / bound``, so ``|q| <= 2**(bits-1) - 1``. Stochastic rounding
(round up with probability equal to the fractional part) makes ``E[q] = x * scale``, so the error
of a sum of many parties averages out instead of accumulating a bias. Negative values are stored
in two's complement modulo ``2**modulus_bits``; a sum of ``n`` encodings decodes correctly while
``n * (2**(bits-1) - 1) <= 2**(modulus_bits-1) - 1`` (:func:`sum_fits`).
"""

from __future__ import annotations

import numpy as np

from securefl.randomness import SecureRandom


def max_level(bits: int) -> int:
    """The largest magnitude an encoded value can take."""
    return (1 << (bits - 1)) - 1


def sum_fits(bits: int, parties: int, modulus_bits: int) -> bool:
    """True if the sum of ``parties`` encodings of ``bits`` bits cannot wrap modulo 2**modulus_bits."""
    return parties * max_level(bits) <= max_level(modulus_bits)


def min_modulus_bits(bits: int, parties: int) -> int:
    """The smallest modulus that holds the sum of ``parties`` encodings without wrapping."""
    return (parties * max_level(bits)).bit_length() + 1


def encode(values: np.ndarray, scale: np.ndarray | float, modulus_bits: int, rng: SecureRandom) -> np.ndarray:
    """Stochastically round ``values * scale`` and store modulo 2**modulus_bits as uint64.

    The caller guarantees ``|values * scale| <= 2**(bits-1) - 1``; this is the primitive.
    """
    scaled = np.asarray(values, dtype=np.float64) * scale
    floor = np.floor(scaled)
    rounded = floor + (rng.uniform(scaled.size).reshape(scaled.shape) < (scaled - floor))
    encoded = rounded.astype(np.int64).view(np.uint64)
    return reduce(encoded, modulus_bits)


def reduce(values: np.ndarray, modulus_bits: int) -> np.ndarray:
    """``values`` modulo 2**modulus_bits (uint64 arithmetic already wraps at 2**64)."""
    if modulus_bits == 64:
        return values
    return values & np.uint64((1 << modulus_bits) - 1)


def signed(total: np.ndarray, modulus_bits: int) -> np.ndarray:
    """A (summed) encoding read back as signed integers (int64, two's complement modulo 2**k)."""
    total = reduce(np.asarray(total, dtype=np.uint64), modulus_bits)
    if modulus_bits == 64:
        return total.view(np.int64)
    half = np.uint64(1 << (modulus_bits - 1))
    return total.astype(np.int64) - np.where(total >= half, np.int64(1 << modulus_bits), 0)


def sum_limit(bits: int, parties: int) -> int:
    """The largest magnitude the sum of ``parties`` honest encodings can take. Stochastic rounding of a
    value accepted at its bound (with the bound check's 1e-12 relative tolerance) can round one level
    past :func:`max_level`, so each party is allowed ``max_level(bits) + 1``."""
    return parties * (max_level(bits) + 1)


def out_of_range(total: np.ndarray, modulus_bits: int, limit: np.ndarray | float) -> np.ndarray:
    """Where the signed reading of ``total`` exceeds ``limit`` in magnitude (a boolean mask)."""
    values = signed(total, modulus_bits).astype(np.float64)  # float: |−2^63| does not overflow
    return np.abs(values) > limit


def decode(total: np.ndarray, scale: np.ndarray | float, modulus_bits: int) -> np.ndarray:
    """Read a (summed) encoding back as signed integers and divide by the scale."""
    return signed(total, modulus_bits).astype(np.float64) / scale
