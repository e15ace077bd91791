"""Shamir secret sharing of byte strings over the prime field GF(2^257 − 93).

A secret of up to 32 bytes is read as an integer below the prime and shared with a random
polynomial of degree ``threshold − 1``: any ``threshold`` shares reconstruct it, fewer reveal
nothing (information-theoretically). Shares are 33-byte big-endian field elements; share
coordinates are small positive integers (securefl uses a party's position in the round, plus one).
Coefficients are sampled by rejection, so they are exactly uniform.

Shares are a Reed–Solomon codeword, so reconstruction from more than ``threshold`` of them can
check them and correct wrong ones (:func:`reconstruct`): a random check of the dual code detects any
inconsistency (false acceptance ≤ m / 2^256), and Gao's decoder ("A New Algorithm for Decoding
Reed–Solomon Codes", 2002) corrects up to ⌊(m − threshold) / 2⌋ wrong shares and names them.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from securefl.errors import ProtocolError
from securefl.randomness import SecureRandom

# The largest prime below 2^257: every 32-byte secret (a mask seed, an X25519 private key) is a
# field element, and a share takes 33 bytes. (The field was GF(2^521 − 1) before: twice the bytes
# and about four times the arithmetic for the same 32-byte secrets.)
PRIME = 2**257 - 93
SHARE_BYTES = 33
MAX_SECRET_BYTES = 32
_ELEMENT_MASK = (1 << 257) - 1


def _random_element(rng: SecureRandom) -> int:
    while True:
        value = int.from_bytes(rng.bytes(SHARE_BYTES), "big") & _ELEMENT_MASK
        if value < PRIME:  # rejected with probability 93 / 2^257
            return value


def split(secret: bytes, xs: Sequence[int], threshold: int, rng: SecureRandom) -> dict[int, bytes]:
    """Shares of ``secret`` at coordinates ``xs``; any ``threshold`` of them reconstruct it."""
    return split_together((secret,), xs, threshold, rng)[0]


def split_together(
    secrets: Sequence[bytes], xs: Sequence[int], threshold: int, rng: SecureRandom
) -> list[dict[int, bytes]]:
    """Shares of each secret at the same coordinates, each with its own random polynomial — exactly
    what :func:`split` gives each in turn (same draws from ``rng``, same shares), in one pass.

    The polynomials are evaluated together: their coefficients are packed into one integer, slot i
    at bit i·w, and Horner's rule runs once on the packed integer without reducing (coordinates are
    small). A slot's value then stays below 2^w — the unreduced p_i(x) < threshold · PRIME · x^(threshold−1)
    — so the slots never mix, and each is reduced once at the end."""
    for secret in secrets:
        if not 1 <= len(secret) <= MAX_SECRET_BYTES:
            raise ValueError(f"a secret is 1 to {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share coordinates must be distinct and non-zero")
    if not 2 <= threshold <= len(xs):
        raise ValueError(f"threshold must be between 2 and the number of shares ({len(xs)}), got {threshold}")
    polynomials = [
        [int.from_bytes(secret, "big")] + [_random_element(rng) for _ in range(threshold - 1)]
        for secret in secrets
    ]
    width = PRIME.bit_length() + threshold.bit_length() + (threshold - 1) * max(xs).bit_length() + 1
    packed = [sum(p[j] << (i * width) for i, p in enumerate(polynomials)) for j in range(threshold)]
    slot = (1 << width) - 1
    shares: list[dict[int, bytes]] = [{} for _ in secrets]
    for x in xs:
        y = 0
        for c in reversed(packed):
            y = y * x + c
        for i, out in enumerate(shares):
            out[x] = ((y >> (i * width) & slot) % PRIME).to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The coefficients λ_k with f(0) = Σ λ_k f(x_k) for every f of degree < len(xs); cached, since
    one set of responders reconstructs many secrets. λ_k = v_k · Π_{m≠k} (0 − x_m), with v_k the
    barycentric weights."""
    sign = -1 if len(xs) % 2 == 0 else 1  # (−1)^(len − 1)
    whole = math.prod(xs)
    return tuple(sign * v * (whole // xk) % PRIME for v, xk in zip(_barycentric_weights(xs), xs, strict=True))


@lru_cache(maxsize=256)
def _barycentric_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """v_k = 1 / Π_{m≠k} (x_k − x_m) for distinct coordinates: the Lagrange coefficients and the
    dual-code check both derive from them.

    Protocol coordinates are positions 1..N in a round, and a reconstruction's set usually holds
    most of them (every holder but the owner, on a complete graph). Then v_k comes without any
    inversion from the precomputed 1 / Π_{j ≤ N, j ≠ x_k} (x_k − j), times the product over the
    few positions j ≤ N that are not in the set (all exact small integers, one reduction each).
    Otherwise each product is taken exactly and reduced once (coordinates are small), and all are
    inverted with one exponentiation."""
    if len({x % PRIME for x in xs}) != len(xs) or any(x % PRIME == 0 for x in xs):
        # Two equal coordinates (or one at zero) would divide by zero, or silently give wrong
        # coefficients: a protocol's own coordinates are distinct and non-zero, so this is a bug.
        raise ProtocolError("share coordinates must be distinct and non-zero modulo the prime")
    top = max(xs)
    if min(xs) > 0 and top - len(xs) <= len(xs) + _COMPLEMENT_SLACK:
        inverse_full = _inverse_full_products(top)
        members = set(xs)
        others = [j for j in range(1, top + 1) if j not in members]
        return tuple(inverse_full[x] * math.prod([x - j for j in others]) % PRIME for x in xs)
    denominators = [math.prod([xk - xm for xm in xs if xm != xk]) % PRIME for xk in xs]
    return tuple(_batch_inverse(denominators))


# The complement path is taken while the positions missing from the set are at most this many more
# than those in it: its products are longer but it saves the inversion (measured: faster up to ~+8).
_COMPLEMENT_SLACK = 8


@lru_cache(maxsize=16)
def _inverse_full_products(top: int) -> tuple[int, ...]:
    """Index x (1..top) → 1 / Π_{1 ≤ j ≤ top, j ≠ x} (x − j) mod PRIME, i.e. the inverse of
    (−1)^(top − x) · (x − 1)! · (top − x)!; index 0 is unused."""
    factorial = [1]
    for i in range(1, top + 1):
        factorial.append(factorial[-1] * i % PRIME)
    products = [(-1) ** (top - x) * factorial[x - 1] * factorial[top - x] % PRIME for x in range(1, top + 1)]
    return (0, *_batch_inverse(products))


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses modulo PRIME of non-zero values with one exponentiation (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inverse % PRIME
        inverse = inverse * values[i] % PRIME
    return out


def combine(shares: Mapping[int, bytes], threshold: int, length: int) -> bytes:
    """The secret of ``length`` bytes from at least ``threshold`` shares (the first ones, by x).

    No checking: use :func:`reconstruct` where shares come from parties that may lie."""
    if len(shares) < threshold:
        raise ProtocolError(f"{len(shares)} shares cannot reconstruct a secret that needs {threshold}")
    xs = tuple(sorted(shares)[:threshold])
    values = []
    for x in xs:
        value = _element(shares[x])
        if value is None:
            raise ProtocolError("a share is not a field element")
        values.append(value)
    return _secret_bytes(_at_zero(xs, values), length)


@dataclass(frozen=True)
class Reconstruction:
    """A secret rebuilt from shares some of which may be wrong: ``secret`` is None when the wrong
    shares are too many to correct, or when the shares agree on a secret that is unusable;
    ``wrong`` lists the coordinates whose shares were wrong. ``consistent``: every well-formed
    share lies on one polynomial — with no secret, the dealer shared something else than it
    should have (no holder can be blamed for a codeword)."""

    secret: bytes | None
    wrong: tuple[int, ...]
    consistent: bool = False


def reconstruct(shares: Mapping[int, bytes], threshold: int, length: int, accept=None) -> Reconstruction:
    """The secret from all ``shares``, checking every one of them and correcting wrong ones.

    A share that is malformed (wrong size, not a field element) is wrong. The rest must lie on one
    polynomial of degree < ``threshold``; if they do not, Gao's decoder finds the polynomial that
    all but at most ⌊(m − threshold)/2⌋ of them fit, and those that do not are wrong. A secret that
    does not fit in ``length`` bytes, or that ``accept(secret)`` refuses (e.g. a private key that
    does not match its public key), is not a reconstruction. Raises ProtocolError only if fewer
    than ``threshold`` shares are given.
    """
    if len(shares) < threshold:
        raise ProtocolError(f"{len(shares)} shares cannot reconstruct a secret that needs {threshold}")
    points, bad = {}, []
    for x, data in shares.items():
        if type(data) is bytes and len(data) == SHARE_BYTES:
            value = int.from_bytes(data, "big")
            if value < PRIME:
                points[x] = value
                continue
        bad.append(x)
    malformed = tuple(sorted(bad))
    xs = tuple(sorted(points))
    ys = [points[x] for x in xs]

    def usable(value: int) -> bytes | None:
        if value >= 1 << (8 * length):
            return None
        secret = value.to_bytes(length, "big")
        return secret if accept is None or accept(secret) else None

    if len(xs) > threshold:
        # One pass gives both the dual-code check and the value at zero (interpolated through all
        # the points — the same value as through any threshold of them when they are consistent).
        # The check passes wrongly with probability at most (m − threshold)/2^256 for shares chosen
        # without knowing the process's salt.
        total = sum(c * y for c, y in zip(_check_and_zero(xs, threshold, _SALT), ys, strict=True))
        if (total >> _PACK) % PRIME == 0:
            # Consistent shares of an unusable secret: the dealer's doing, not a holder's.
            return Reconstruction(usable((total & _PACK_MASK) % PRIME), malformed, consistent=True)
    elif len(xs) == threshold:
        return Reconstruction(usable(_at_zero(xs, ys)), malformed, consistent=True)
    polynomial = _gao_decode(xs, ys, threshold) if len(xs) > threshold else None
    secret = usable(polynomial[0] if polynomial else 0) if polynomial is not None else None
    if secret is not None:
        off = (x for x, y in zip(xs, ys, strict=True) if _evaluate(polynomial, x) != y)
        return Reconstruction(secret, tuple(sorted((*malformed, *off))))
    if accept is not None and len(xs) == threshold + 1:
        # One share too few to correct an error by decoding, but the secret can be checked: leaving
        # out the one wrong share gives the accepted secret. With two or more wrong shares a dealer
        # can craft them so that leaving out a right one does (found by an attacker: +1 at x = 1
        # and x = 2 of t = 3, and leaving out x = 4 rebuilt the committed secret): "wrong" then
        # names a right share — which is why callers never take it as proof against its holder
        # (secagg: passive-mode evidence always includes the dealer; active mode decides by the
        # dealer's signatures).
        for x, value in _leave_one_out_at_zero(xs, ys):
            secret = usable(value)
            if secret is not None:
                return Reconstruction(secret, tuple(sorted((*malformed, x))))
    return Reconstruction(None, malformed)


def _leave_one_out_at_zero(xs: tuple[int, ...], ys: Sequence[int]):
    """For each i, (x_i, f_i(0)) where f_i interpolates every point but the i-th: O(m²) in all.
    With λ_j the Lagrange coefficients at zero of the full set, leaving x_i out turns them into
    λ_j · (x_i − x_j) / x_i for j ≠ i."""
    full = lagrange_at_zero(xs)
    for i, xi in enumerate(xs):
        inverse = pow(xi, -1, PRIME)
        total = 0
        for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)):
            if j != i:
                total += full[j] * (xi - xj) % PRIME * yj
        yield xi, total * inverse % PRIME


def _element(data: bytes) -> int | None:
    if not isinstance(data, bytes | bytearray) or len(data) != SHARE_BYTES:
        return None
    value = int.from_bytes(data, "big")
    return value if value < PRIME else None


def _secret_bytes(value: int, length: int) -> bytes:
    if value >= 1 << (8 * length):
        raise ProtocolError("shares are inconsistent: the reconstructed secret is out of range")
    return value.to_bytes(length, "big")


def _at_zero(xs: tuple[int, ...], ys: Sequence[int]) -> int:
    return sum(c * y for c, y in zip(lagrange_at_zero(xs), ys, strict=True)) % PRIME


@lru_cache(maxsize=256)
def _dual_check(xs: tuple[int, ...], threshold: int, salt: bytes) -> tuple[int, ...]:
    """A random word w of the dual code: Σ w_i y_i = 0 for every polynomial of degree < threshold
    evaluated at xs. w_i = v_i g(x_i) with v_i = 1/Π_{j≠i}(x_i − x_j) and g random of degree
    < m − threshold (generalized Reed–Solomon duality). ``salt`` keys g to the caller, so that a
    party cannot craft shares against a known check; one g per degree serves every set of
    coordinates (the check needs g independent of the shares, not of the coordinates)."""
    weights = _barycentric_weights(xs)
    degree = len(xs) - threshold
    return tuple(v * _check_value(salt, degree, xi) % PRIME for v, xi in zip(weights, xs, strict=True))


@lru_cache(maxsize=64)
def _check_polynomial(salt: bytes, degree: int) -> tuple[int, ...]:
    # Independent pseudo-random coefficients (SHAKE-256 of the secret salt): a g with related
    # coefficients would let crafted wrong shares be orthogonal to every check it can produce.
    return tuple(
        int.from_bytes(hashlib.shake_256(salt + i.to_bytes(4, "big")).digest(SHARE_BYTES + 16), "big") % PRIME
        for i in range(degree)
    )


@lru_cache(maxsize=8192)
def _check_value(salt: bytes, degree: int, x: int) -> int:
    """g(x) for the check polynomial of this degree (cached: the coordinates of a round repeat)."""
    return _evaluate(_check_polynomial(salt, degree), x)


_SALT = os.urandom(32)  # per process; the check's randomness never leaves it

# Packing of the check and the Lagrange coefficient into one integer per share, c = λ + (w << _PACK):
# Σ c·y holds Σ λ·y below bit _PACK (each term < 2^514, and fewer than 2^58 shares) and Σ w·y above
# it, so one multiplication per share yields both sums exactly.
_PACK = 572
_PACK_MASK = (1 << _PACK) - 1


@lru_cache(maxsize=256)
def _check_and_zero(xs: tuple[int, ...], threshold: int, salt: bytes) -> tuple[int, ...]:
    """λ_i + (w_i << _PACK) for each coordinate: the Lagrange coefficient at zero and the dual-code
    check word of :func:`_dual_check`, packed."""
    return tuple(
        c + (w << _PACK) for c, w in zip(lagrange_at_zero(xs), _dual_check(xs, threshold, salt), strict=True)
    )


# --- polynomials over GF(PRIME): coefficient lists, lowest degree first ------------------------


def _trim(p: list[int]) -> list[int]:
    while p and p[-1] == 0:
        p.pop()
    return p


def _evaluate(p: Sequence[int], x: int) -> int:
    """p(x) by Horner's rule. For a small x (a share coordinate) the value is reduced only every
    few steps: each step adds a few bits, and one reduction of a longer integer is cheaper than
    one per step."""
    y = 0
    if 0 <= x < 1 << 16:
        for i, c in enumerate(reversed(p)):
            y = y * x + c
            if i % 16 == 15:
                y %= PRIME
        return y % PRIME
    for c in reversed(p):
        y = (y * x + c) % PRIME
    return y


def _sub(a: list[int], b: list[int]) -> list[int]:
    out = [0] * max(len(a), len(b))
    for i, c in enumerate(a):
        out[i] = c
    for i, c in enumerate(b):
        out[i] = (out[i] - c) % PRIME
    return _trim(out)


def _mul(a: list[int], b: list[int]) -> list[int]:
    if not a or not b:
        return []
    out = [0] * (len(a) + len(b) - 1)
    for i, ca in enumerate(a):
        if ca:
            for j, cb in enumerate(b):
                out[i + j] = (out[i + j] + ca * cb) % PRIME
    return _trim(out)


def _divmod(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    a = list(a)
    inverse = pow(b[-1], -1, PRIME)
    quotient = [0] * max(len(a) - len(b) + 1, 0)
    for shift in range(len(a) - len(b), -1, -1):
        factor = a[shift + len(b) - 1] * inverse % PRIME
        quotient[shift] = factor
        if factor:
            for j, cb in enumerate(b):
                a[shift + j] = (a[shift + j] - factor * cb) % PRIME
    return _trim(quotient), _trim(a[: len(b) - 1])


def _interpolate(xs: Sequence[int], ys: Sequence[int]) -> list[int]:
    """The polynomial of degree < len(xs) through the points (Newton's divided differences)."""
    coefficients = list(ys)
    n = len(xs)
    for level in range(1, n):
        for i in range(n - 1, level - 1, -1):
            coefficients[i] = (
                (coefficients[i] - coefficients[i - 1]) * pow(xs[i] - xs[i - level], -1, PRIME) % PRIME
            )
    poly: list[int] = []
    for i in range(n - 1, -1, -1):  # Horner on the Newton basis
        poly = _sub(_mul(poly, [(-xs[i]) % PRIME, 1]), [(-coefficients[i]) % PRIME])
    return poly


def _gao_decode(xs: Sequence[int], ys: Sequence[int], threshold: int) -> list[int] | None:
    """The polynomial of degree < threshold that all but ⌊(m − threshold)/2⌋ points fit, or None."""
    m = len(xs)
    g0 = [1]
    for x in xs:
        g0 = _mul(g0, [(-x) % PRIME, 1])
    g1 = _interpolate(xs, ys)
    # Partial extended Euclid: stop at the first remainder of degree < (m + threshold) / 2.
    r_prev, r = g0, g1
    v_prev, v = [], [1]
    while r and 2 * (len(r) - 1) >= m + threshold:
        quotient, remainder = _divmod(r_prev, r)
        r_prev, r = r, remainder
        v_prev, v = v, _sub(v_prev, _mul(quotient, v))
    if not v:
        return None
    f, remainder = _divmod(r, v) if r else ([], [])
    if remainder or len(f) > threshold:
        return None
    errors = sum(1 for x, y in zip(xs, ys, strict=True) if _evaluate(f, x) != y)
    return f if 2 * errors <= m - threshold else None
