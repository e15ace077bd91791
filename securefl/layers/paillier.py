"""``paillier``: additively homomorphic secure sum under a key the aggregator does not hold.

Parties pack their quantized vector (many values per plaintext, ``crypto/packing.py``) and encrypt
it under a shared Paillier key; the aggregator multiplies ciphertexts as they arrive, holding only
the public key; one key-holding party (the *decryptor*) decrypts the sum, fuses, and returns the
next global model sealed under a model key all parties share. The aggregator never sees an update,
the sum, or the model. Specification: ``protocols/paillier.md``.

Phases of a round (the key phases only while some invited party lacks the keys):

``key_offer``    every party says whether it holds the keys; one that does not sends a fresh
                 X25519 public key;
``key_grant``    a key holder (in the very first round, the first party, which generates the keys)
                 seals the key material to each requester (AES-256-GCM under X25519 + HKDF) and
                 publishes the public key;
``key_install``  requesters open their sealed keys;
``encrypt``      parties send their packed ciphertexts; the aggregator multiplies them;
``decrypt``      the decryptor decrypts the product (CRT, all cores), fuses, seals the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from securefl.crypto import channel, paillier
from securefl.crypto.packing import Packing
from securefl.errors import ConfigError, ProtocolError, RoundFailed, WireError
from securefl.layers.base import (
    Fuser,
    Provider,
    RoundContext,
    SealedModel,
    SecureSum,
    StackContext,
    SumAggregator,
    SumParty,
    Transform,
)
from securefl.layers.quantize import Quantize
from securefl.randomness import SecureRandom
from securefl.wire import decode_record, encode_record

KEY_OFFER, KEY_GRANT, KEY_INSTALL, ENCRYPT, DECRYPT = (
    "key_offer",
    "key_grant",
    "key_install",
    "encrypt",
    "decrypt",
)
KEY_FILE_KIND = "securefl-paillier-keys"
PUBLIC_FILE_KIND = "securefl-paillier-public"
_PARALLEL_MIN = 64  # fewer ciphertexts than this are not worth a process pool


# --- key material --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMaterial:
    """What a party holds: the public key, the model-sealing key, and (key holders) p and q."""

    public: paillier.PublicKey
    model_key: bytes
    private: paillier.PrivateKey | None = None

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

    def save(self, path: str | Path, include_private: bool = True) -> Path:
        """Write the keys as JSON, readable by the owner only (0600)."""
        path = Path(path)
        text = json.dumps(self.to_json(include_private), indent=1)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o600)
        return path

    @classmethod
    def load(cls, path: str | Path) -> KeyMaterial:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"Paillier key file {str(path)!r} does not exist; create it with 'securefl keys paillier'"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Paillier key file {str(path)!r} is not JSON: {exc}") from None
        return cls.from_json(data)


def save_public(public: paillier.PublicKey, path: str | Path) -> Path:
    """The public key alone (n, h_s): what an aggregator needs, nothing it could decrypt with."""
    path = Path(path)
    document = {"kind": PUBLIC_FILE_KIND, "version": 1, "n": hex(public.n), "hs": hex(public.hs)}
    path.write_text(json.dumps(document, indent=1))
    return path


def load_public(path: str | Path) -> paillier.PublicKey:
    """The public key from a public or a full key file."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("kind") not in (PUBLIC_FILE_KIND, KEY_FILE_KIND) or data.get("version") != 1:
            raise ConfigError(f"{path}: not a securefl Paillier key file")
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


# --- the layer -----------------------------------------------------------------------------------


