"""``ckks``: approximate secure sum with TenSEAL under a key the aggregator does not hold.

Parties encrypt their (weighted) real vector in chunks of N/2 values with the shared secret key;
the aggregator adds ciphertexts under a context that has no secret key, received once per
session; one key-holding party decrypts the sum, fuses and seals the next model. The protocol is
``layers/shared_key.py``; this module supplies the CKKS scheme. Specification: ``protocols/ckks.md``.

Exactness is replaced by a stated precision: the decrypted sum differs from the true sum by about
1e-6 per coordinate with the default parameters. Sizes are checked when the stack is configured:
the largest possible sum of every coordinate must fit the parameters' range.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts

from securefl.crypto import ckks
from securefl.crypto.signing import Identities
from securefl.errors import ConfigError, ProtocolError, WireError
from securefl.layers.base import ImpossibleSum, RoundContext, StackContext, Transform
from securefl.layers.bounds import CoordinateBounds, coordinate_bounds
from securefl.layers.shared_key import Combiner, Scheme, SharedKeySum, model_key_id, pad_seed
from securefl.wire import decode_record, encode_record

_MODEL_KEY_BYTES = 32


@dataclass
class CkksKeys:
    """A party's CKKS material: the context with the secret key, and the model-sealing key."""

    context: ts.Context
    model_key: bytes
    public_blob: bytes = field(default=b"")
    key_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.public_blob:
            self.public_blob = ckks.serialize(self.context, secret=False)
        if not self.key_id:
            # Binds every key a holder installs: parameters, secret key and model key (N1/N2).
            self.key_id = ckks.fingerprint(
                self.public_blob, ckks.secret_key_commitment(self.context), model_key_id(self.model_key)
            )


def _pack_blobs(magic: bytes, blobs: list[bytes]) -> bytes:
    return encode_record(magic, {"sizes": [len(b) for b in blobs]}, {"ciphertexts": b"".join(blobs)})


def _unpack_blobs(magic: bytes, payload: bytes, count: int, max_each: int) -> list[bytes]:
    header, parts = decode_record(payload, magic, {"sizes": list}, ("ciphertexts",))
    sizes, data = header["sizes"], parts["ciphertexts"]
    if len(sizes) != count:
        raise WireError(f"expected {count} CKKS ciphertexts, got {len(sizes)}")
    if any(type(s) is not int or not 0 < s <= max_each for s in sizes) or sum(sizes) != len(data):
        raise WireError("CKKS ciphertext sizes are invalid or do not add up")
    offsets = np.cumsum([0, *sizes])
    return [data[offsets[i] : offsets[i + 1]] for i in range(count)]


