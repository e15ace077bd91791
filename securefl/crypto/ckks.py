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
import hmac
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from tenseal import sealapi

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


# Presets: the add-only default; a wider one for large sums and precision; NVIDIA FLARE's own
# configuration — its HEBuilder's defaults: N = 8192, [60, 40, 40], scale 2^40, a multiplication-
# ready chain, symmetric (secret-key) encryption — kept as the baseline to beat.
PRESETS = {
    "add-only": CkksParams(),
    "wide": CkksParams(8192, (60, 60), 40),
    "flare": CkksParams(8192, (60, 40, 40), 40, symmetric=True),
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
    check_context_bytes(blob, params)  # bounded expansion, before TenSEAL parses it
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
    # The encryption type is agreed too, and an asymmetric context's public key must be its secret
    # key's (found by an attacker: a generator handed out an asymmetric context whose public key
    # belonged to another secret key; every party encrypted under it, every sum decrypted to
    # garbage inside identical refusal markers, and the model stayed frozen with nobody named).
    symmetric = _encrypts_symmetrically(context)
    if symmetric != params.symmetric:
        agreed = "symmetric (secret-key)" if params.symmetric else "public-key"
        raise ProtocolError(f"the CKKS context does not use the agreed {agreed} encryption")
    if not symmetric and context.is_private():
        _require_matching_public_key(context, params)


def _encrypts_symmetrically(context: ts.Context) -> bool:
    try:
        context.has_public_key()
    except ValueError:  # TenSEAL: "not supported for symmetric encryption"
        return True
    return False


def _require_matching_public_key(context: ts.Context, params: CkksParams) -> None:
    """Encrypt a known vector under the context's public key and decrypt it with its secret key."""
    probe = np.linspace(-1.0, 1.0, 16)
    try:
        if not context.has_public_key():
            raise ProtocolError("the CKKS context uses public-key encryption but holds no public key")
        decrypted = np.asarray(ts.ckks_vector(context, probe).decrypt(), dtype=np.float64)
    except ProtocolError:
        raise
    except Exception as exc:
        raise WireError(f"unusable TenSEAL context ({type(exc).__name__})") from None
    if decrypted.shape != probe.shape or not np.allclose(decrypted, probe, atol=1e-3):
        raise ProtocolError("the CKKS context's public key does not belong to its secret key")


def secret_key_commitment(context: ts.Context) -> bytes:
    """SHA-256 over SEAL's serialization of the context's secret key (deterministic: the same key
    always serializes to the same bytes with the same SEAL build). Binds a key fingerprint to the
    secret key itself: the parameter blob alone holds no key, so any context at the agreed
    parameters would match it (N1/N2). The secret key has ~N·log2(3) bits of entropy, so its hash
    reveals nothing usable."""
    if not context.is_private():
        raise ProtocolError("the CKKS context holds no secret key to commit to")
    try:
        with _Scratch() as scratch:
            context.secret_key().data.save(scratch.path)
            data = scratch.read()
    except OSError as exc:
        raise ProtocolError(f"the CKKS secret key could not be serialized: {exc}") from None
    return hashlib.sha256(b"securefl/ckks/secret-key" + data).digest()


def fingerprint(public_blob: bytes, secret_commitment: bytes, model_key_id: bytes) -> str:
    """Identifies a full CKKS key set: the parameters, the secret key (its commitment) and the
    model key (its id). Two key sets with another secret or model key have different fingerprints."""
    digest = hashlib.sha256(
        b"securefl/ckks/v2"
        + len(public_blob).to_bytes(4, "big")
        + public_blob
        + secret_commitment
        + model_key_id
    )
    return digest.hexdigest()[:32]


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
    check_chunk_bytes(blob, params)  # one ciphertext of bounded expansion, before TenSEAL parses it
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


# --- the wire form of a chunk, checked before TenSEAL sees it (decompression bombs) ----------------
#
# A TenSEAL CKKSVector serializes as a protobuf: field 1 the sizes (packed varints), field 2 one
# entry per SEAL ciphertext, field 3 the scale (double). Each SEAL object starts with a 16-byte
# header (magic 0xA15E, header size, version, compression mode, total size) followed by its
# members, zstd-compressed by default. A ciphertext of zeros compresses ~4000-fold, and TenSEAL
# loads every entry before anyone can count them: 130 KB of protobuf made the aggregator allocate
# ~1 GB. So the bytes are parsed here first: exactly one entry, a SEAL header of our version and a
# declared size equal to the bytes, and for zstd a single frame whose declared content size is
# exactly that of one fresh ciphertext at the agreed parameters and whose blocks cannot expand
# beyond about twice that. Only then is TenSEAL called.

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = 16
_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_BLOCK_MAX = 128 * 1024
_COMPR_NONE, _COMPR_ZSTD = 0, 2
_MAX_FIELDS = 64


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or overlong protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level protobuf fields (number, wire type, value); raise WireError if malformed."""
    out, pos = [], 0
    while pos < len(data):
        if len(out) >= _MAX_FIELDS:
            raise WireError("too many protobuf fields")
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            if pos + 8 > len(data):
                raise WireError("truncated protobuf field")
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise WireError("truncated protobuf field")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(data):
                raise WireError("truncated protobuf field")
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise WireError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def split_vector(blob: bytes) -> tuple[int, bytes, float]:
    """A serialized CKKSVector's (size, the one SEAL ciphertext, scale), refusing anything else: a
    second ciphertext entry, unknown or repeated fields, several sizes."""
    fields = _fields(blob)
    numbers = [n for n, _w, _v in fields]
    if sorted(numbers) != [1, 2, 3]:
        raise WireError(
            "a CKKS chunk must be one TenSEAL vector holding exactly one ciphertext (fields 1, 2, 3 once "
            f"each), got fields {sorted(numbers)[:10]}"
        )
    by = {n: (w, v) for n, w, v in fields}
    (w1, sizes), (w2, cipher), (w3, scale) = by[1], by[2], by[3]
    if w1 != 2 or w2 != 2 or w3 != 1:
        raise WireError("a CKKS chunk's fields have the wrong types")
    size, end = _varint(sizes, 0)
    if end != len(sizes):
        raise WireError("a CKKS chunk must hold exactly one size")
    return size, cipher, float(np.frombuffer(scale, dtype="<f8")[0])


def join_vector(size: int, cipher: bytes, scale: float) -> bytes:
    """The inverse of :func:`split_vector`."""
    sizes = _encode_varint(size)
    return (
        b"\x0a"
        + _encode_varint(len(sizes))
        + sizes
        + b"\x12"
        + _encode_varint(len(cipher))
        + cipher
        + b"\x19"
        + np.float64(scale).astype("<f8").tobytes()
    )


def ciphertext_plain_bytes(params: CkksParams) -> int:
    """Uncompressed size of one fresh ciphertext at the data level: parms_id (32), NTT flag (1),
    size, N, RNS count, scale, correction factor (8 each), the coefficient array's own SEAL header
    (16) and count (8), then 2 polynomials × N × data primes × 8 bytes."""
    data_primes = max(1, len(params.coeff_mod_bit_sizes) - 1)
    return 97 + 8 * 2 * params.poly_modulus_degree * data_primes


def check_seal_object(data: bytes, expected: int | None, limit: int) -> int:
    """Check a serialized SEAL object before SEAL loads it; return the bytes it can expand to.

    Refused (WireError): a header that is not SEAL's (magic, 16-byte header, major version 4), a
    declared size other than the bytes given, compression other than none or zstd; for zstd, not
    exactly one frame, no declared content size, a dictionary, a content size other than
    ``expected`` (when given) or above ``limit``, or blocks that could expand beyond it (raw and
    RLE blocks declare their size; a compressed block holds at most 128 KiB)."""
    if len(data) < _SEAL_HEADER:
        raise WireError("a SEAL object is shorter than its header")
    magic, header_size, major, _minor, compression, _reserved, size = struct.unpack(
        "<HBBBBHQ", data[:_SEAL_HEADER]
    )
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER or major != 4:
        raise WireError("not a SEAL 4 object (bad magic, header size or version)")
    if size != len(data):
        raise WireError(f"a SEAL object declares {size} bytes but {len(data)} were sent")
    if compression == _COMPR_NONE:
        plain = len(data) - _SEAL_HEADER
        if (expected is not None and plain != expected) or plain > limit:
            raise WireError(f"an uncompressed SEAL object of {plain} bytes is not the expected size")
        return plain
    if compression != _COMPR_ZSTD:
        raise WireError("a SEAL object must be uncompressed or zstd-compressed")
    return _check_zstd(data[_SEAL_HEADER:], expected, limit)


def _check_zstd(frame: bytes, expected: int | None, limit: int) -> int:
    if len(frame) < 6 or int.from_bytes(frame[:4], "little") != _ZSTD_MAGIC:
        raise WireError("a compressed SEAL object is not one zstd frame")
    descriptor = frame[4]
    single, checksum, dictionary = (descriptor >> 5) & 1, (descriptor >> 2) & 1, descriptor & 3
    if descriptor & 0x08 or dictionary:
        raise WireError("a zstd frame with a dictionary or reserved flags is refused")
    pos = 5 + (0 if single else 1)
    fcs_len = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    if fcs_len == 0 or pos + fcs_len > len(frame):
        raise WireError("a zstd frame must declare its content size")
    content = int.from_bytes(frame[pos : pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
    pos += fcs_len
    if (expected is not None and content != expected) or content > limit:
        raise WireError(
            f"a compressed SEAL object declares {content} bytes of content, expected "
            f"{expected if expected is not None else f'at most {limit}'}"
        )
    declared, compressed_blocks = 0, 0
    while True:
        if pos + 3 > len(frame):
            raise WireError("a zstd frame is truncated")
        header = int.from_bytes(frame[pos : pos + 3], "little")
        pos += 3
        last, kind, block = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3 or block > _ZSTD_BLOCK_MAX:
            raise WireError("a zstd block is reserved or oversized")
        if kind == 0:
            declared, pos = declared + block, pos + block
        elif kind == 1:
            declared, pos = declared + block, pos + 1
        else:
            compressed_blocks, pos = compressed_blocks + 1, pos + block
        if declared > content or compressed_blocks > content // _ZSTD_BLOCK_MAX + 1:
            raise WireError("a zstd frame's blocks expand beyond its declared content size")
        if last:
            break
    if pos + 4 * checksum != len(frame):
        raise WireError("bytes after the zstd frame (a second frame or trailing data)")
    return declared + compressed_blocks * _ZSTD_BLOCK_MAX


def check_chunk_bytes(blob: bytes, params: CkksParams) -> None:
    """Everything checkable about a chunk's bytes before TenSEAL parses them (see above), and that
    the chunk is canonical: its vector scale (TenSEAL's field 3, apart from the SEAL ciphertext's
    own) is exactly the agreed one. A sum keeps its first operand's vector scale, so a chunk with
    another (found by an attacker: 0.0, which protobuf then leaves out of the sum's bytes) would
    decide what the key holders receive, and they would refuse every sum it was first in."""
    _size, cipher, scale = split_vector(blob)
    if scale != params.scale:  # also refuses NaN
        raise WireError(
            f"a CKKS chunk's vector scale is {scale!r}, but the agreed scale is 2^{params.scale_bits}"
        )
    expected = ciphertext_plain_bytes(params)
    check_seal_object(cipher, expected, expected)


def check_context_bytes(blob: bytes, params: CkksParams) -> None:
    """Bound what a serialized TenSEAL context can expand to before TenSEAL loads it: every SEAL
    object inside (found by walking the protobuf) passes :func:`check_seal_object`, each at most
    four key-level polynomials, all together at most eight."""
    poly = 8 * params.poly_modulus_degree * len(params.coeff_mod_bit_sizes)
    total = 0
    for obj in _seal_objects(blob, 0):
        total += check_seal_object(obj, None, 4 * poly + 4096)
        if total > 8 * poly + 65536:
            raise WireError("a CKKS context expands beyond what its keys need (Galois or other keys?)")


def _seal_objects(blob: bytes, depth: int) -> list[bytes]:
    if depth > 4:
        raise WireError("a CKKS context nests too deeply")
    if len(blob) >= 2 and int.from_bytes(blob[:2], "little") == _SEAL_MAGIC:
        return [blob]
    try:
        fields = _fields(blob)
    except WireError:
        return []  # opaque bytes (a string): TenSEAL reads no SEAL object from it
    found = []
    for _number, wire, value in fields:
        if wire == 2 and value:
            found += _seal_objects(value, depth + 1)
    return found


# --- contribution pads (shared_key.pad_seed): uniform in Z_q^N, added in the NTT domain -------------
#
# TenSEAL's Python API exposes no coefficients, so a pad is added with SEAL itself (tenseal.sealapi):
# the chunk's SEAL ciphertext and an uncompressed SEAL plaintext holding the pad are loaded from an
# in-memory file (SEAL loads and saves only through paths here; see _Scratch), added or subtracted
# (add_plain: c0 += pad mod each prime, NTT form), and saved back.


class _SealBridge:
    """A sealapi context equal to a TenSEAL context's (same primes, hence same parms_id)."""

    def __init__(self, context: ts.Context) -> None:
        data = context.seal_context().data
        key_level = data.key_context_data().parms()
        self.n = key_level.poly_modulus_degree()
        key_primes = [m.value() for m in key_level.coeff_modulus()]
        self.primes = [m.value() for m in data.first_context_data().parms().coeff_modulus()]
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.n)
        parms.set_coeff_modulus([sealapi.Modulus(q) for q in key_primes])
        self.context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.NONE)
        self.evaluator = sealapi.Evaluator(self.context)


