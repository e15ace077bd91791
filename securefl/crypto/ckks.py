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
    context.global_scale = 2**params.scale_bits
    return context


def fingerprint(public_blob: bytes) -> str:
    return hashlib.sha256(b"securefl/ckks/v1" + public_blob).hexdigest()[:32]


def encrypt(context: ts.Context, vector: np.ndarray, params: CkksParams) -> list[bytes]:
    """One serialized ciphertext per ``slots`` values (the last one zero-padded by CKKS)."""
    vector = np.asarray(vector, dtype=np.float64)
    return [
        ts.ckks_vector(context, vector[i : i + params.slots]).serialize()
        for i in range(0, len(vector), params.slots)
    ]


def _load_vector(context: ts.Context, blob: bytes, expected_size: int) -> ts.CKKSVector:
    try:
        vector = ts.ckks_vector_from(context, blob)
    except Exception as exc:
        raise WireError(f"corrupted CKKS ciphertext ({type(exc).__name__})") from None
    if vector.size() != expected_size:
        raise WireError(f"a CKKS ciphertext holds {vector.size()} values, expected {expected_size}")
    return vector


class CiphertextSum:
    """Ciphertexts added chunk by chunk under a context without a secret key."""

    def __init__(self, context: ts.Context, params: CkksParams, length: int) -> None:
        self.context, self.params, self.length = context, params, length
        self.sizes = [min(params.slots, length - i) for i in range(0, length, params.slots)]
        self.total: list[ts.CKKSVector] | None = None

    def add(self, blobs: list[bytes]) -> None:
        if len(blobs) != len(self.sizes):
            raise WireError(f"expected {len(self.sizes)} CKKS ciphertexts, got {len(blobs)}")
        vectors = [_load_vector(self.context, b, s) for b, s in zip(blobs, self.sizes, strict=True)]
        if self.total is None:
            self.total = vectors
        else:
            for acc, v in zip(self.total, vectors, strict=True):
                acc += v

    def blobs(self) -> list[bytes]:
        return [v.serialize() for v in self.total]


def decrypt(context: ts.Context, blobs: list[bytes], length: int, params: CkksParams) -> np.ndarray:
    sizes = [min(params.slots, length - i) for i in range(0, length, params.slots)]
    if len(blobs) != len(sizes):
        raise WireError(f"expected {len(sizes)} CKKS ciphertexts, got {len(blobs)}")
    return np.concatenate(
        [np.asarray(_load_vector(context, b, s).decrypt()) for b, s in zip(blobs, sizes, strict=True)]
    )
