"""Secure sum under a homomorphic key all parties share and the aggregator lacks.

The protocol is the same whatever the scheme (Paillier, CKKS); a :class:`Scheme` supplies the
arithmetic. Phases of a round (the key phases only while an invited party lacks the keys):

``key_offer``    every party says whether it holds the keys; one that does not sends a fresh
                 X25519 public key;
``key_grant``    a key holder (in the federation's first round, the first invited party, which
                 generates the keys) seals the key material to each requester (AES-256-GCM under
                 X25519 + HKDF) and publishes the scheme's public part for the aggregator;
``key_install``  requesters open their sealed keys;
``encrypt``      parties send ciphertexts; the aggregator combines them as they arrive;
``decrypt``      one key holder (the decryptor) decrypts the combined sum, fuses, and returns the
                 next global model sealed under the model key every party holds.

The aggregator only ever holds the scheme's public part, ciphertexts and the sealed model.

With ``identities`` (Ed25519 keys known in advance, e.g. bound to the parties' certificates) key
distribution resists an active aggregator: a requester signs its X25519 key, the key holder seals
only to keys signed by their requesters and signs its own, and a requester opens keys only from a
channel a federation member signed. Without them the aggregator is trusted to relay keys honestly.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from securefl.crypto import channel, signing
from securefl.crypto.signing import Identities
from securefl.errors import ConfigError, ProtocolError, RoundFailed, WireError
from securefl.layers.base import (
    Fuser,
    Provider,
    RoundContext,
    SealedModel,
    SecureSum,
    SumAggregator,
    SumParty,
)
from securefl.randomness import SecureRandom
from securefl.wire import decode_record, encode_record

KEY_OFFER, KEY_GRANT, KEY_INSTALL, ENCRYPT, DECRYPT = (
    "key_offer",
    "key_grant",
    "key_install",
    "encrypt",
    "decrypt",
)
_MAX_KEY_REPLY = 64 << 20


class Combiner(ABC):
    """The aggregator's running combination of ciphertexts (public material only)."""

    @abstractmethod
    def add(self, payload: bytes) -> None:
        """Fold in one party's ciphertexts; raise WireError/ProtocolError if they are invalid."""

    @abstractmethod
    def payload(self) -> bytes:
        """The combined ciphertexts, as sent to the decryptor."""


class Scheme(ABC):
    """What a homomorphic scheme supplies to the shared-key protocol. ``M`` is the scheme's full
    key material (including the model-sealing key); ``P`` its public part."""

    name: str

    @abstractmethod
    def generate(self) -> Any:
        """Fresh key material (the key holder that starts a federation calls this)."""

    @abstractmethod
    def material_to_bytes(self, material: Any) -> bytes: ...

    @abstractmethod
    def material_from_bytes(self, blob: bytes) -> Any:
        """Parse sealed-then-opened key material; raise ProtocolError if inconsistent."""

    @abstractmethod
    def public_to_bytes(self, material: Any) -> bytes:
        """What the aggregator needs to combine ciphertexts, and nothing that decrypts."""

    @abstractmethod
    def public_from_bytes(self, blob: bytes) -> Any:
        """The aggregator's view of the public part; raise ProtocolError if unusable."""

    @abstractmethod
    def model_key(self, material: Any) -> bytes:
        """The 32-byte AES-GCM key that seals global models."""

    @abstractmethod
    def fingerprint(self, material: Any) -> str:
        """Identifies a key set from public values."""

    @abstractmethod
    def encrypt(self, material: Any, vector: np.ndarray, ctx: RoundContext) -> bytes:
        """A party's ciphertexts for its protected vector."""

    @abstractmethod
    def combiner(self, public: Any, ctx: RoundContext) -> Combiner: ...

    @abstractmethod
    def decrypt(self, material: Any, combined: bytes, contributors: int, ctx: RoundContext) -> np.ndarray:
        """The revealed sum of the contributors' vectors (what the fuser decodes)."""

    @abstractmethod
    def max_encrypt_bytes(self, ctx: RoundContext) -> int: ...


def _ctx(label: str, ctx: RoundContext, *names: str) -> bytes:
    fields = [
        b"securefl/shared-key/v1",
        label.encode(),
        bytes.fromhex(ctx.session),
        *(n.encode() for n in names),
    ]
    return b"".join(struct.pack(">H", len(f)) + f for f in fields)


def _model_aad(scheme: str, session: str, round: int) -> bytes:
    return b"securefl/shared-key/model" + scheme.encode() + bytes.fromhex(session) + struct.pack(">I", round)


def _offer_statement(ctx: RoundContext, requester: str, channel_key: bytes) -> bytes:
    return _ctx("key-offer", ctx, requester, str(ctx.round)) + channel_key