class CkksScheme(Scheme):
    name = "ckks"

    def __init__(self, params: ckks.CkksParams) -> None:
        self.params = params
        self.bounds: CoordinateBounds | None = None  # set when the stack is validated

    def generate(self) -> CkksKeys:
        return CkksKeys(ckks.new_context(self.params), os.urandom(_MODEL_KEY_BYTES))

    def material_to_bytes(self, material: CkksKeys) -> bytes:
        return material.model_key + ckks.serialize(material.context, secret=True)

    def material_from_bytes(self, blob: bytes) -> CkksKeys:
        if len(blob) <= _MODEL_KEY_BYTES:
            raise WireError("CKKS key material truncated")
        context = ckks.load_context(blob[_MODEL_KEY_BYTES:], self.params, secret=True)
        return CkksKeys(context, blob[:_MODEL_KEY_BYTES])

    def public_to_bytes(self, material: CkksKeys) -> bytes:
        return material.public_blob

    def public_from_bytes(self, blob: bytes) -> ts.Context:
        return ckks.load_context(blob, self.params, secret=False)

    def model_key(self, material: CkksKeys) -> bytes:
        return material.model_key

    def fingerprint(self, material: CkksKeys) -> str:
        return material.key_id

    # Every party encrypts its vector followed by one counter slot holding 1.0: the decrypted slot
    # is the number of contributions, which the decryptor checks against the aggregator's count.

    def max_encrypt_bytes(self, ctx: RoundContext) -> int:
        return self.params.ciphertexts_for(ctx.vector_size + 1) * self.params.max_ciphertext_bytes() + 65536

    def pads(self, material: CkksKeys, ctx: RoundContext, party: str, chunks: int) -> list[np.ndarray]:
        """``party``'s contribution pads for this round: per chunk, N words uniform mod each prime of
        the data level (added in the NTT domain, so the padded plaintext is uniform mod q)."""
        seed = pad_seed(material.model_key, ctx, party)
        primes = ckks.data_primes(material.context)
        return [ckks.pad_words(seed, j, primes, self.params.poly_modulus_degree) for j in range(chunks)]

    def encrypt(self, material: CkksKeys, vector: np.ndarray, ctx: RoundContext, party: str) -> bytes:
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (ctx.vector_size,):
            raise ProtocolError(f"expected a vector of {ctx.vector_size} values, got shape {vector.shape}")
        self.bounds.check(vector)  # a value out of bounds could overflow the sum: refused
        blobs = ckks.encrypt(material.context, np.append(vector, 1.0), self.params)
        pads = self.pads(material, ctx, party, len(blobs))
        padded = [ckks.add_pad(material.context, b, pad) for b, pad in zip(blobs, pads, strict=True)]
        return _pack_blobs(b"CENr", padded)

    def combiner(self, public: ts.Context, ctx: RoundContext) -> Combiner:
        return _CkksCombiner(ckks.CiphertextSum(public, self.params, ctx.vector_size + 1), self.params)

    def decrypt(
        self, material: CkksKeys, combined: bytes, contributors: tuple[str, ...], ctx: RoundContext
    ) -> np.ndarray:
        count = self.params.ciphertexts_for(ctx.vector_size + 1)
        blobs = _unpack_blobs(b"CSUM", combined, count, self.params.max_ciphertext_bytes())
        for blob in blobs:
            ckks.check_chunk_bytes(blob, self.params)  # before SEAL or TenSEAL parses it
        # Remove the pads of exactly the named contributors: any other combination of ciphertexts
        # (one party's passed off as several, a party missing or scaled by any ring element, a chunk
        # moved to another index or round) keeps a uniform pad term mod q and decrypts to noise,
        # which the counter and bound checks refuse.
        primes = ckks.data_primes(material.context)
        padding = [self.pads(material, ctx, p, count) for p in contributors]
        blobs = [
            ckks.add_pad(
                material.context, blob, ckks.pad_sum([pads[j] for pads in padding], primes), subtract=True
            )
            for j, blob in enumerate(blobs)
        ]
        total = ckks.decrypt(material.context, blobs, ctx.vector_size + 1, self.params)
        self.check_sum(total[:-1], total[-1], len(contributors))
        return total[:-1]

    def check_sum(self, total: np.ndarray, counter: float, contributors: int) -> None:
        """Refuse a decrypted sum that honest parties cannot have produced (ImpossibleSum).

        Each honest party's coordinate i lies within ±bound_i (CoordinateBounds: the party checks
        before encrypting) and its counter slot is 1, so the sum of ``contributors`` parties has
        |sum_i| ≤ contributors × bound_i + precision and a counter within precision of
        ``contributors``. A sum outside that comes from a ciphertext under another key, one a party
        or the aggregator shifted, or a count the aggregator misreported. The message names the
        bound but not the offending value: it goes back to the aggregator, who must not learn the sum.
        """
        if self.bounds is None:
            raise ConfigError("ckks was used before its stack was validated")
        tolerance = self.params.precision(contributors)
        if not np.isfinite(counter) or abs(counter - contributors) > 0.25:
            raise ImpossibleSum(
                f"the CKKS sum cannot come from {contributors} honest parties: its counter slot (1 per "
                "party, within the CKKS precision) disagrees — a wrong count or a foreign ciphertext"
            )
        excess = ~(np.abs(total) <= self.bounds.bounds * contributors + tolerance)  # NaN counts as excess
        if excess.any():
            index = int(np.flatnonzero(excess)[0])
            group = next(name for name, s in self.bounds.groups if s.start <= index < s.stop)
            raise ImpossibleSum(
                f"the decrypted CKKS sum leaves its bound: {group} coordinate {index} exceeds {contributors} "
                f"contributions × ±{self.bounds.bounds[index]:.6g} (+ CKKS precision {tolerance:.2g}); it "
                "cannot come from honest parties (a ciphertext under another key, or tampered): refused"
            )


