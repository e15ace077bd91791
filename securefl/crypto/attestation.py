"""Contribution attestations: a party proves it knows the plaintext of its own Paillier contribution,
as one batched proof bound to the round's encrypted sum. Specification: ``protocols/paillier-threshold.md``,
"Attestations".

Why: Paillier is malleable. Without this, an active aggregator and one colluding party could pass off
``Enc(a)·∏ c_p⁻¹`` (every honest party but a victim cancelled) as the colluder's contribution, and the
key holders would correctly decrypt the victim's update. A cancelling party does not know the
plaintext of what it sent, and that is what it is asked to prove.

The statement. The sum C (K ciphertexts) is fixed first; γ_j (128 bits each) come from SHAKE-256 over
the sum's digest, so nobody can choose C after them. Contributor p sends D_p = ∏_j c_{p,j}^{γ_j}
mod n² — computed from its openings as (1 + m·n)·h_s^x with m = Σ γ_j·M_j mod n, x = Σ γ_j·x_j
(its packed plaintexts and DJN exponents) — and a proof of knowledge of m = plaintext(D_p):

    a = (1 + y·n)·h_s^u,  e = H(ctx, n, h_s, D, a) (128 bits),  z₁ = y + e·m mod n,  z₂ = u + e·x,

checked as (1 + z₁·n)·h_s^{z₂} = a·D^e mod n². Checkers then require ∏_p D_p = ∏_j C_j^{γ_j}.

Special soundness needs no group order: from two answers to e ≠ e′ for one a,
D^{e−e′} = (1 + n)^{z₁−z₁′}·(h^{z₂−z₂′})^n, and every element of Z*_{n²} is uniquely (1 + n)^M·y^n,
so plaintext(D)·(e − e′) ≡ z₁ − z₁′ mod n; e − e′ < 2^128 < p, q is invertible mod n. Zero knowledge:
y is uniform mod n, and u has 128 bits more than e·x (statistical distance ≤ 2^−128).
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Callable, Sequence

import gmpy2
from gmpy2 import mpz

from securefl.crypto import paillier
from securefl.crypto.threshold_paillier import field, int_bytes, multi_power
from securefl.errors import ProtocolError, WireError
from securefl.randomness import require_test_seed_permission

DOMAIN = b"securefl/paillier/attest/v1"
CHALLENGE_BITS = 128  # e < 2^128 < p, q: differences of challenges are invertible mod n
COEFFICIENT_BYTES = 16  # γ_j: 128 bits
SLACK_BITS = 128  # statistical zero knowledge of z₂ = u + e·x


def context(session: str, round_: int, party: str, contributors: Sequence[str], sum_digest: str) -> bytes:
    """What an attestation binds: session, round, the attesting party, the contributor set and the
    digest of the sum it was asked about."""
    try:
        session_bytes, digest = bytes.fromhex(session), bytes.fromhex(sum_digest)
    except ValueError:
        raise ProtocolError("session and sum digest must be hex") from None
    names = b"".join(field(name.encode()) for name in contributors)
    return (
        field(session_bytes)
        + field(struct.pack(">I", round_))
        + field(party.encode())
        + field(struct.pack(">I", len(contributors)) + names)
        + field(digest)
    )


def coefficients(session: str, round_: int, sum_digest: str, count: int) -> list[int]:
    """γ_1..γ_K of a round's sum: SHAKE-256 over (domain, session, round, sum digest), 16 bytes each.
    The same for every contributor, and fixed only once the sum is."""
    seed = DOMAIN + b"/coefficients" + context(session, round_, "", (), sum_digest)
    stream = hashlib.shake_256(seed).digest(COEFFICIENT_BYTES * count)
    return [
        int.from_bytes(stream[i : i + COEFFICIENT_BYTES], "big")
        for i in range(0, len(stream), COEFFICIENT_BYTES)
    ]


def exponent_bits(public: paillier.PublicKey, count: int) -> int:
    """Bits of x = Σ γ_j·x_j for K = ``count`` DJN exponents of ⌈|n|/2⌉ bits."""
    return (public.bits + 1) // 2 + 8 * COEFFICIENT_BYTES + max(count, 1).bit_length()


def _z2_bytes(public: paillier.PublicKey, count: int) -> int:
    return (exponent_bits(public, count) + CHALLENGE_BITS + SLACK_BITS + 1 + 7) // 8


def size(public: paillier.PublicKey, count: int) -> int:
    """Bytes of one attestation: D (2|n|/8) ‖ e (16) ‖ z₁ (|n|/8) ‖ z₂."""
    n_bytes = (public.bits + 7) // 8
    return 2 * n_bytes + CHALLENGE_BITS // 8 + n_bytes + _z2_bytes(public, count)


def _challenge(public: paillier.PublicKey, ctx: bytes, big_d: int, a: int) -> int:
    width = 2 * ((public.bits + 7) // 8)
    h = hashlib.sha256(DOMAIN + b"/challenge")
    h.update(field(ctx))
    for value in (public.n, public.hs, big_d, a):
        h.update(field(int_bytes(value, width)))
    return int.from_bytes(h.digest()[: CHALLENGE_BITS // 8], "big")


def attest(
    public: paillier.PublicKey,
    plaintexts: Sequence[int],
    exponents: Sequence[int],
    gammas: Sequence[int],
    ctx: bytes,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> bytes:
    """D ‖ proof for the contribution encrypted as c_j = (1 + M_j·n)·h_s^{x_j} (``plaintexts`` M_j,
    ``exponents`` x_j). ``randbelow`` is for known-answer vectors only."""
    if randbelow is not secrets.randbelow:
        require_test_seed_permission("an attestation's prover randomness")  # invariant 5
    if not len(plaintexts) == len(exponents) == len(gammas):
        raise ProtocolError("an attestation needs one plaintext and one exponent per coefficient")
    n, nsq, hs = mpz(public.n), mpz(public.nsquare), mpz(public.hs)
    m = sum(g * mj for g, mj in zip(gammas, plaintexts, strict=True)) % n
    x = sum(g * xj for g, xj in zip(gammas, exponents, strict=True))
    big_d = (1 + m * n) * gmpy2.powmod(hs, x, nsq) % nsq
    u_bits = exponent_bits(public, len(gammas)) + CHALLENGE_BITS + SLACK_BITS
    y, u = mpz(randbelow(public.n)), mpz(randbelow(1 << u_bits))
    a = (1 + y * n) * gmpy2.powmod(hs, u, nsq) % nsq
    e = _challenge(public, ctx, int(big_d), int(a))
    z1, z2 = (y + e * m) % n, u + e * x
    n_bytes = (public.bits + 7) // 8
    return (
        int_bytes(int(big_d), 2 * n_bytes)
        + e.to_bytes(CHALLENGE_BITS // 8, "big")
        + int_bytes(int(z1), n_bytes)
        + int_bytes(int(z2), _z2_bytes(public, len(gammas)))
    )


def check(public: paillier.PublicKey, blob: bytes, ctx: bytes, count: int) -> int:
    """The attested D if ``blob`` is a valid attestation under ``ctx``; else ProtocolError/WireError."""
    if len(blob) != size(public, count):
        raise WireError(f"an attestation of this round is {size(public, count)} bytes, got {len(blob)}")
    n_bytes = (public.bits + 7) // 8
    cut = [2 * n_bytes, CHALLENGE_BITS // 8, n_bytes, _z2_bytes(public, count)]
    values, offset = [], 0
    for width in cut:
        values.append(int.from_bytes(blob[offset : offset + width], "big"))
        offset += width
    big_d, e, z1, z2 = values
    n, nsq, hs = mpz(public.n), mpz(public.nsquare), mpz(public.hs)
    if not (0 < big_d < nsq and gmpy2.gcd(big_d, n) == 1) or not z1 < n:
        raise ProtocolError("an attestation's D or z1 lies outside its group")
    inverse = gmpy2.invert(gmpy2.powmod(mpz(big_d), e, nsq), nsq)
    a = (1 + mpz(z1) * n) * gmpy2.powmod(hs, z2, nsq) % nsq * inverse % nsq
    if _challenge(public, ctx, big_d, int(a)) != e:
        raise ProtocolError("an attestation's proof of plaintext knowledge fails")
    return big_d


def matches_sum(
    public: paillier.PublicKey, ciphertexts: Sequence[int], gammas: Sequence[int], ds: Sequence[int]
) -> bool:
    """∏ D_p = ∏_j C_j^{γ_j} mod n²: the attested contributions are exactly what was summed."""
    nsq = public.nsquare
    product = mpz(1)
    for value in ds:
        product = product * value % nsq
    return int(product) == multi_power(ciphertexts, gammas, nsq, 8 * COEFFICIENT_BYTES)