def _grant_statement(ctx: RoundContext, granter: str, channel_key: bytes) -> bytes:
    return _ctx("key-grant", ctx, granter, str(ctx.round)) + channel_key


class SharedKeySum(SecureSum):
    """The protocol around a :class:`Scheme`. Subclasses pick the scheme and its parameters.

    ``preloaded``: key material every party was given out of band (no key phases then);
    ``public``: the aggregator's copy of the public part in that case.
    """

    fuses_on_parties = True

    def __init__(
        self,
        scheme: Scheme,
        preloaded: Any | None = None,
        public: bytes | None = None,
        identities: Identities | None = None,
    ) -> None:
        self.scheme = scheme
        self._preloaded = preloaded
        self._public = public
        self.identities = identities

    def aggregator(self) -> SumAggregator:
        # The aggregator gets the public part only: never the secret key, nor the model key.
        return _Aggregator(self.scheme, self._public)

    def party(self, party_id: str) -> SumParty:
        if self._public is not None and self._preloaded is None:
            raise ConfigError(
                f"{self.name}: this configuration holds only the public key; parties need the full key"
            )
        if self.identities is not None and party_id not in self.identities.private:
            raise ConfigError(
                f"{self.name}: no identity key for party {party_id!r} (signed key distribution)"
            )
        return _Party(self.scheme, party_id, self._preloaded, self.identities)