class Paillier(SecureSum):
    """Secure sum under a shared Paillier key.

    ``key_bits``: 2048 (default) or 3072. ``key_file``: key material made by ``securefl keys
    paillier``, given to every party out of band (no key phases then); without it, the first party
    of the first round generates the keys and they are distributed in-protocol. ``encryption``:
    ``"crt"`` (key holders; exact textbook distribution) or ``"public"`` (public-key-only, DJN
    short exponent). ``workers``: processes for encryption and decryption (default: all cores).
    """

    name = "paillier"
    accepts_floats = False
    fuses_on_parties = True
    modulus_bits = 64  # quantize's own check; the real bound is the packing slot (checked below)

    def __init__(
        self,
        key_bits: int = paillier.MIN_KEY_BITS,
        key_file: str | None = None,
        encryption: str = "crt",
        workers: int | None = None,
    ) -> None:
        paillier.check_key_bits(key_bits)
        if encryption not in ("crt", "public"):
            raise ConfigError(f"paillier encryption must be 'crt' or 'public', got {encryption!r}")
        self.key_bits = key_bits
        self.key_file = key_file
        self.encryption = encryption
        self.workers = workers or os.cpu_count() or 1
        self.value_bits: int | None = None
        self.max_parties = 1
        # A full key file serves parties; a public one serves an aggregator-only deployment.
        self._public = load_public(key_file) if key_file else None
        self._preloaded = KeyMaterial.load(key_file) if key_file and _is_full(key_file) else None
        if self._public is not None:
            self.key_bits = self._public.bits

    def validate(self, ctx: StackContext, transforms: list[Transform]) -> None:
        quantizers = [t for t in transforms if isinstance(t, Quantize)]
        if not quantizers:
            return  # the stack reports the missing quantize with the standard message
        self.value_bits = quantizers[0].bits
        self.max_parties = ctx.max_parties
        self.packing(self.key_bits - 1)  # raises ConfigError if a slot cannot fit

    def packing(self, plaintext_bits: int) -> Packing:
        if self.value_bits is None:
            raise ConfigError("paillier was used before its stack was validated")
        return Packing(self.value_bits, self.max_parties, plaintext_bits)

    def aggregator(self) -> SumAggregator:
        # The aggregator gets the public key only: never p, q, nor the model key.
        return _Aggregator(self.key_bits, self.packing, self._public, keys_preloaded=self._public is not None)

    def party(self, party_id: str) -> SumParty:
        if self._public is not None and self._preloaded is None:
            raise ConfigError(f"{self.key_file} holds only the public key; parties need the full key file")
        return _Party(self, party_id, self._preloaded)

    def __repr__(self) -> str:
        return f"Paillier(key_bits={self.key_bits}, encryption={self.encryption!r}, workers={self.workers})"


def _ctx(label: str, ctx: RoundContext, *names: str) -> bytes:
    fields = [
        b"securefl/paillier/v1",
        label.encode(),
        bytes.fromhex(ctx.session),
        *(n.encode() for n in names),
    ]
    return b"".join(struct.pack(">H", len(f)) + f for f in fields)


def _model_aad(session: str, round: int) -> bytes:
    return b"securefl/paillier/model" + bytes.fromhex(session) + struct.pack(">I", round)


