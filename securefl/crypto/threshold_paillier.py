"""Threshold Paillier on gmpy2: the secret key exists only as Shamir shares; any t of l holders
decrypt together, with verifiable decryption shares. Specification: ``protocols/paillier-threshold.md``.

The public key is a standard Paillier key with g = n + 1 (phe encrypts and adds under it). n = p·q
with safe primes p = 2p' + 1, q = 2q' + 1, and m = p'·q'. Decryption recovers the ciphertext's
randomizer with Shoup's threshold RSA (Shoup 2000), public exponent e = n:

* the dealer shares d = n⁻¹ mod m with a random polynomial f of degree t − 1 over Z_m, f(0) = d,
  and gives holder i (1 ≤ i ≤ l) the share s_i = f(i); verification keys v_i = v^(Δ·s_i) mod n
  for a random square v, Δ = l!;
* for a ciphertext c = (1 + M·n)·ρ^n mod n², x = c mod n = ρ^n mod n. Holder i's decryption share
  is x_i = x^(2Δ·s_i) mod n (one |n|-bit exponentiation modulo n: as costly as one CRT decryption);
* any t valid shares (set S) combine with the integer coefficients μ_i = Δ·∏_{j∈S∖i} j/(j − i):
  w = ∏ x_i^(2μ_i) = x^(4Δ²d) = ρ^(4Δ²) mod n (x⁴ has order dividing m, and n·d ≡ 1 mod m);
* w lifted, W = w^n mod n², is ρ^(4Δ²·n) mod n² (y ↦ y^n mod n² depends only on y mod n), so
  c^(4Δ²)·W⁻¹ = (1 + n)^(4Δ²·M) mod n² and M = L(·)·(4Δ²)⁻¹ mod n, L(u) = (u − 1)/n.

This is the same combination as Damgård–Jurik 2001 / Fouque–Poupard–Stern 2000 (shares c^(2Δs_i),
Lagrange in the exponent, Chaum–Pedersen proofs) with the secret exponent shared over Z_m and
shares computed modulo n instead of over Z_{nm} modulo n²: a share costs one eighth as much (|n|
instead of 2|n| exponent bits, modulus n instead of n²), and one lift per ciphertext is added for
the combiner. What the combiner learns besides M is ρ^(4Δ²) for the SUM ciphertext, which a
simulator that knows M can produce (it picks the sum's randomizer: see the spec, "Security").

Proof of a correct share (batched over all K ciphertexts of a round, Fiat–Shamir): with
coefficients ρ_j of 128 bits from SHAKE-256 over the context, x_j and the holder's shares,
X = ∏ x_j^ρ_j and Y = ∏ x_ij^ρ_j mod n, a Chaum–Pedersen proof that log_{X⁴}(Y²) = log_v(v_i)
(= Δ·s_i). In QR_n every element ≠ 1 has an order with prime factors p', q' > 2^128, so a wrong
share passes with probability ≤ 2^-128 per attempt.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cached_property

import gmpy2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gmpy2 import mpz

from securefl.crypto import paillier
from securefl.errors import ConfigError, ProtocolError, WireError
from securefl.randomness import require_test_seed_permission

DOMAIN = b"securefl/paillier-threshold/v1"
HASH_BYTES = 32  # Fiat–Shamir challenge e: 256 bits
BATCH_BYTES = 16  # batch coefficients: 128 bits each
MAX_HOLDERS = 64  # Δ = l! stays small next to n (64! < 2^297)
PUBLIC_KIND = "securefl-paillier-threshold-public"
SHARE_KIND = "securefl-paillier-threshold-share"


def field(data: bytes) -> bytes:
    """One length-prefixed field of a hashed transcript (u32 BE length ‖ data)."""
    return struct.pack(">I", len(data)) + data


def int_bytes(value: int, width: int) -> bytes:
    return int(value).to_bytes(width, "big")


# --- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdPublicKey:
    """Everything public: the Paillier key (n, h_s), t, the holders in index order, v and v_i."""

    n: int
    hs: int
    threshold: int
    holders: tuple[str, ...]
    v: int
    verification: tuple[int, ...]
    # Each holder's raw Ed25519 public key (holders' order): contributions are attested under it, so
    # that nobody — the aggregator included — can attest in another holder's name.
    signing: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        l = len(self.holders)  # noqa: E741
        if not 1 <= l <= MAX_HOLDERS or len(set(self.holders)) != l:
            raise ConfigError(
                f"a threshold key has 1 to {MAX_HOLDERS} distinct holders, got {self.holders!r}"
            )
        if any(not isinstance(h, str) or not h for h in self.holders):
            raise ConfigError("holder names must be non-empty strings")
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int)
            or not 1 <= self.threshold <= l
        ):
            raise ConfigError(f"the threshold must be between 1 and {l} holders, got {self.threshold!r}")
        if len(self.verification) != l:
            raise ConfigError("a threshold key has one verification key per holder")
        n = self.n
        if n < 3 or n % 2 == 0:
            raise ConfigError("a threshold Paillier modulus is odd")
        for value in (self.v, *self.verification):
            if not 0 < value < n or gmpy2.gcd(value, n) != 1:
                raise ConfigError("verification keys must lie in Z*_n")
        if not 0 < self.hs < n * n or gmpy2.gcd(self.hs, n) != 1:
            raise ConfigError("h_s must lie in Z*_{n²}")
        if self.signing and (
            len(self.signing) != l or any(not isinstance(k, bytes) or len(k) != 32 for k in self.signing)
        ):
            raise ConfigError("a threshold key has one 32-byte Ed25519 signing key per holder, or none")

    @cached_property
    def paillier(self) -> paillier.PublicKey:
        return paillier.PublicKey(self.n, self.hs)

    @property
    def bits(self) -> int:
        return int(self.n).bit_length()

    @property
    def n_bytes(self) -> int:
        return (self.bits + 7) // 8

    @cached_property
    def delta(self) -> int:
        return math.factorial(len(self.holders))

    def index(self, holder: str) -> int:
        try:
            return self.holders.index(holder) + 1
        except ValueError:
            raise ProtocolError(f"{holder!r} holds no share of this threshold key") from None

    @property
    def proof_bytes(self) -> int:
        """e (32 bytes) ‖ z (fixed width)."""
        return HASH_BYTES + self._z_bytes

    @cached_property
    def _r_bits(self) -> int:
        # z = r + e·Δ·s_i must hide Δ·s_i (< Δ·n) statistically: r has 2·256 more bits than e·Δ·s_i.
        return self.bits + int(self.delta).bit_length() + 8 * HASH_BYTES + 256

    @cached_property
    def _z_bytes(self) -> int:
        return (self._r_bits + 1 + 7) // 8

    def fingerprint(self) -> str:
        h = hashlib.sha256(DOMAIN + b"/fingerprint")
        h.update(field(int_bytes(self.n, self.n_bytes)) + field(struct.pack(">I", self.threshold)))
        for name, vk in zip(self.holders, self.verification, strict=True):
            h.update(field(name.encode()) + field(int_bytes(vk, self.n_bytes)))
        h.update(field(int_bytes(self.v, self.n_bytes)))
        for key in self.signing:
            h.update(field(key))
        return h.hexdigest()[:32]

    def to_json(self) -> dict:
        return {
            "kind": PUBLIC_KIND,
            "version": 1,
            "n": hex(self.n),
            "hs": hex(self.hs),
            "threshold": self.threshold,
            "holders": list(self.holders),
            "v": hex(self.v),
            "verification": [hex(v) for v in self.verification],
            **({"signing": [k.hex() for k in self.signing]} if self.signing else {}),
        }

    @classmethod
    def from_json(cls, data: object) -> ThresholdPublicKey:
        try:
            if not isinstance(data, dict) or data.get("kind") != PUBLIC_KIND or data.get("version") != 1:
                raise ConfigError(f"not a version-1 {PUBLIC_KIND} document")
            holders = data["holders"]
            verification = data["verification"]
            if not isinstance(holders, list) or not isinstance(verification, list):
                raise ConfigError("holders and verification keys must be lists")
            signing = data.get("signing", [])
            if not isinstance(signing, list) or any(not isinstance(k, str) or len(k) != 64 for k in signing):
                raise ConfigError("signing keys are 64 hex digits each")
            return cls(
                _hex(data["n"]),
                _hex(data["hs"]),
                data["threshold"],
                tuple(holders),
                _hex(data["v"]),
                tuple(_hex(v) for v in verification),
                tuple(bytes.fromhex(k) for k in signing),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid threshold Paillier public key: {type(exc).__name__}: {exc}") from None


def _hex(value: object) -> int:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) > 4096:
        raise ConfigError("key values are hex strings starting with 0x")
    return int(value, 16)


@dataclass(frozen=True)
class KeyShare:
    """One holder's share s_i of d (with the public key, and the model key all parties share)."""

    public: ThresholdPublicKey
    holder: str
    share: int = dataclass_field(repr=False)  # secrets: never in a repr, a log line or an error
    model_key: bytes = dataclass_field(repr=False)
    # the raw Ed25519 private key whose public half is public.signing[i]
    signing_key: bytes = dataclass_field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.holder, str) or self.holder not in self.public.holders:
            raise ConfigError(f"{self.holder!r} is not a holder of this threshold key")
        if not 0 <= self.share < self.public.n or len(self.model_key) != 32:
            raise ConfigError("a key share is below n and comes with a 32-byte model key")
        if pow(self.public.v, self.public.delta * self.share, self.public.n) != self.verification_key:
            raise ConfigError(
                f"the key share of {self.holder} does not match its published verification key (wrong or "
                "corrupted share file)"
            )
        if self.public.signing or self.signing_key:
            if len(self.signing_key) != 32 or not self.public.signing:
                raise ConfigError(
                    f"the key share of {self.holder} and its public key disagree on signing keys"
                )
            derived = Ed25519PrivateKey.from_private_bytes(self.signing_key).public_key().public_bytes_raw()
            if derived != self.public.signing[self.index - 1]:
                raise ConfigError(
                    f"the signing key of {self.holder} does not match its published one (wrong or "
                    "corrupted file)"
                )

    @property
    def index(self) -> int:
        return self.public.index(self.holder)

    @property
    def verification_key(self) -> int:
        return self.public.verification[self.index - 1]

    @property
    def exponent(self) -> int:
        """2Δ·s_i: what a decryption share raises x = c mod n to."""
        return 2 * self.public.delta * self.share

    def to_json(self) -> dict:
        return {
            "kind": SHARE_KIND,
            "version": 1,
            "public": self.public.to_json(),
            "holder": self.holder,
            "share": hex(self.share),
            "model_key": self.model_key.hex(),
            **({"signing_key": self.signing_key.hex()} if self.signing_key else {}),
        }

    @classmethod
    def from_json(cls, data: object) -> KeyShare:
        try:
            if not isinstance(data, dict) or data.get("kind") != SHARE_KIND or data.get("version") != 1:
                raise ConfigError(f"not a version-1 {SHARE_KIND} document")
            public = ThresholdPublicKey.from_json(data["public"])
            if not isinstance(data["holder"], str) or not isinstance(data["model_key"], str):
                raise ConfigError("holder and model_key are strings")
            signing_key = data.get("signing_key", "")
            if not isinstance(signing_key, str):
                raise ConfigError("signing_key is a hex string")
            return cls(
                public,
                data["holder"],
                _hex(data["share"]),
                bytes.fromhex(data["model_key"]),
                bytes.fromhex(signing_key),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid threshold Paillier key share: {type(exc).__name__}: {exc}") from None


# --- the dealer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dealt:
    public: ThresholdPublicKey
    shares: dict[str, KeyShare]


def deal(
    bits: int,
    holders: Sequence[str],
    threshold: int,
    primes: tuple[int, int] | None = None,
    randbelow: Callable[[int], int] = secrets.randbelow,
    model_key: bytes | None = None,
) -> Dealt:
    """The key ceremony's dealer: safe primes, d = n⁻¹ mod m shared by a random polynomial of degree
    t − 1 over Z_m, a random square v and the verification keys. ``primes`` and ``randbelow`` are
    for tests and known-answer vectors; by default everything comes from ``secrets``. The caller
    writes the shares out and drops this object: nothing else keeps p, q or d."""
    paillier.check_key_bits(bits)
    if randbelow is not secrets.randbelow:
        require_test_seed_permission("the threshold Paillier dealer's randomness")  # invariant 5
    holders = tuple(holders)
    if primes is None:
        while True:
            p, q = paillier._safe_prime(bits // 2), paillier._safe_prime(bits // 2)
            if p != q and (p * q).bit_length() == bits:
                break
    else:
        p, q = mpz(primes[0]), mpz(primes[1])
    n = p * q
    m = (p - 1) // 2 * ((q - 1) // 2)
    if gmpy2.gcd(n, m) != 1 or gmpy2.gcd(n, math.factorial(max(len(holders), 1))) != 1:
        raise ConfigError("n shares a factor with m or with l!: choose other primes")
    d = gmpy2.invert(n, m)
    coefficients = [d] + [mpz(randbelow(int(m))) for _ in range(threshold - 1)]
    while True:
        v = mpz(randbelow(int(n) - 2) + 2) ** 2 % n
        # v generates QR_n (order p'·q') unless v^(p') = 1 or v^(q') = 1: retry then.
        if gmpy2.gcd(v, n) == 1 and pow(v, (p - 1) // 2, n) != 1 and pow(v, (q - 1) // 2, n) != 1:
            break
    while True:
        h = mpz(randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(h, n) == 1:
            break
    hs = int(gmpy2.powmod(h, n, n * n))
    delta = math.factorial(len(holders))
    share_values = []
    for i in range(1, len(holders) + 1):
        s = mpz(0)
        for k in reversed(coefficients):
            s = (s * i + k) % m
        share_values.append(s)
    # Signing keys come from the OS CSPRNG (cryptography's Ed25519), also under test randomness.
    signing_keys = [Ed25519PrivateKey.generate() for _ in holders]
    public = ThresholdPublicKey(
        int(n),
        hs,
        threshold,
        holders,
        int(v),
        tuple(int(gmpy2.powmod(v, delta * s, n)) for s in share_values),
        tuple(k.public_key().public_bytes_raw() for k in signing_keys),
    )
    model_key = model_key if model_key is not None else secrets.token_bytes(32)
    shares = {
        name: KeyShare(public, name, int(s), model_key, key.private_bytes_raw())
        for name, s, key in zip(holders, share_values, signing_keys, strict=True)
    }
    return Dealt(public, shares)


# --- decryption shares, combination ------------------------------------------------------------


def decryption_share(key: KeyShare, c: int) -> int:
    """x^(2Δ·s_i) mod n for x = c mod n."""
    n = mpz(key.public.n)
    return int(gmpy2.powmod(mpz(c) % n, key.exponent, n))


def share_exponentiation(n: int, exponent: int, ciphertexts: Sequence[int]) -> list[int]:
    """The decryption shares of a batch (what the worker processes run)."""
    n_ = mpz(n)
    e = mpz(exponent)
    return [int(gmpy2.powmod(mpz(c) % n_, e, n_)) for c in ciphertexts]


def lagrange(indices: Sequence[int], delta: int) -> dict[int, int]:
    """μ_i = Δ·∏_{j∈S∖i} j/(j − i): integers, Σ μ_i f(i) = Δ·f(0) for every f of degree < |S|."""
    if len(set(indices)) != len(indices) or any(i < 1 for i in indices):
        raise ProtocolError("Lagrange coefficients need distinct positive holder indices")
    out = {}
    for i in indices:
        num, den = delta, 1
        for j in indices:
            if j != i:
                num *= j
                den *= j - i
        if num % den:
            raise ProtocolError("Δ is not a multiple of the Lagrange denominator (too many holders)")
        out[i] = num // den
    return out


def combine_roots(public: ThresholdPublicKey, shares: dict[int, Sequence[int]]) -> list[int]:
    """w_j = ∏_i x_ij^(2μ_i) mod n = ρ_j^(4Δ²) for t shares (holder index → shares of every j)."""
    if len(shares) != public.threshold:
        raise ProtocolError(f"combining needs exactly {public.threshold} shares, got {len(shares)}")
    mu = lagrange(sorted(shares), public.delta)
    n = mpz(public.n)
    columns = [(mpz(2 * mu[i]), shares[i]) for i in sorted(shares)]
    count = len(columns[0][1])
    if any(len(col) != count for _, col in columns):
        raise ProtocolError("every holder must share the same number of ciphertexts")
    out = []
    for j in range(count):
        w = mpz(1)
        for exponent, col in columns:
            w = w * gmpy2.powmod(mpz(col[j]), exponent, n) % n  # negative μ: gmpy2 inverts
        out.append(int(w))
    return out


def lift_decrypt(n: int, delta: int, ciphertexts: Sequence[int], roots: Sequence[int]) -> list[int]:
    """M_j from c_j and w_j = ρ_j^(4Δ²) mod n: M_j = L(c_j^(4Δ²)·(w_j^n mod n²)⁻¹)·(4Δ²)⁻¹ mod n."""
    n_ = mpz(n)
    nsq = n_ * n_
    k = mpz(4 * delta * delta)
    k_inv = gmpy2.invert(k, n_)
    out = []
    for c, w in zip(ciphertexts, roots, strict=True):
        lifted = gmpy2.powmod(mpz(w), n_, nsq)
        u = gmpy2.powmod(mpz(c), k, nsq) * gmpy2.invert(lifted, nsq) % nsq
        if (u - 1) % n_:
            raise ProtocolError("a combined decryption is inconsistent (wrong shares or foreign ciphertext)")
        out.append(int((u - 1) // n_ * k_inv % n_))
    return out


def decrypt(
    public: ThresholdPublicKey, ciphertexts: Sequence[int], shares: dict[int, Sequence[int]]
) -> list[int]:
    """Plaintexts from exactly t holders' decryption shares (index → shares of each ciphertext)."""
    return lift_decrypt(public.n, public.delta, ciphertexts, combine_roots(public, shares))


# --- batch coefficients, multi-exponentiation, proofs -------------------------------------------


def context(session: str, round_: int, holder: str, sum_digest: str) -> bytes:
    """What a proof binds besides the numbers: session, round, holder and the digest of the sum."""
    try:
        session_bytes, digest = bytes.fromhex(session), bytes.fromhex(sum_digest)
    except ValueError:
        raise ProtocolError("session and sum digest must be hex") from None
    return field(session_bytes) + field(struct.pack(">I", round_)) + field(holder.encode()) + field(digest)


def batch_coefficients(seed: bytes, count: int) -> list[int]:
    """``count`` 128-bit coefficients: SHAKE-256(seed), 16 big-endian bytes each."""
    stream = hashlib.shake_256(seed).digest(BATCH_BYTES * count)
    return [int.from_bytes(stream[i : i + BATCH_BYTES], "big") for i in range(0, len(stream), BATCH_BYTES)]


def multi_power(bases: Sequence[int], exponents: Sequence[int], modulus: int, bits: int = 128) -> int:
    """∏ bases_j^exponents_j mod modulus, exponents below 2^bits (bucket method, 8-bit windows)."""
    m = mpz(modulus)
    result = mpz(1)
    digits = [int(e).to_bytes(bits // 8, "big") for e in exponents]
    values = [mpz(b) for b in bases]
    for position in range(bits // 8):
        for _ in range(8):
            result = result * result % m
        buckets = [mpz(1)] * 256
        for value, digit in zip(values, digits, strict=True):
            d = digit[position]
            if d:
                buckets[d] = buckets[d] * value % m
        running = acc = mpz(1)
        for d in range(255, 0, -1):
            running = running * buckets[d] % m
            acc = acc * running % m
        result = result * acc % m
    return int(result)


def _batch_seed(
    public: ThresholdPublicKey, ctx: bytes, index: int, xs: Sequence[int], ys: Sequence[int]
) -> bytes:
    h = hashlib.sha256(DOMAIN + b"/batch")
    h.update(field(ctx) + field(struct.pack(">I", index)) + field(struct.pack(">I", len(xs))))
    width = public.n_bytes
    h.update(b"".join(int_bytes(x, width) for x in xs))
    h.update(b"".join(int_bytes(y, width) for y in ys))
    return h.digest()


def _challenge(public: ThresholdPublicKey, ctx: bytes, index: int, values: Sequence[int]) -> int:
    h = hashlib.sha256(DOMAIN + b"/proof")
    h.update(field(ctx) + field(struct.pack(">I", index)))
    for value in values:
        h.update(field(int_bytes(value, public.n_bytes)))
    return int.from_bytes(h.digest(), "big")


def _batched(
    public: ThresholdPublicKey, ctx: bytes, index: int, ciphertexts: Sequence[int], ys: Sequence[int]
):
    n = public.n
    xs = [c % n for c in ciphertexts]
    coefficients = batch_coefficients(_batch_seed(public, ctx, index, xs, ys), len(xs))
    big_x = pow(multi_power(xs, coefficients, n), 4, n)
    big_y = pow(multi_power(ys, coefficients, n), 2, n)
    return big_x, big_y


def prove(
    key: KeyShare, ciphertexts: Sequence[int], ys: Sequence[int], ctx: bytes, r: int | None = None
) -> bytes:
    """e ‖ z: a batched Chaum–Pedersen proof that ys are x_j^(2Δ·s_i) for this holder's s_i.
    ``r`` is for known-answer vectors only (random below 2^r_bits by default)."""
    public = key.public
    n = public.n
    big_x, big_y = _batched(public, ctx, key.index, ciphertexts, ys)
    if r is None:
        r = secrets.randbits(public._r_bits)
    a = int(gmpy2.powmod(big_x, r, n))
    b = int(gmpy2.powmod(public.v, r, n))
    e = _challenge(public, ctx, key.index, (public.v, big_x, key.verification_key, big_y, a, b))
    z = r + e * public.delta * key.share
    return int_bytes(e, HASH_BYTES) + int_bytes(z, public._z_bytes)


def verify(
    public: ThresholdPublicKey,
    index: int,
    ciphertexts: Sequence[int],
    ys: Sequence[int],
    proof: bytes,
    ctx: bytes,
) -> bool:
    """True iff ``proof`` shows that ``ys`` are holder ``index``'s correct shares of ``ciphertexts``
    (in this context). Malformed input is simply False."""
    n = public.n
    if (
        len(proof) != public.proof_bytes
        or len(ys) != len(ciphertexts)
        or not 1 <= index <= len(public.holders)
    ):
        return False
    if any(not 0 < y < n for y in ys) or gmpy2.gcd(_product_mod(ys, n), n) != 1:
        return False
    e = int.from_bytes(proof[:HASH_BYTES], "big")
    z = int.from_bytes(proof[HASH_BYTES:], "big")
    big_x, big_y = _batched(public, ctx, index, ciphertexts, ys)
    if gmpy2.gcd(big_x, n) != 1:
        return False
    vk = public.verification[index - 1]
    a = int(gmpy2.powmod(big_x, z, n) * gmpy2.powmod(big_y, -e, n) % n)
    b = int(gmpy2.powmod(public.v, z, n) * gmpy2.powmod(vk, -e, n) % n)
    return e == _challenge(public, ctx, index, (public.v, big_x, vk, big_y, a, b))


def _product_mod(values: Sequence[int], n: int) -> int:
    n_ = mpz(n)
    product = mpz(1)
    for v in values:
        product = product * v % n_
    return int(product)


def check_decryption(
    n: int, delta: int, ciphertexts: Sequence[int], roots: Sequence[int], plaintexts: Sequence[int]
) -> bool:
    """A verifier's batch check of a claimed decryption, with fresh private 128-bit coefficients γ:
    ∏ c_j^(8Δ²γ_j) = (1 + n)^(8Δ²·Σγ_j M_j) · ((∏ w_j^γ_j)² mod n)^n  (mod n²).
    The (1 + n)-component pins every M_j mod n; a wrong M_j passes with probability ≤ 2^-128. The
    squares make the check blind to roots multiplied by a square root of 1 (−1 is one anyone knows):
    such a claim has the right plaintexts, and a check that failed on it half the time let a
    decryptor get honest verifiers judged liars (fourth attacker, 3). Cost: two multi-exponentiations
    and one lift, instead of one lift per ciphertext."""
    count = len(ciphertexts)
    if len(roots) != count or len(plaintexts) != count:
        return False
    n_ = mpz(n)
    nsq = n_ * n_
    if any(not 0 <= mj < n for mj in plaintexts) or any(not 0 < w < n for w in roots):
        return False
    gammas = [secrets.randbits(8 * BATCH_BYTES) for _ in range(count)]
    k = 8 * delta * delta
    left = gmpy2.powmod(multi_power(ciphertexts, gammas, int(nsq)), k, nsq)
    total = sum(g * mj for g, mj in zip(gammas, plaintexts, strict=True)) % n
    root = mpz(multi_power(roots, gammas, n)) ** 2 % n_
    right = (1 + k * total % n * n_) % nsq * gmpy2.powmod(root, n_, nsq) % nsq
    return left == right


def parse_shares(blob: bytes, public: ThresholdPublicKey, count: int) -> tuple[list[int], bytes]:
    """A holder's share blob: ``count`` shares of |n|/8 bytes, then the proof. Any other length or
    a share outside [1, n) is a WireError/ProtocolError."""
    width = public.n_bytes
    if not isinstance(blob, (bytes, bytearray)) or len(blob) != count * width + public.proof_bytes:
        raise WireError(
            f"a decryption-share blob is {count} × {width} + {public.proof_bytes} bytes, got "
            f"{len(blob) if isinstance(blob, (bytes, bytearray)) else type(blob).__name__}"
        )
    ys = [int.from_bytes(blob[i : i + width], "big") for i in range(0, count * width, width)]
    if any(not 0 < y < public.n for y in ys):
        raise ProtocolError("a decryption share is outside [1, n)")
    return ys, bytes(blob[count * width :])


def encode_shares(public: ThresholdPublicKey, ys: Sequence[int], proof: bytes) -> bytes:
    width = public.n_bytes
    return b"".join(int_bytes(y, width) for y in ys) + proof