class _Aggregator(SumAggregator):
    def __init__(self, scheme: Scheme, public_bytes: bytes | None) -> None:
        self.scheme = scheme
        self.public_bytes = public_bytes
        self.public = scheme.public_from_bytes(public_bytes) if public_bytes is not None else None
        self.keys_preloaded = public_bytes is not None  # every party was given the keys out of band
        self.holders: set[str] = set()  # parties known to hold the keys

    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        if not self.keys_preloaded and not set(ctx.parties) <= self.holders:
            return (KEY_OFFER, KEY_GRANT, KEY_INSTALL, ENCRYPT, DECRYPT)
        return (ENCRYPT, DECRYPT)

    def start_round(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        self.requesters: dict[str, bytes] = {}
        self.offer_signatures: dict[str, bytes] = {}
        self.grant_signature = b""
        self.offered_holders: list[str] = []
        self.granter: str | None = None
        self.grants: dict[str, bytes] = {}
        self.granter_channel = b""
        self.combined: Combiner | None = None
        self.contributors_: set[str] = set()
        self.sealed: bytes | None = None
        self.decryptor: str | None = None

    def max_reply_bytes(self, phase: str) -> int:
        if phase == ENCRYPT:
            return self.scheme.max_encrypt_bytes(self.ctx)
        if phase == DECRYPT:
            return self.ctx.vector_size * 8 + 4096
        return _MAX_KEY_REPLY

    def request(self, phase: str, party: str) -> bytes:
        if phase == KEY_GRANT:
            if party != self.granter:
                return encode_record(
                    b"SKGq", {"requesters": [], "generate": False}, {"channels": b"", "signatures": b""}
                )
            requesters = sorted(self.requesters)
            blob = b"".join(self.requesters[r] for r in requesters)
            signatures = b"".join(self.offer_signatures[r] for r in requesters)
            generate = not self.offered_holders
            return encode_record(
                b"SKGq",
                {"requesters": requesters, "generate": generate},
                {"channels": blob, "signatures": signatures},
            )
        if phase == KEY_INSTALL:
            granted = self.grants.get(party, b"")
            return encode_record(
                b"SKIq",
                {"granter": self.granter if granted else ""},
                {
                    "granter_channel": self.granter_channel if granted else b"",
                    "sealed": granted,
                    "signature": self.grant_signature if granted else b"",
                },
            )
        if phase == DECRYPT:
            if party != self.decryptor:
                return encode_record(b"SKDq", {"count": 0}, {"sum": b""})
            return encode_record(
                b"SKDq", {"count": len(self.contributors_)}, {"sum": self.combined.payload()}
            )
        return b""

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        getattr(self, f"_receive_{phase}")(party, payload)

    def _receive_key_offer(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(payload, b"SKOr", {"fingerprint": str}, ("channel", "signature"))
        if header["fingerprint"]:
            self.offered_holders.append(party)
        elif len(parts["channel"]) != channel.KEY_BYTES:
            raise WireError("a key request needs a 32-byte X25519 public key")
        elif len(parts["signature"]) not in (0, signing.SIGNATURE_BYTES):
            raise WireError("a key request's signature must be empty or 64 bytes")
        else:
            self.requesters[party] = parts["channel"]
            self.offer_signatures[party] = parts["signature"]

    def _receive_key_grant(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(
            payload, b"SKGr", {"granted": list, "sizes": list}, ("channel", "public", "sealed", "signature")
        )
        if party != self.granter:
            return
        granted, sizes = header["granted"], header["sizes"]
        if sorted(granted) != sorted(self.requesters) or len(sizes) != len(granted):
            raise ProtocolError("the key holder did not grant keys to exactly the requesting parties")
        if any(not isinstance(s, int) or s <= 0 for s in sizes) or sum(sizes) != len(parts["sealed"]):
            raise WireError("sealed key material sizes do not add up")
        if self.public_bytes is not None and parts["public"] != self.public_bytes:
            raise ProtocolError("the key holder published a different public key than the federation's")
        self.public = self.scheme.public_from_bytes(parts["public"])
        self.public_bytes = parts["public"]
        self.granter_channel = parts["channel"]
        self.grant_signature = parts["signature"]
        offsets = np.cumsum([0, *sizes])
        self.grants = {g: parts["sealed"][offsets[i] : offsets[i + 1]] for i, g in enumerate(granted)}

    def _receive_key_install(self, party: str, payload: bytes) -> None:
        decode_record(payload, b"SKIr", {"installed": bool}, ())

    def _receive_encrypt(self, party: str, payload: bytes) -> None:
        if self.public is None:
            raise ProtocolError("no public key is known yet; the key phases did not complete")
        if self.combined is None:
            self.combined = self.scheme.combiner(self.public, self.ctx)
        self.combined.add(payload)  # combined as they arrive: memory does not grow with parties
        self.contributors_.add(party)

    def _receive_decrypt(self, party: str, payload: bytes) -> None:
        if party != self.decryptor:
            decode_record(payload, b"SKDr", {"sealed": bool}, ())
            return
        header, parts = decode_record(payload, b"SKDr", {"sealed": bool}, ("model",))
        if not header["sealed"]:
            raise ProtocolError("the decryptor returned no sealed model")
        self.sealed = parts["model"]

    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        name = self.scheme.name
        if phase == KEY_OFFER:
            self.offered_holders = sorted(p for p in self.offered_holders if p in survivors)
            self.requesters = {p: k for p, k in self.requesters.items() if p in survivors}
            if not self.offered_holders and self.public is not None:
                raise RoundFailed(
                    f"{name}: parties without keys were invited but no key holder was, so nobody can grant "
                    "them; give every party the key file, or invite a key holder"
                )
            candidates = self.offered_holders or sorted(survivors)
            self.granter = candidates[0] if candidates else None
            if self.granter in self.requesters:  # the generator of brand-new keys needs no grant itself
                del self.requesters[self.granter]
        elif phase == KEY_GRANT:
            if self.granter not in survivors or self.public is None:
                raise RoundFailed(
                    f"{name}: the key holder dropped before granting keys; nothing was encrypted"
                )
            self.holders.add(self.granter)
        elif phase == KEY_INSTALL:
            self.holders |= {p for p in self.grants if p in survivors}
        elif phase == ENCRYPT:
            self.contributors_ &= survivors
            if not self.contributors_ or self.combined is None:
                raise RoundFailed(f"{name}: no ciphertexts arrived")
            holders = sorted(p for p in survivors if p in self.holders or self.keys_preloaded)
            if not holders:
                raise RoundFailed(f"{name}: no key holder is left to decrypt the sum")
            self.decryptor = holders[0]
        elif phase == DECRYPT and self.sealed is None:
            raise RoundFailed(f"{name}: the decryptor {self.decryptor} dropped; the model is unchanged")

    def contributors(self) -> frozenset[str]:
        return frozenset(self.contributors_)

    def result(self) -> SealedModel:
        return SealedModel(self.sealed)


class _Party(SumParty):
    def __init__(
        self, scheme: Scheme, party_id: str, material: Any | None, identities: Identities | None = None
    ) -> None:
        self.scheme = scheme
        self.me = party_id
        self.material = material
        self.identity = identities.private[party_id] if identities else None
        self.identities = identities.public_only() if identities else None
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
            return encode_record(
                b"SKOr",
                {"fingerprint": self.scheme.fingerprint(self.material)},
                {"channel": b"", "signature": b""},
            )
        self.channel_secret, public = channel.generate_keypair(self.rng)
        signature = self._sign(_offer_statement(self.ctx, self.me, public))
        return encode_record(b"SKOr", {"fingerprint": ""}, {"channel": public, "signature": signature})

    def _sign(self, statement: bytes) -> bytes:
        return signing.sign(self.identity, statement) if self.identity is not None else b""

    def _key_grant(self, request: bytes) -> bytes:
        header, parts = decode_record(
            request, b"SKGq", {"requesters": list, "generate": bool}, ("channels", "signatures")
        )
        requesters = header["requesters"]
        empty = {"channel": b"", "public": b"", "sealed": b"", "signature": b""}
        if not requesters and not header["generate"]:
            return encode_record(b"SKGr", {"granted": [], "sizes": []}, empty)
        if header["generate"]:
            if self.material is not None:
                raise ProtocolError("asked to generate keys, but this party already holds them")
            self.material = self.scheme.generate()
        if self.material is None:
            raise ProtocolError("asked to grant keys this party does not hold")
        keys = parts["channels"]
        if len(keys) != channel.KEY_BYTES * len(requesters):
            raise WireError("requesters' channel keys have the wrong size")
        if self.identities is not None:
            # Seal only to keys their requesters signed: an aggregator's substituted key is refused.
            signatures = parts["signatures"]
            if len(signatures) != signing.SIGNATURE_BYTES * len(requesters):
                raise ProtocolError("key requests arrived unsigned; this federation signs key distribution")
            for i, requester in enumerate(requesters):
                peer = keys[i * channel.KEY_BYTES : (i + 1) * channel.KEY_BYTES]
                signature = signatures[i * signing.SIGNATURE_BYTES : (i + 1) * signing.SIGNATURE_BYTES]
                self.identities.verify(requester, signature, _offer_statement(self.ctx, requester, peer))
        secret, public = channel.generate_keypair(self.rng)
        plaintext = self.scheme.material_to_bytes(self.material)
        sealed = []
        for i, requester in enumerate(requesters):
            peer = keys[i * channel.KEY_BYTES : (i + 1) * channel.KEY_BYTES]
            key = channel.agree(secret, peer, _ctx("key-channel", self.ctx, requester))
            sealed.append(channel.seal(key, plaintext, _ctx("key-material", self.ctx, requester), self.rng))
        return encode_record(
            b"SKGr",
            {"granted": requesters, "sizes": [len(s) for s in sealed]},
            {
                "channel": public,
                "public": self.scheme.public_to_bytes(self.material),
                "sealed": b"".join(sealed),
                "signature": self._sign(_grant_statement(self.ctx, self.me, public)),
            },
        )

    def _key_install(self, request: bytes) -> bytes:
        header, parts = decode_record(
            request, b"SKIq", {"granter": str}, ("granter_channel", "sealed", "signature")
        )
        if not parts["sealed"]:
            return encode_record(b"SKIr", {"installed": self.material is not None}, {})
        if self.channel_secret is None:
            raise ProtocolError("received keys this party did not ask for")
        if self.identities is not None:
            # Open keys only from a member's signed channel: keys the aggregator made are refused.
            granter = header["granter"]
            statement = _grant_statement(self.ctx, granter, parts["granter_channel"])
            self.identities.verify(granter, parts["signature"], statement)
        key = channel.agree(
            self.channel_secret, parts["granter_channel"], _ctx("key-channel", self.ctx, self.me)
        )
        blob = channel.open_sealed(key, parts["sealed"], _ctx("key-material", self.ctx, self.me))
        self.material = self.scheme.material_from_bytes(blob)
        self.channel_secret = None
        return encode_record(b"SKIr", {"installed": True}, {})

    # the sum

    def _encrypt(self, request: bytes) -> bytes:
        if self.material is None:
            raise ProtocolError(f"this party holds no {self.scheme.name} keys")
        return self.scheme.encrypt(self.material, self.provide(), self.ctx)

    def _decrypt(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SKDq", {"count": int}, ("sum",))
        if not parts["sum"]:
            return encode_record(b"SKDr", {"sealed": False}, {})
        if self.material is None or self.fuse is None:
            raise ProtocolError("asked to decrypt without holding the keys")
        total = self.scheme.decrypt(self.material, parts["sum"], header["count"], self.ctx)
        model = self.fuse(total)
        sealed = channel.seal(
            self.scheme.model_key(self.material),
            np.ascontiguousarray(model, dtype="<f8").tobytes(),
            _model_aad(self.scheme.name, self.ctx.session, self.ctx.round),
            self.rng,
        )
        record = encode_record(
            b"SKMD", {"round": self.ctx.round, "session": self.ctx.session}, {"sealed": sealed}
        )
        return encode_record(b"SKDr", {"sealed": True}, {"model": record})

    def open_model(self, sealed: bytes) -> np.ndarray:
        if self.material is None:
            raise ProtocolError("this party holds no model key to open the sealed model")
        header, parts = decode_record(sealed, b"SKMD", {"round": int, "session": str}, ("sealed",))
        aad = _model_aad(self.scheme.name, header["session"], header["round"])
        plain = channel.open_sealed(self.scheme.model_key(self.material), parts["sealed"], aad)
        return np.frombuffer(plain, dtype="<f8").copy()
