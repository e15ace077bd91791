"""The X25519 key check: ``channel.usable_public`` refuses exactly the keys no agreement can use.

The check is a set lookup over five canonical low-order encodings instead of a trial exchange. Two
things make that safe, and both are tested here: the list is complete (proved below from the curve
equation, not taken on trust), and it agrees with OpenSSL, which refuses agreement with exactly
those points.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.crypto import channel

P = 2**255 - 19
A = 486662  # Curve25519: v² = u³ + A·u² + u


# --- polynomials over GF(P), coefficient lists lowest degree first -----------------------------


def _trim(f: list[int]) -> list[int]:
    while f and f[-1] == 0:
        f.pop()
    return f


def _mod(f: list[int], g: list[int]) -> list[int]:
    f = [c % P for c in f]
    _trim(f)
    inverse = pow(g[-1], -1, P)
    while len(f) >= len(g):
        factor = f[-1] * inverse % P
        shift = len(f) - len(g)
        for i, c in enumerate(g):
            f[shift + i] = (f[shift + i] - factor * c) % P
        _trim(f)
    return f


def _mul(f: list[int], g: list[int]) -> list[int]:
    out = [0] * (len(f) + len(g) - 1)
    for i, a in enumerate(f):
        for j, b in enumerate(g):
            out[i + j] += a * b
    return [c % P for c in out]


def _gcd(f: list[int], g: list[int]) -> list[int]:
    f, g = _trim([c % P for c in f]), _trim([c % P for c in g])
    while g:
        f, g = g, _mod(f, g)
    return f


def _distinct_roots(f: list[int]) -> int:
    """How many distinct roots f has in GF(P): deg gcd(f, x^P − x)."""
    power, base, e = [1], [0, 1], P
    while e:  # x^P mod f by square-and-multiply
        if e & 1:
            power = _mod(_mul(power, base), f)
        base = _mod(_mul(base, base), f)
        e >>= 1
    x_p_minus_x = [*power, 0, 0][: max(len(power), 2)]
    x_p_minus_x[1] -= 1
    return len(_gcd(f, x_p_minus_x)) - 1


def _doubling_preimage(z: int) -> list[int]:
    """The quartic whose roots u satisfy x-only doubling D(u) = z, where
    D(u) = (u² − 1)² / (4u(u² + A·u + 1)): (u² − 1)² − 4z·u(u² + A·u + 1)."""
    square = [1, 0, -2, 0, 1]  # (u² − 1)²
    cubic = [0, 4 * z, 4 * z * A, 4 * z]  # 4z·u(u² + Au + 1)
    return [(square[i] - (cubic[i] if i < len(cubic) else 0)) % P for i in range(5)]


def _u(encoding: bytes) -> int:
    return int.from_bytes(encoding, "little")


def test_the_low_order_list_is_every_point_of_order_dividing_8_on_the_curve_and_its_twist():
    """X25519 accepts u on Curve25519 (cofactor 8) and on its twist (cofactor 4), so the points no
    agreement survives are those of order 2, 4 or 8: u with D(D(D(u))) at infinity. Counting the
    roots in GF(p) of each level of that chain shows the five listed values are all of them."""
    listed = {_u(e) for e in channel._LOW_ORDER}
    # Order 2: D(u) = ∞ ⇔ u(u² + Au + 1) = 0.
    order_2 = [0, 1, A, 1]
    assert _distinct_roots(order_2) == 1  # only u = 0 (A² − 4 is not a square)
    level = {0}
    # Order 4, then 8: u with D(u) in the previous level, found among the listed values and counted.
    for _ in range(2):
        found = set(level)
        for z in level:
            quartic = _doubling_preimage(z)
            roots = {u for u in listed if sum(c * pow(u, i, P) for i, c in enumerate(quartic)) % P == 0}
            assert _distinct_roots(quartic) == len(roots), f"D(u) = {z} has roots outside the list"
            found |= roots
        level = found
    assert level == listed and len(listed) == 5


def _openssl_agrees(encoding: bytes) -> bool:
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(encoding))
    except ValueError:
        return False
    return True


def test_openssl_refuses_agreement_with_every_listed_point():
    for encoding in channel._LOW_ORDER:
        assert not _openssl_agrees(encoding)
        assert not channel.usable_public(encoding)


_NEAR_LISTED = st.sampled_from(sorted(_u(e) for e in channel._LOW_ORDER)).flatmap(
    lambda u: st.integers(min_value=max(0, u - 3), max_value=u + 3)
)


@settings(max_examples=300, deadline=None)
@given(u=st.one_of(st.integers(min_value=0, max_value=2**256 - 1), _NEAR_LISTED))
def test_usable_public_is_canonical_and_agrees_with_openssl(u):
    """For canonical encodings the set lookup gives OpenSSL's verdict; a non-canonical encoding
    (u ≥ p, or bit 255 set) is refused even where OpenSSL would reduce it and agree."""
    encoding = (u % 2**256).to_bytes(32, "little")
    if u >= P:
        assert not channel.usable_public(encoding)
    else:
        assert channel.usable_public(encoding) == _openssl_agrees(encoding)


def test_usable_public_refuses_what_is_not_32_bytes():
    assert not channel.usable_public(bytes(31))
    assert not channel.usable_public(bytes(33))
    assert not channel.usable_public(bytearray(32))  # type: ignore[arg-type]
    assert not channel.usable_public("x" * 32)  # type: ignore[arg-type]
