"""``paillier``: additively homomorphic secure sum under a key the aggregator does not hold.

Parties pack their quantized vector (many values per plaintext, ``crypto/packing.py``) and encrypt
it under a shared Paillier key; the aggregator multiplies ciphertexts as they arrive, holding only
the public key; one key-holding party decrypts the sum, fuses, and returns the next global model
sealed under a model key all parties share. The protocol (key distribution, decryptor, sealing) is
``layers/shared_key.py``; this module supplies the Paillier scheme and its key files.
Specification: ``protocols/paillier.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from securefl.crypto import paillier, prg
from securefl.crypto.keyfiles import read_private, write_private
from securefl.crypto.packing import Packing
from securefl.crypto.signing import Identities
from securefl.durable import write_new
from securefl.errors import ConfigError, ProtocolError, WireError
from securefl.layers.base import ImpossibleSum, RoundContext, StackContext, Transform
from securefl.layers.quantize import Quantize
from securefl.layers.shared_key import Combiner, Scheme, SharedKeySum, pad_seed
from securefl.wire import decode_record, encode_record

KEY_FILE_KIND = "securefl-paillier-keys"
PUBLIC_FILE_KIND = "securefl-paillier-public"
_PARALLEL_MIN = 64  # fewer ciphertexts than this are not worth a process pool


# --- key material --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMaterial:
    """What a party holds: the public key, the model-sealing key, and (key holders) p and q."""

    public: paillier.PublicKey
    model_key: bytes = field(repr=False)  # secrets: never in a repr, a log line or an error
    private: paillier.PrivateKey | None = field(default=None, repr=False)

    @classmethod
    def generate(cls, bits: int = paillier.MIN_KEY_BITS) -> KeyMaterial:
        private = paillier.generate_keypair(bits)
        return cls(private.public, os.urandom(32), private)

    @property
    def fingerprint(self) -> str:
        """Identifies the key set (public values only)."""
        digest = hashlib.sha256(b"securefl/paillier/v1" + _int_bytes(self.public.n) + self.model_key_id)
        return digest.hexdigest()[:32]

    @property
    def model_key_id(self) -> bytes:
        return hashlib.sha256(b"securefl/paillier/model-key-id" + self.model_key).digest()

    def to_json(self, include_private: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": KEY_FILE_KIND,
            "version": 1,
            "n": hex(self.public.n),
            "hs": hex(self.public.hs),
            "model_key": self.model_key.hex(),
        }
        if include_private and self.private is not None:
            data.update(
                p=hex(self.private.p), q=hex(self.private.q), gp=hex(self.private.gp), gq=hex(self.private.gq)
            )
        return data

    @classmethod
    def from_json(cls, data: Any) -> KeyMaterial:
        try:
            if data.get("kind") != KEY_FILE_KIND or data.get("version") != 1:
                raise ConfigError(f"not a version-1 {KEY_FILE_KIND} document")
            public = paillier.PublicKey(int(data["n"], 16), int(data["hs"], 16))
            model_key = bytes.fromhex(data["model_key"])
            private = None
            if "p" in data:
                private = paillier.PrivateKey(
                    public, int(data["p"], 16), int(data["q"], 16), int(data["gp"], 16), int(data["gq"], 16)
                )
                if private.p * private.q != public.n:
                    raise ConfigError("Paillier key material is inconsistent: p·q ≠ n")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid Paillier key material: {exc}") from None
        if len(model_key) != 32:
            raise ConfigError("invalid Paillier key material: model_key must be 32 bytes")
        return cls(public, model_key, private)

    def save(self, path: str | Path, include_private: bool = True, overwrite: bool = True) -> Path:
        """Write the keys as JSON, readable by the owner only (0600)."""
        document = json.dumps(self.to_json(include_private), indent=1).encode()
        return write_private(path, document, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> KeyMaterial:
        path = Path(path)
        try:
            # p, q and the model key: refused if others could read the file, or through a symlink
            data = json.loads(read_private(path, "Paillier key file"))
        except FileNotFoundError:
            raise ConfigError(
                f"Paillier key file {str(path)!r} does not exist; create it with 'securefl keys paillier'"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Paillier key file {str(path)!r} is not JSON: {exc}") from None
        return cls.from_json(data)


def save_public(public: paillier.PublicKey, path: str | Path) -> Path:
    """The public key alone (n, h_s): what an aggregator needs, nothing it could decrypt with."""
    document = {"kind": PUBLIC_FILE_KIND, "version": 1, "n": hex(public.n), "hs": hex(public.hs)}
    return write_new(path, json.dumps(document, indent=1).encode())  # never through a link


def load_public(path: str | Path) -> paillier.PublicKey:
    """The public key from a public or a full key file (a full one is held to a private file's
    rules: not readable by others, not through a symlink)."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("kind") not in (PUBLIC_FILE_KIND, KEY_FILE_KIND) or data.get("version") != 1:
            raise ConfigError(f"{path}: not a securefl Paillier key file")
        if data.get("kind") == KEY_FILE_KIND:
            read_private(path, "Paillier key file")
        return paillier.PublicKey(int(data["n"], 16), int(data["hs"], 16))
    except FileNotFoundError:
        raise ConfigError(
            f"Paillier key file {str(path)!r} does not exist; create it with 'securefl keys paillier'"
        ) from None
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid Paillier key file {str(path)!r}: {exc}") from None