class _Aggregator(SumAggregator):
    def __init__(
        self, key_bits: int, packing, public: paillier.PublicKey | None, keys_preloaded: bool
    ) -> None:
        self.key_bits = key_bits
        self.packing = packing
        self.public = public
        self.keys_preloaded = keys_preloaded  # every party was given the keys out of band
        self.holders: set[str] = set()  # parties known to hold the keys

    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        if not self.keys_preloaded and not set(ctx.parties) <= self.holders:
            return (KEY_OFFER, KEY_GRANT, KEY_INSTALL, ENCRYPT, DECRYPT)
        return (ENCRYPT, DECRYPT)

    def start_round(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        self.requesters: dict[str, bytes] = {}
        self.offered_holders: list[str] = []
        self.granter: str | None = None
        self.grants: dict[str, bytes] = {}
        self.granter_channel = b""
        self.product: list | None = None
        self.contributors_: set[str] = set()
        self.sealed: bytes | None = None
        self.decryptor: str | None = None

    def max_reply_bytes(self, phase: str) -> int:
        n = len(self.ctx.parties)
        if phase == ENCRYPT:
            return self._ciphertext_count() * self._width() + 4096
        if phase == DECRYPT:
            return self.ctx.vector_size * 8 + 4096
        return 8192 + n * 8192

    def _width(self) -> int:
        return (2 * self.key_bits + 7) // 8

    def _ciphertext_count(self) -> int:
        return self.packing(self.key_bits - 1).plaintexts_for(self.ctx.vector_size)

    def request(self, phase: str, party: str) -> bytes:
        if phase == KEY_GRANT:
            if party != self.granter:
                return encode_record(b"PKGq", {"requesters": [], "generate": False}, {"channels": b""})
            requesters = sorted(self.requesters)
            blob = b"".join(self.requesters[r] for r in requesters)
            generate = not self.offered_holders
            return encode_record(
                b"PKGq", {"requesters": requesters, "generate": generate}, {"channels": blob}
            )
        if phase == KEY_INSTALL:
            if party not in self.grants:
                return encode_record(b"PKIq", {}, {"granter_channel": b"", "sealed": b""})
            return encode_record(
                b"PKIq", {}, {"granter_channel": self.granter_channel, "sealed": self.grants[party]}
            )
        if phase == DECRYPT:
            if party != self.decryptor:
                return encode_record(b"PDEq", {"count": 0}, {"sum": b""})
            width = self.public.ciphertext_bytes
            blob = b"".join(int(c).to_bytes(width, "big") for c in self.product)
            return encode_record(b"PDEq", {"count": len(self.contributors_)}, {"sum": blob})
        return b""

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        getattr(self, f"_receive_{phase}")(party, payload)

    def _receive_key_offer(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(payload, b"PKOr", {"fingerprint": str}, ("channel",))
        if header["fingerprint"]:
            self.offered_holders.append(party)
        elif len(parts["channel"]) != channel.KEY_BYTES:
            raise WireError("a key request needs a 32-byte X25519 public key")
        else:
            self.requesters[party] = parts["channel"]

    def _receive_key_grant(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(
            payload, b"PKGr", {"granted": list, "n": str, "hs": str}, ("channel", "sealed")
        )
        if party != self.granter:
            return
        granted = header["granted"]
        if sorted(granted) != sorted(self.requesters):
            raise ProtocolError("the key holder did not grant keys to exactly the requesting parties")
        size = channel.sealed_size(_material_size(self.key_bits))
        blob = parts["sealed"]
        if len(blob) != size * len(granted):
            raise WireError("sealed key material has the wrong size")
        public = paillier.PublicKey(int(header["n"], 16), int(header["hs"], 16))
        if public.bits != self.key_bits:
            raise ProtocolError(f"the key holder published a {public.bits}-bit key, {self.key_bits} expected")
        if self.public is not None and public != self.public:
            raise ProtocolError("the key holder published a different public key than the federation's")
        self.public = public
        self.granter_channel = parts["channel"]
        self.grants = {g: blob[i * size : (i + 1) * size] for i, g in enumerate(granted)}

    def _receive_key_install(self, party: str, payload: bytes) -> None:
        decode_record(payload, b"PKIr", {"installed": bool}, ())

    def _receive_encrypt(self, party: str, payload: bytes) -> None:
        if self.public is None:
            raise ProtocolError("no public key is known yet; the key phases did not complete")
        header, parts = decode_record(payload, b"PENr", {"count": int}, ("ciphertexts",))
        width, count = self.public.ciphertext_bytes, self._ciphertext_count()
        data = parts["ciphertexts"]
        if header["count"] != count or len(data) != count * width:
            raise WireError(f"expected {count} ciphertexts of {width} bytes")
        nsq = self.public.nsquare
        values = [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)]
        if any(not 0 < c < nsq for c in values):
            raise ProtocolError("a ciphertext is out of range for the public key (tampered or corrupted)")
        # Multiply as they arrive: memory does not grow with the number of parties.
        if self.product is None:
            self.product = [paillier.mpz(c) for c in values]
        else:
            self.product = [a * b % nsq for a, b in zip(self.product, values, strict=True)]
        self.contributors_.add(party)

    def _receive_decrypt(self, party: str, payload: bytes) -> None:
        if party != self.decryptor:
            decode_record(payload, b"PDEr", {"sealed": bool}, ())
            return
        header, parts = decode_record(payload, b"PDEr", {"sealed": bool}, ("model",))
        if not header["sealed"]:
            raise ProtocolError("the decryptor returned no sealed model")
        self.sealed = parts["model"]

    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        if phase == KEY_OFFER:
            self.offered_holders = sorted(p for p in self.offered_holders if p in survivors)
            self.requesters = {p: k for p, k in self.requesters.items() if p in survivors}
            if not self.offered_holders and self.public is not None:
                raise RoundFailed(
                    "paillier: parties without keys were invited but no key holder was, so nobody can grant "
                    "them; give every party the key file, or invite a key holder"
                )
            candidates = self.offered_holders or sorted(survivors)
            self.granter = candidates[0] if candidates else None
            if self.granter in self.requesters:  # the generator of brand-new keys needs no grant itself
                del self.requesters[self.granter]
        elif phase == KEY_GRANT:
            if self.granter not in survivors or self.public is None:
                raise RoundFailed(
                    "paillier: the key holder dropped before granting keys; nothing was encrypted"
                )
            self.holders.add(self.granter)
        elif phase == KEY_INSTALL:
            self.holders |= {p for p in self.grants if p in survivors}
        elif phase == ENCRYPT:
            self.contributors_ &= survivors
            if not self.contributors_ or self.product is None:
                raise RoundFailed("paillier: no ciphertexts arrived")
            holders = sorted(p for p in survivors if p in self.holders or self.keys_preloaded)
            if not holders:
                raise RoundFailed("paillier: no key holder is left to decrypt the sum")
            self.decryptor = holders[0]
        elif phase == DECRYPT and self.sealed is None:
            raise RoundFailed(f"paillier: the decryptor {self.decryptor} dropped; the model is unchanged")

    def contributors(self) -> frozenset[str]:
        return frozenset(self.contributors_)

    def result(self) -> SealedModel:
        return SealedModel(self.sealed)


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
    return KeyMaterial(public, model_key, paillier.PrivateKey(public, p, q, gp, gq))


class _Party(SumParty):
    def __init__(self, layer: Paillier, party_id: str, material: KeyMaterial | None) -> None:
        self.layer = layer
        self.me = party_id
        self.material = material
        self.fuse: Fuser | None = None
        self.rng = SecureRandom()

    def attach_fuser(self, fuse: Fuser) -> None:
        self.fuse = fuse

    def start_round(self, ctx: RoundContext, provide: Provider) -> None:
        self.ctx = ctx
        self.provide = provide
        self.channel_secret: bytes | None = None

    def respond(self, phase: str, request: bytes) -> bytes:
        return getattr(self, f"_{phase}")(request)

    # key distribution

    def _key_offer(self, request: bytes) -> bytes:
        if self.material is not None:
            return encode_record(b"PKOr", {"fingerprint": self.material.fingerprint}, {"channel": b""})
        self.channel_secret, public = channel.generate_keypair(self.rng)
        return encode_record(b"PKOr", {"fingerprint": ""}, {"channel": public})

    def _key_grant(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"PKGq", {"requesters": list, "generate": bool}, ("channels",))
        requesters = header["requesters"]
        if not requesters and not header["generate"]:
            return encode_record(
                b"PKGr", {"granted": [], "n": "0x0", "hs": "0x0"}, {"channel": b"", "sealed": b""}
            )
        if header["generate"]:
            if self.material is not None:
                raise ProtocolError("asked to generate keys, but this party already holds them")
            self.material = KeyMaterial.generate(self.layer.key_bits)
        if self.material is None or self.material.private is None:
            raise ProtocolError("asked to grant keys this party does not hold")
        keys = parts["channels"]
        if len(keys) != channel.KEY_BYTES * len(requesters):
            raise WireError("requesters' channel keys have the wrong size")
        secret, public = channel.generate_keypair(self.rng)
        plaintext = _serialize_material(self.material)
        sealed = []
        for i, requester in enumerate(requesters):
            peer = keys[i * channel.KEY_BYTES : (i + 1) * channel.KEY_BYTES]
            key = channel.agree(secret, peer, _ctx("key-channel", self.ctx, requester))
            sealed.append(channel.seal(key, plaintext, _ctx("key-material", self.ctx, requester), self.rng))
        header_out = {
            "granted": requesters,
            "n": hex(self.material.public.n),
            "hs": hex(self.material.public.hs),
        }
        return encode_record(b"PKGr", header_out, {"channel": public, "sealed": b"".join(sealed)})

    def _key_install(self, request: bytes) -> bytes:
        _, parts = decode_record(request, b"PKIq", {}, ("granter_channel", "sealed"))
        if not parts["sealed"]:
            return encode_record(b"PKIr", {"installed": self.material is not None}, {})
        if self.channel_secret is None:
            raise ProtocolError("received keys this party did not ask for")
        key = channel.agree(
            self.channel_secret, parts["granter_channel"], _ctx("key-channel", self.ctx, self.me)
        )
        blob = channel.open_sealed(key, parts["sealed"], _ctx("key-material", self.ctx, self.me))
        self.material = _parse_material(blob, self.layer.key_bits)
        self.channel_secret = None
        return encode_record(b"PKIr", {"installed": True}, {})

    # the sum

    def _packing(self) -> Packing:
        return self.layer.packing(self.material.public.plaintext_bits)

    def _encrypt(self, request: bytes) -> bytes:
        if self.material is None:
            raise ProtocolError("this party holds no Paillier keys")
        vector = np.asarray(self.provide(), dtype=np.uint64).view(np.int64)  # two's complement → signed
        plaintexts = self._packing().pack(vector)
        mode = "crt" if self.layer.encryption == "crt" and self.material.private is not None else "public"
        batches = _split(plaintexts, 4 * self.layer.workers)
        data = b"".join(self._run(mode, _encrypt_chunk, batches, len(plaintexts)))
        return encode_record(b"PENr", {"count": len(plaintexts)}, {"ciphertexts": data})

    def _decrypt(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"PDEq", {"count": int}, ("sum",))
        if not parts["sum"]:
            return encode_record(b"PDEr", {"sealed": False}, {})
        if self.material is None or self.material.private is None or self.fuse is None:
            raise ProtocolError("asked to decrypt without holding the private key")
        width = self.material.public.ciphertext_bytes
        data = parts["sum"]
        if len(data) % width:
            raise WireError("the encrypted sum is not a whole number of ciphertexts")
        count = len(data) // width
        step = width * -(-count // (4 * self.layer.workers))
        batches = [data[i : i + step] for i in range(0, len(data), step)]
        plaintexts = [m for part in self._run("decrypt", _decrypt_chunk, batches, count) for m in part]
        total = self._packing().unpack(plaintexts, self.ctx.vector_size, header["count"])
        model = self.fuse(total.view(np.uint64))
        sealed = channel.seal(
            self.material.model_key,
            np.ascontiguousarray(model, dtype="<f8").tobytes(),
            _model_aad(self.ctx.session, self.ctx.round),
            self.rng,
        )
        return encode_record(
            b"PDEr",
            {"sealed": True},
            {
                "model": encode_record(
                    b"PMOD", {"round": self.ctx.round, "session": self.ctx.session}, {"sealed": sealed}
                )
            },
        )

    def _run(self, mode: str, work, batches: list, count: int) -> list:
        """``work`` on each batch, in this key's process pool — or here, when there are fewer than
        _PARALLEL_MIN ciphertexts (starting workers would cost more than it saves)."""
        if count < _PARALLEL_MIN or self.layer.workers == 1:
            _init_worker(self.material.to_json(include_private=mode != "public"), mode)
            return [work(batch) for batch in batches]
        return list(_POOLS.get(self.material, mode, self.layer.workers).map(work, batches))

    def open_model(self, sealed: bytes) -> np.ndarray:
        if self.material is None:
            raise ProtocolError("this party holds no model key to open the sealed model")
        header, parts = decode_record(sealed, b"PMOD", {"round": int, "session": str}, ("sealed",))
        plain = channel.open_sealed(
            self.material.model_key, parts["sealed"], _model_aad(header["session"], header["round"])
        )
        return np.frombuffer(plain, dtype="<f8").copy()