_BRIDGES: dict[tuple, _SealBridge] = {}


def _bridge(context: ts.Context) -> _SealBridge:
    data = context.seal_context().data
    key = tuple(data.key_parms_id()) + tuple(data.first_parms_id())
    if key not in _BRIDGES:
        _BRIDGES[key] = _SealBridge(context)
    return _BRIDGES[key]


def data_primes(context: ts.Context) -> list[int]:
    """The primes of a context's data level (where fresh ciphertexts live)."""
    return list(_bridge(context).primes)


def pad_words(seed: bytes, index: int, primes: Sequence[int], n: int) -> np.ndarray:
    """Chunk ``index``'s pad: for each data-level prime q, n words uniform in [0, q) (rejection
    sampling of AES-256-CTR output masked to bitlen(q) bits, under a per-chunk seed)."""
    chunk_seed = hmac.new(seed, b"securefl/ckks/pad" + struct.pack(">I", index), hashlib.sha256).digest()
    stream = Cipher(algorithms.AES(chunk_seed), modes.CTR(bytes(16))).encryptor()
    rows = []
    for q in primes:
        mask = np.uint64((1 << int(q).bit_length()) - 1)
        row = np.empty(0, dtype=np.uint64)
        while row.size < n:
            words = np.frombuffer(stream.update(bytes(16 * n)), dtype="<u8") & mask
            row = np.concatenate([row, words[words < np.uint64(q)]])
        rows.append(row[:n])
    return np.stack(rows)


