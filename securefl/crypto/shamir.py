"""Shamir secret sharing of byte strings over the prime field GF(2^521 − 1).

A secret of up to 64 bytes is read as an integer below the prime and shared with a random
polynomial of degree ``threshold − 1``: any ``threshold`` shares reconstruct it, fewer reveal
nothing (information-theoretically). Shares are 66-byte big-endian field elements; share
coordinates are small positive integers (securefl uses a party's position in the round, plus one).
Coefficients are sampled by rejection, so they are exactly uniform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from securefl.errors import ProtocolError
from securefl.randomness import SecureRandom

PRIME = 2**521 - 1  # a Mersenne prime
SHARE_BYTES = 66
MAX_SECRET_BYTES = 64


def _random_element(rng: SecureRandom) -> int:
    while True:
        value = int.from_bytes(rng.bytes(SHARE_BYTES), "big") & ((1 << 521) - 1)
        if value < PRIME:
            return value


def split(secret: bytes, xs: Sequence[int], threshold: int, rng: SecureRandom) -> dict[int, bytes]:
    """Shares of ``secret`` at coordinates ``xs``; any ``threshold`` of them reconstruct it."""
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret is 1 to {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share coordinates must be distinct and non-zero")
    if not 2 <= threshold <= len(xs):
        raise ValueError(f"threshold must be between 2 and the number of shares ({len(xs)}), got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [_random_element(rng) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The coefficients λ_k with f(0) = Σ λ_k f(x_k); cached, since one set of responders
    reconstructs many secrets."""
    coefficients = []
    for k, xk in enumerate(xs):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != k:
                numerator = numerator * xm % PRIME
                denominator = denominator * (xm - xk) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def combine(shares: Mapping[int, bytes], threshold: int, length: int) -> bytes:
    """The secret of ``length`` bytes from at least ``threshold`` shares (the first ones, by x)."""
    if len(shares) < threshold:
        raise ProtocolError(f"{len(shares)} shares cannot reconstruct a secret that needs {threshold}")
    xs = tuple(sorted(shares)[:threshold])
    values = []
    for x in xs:
        data = shares[x]
        if len(data) != SHARE_BYTES:
            raise ProtocolError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        value = int.from_bytes(data, "big")
        if value >= PRIME:
            raise ProtocolError("a share is not a field element")
        values.append(value)
    secret = sum(c * y for c, y in zip(lagrange_at_zero(xs), values, strict=True)) % PRIME
    if secret >= 1 << (8 * length):
        raise ProtocolError("shares are inconsistent: the reconstructed secret is out of range")
    return secret.to_bytes(length, "big")