class _CkksCombiner(Combiner):
    def __init__(self, total: ckks.CiphertextSum, params: ckks.CkksParams) -> None:
        self.total, self.params = total, params

    def add(self, payload: bytes) -> None:
        count = len(self.total.sizes)
        self.total.add(_unpack_blobs(b"CENr", payload, count, self.params.max_ciphertext_bytes()))

    def payload(self) -> bytes:
        return _pack_blobs(b"CSUM", self.total.blobs())


class CKKS(SharedKeySum):
    """Secure sum of real vectors under a shared CKKS key (TenSEAL).

    ``preset``: ``"add-only"`` (default: N = 4096, [45, 45], scale 2^30), ``"wide"`` (N = 8192,
    [60, 60], scale 2^40: sums up to 2^18 per coordinate, more precision, twice the bytes), or
    ``"flare"`` (NVIDIA FLARE's HEBuilder defaults: N = 8192, [60, 40, 40], scale 2^40, symmetric
    encryption: the baseline).
    Or give ``poly_modulus_degree``, ``coeff_mod_bit_sizes`` and ``scale_bits`` yourself; every
    choice is checked for 128-bit security. ``update_bound`` bounds the update if no ``clip``
    precedes the layer.
    """

    name = "ckks"
    accepts_floats = True
    modulus_bits = 64

    def __init__(
        self,
        preset: str = "add-only",
        poly_modulus_degree: int | None = None,
        coeff_mod_bit_sizes: Sequence[int] | None = None,
        scale_bits: int | None = None,
        update_bound: float | None = None,
        identities: Identities | None = None,
    ) -> None:
        if preset not in ckks.PRESETS:
            raise ConfigError(f"unknown CKKS preset {preset!r}; available: {', '.join(ckks.PRESETS)}")
        base = ckks.PRESETS[preset]
        self.params = ckks.CkksParams(
            poly_modulus_degree or base.poly_modulus_degree,
            tuple(coeff_mod_bit_sizes or base.coeff_mod_bit_sizes),
            scale_bits or base.scale_bits,
            base.symmetric,
        )
        self.update_bound = update_bound
        super().__init__(CkksScheme(self.params), identities=identities)

    def validate(self, ctx: StackContext, transforms: Sequence[Transform]) -> None:
        if any(t.produces_integers for t in transforms):
            raise ConfigError("ckks encrypts real values: remove 'quantize' from the stack")
        bounds = coordinate_bounds(ctx, transforms, self.update_bound, "ckks")
        self.scheme.bounds = bounds
        # max(·, 1): the counter slot (1 per party) must fit too.
        largest = max(float(bounds.bounds.max()), 1.0) * ctx.max_parties
        if largest > self.params.max_abs_sum:
            raise ConfigError(
                f"a CKKS sum over {ctx.max_parties} parties could reach {largest:.6g} in one coordinate, but "
                f"N={self.params.poly_modulus_degree}, moduli {list(self.params.coeff_mod_bit_sizes)}, scale "
                f"2^{self.params.scale_bits} decode sums only up to {self.params.max_abs_sum:.6g}: lower "
                "weight_bound, the clip norm or metric_bounds, lower scale_bits, or use preset='wide'"
            )

    def resolution(self) -> float:
        return self.scheme.params.precision(1)

    def __repr__(self) -> str:
        p = self.params
        return (
            f"CKKS(N={p.poly_modulus_degree}, moduli={list(p.coeff_mod_bit_sizes)}, scale=2^{p.scale_bits})"
        )