def pad_sum(pads: list[np.ndarray], primes: Sequence[int]) -> np.ndarray:
    """The sum of pads, mod each prime."""
    moduli = np.asarray(primes, dtype=np.uint64)[:, None]
    total = np.zeros_like(pads[0])
    for pad in pads:
        total = (total + pad) % moduli
    return total


class _Scratch:
    """Where SEAL (which loads and saves only through paths) reads and writes one chunk.

    An anonymous in-memory file (``memfd_create``, reached as /proc/self/fd/N) where the platform
    has one: nothing on disk, nothing a /tmp cleaner can remove. Otherwise a private temporary
    directory (mode 0700) made for this one operation and removed after it (D2: a directory cached
    per process was removed by a /tmp cleaner and every later pad failed, forever)."""

    def __enter__(self) -> _Scratch:
        self._dir: tempfile.TemporaryDirectory | None = None
        self._fd = -1
        try:
            if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
                self._fd = os.memfd_create("securefl-ckks", getattr(os, "MFD_CLOEXEC", 0))
                self.path = f"/proc/self/fd/{self._fd}"
            else:
                self._dir = tempfile.TemporaryDirectory(prefix="securefl-ckks-")
                self.path = os.path.join(self._dir.name, "chunk")
        except OSError as exc:
            self.close()
            raise ProtocolError(f"no scratch file for the CKKS contribution pad: {exc}") from None
        return self

    def write(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_pad(context: ts.Context, blob: bytes, pad: np.ndarray, subtract: bool = False) -> bytes:
    """``blob`` (a checked chunk) with ``pad`` (one row per data-level prime) added to, or
    subtracted from, its plaintext, mod each prime."""
    bridge = _bridge(context)
    size, cipher, scale = split_vector(blob)
    try:
        with _Scratch() as scratch:
            scratch.write(cipher)
            ct = sealapi.Ciphertext(bridge.context)
            ct.load(bridge.context, scratch.path)
            if pad.shape != (len(bridge.primes), bridge.n) or ct.coeff_modulus_size() != len(bridge.primes):
                raise ProtocolError("a contribution pad does not fit the ciphertext's parameters")
            scratch.write(_plaintext_bytes(cipher, ct.parms_id(), ct.scale, pad))
            plain = sealapi.Plaintext()
            plain.load(bridge.context, scratch.path)
            if subtract:
                bridge.evaluator.sub_plain_inplace(ct, plain)
            else:
                bridge.evaluator.add_plain_inplace(ct, plain)
            ct.save(scratch.path)
            out = scratch.read()
    except OSError as exc:
        raise ProtocolError(f"the CKKS contribution pad could not use its scratch file: {exc}") from None
    except (RuntimeError, ValueError) as exc:
        raise WireError(f"corrupted CKKS ciphertext ({type(exc).__name__})") from None
    return join_vector(size, out, scale)


def _plaintext_bytes(like: bytes, parms_id: Sequence[int], scale: float, pad: np.ndarray) -> bytes:
    """An uncompressed SEAL Plaintext (NTT form: parms_id set) holding ``pad``, with the version
    bytes of ``like`` (a SEAL object this build wrote)."""

    def header(size: int) -> bytes:
        return struct.pack("<HB", _SEAL_MAGIC, _SEAL_HEADER) + like[3:5] + struct.pack("<BHQ", 0, 0, size)

    data = np.ascontiguousarray(pad, dtype="<u8").tobytes()
    array = struct.pack("<Q", pad.size) + data
    array = header(_SEAL_HEADER + len(array)) + array
    body = struct.pack("<4Q", *parms_id) + struct.pack("<Q", pad.size) + struct.pack("<d", scale) + array
    return header(_SEAL_HEADER + len(body)) + body