def _is_full(path: str | Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("kind") == KEY_FILE_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _pad_width(public: paillier.PublicKey) -> int:
    """Bytes of keystream per pad: |n| + 128 bits, so that reduced mod n it is uniform within 2^-128."""
    return (public.bits + 128 + 7) // 8


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


# --- parallel encryption and decryption -----------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(key_json: dict, mode: str) -> None:
    ident = (key_json["n"], key_json["model_key"], mode)
    if _worker.get("id") == ident:
        return  # already set up for this key in this process
    _worker.clear()
    _worker["id"] = ident
    material = KeyMaterial.from_json(key_json)
    _worker["width"] = material.public.ciphertext_bytes
    if mode == "decrypt":
        _worker["key"] = material.private
    elif mode == "crt":
        _worker["enc"] = paillier.CrtEncryptor(material.private)
    else:
        _worker["enc"] = paillier.PublicEncryptor(material.public)


def _encrypt_chunk(plaintexts: list[int]) -> bytes:
    width, enc = _worker["width"], _worker["enc"]
    return b"".join(enc.encrypt(m).to_bytes(width, "big") for m in plaintexts)


def _decrypt_chunk(ciphertexts: bytes) -> list[int]:
    width, key = _worker["width"], _worker["key"]
    return [
        key.decrypt(int.from_bytes(ciphertexts[i : i + width], "big"))
        for i in range(0, len(ciphertexts), width)
    ]


class _Pools:
    """One process pool per (key, purpose), shared by every party object in this process."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str], ProcessPoolExecutor] = {}

    def get(self, material: KeyMaterial, mode: str, workers: int) -> ProcessPoolExecutor:
        key = (material.fingerprint, mode)
        if key not in self._pools:
            self._pools[key] = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(material.to_json(include_private=mode != "public"), mode),
            )
        return self._pools[key]


_POOLS = _Pools()


def _split(items: list, parts: int) -> list[list]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- the scheme ---------------------------------------------------------------------------------


def _public_bytes(public: paillier.PublicKey) -> bytes:
    n_bytes = (public.bits + 7) // 8
    return public.n.to_bytes(n_bytes, "big") + public.hs.to_bytes(2 * n_bytes, "big")


class PaillierScheme(Scheme):
    """Paillier arithmetic for the shared-key protocol: pack, encrypt on all cores, multiply, decrypt."""

    name = "paillier"

    def __init__(self, key_bits: int, encryption: str, workers: int) -> None:
        self.key_bits, self.encryption, self.workers = key_bits, encryption, workers
        self.value_bits: int | None = None  # set when the stack is validated
        self.max_parties = 1

    def packing(self, plaintext_bits: int) -> Packing:
        if self.value_bits is None:
            raise ConfigError("paillier was used before its stack was validated")
        return Packing(self.value_bits, self.max_parties, plaintext_bits)

    def generate(self) -> KeyMaterial:
        return KeyMaterial.generate(self.key_bits)

    def material_to_bytes(self, material: KeyMaterial) -> bytes:
        return _serialize_material(material)

    def material_from_bytes(self, blob: bytes) -> KeyMaterial:
        return _parse_material(blob, self.key_bits)

    def public_to_bytes(self, material: KeyMaterial) -> bytes:
        return _public_bytes(material.public)

    def public_from_bytes(self, blob: bytes) -> paillier.PublicKey:
        n_bytes = (self.key_bits + 7) // 8
        if len(blob) != 3 * n_bytes:
            raise WireError(
                f"a {self.key_bits}-bit Paillier public key is {3 * n_bytes} bytes, got {len(blob)}"
            )
        public = paillier.PublicKey(
            int.from_bytes(blob[:n_bytes], "big"), int.from_bytes(blob[n_bytes:], "big")
        )
        if public.bits != self.key_bits or public.n % 2 == 0:
            raise ProtocolError(
                f"the key holder published an n that is not an odd {self.key_bits}-bit modulus"
            )
        try:
            public.check_ciphertext(public.hs)  # h_s must lie in Z*_{n²}, as every ciphertext does
        except ProtocolError:
            raise ProtocolError("the key holder published an h_s outside Z*_{n²}") from None
        return public

    def model_key(self, material: KeyMaterial) -> bytes:
        return material.model_key

    def fingerprint(self, material: KeyMaterial) -> str:
        return material.fingerprint

    def _count(self, ctx: RoundContext) -> int:
        # One extra slot after the vector: the contribution counter (see ``encrypt``).
        return self.packing(self.key_bits - 1).plaintexts_for(ctx.vector_size + 1)

    def max_encrypt_bytes(self, ctx: RoundContext) -> int:
        return self._count(ctx) * (2 * self.key_bits + 7) // 8 + 4096

    @staticmethod
    def pads(material: KeyMaterial, ctx: RoundContext, party: str, count: int) -> list[int]:
        """``party``'s contribution pads for this round, one per ciphertext index: uniform in Z_n
        (|n| + 128 bits of AES-256-CTR keystream reduced mod n: statistical distance < 2^-128)."""
        n = material.public.n
        width = _pad_width(material.public)
        stream = prg.expand(pad_seed(material.model_key, ctx, party), count * width, np.uint8).tobytes()
        return [int.from_bytes(stream[i * width : (i + 1) * width], "big") % n for i in range(count)]

    @staticmethod
    def pad_total(
        material: KeyMaterial, ctx: RoundContext, parties: tuple[str, ...], count: int
    ) -> list[int]:
        """Σ of ``parties``' pads mod n, per ciphertext index — what the decrypting side removes.

        Equal to summing :meth:`pads` (Σ (s mod n) ≡ Σ s mod n), but the keystreams are added as
        big-endian 32-bit limbs in numpy (exact: each limb sum stays below parties · 2^32 < 2^64)
        and each index becomes one integer, reduced once: 2 conversions per index instead of one
        per index and party (100 parties × 11,237 ciphertexts at 1M: 1.36 s → ~0.2 s)."""
        n = material.public.n
        width = _pad_width(material.public)
        limbs = -(-width // 4)
        total = np.zeros((count, limbs), dtype=np.uint64)
        for party in parties:
            stream = prg.expand(pad_seed(material.model_key, ctx, party), count * width, np.uint8)
            padded = np.zeros((count, 4 * limbs), dtype=np.uint8)  # leading zero bytes: same value
            padded[:, 4 * limbs - width :] = stream.reshape(count, width)
            total += padded.view(">u4")
        low = (total & np.uint64(0xFFFFFFFF)).astype(">u4").tobytes()
        high = (total >> np.uint64(32)).astype(">u4").tobytes()
        size = 4 * limbs
        return [
            (
                int.from_bytes(low[i * size : (i + 1) * size], "big")
                + (int.from_bytes(high[i * size : (i + 1) * size], "big") << 32)
            )
            % n
            for i in range(count)
        ]

    def encrypt(self, material: KeyMaterial, vector: np.ndarray, ctx: RoundContext, party: str) -> bytes:
        plaintexts = self.padded_plaintexts(material, vector, ctx, party)
        mode = "crt" if self.encryption == "crt" and material.private is not None else "public"
        batches = _split(plaintexts, 4 * self.workers)
        data = b"".join(self._run(material, mode, _encrypt_chunk, batches, len(plaintexts)))
        return encode_record(b"PENr", {"count": len(plaintexts)}, {"ciphertexts": data})

    def padded_plaintexts(
        self, material: KeyMaterial, vector: np.ndarray, ctx: RoundContext, party: str
    ) -> list[int]:
        """The plaintexts ``party`` encrypts: its packed vector and counter slot, plus its pads."""
        signed = np.asarray(vector, dtype=np.uint64).view(np.int64)  # two's complement → signed
        if signed.shape != (ctx.vector_size,):
            raise ProtocolError(f"expected a vector of {ctx.vector_size} values, got shape {signed.shape}")
        # The counter slot: every party packs 1 after its vector, so the decrypted slot is exactly the
        # number of contributions in the sum — the decryptor checks the count the aggregator claims.
        signed = np.append(signed, np.int64(1))
        plaintexts = self.packing(material.public.plaintext_bits).pack(signed)
        # The contribution pads: each plaintext j becomes m_j + r_j mod n. Only the sum of exactly
        # the named contributors' ciphertexts j unpads to a packed sum (shared_key.pad_seed).
        n = material.public.n
        return [
            (m + r) % n
            for m, r in zip(plaintexts, self.pads(material, ctx, party, len(plaintexts)), strict=True)
        ]

    def combiner(self, public: paillier.PublicKey, ctx: RoundContext) -> Combiner:
        return _Product(public, self._count(ctx))

    def decrypt(
        self, material: KeyMaterial, combined: bytes, contributors: tuple[str, ...], ctx: RoundContext
    ) -> np.ndarray:
        if material.private is None:
            raise ProtocolError("asked to decrypt without holding the private key")
        width = material.public.ciphertext_bytes
        expected = self._count(ctx)
        if len(combined) != expected * width:
            raise WireError(
                f"the encrypted sum must be {expected} ciphertexts of {width} bytes, "
                f"got {len(combined)} bytes"
            )
        count = expected
        step = width * -(-count // (4 * self.workers))
        batches = [combined[i : i + step] for i in range(0, len(combined), step)]
        decrypting = self._run(material, "decrypt", _decrypt_chunk, batches, count)  # workers start
        # Remove the pads of exactly the named contributors (summed here while the workers decrypt).
        # Any other combination of ciphertexts (one party's passed off as several, a party missing,
        # scaled, or moved to another index or round) keeps a uniform pad term mod n: the result is
        # noise that the packing refuses.
        padding = self.pad_total(material, ctx, contributors, count)
        plaintexts = [m for part in decrypting for m in part]
        n = material.public.n
        plaintexts = [(m - r) % n for m, r in zip(plaintexts, padding, strict=True)]
        number = len(contributors)
        # unpack refuses a slot beyond `number` honest contributions (the packing bound).
        try:
            total = self.packing(material.public.plaintext_bits).unpack(
                plaintexts, ctx.vector_size + 1, number
            )
        except ProtocolError as exc:
            raise ImpossibleSum(
                f"the decrypted Paillier sum cannot come from honest parties: {exc}"
            ) from None
        if int(total[-1]) != number:
            # A wrong count shifts every slot by a multiple of the offset; the counter slot shows it.
            raise ImpossibleSum(
                f"the Paillier sum cannot come from {number} honest parties: its counter slot (1 per "
                "party) disagrees — a wrong count, or a tampered or foreign ciphertext"
            )
        return total[:-1].view(np.uint64)

    def _run(self, material: KeyMaterial, mode: str, work, batches: list, count: int) -> Iterator:
        """``work`` on each batch, in this key's process pool (submitted at once: the caller may do
        other work before reading the results, in order) — or here, lazily, when there are fewer
        than _PARALLEL_MIN ciphertexts (starting workers would cost more than it saves)."""
        if count < _PARALLEL_MIN or self.workers == 1:
            _init_worker(material.to_json(include_private=mode != "public"), mode)
            return (work(batch) for batch in batches)
        return _POOLS.get(material, mode, self.workers).map(work, batches)


class _Product(Combiner):
    """Ciphertexts multiplied coordinate-wise modulo n²: the plaintexts add up."""

    def __init__(self, public: paillier.PublicKey, count: int) -> None:
        self.public, self.count = public, count
        self.product: list | None = None

    def add(self, payload: bytes) -> None:
        # The whole payload is parsed and checked before any of it is folded in, and the fold builds
        # a new list that replaces the product in one assignment: a payload that fails anywhere
        # leaves no trace in the sum (its sender is dropped, the others' sum is intact).
        header, parts = decode_record(payload, b"PENr", {"count": int}, ("ciphertexts",))
        width, data = self.public.ciphertext_bytes, parts["ciphertexts"]
        if header["count"] != self.count or len(data) != self.count * width:
            raise WireError(
                f"expected {self.count} ciphertexts of {width} bytes, got a count of {header['count']} "
                f"and {len(data)} bytes"
            )
        values = [
            paillier.mpz(int.from_bytes(data[i : i + width], "big")) for i in range(0, len(data), width)
        ]
        # 0 < c < n² and gcd(c, n) = 1 for every c, with the public key alone (the decryptor would
        # otherwise refuse the product and the round would be lost for everyone).
        self.public.check_ciphertexts(values)
        nsq = self.public.nsquare
        if self.product is None:
            self.product = values
        else:
            self.product = [a * b % nsq for a, b in zip(self.product, values, strict=True)]

    def payload(self) -> bytes:
        width = self.public.ciphertext_bytes
        return b"".join(int(c).to_bytes(width, "big") for c in self.product)


# --- the layer -----------------------------------------------------------------------------------


class Paillier(SharedKeySum):
    """Secure sum under a shared Paillier key.

    ``key_bits``: 2048 (default) or 3072. ``key_file``: key material made by ``securefl keys
    paillier``, given to every party out of band (no key phases then; a public key file serves an
    aggregator); without it, the first party of the first round generates the keys and they are
    distributed in-protocol. ``encryption``: ``"crt"`` (key holders; exact textbook distribution)
    or ``"public"`` (public-key-only, DJN short exponent). ``workers``: processes for encryption
    and decryption (default: all cores).
    """

    name = "paillier"
    accepts_floats = False
    modulus_bits = 64  # quantize's own check; the real bound is the packing slot (checked below)

    def __init__(
        self,
        key_bits: int = paillier.MIN_KEY_BITS,
        key_file: str | None = None,
        encryption: str = "crt",
        workers: int | None = None,
        identities: Identities | None = None,
    ) -> None:
        paillier.check_key_bits(key_bits)
        if encryption not in ("crt", "public"):
            raise ConfigError(f"paillier encryption must be 'crt' or 'public', got {encryption!r}")
        public = load_public(key_file) if key_file else None
        preloaded = KeyMaterial.load(key_file) if key_file and _is_full(key_file) else None
        self.key_bits = public.bits if public is not None else key_bits
        self.key_file = key_file
        self.encryption = encryption
        self.workers = workers or os.cpu_count() or 1
        # The scheme holds parameters only: the aggregator shares it, so it must reach no key.
        scheme = PaillierScheme(self.key_bits, encryption, self.workers)
        super().__init__(scheme, preloaded, _public_bytes(public) if public is not None else None, identities)

    def validate(self, ctx: StackContext, transforms: list[Transform]) -> None:
        quantizers = [t for t in transforms if isinstance(t, Quantize)]
        if not quantizers:
            return  # the stack reports the missing quantize with the standard message
        self.scheme.value_bits = quantizers[0].bits
        self.scheme.max_parties = ctx.max_parties
        self.packing(self.key_bits - 1)  # raises ConfigError if a slot cannot fit

    def packing(self, plaintext_bits: int) -> Packing:
        return self.scheme.packing(plaintext_bits)

    def __repr__(self) -> str:
        return f"Paillier(key_bits={self.key_bits}, encryption={self.encryption!r}, workers={self.workers})"


def _material_size(key_bits: int) -> int:
    """Bytes of serialized key material: n, h_s (2·|n|), p, q, g_p, g_q (|n|/2 each), model key."""
    n_bytes = (key_bits + 7) // 8
    return 3 * n_bytes + 4 * (n_bytes // 2) + 32


def _serialize_material(material: KeyMaterial) -> bytes:
    n_bytes = (material.public.bits + 7) // 8
    half = n_bytes // 2
    private = material.private
    return b"".join(
        [
            material.public.n.to_bytes(n_bytes, "big"),
            material.public.hs.to_bytes(2 * n_bytes, "big"),
            *(v.to_bytes(half, "big") for v in (private.p, private.q, private.gp, private.gq)),
            material.model_key,
        ]
    )


def _parse_material(blob: bytes, key_bits: int) -> KeyMaterial:
    n_bytes = (key_bits + 7) // 8
    half = n_bytes // 2
    if len(blob) != _material_size(key_bits):
        raise WireError("key material has the wrong size")
    offset = 0

    def take(size: int) -> int:
        nonlocal offset
        value = int.from_bytes(blob[offset : offset + size], "big")
        offset += size
        return value

    n, hs = take(n_bytes), take(2 * n_bytes)
    p, q, gp, gq = take(half), take(half), take(half), take(half)
    model_key = blob[offset:]
    if p * q != n:
        raise ProtocolError("received key material is inconsistent (p·q ≠ n)")
    public = paillier.PublicKey(n, hs)
    private = paillier.PrivateKey(public, p, q, gp, gq)
    # Full-size n, safe primes, generators, h_s an n-th residue: a granter cannot hand out weak keys.
    paillier.check_private_key(private, key_bits)
    return KeyMaterial(public, model_key, private)
