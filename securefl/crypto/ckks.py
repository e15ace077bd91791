"""CKKS on TenSEAL, with parameters chosen for aggregation (additions only).

Aggregation adds ciphertexts and never multiplies them, so no rescaling level is needed: a chain
of two primes (data + special) suffices. The default, N = 4096 with moduli [45, 45] and scale 2^30,
holds 2,048 values per ciphertext, costs about 27 bytes per value on the wire (half of the usual
N = 8192, [60, 40, 40, 60]) and decrypts sums with an error around 1e-6.

Bounds enforced here (design invariant 3):

* security: the total coefficient-modulus bits must not exceed the HomomorphicEncryption.org
  standard's limit for 128-bit classical security at that N;
* range: a (summed) value v decodes correctly while |v|·2^scale stays well below half the data
  modulus; we require |v| ≤ 2^(data_bits − scale_bits − 2), where data_bits excludes the special
  prime. TenSEAL checks single encodings but not sums, which would silently wrap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from securefl.errors import ConfigError, ProtocolError, WireError

# Largest total log2(q) for 128-bit classical security (HE standard, ternary secrets).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CkksParams:
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (45, 45)
    scale_bits: int = 30
    symmetric: bool = True  # parties encrypt with the secret key: ~2x faster here

    def __post_init__(self) -> None:
        n, bits = self.poly_modulus_degree, tuple(self.coeff_mod_bit_sizes)
        if n not in MAX_COEFF_BITS_128:
            raise ConfigError(
                f"CKKS poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, got {n}"
            )
        if not bits or any(not 20 <= b <= 60 for b in bits):
            raise ConfigError(f"CKKS coefficient moduli must be 20 to 60 bits each, got {list(bits)}")
        if sum(bits) > MAX_COEFF_BITS_128[n]:
            raise ConfigError(
                f"CKKS N={n} with moduli {list(bits)} ({sum(bits)} bits) is below 128-bit security: at most "
                f"{MAX_COEFF_BITS_128[n]} bits are allowed at this N; shorten the moduli or double N"
            )
        if not 10 <= self.scale_bits < self.data_bits - 2:
            raise ConfigError(
                f"CKKS scale 2^{self.scale_bits} leaves no room below the {self.data_bits}-bit data modulus; "
                f"use a scale between 2^10 and 2^{self.data_bits - 3}"
            )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        bits = self.coeff_mod_bit_sizes
        return sum(bits[:-1]) if len(bits) > 1 else bits[0]

    @property
    def max_abs_sum(self) -> float:
        """The largest |value| a decrypted sum may hold, per coordinate."""
        return float(2 ** (self.data_bits - self.scale_bits - 2))

    def ciphertexts_for(self, count: int) -> int:
        return -(-count // self.slots)

    def max_ciphertext_bytes(self) -> int:
        return 2 * self.poly_modulus_degree * len(self.coeff_mod_bit_sizes) * 8 + 4096

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def chain_bits(self) -> tuple[int, ...]:
        """Total coefficient-modulus bits at each level of the modulus chain, key level first
        (what a SEAL context reports): e.g. (90, 45) for [45, 45]."""
        bits = self.coeff_mod_bit_sizes
        return tuple(sum(bits[: len(bits) - i]) for i in range(len(bits)))

    def precision(self, contributors: int) -> float:
        """The error the decrypted sum of ``contributors`` ciphertexts is allowed per coordinate in the
        bound check: contributors × 2^(20 − scale_bits) (9.8e-4 per party for add-only, whose
        measured error is ~1e-6 for 10 parties: a margin of three orders of magnitude)."""
        return max(1, contributors) * 2.0 ** (20 - self.scale_bits)


# Presets: the add-only default; a wider one for large sums and precision; NVIDIA FLARE's default
# parameters (public-key encryption, a multiplication-ready chain), kept as the baseline to beat.
PRESETS = {
    "add-only": CkksParams(),
    "wide": CkksParams(8192, (60, 60), 40),
    "flare": CkksParams(8192, (60, 40, 40), 40, symmetric=False),
}


def new_context(params: CkksParams) -> ts.Context:
    """A context holding a fresh secret key."""
    kind = ts.ENCRYPTION_TYPE.SYMMETRIC if params.symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=kind,
    )
    context.global_scale = 2**params.scale_bits
    return context


def serialize(context: ts.Context, secret: bool) -> bytes:
    return context.serialize(save_secret_key=secret, save_galois_keys=False, save_relin_keys=False)


def load_context(blob: bytes, params: CkksParams, secret: bool) -> ts.Context:
    """A context from bytes, checked: it must (or, for the aggregator, must not) hold a secret key."""
    try:
        context = ts.context_from(blob)
    except Exception as exc:
        raise WireError(f"not a TenSEAL context: {type(exc).__name__}") from None
    if context.is_private() != secret:
        what = "holds a secret key: refusing to keep it" if context.is_private() else "lacks the secret key"
        raise ProtocolError(f"the CKKS context {what}")
    check_context(context, params)
    context.global_scale = 2**params.scale_bits
    return context


def check_context(context: ts.Context, params: CkksParams) -> None:
    """Refuse a context whose scheme, N or modulus chain differ from the agreed parameters.

    Security argument: the parameters are agreed in configuration, never taken from a payload. A
    key holder that handed out a context at N = 1024, or with other primes, would have newcomers
    encrypt below 128-bit security, or make every honest ciphertext unusable at the aggregator.
    """
    try:
        data = context.seal_context().data
        level = data.key_context_data()
        n, chain = level.parms().poly_modulus_degree(), []
        scheme = level.parms().scheme()
        while level is not None:
            chain.append(level.total_coeff_modulus_bit_count())
            level = level.next_context_data()
    except Exception as exc:  # TenSEAL raises its own types on a broken context
        raise WireError(f"unusable TenSEAL context ({type(exc).__name__})") from None
    if (
        scheme != ts.SCHEME_TYPE.CKKS.value
        or n != params.poly_modulus_degree
        or tuple(chain) != params.chain_bits
    ):
        raise ProtocolError(
            f"the CKKS context is not the agreed one (N={params.poly_modulus_degree}, moduli "
            f"{list(params.coeff_mod_bit_sizes)}): it has N={n}, modulus chain bits {chain}"
        )


def fingerprint(public_blob: bytes) -> str:
    return hashlib.sha256(b"securefl/ckks/v1" + public_blob).hexdigest()[:32]


def encrypt(context: ts.Context, vector: np.ndarray, params: CkksParams) -> list[bytes]:
    """One serialized ciphertext per ``slots`` values (the last one zero-padded by CKKS)."""
    vector = np.asarray(vector, dtype=np.float64)
    return [
        ts.ckks_vector(context, vector[i : i + params.slots]).serialize()
        for i in range(0, len(vector), params.slots)
    ]


def load_ciphertext(
    context: ts.Context, blob: bytes, expected_size: int, params: CkksParams
) -> ts.CKKSVector:
    """Parse one chunk and check it against the agreed parameters, never against another payload.

    Refused (WireError/ProtocolError): bytes TenSEAL cannot parse; a vector of another length; or a
    ciphertext that is not one fresh, two-polynomial, NTT-form ciphertext at the data level of this
    context (same parameters id, hence same N and primes) at exactly the agreed scale 2^scale_bits.
    Any of those would either fail when added to honest ciphertexts — so the first contributor
    would decide what everyone else must match — or decrypt to garbage.
    """
    try:
        vector = ts.ckks_vector_from(context, blob)
        size = vector.size()
        ciphertexts = vector.ciphertext()
    except Exception as exc:  # TenSEAL raises RuntimeError, ValueError, TypeError on bad input
        raise WireError(f"corrupted CKKS ciphertext ({type(exc).__name__})") from None
    if size != expected_size:
        raise WireError(f"a CKKS ciphertext holds {size} values, expected {expected_size}")
    if len(ciphertexts) != 1:
        raise WireError(f"a CKKS chunk must hold one ciphertext, got {len(ciphertexts)}")
    c = ciphertexts[0]
    try:
        first = context.seal_context().data.first_parms_id()
        fields = (c.size(), c.parms_id(), c.is_ntt_form(), c.is_transparent(), c.scale)
    except Exception as exc:
        raise WireError(f"corrupted CKKS ciphertext ({type(exc).__name__})") from None
    polys, parms_id, ntt, transparent, scale = fields
    if polys != 2 or parms_id != first or not ntt or transparent:
        raise ProtocolError(
            "a CKKS ciphertext is not a fresh ciphertext under the agreed parameters (N="
            f"{params.poly_modulus_degree}, moduli {list(params.coeff_mod_bit_sizes)}): "
            f"{polys} polynomials, {'matching' if parms_id == first else 'other'} parameters"
        )
    if scale != params.scale:
        raise ProtocolError(
            f"a CKKS ciphertext is at scale {scale:.6g}, but the agreed scale is 2^{params.scale_bits}"
        )
    return vector


class CiphertextSum:
    """Ciphertexts added chunk by chunk under a context without a secret key."""

    def __init__(self, context: ts.Context, params: CkksParams, length: int) -> None:
        self.context, self.params, self.length = context, params, length
        self.sizes = [min(params.slots, length - i) for i in range(0, length, params.slots)]
        self.total: list[ts.CKKSVector] | None = None

    def add(self, blobs: list[bytes]) -> None:
        """Add one party's chunks — all or nothing. Every chunk is parsed and checked against the
        agreed parameters first; the sums are then built as new vectors and swapped in with one
        assignment, so a payload that fails anywhere leaves the running total untouched."""
        if len(blobs) != len(self.sizes):
            raise WireError(f"expected {len(self.sizes)} CKKS ciphertexts, got {len(blobs)}")
        vectors = [
            load_ciphertext(self.context, b, s, self.params) for b, s in zip(blobs, self.sizes, strict=True)
        ]
        if self.total is None:
            self.total = vectors
            return
        try:
            summed = [acc + v for acc, v in zip(self.total, vectors, strict=True)]
        except Exception as exc:  # unreachable once the chunks are checked; never half-added
            raise ProtocolError(f"CKKS ciphertexts could not be added ({type(exc).__name__})") from None
        self.total = summed

    def blobs(self) -> list[bytes]:
        return [v.serialize() for v in self.total]


def decrypt(context: ts.Context, blobs: list[bytes], length: int, params: CkksParams) -> np.ndarray:
    sizes = [min(params.slots, length - i) for i in range(0, length, params.slots)]
    if len(blobs) != len(sizes):
        raise WireError(f"expected {len(sizes)} CKKS ciphertexts, got {len(blobs)}")
    vectors = [load_ciphertext(context, b, s, params) for b, s in zip(blobs, sizes, strict=True)]
    try:
        return np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors])
    except Exception as exc:
        raise ProtocolError(f"the CKKS sum does not decrypt ({type(exc).__name__})") from None
