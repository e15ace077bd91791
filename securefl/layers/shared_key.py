"""Secure sum under a homomorphic key all parties share and the aggregator lacks.

The protocol is the same whatever the scheme (Paillier, CKKS); a :class:`Scheme` supplies the
arithmetic. Phases of a round (the key phases only while an invited party lacks the keys):

``key_offer``    every party says whether it holds the keys; one that does not sends a fresh
                 X25519 public key;
``key_grant``    a key holder (in the federation's first round, the first invited party, which
                 generates the keys) seals the key material to each requester (AES-256-GCM under
                 X25519 + HKDF) and publishes the scheme's public part for the aggregator;
``key_install``  requesters open their sealed keys;
``encrypt``      parties send ciphertexts (vector + a counter slot of 1); the aggregator checks each
                 payload whole, then combines it;
``decrypt``      two key holders (the decryptor and a verifier) each decrypt the combined sum, check
                 it (count, counter, bounds), fuse, and seal the next global model deterministically
                 under the model key every party holds; the aggregator keeps it only if both agree.

The aggregator only ever holds the scheme's public part, ciphertexts and the sealed model. What
each side checks against an active aggregator and one malicious party: ``protocols/paillier.md``.

With ``identities`` (Ed25519 keys known in advance, e.g. bound to the parties' certificates) key
distribution resists an active aggregator: a requester signs its X25519 key, the key holder seals
only to keys signed by their requesters and signs its own, and a requester opens keys only from a
channel a federation member signed. Without them the aggregator is trusted to relay keys honestly.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
from securefl.wire import MAX_ROUND, decode_record, encode_record

KEY_OFFER, KEY_GRANT, KEY_INSTALL, ENCRYPT, DECRYPT = (
    "key_offer",
    "key_grant",
    "key_install",
    "encrypt",
    "decrypt",
)
_MAX_KEY_REPLY = 64 << 20
_ABSTAIN = b"SKAb"  # an encrypt reply from a party without keys: it sits the round out


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
    """The aggregator's side: public part, ciphertexts and the sealed model only.

    What it checks, and why (one malicious party must cost only itself, design invariant 7):
    every reply is parsed and checked whole on arrival, with public material alone, before any of
    it is combined — a bad payload drops its sender and leaves the running sum untouched; the
    scheme checks ciphertexts against the agreed parameters (never against another payload); a
    party whose failure can only be found later (a granter whose keys open for no requester, a
    decryptor whose sealed model is malformed) is named in the round's report.
    """

    def __init__(self, scheme: Scheme, public_bytes: bytes | None) -> None:
        self.scheme = scheme
        self.public_bytes = public_bytes
        self.public = scheme.public_from_bytes(public_bytes) if public_bytes is not None else None
        self.keys_preloaded = public_bytes is not None  # every party was given the keys out of band
        self.holders: set[str] = set()  # parties known to hold the keys
        # Parties caught misbehaving as granter or decryptor: never given either role again.
        self.distrusted: set[str] = set()
        self._receivers = {
            KEY_OFFER: self._receive_key_offer,
            KEY_GRANT: self._receive_key_grant,
            KEY_INSTALL: self._receive_key_install,
            ENCRYPT: self._receive_encrypt,
            DECRYPT: self._receive_decrypt,
        }

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
        self.install_failures: dict[str, str] = {}
        self.combined: Combiner | None = None
        self.contributors_: set[str] = set()
        self.abstained: dict[str, str] = {}
        self.sealed: bytes | None = None
        self.decryptor: str | None = None
        self.verifier: str | None = None
        self.sealed_by: dict[str, bytes] = {}
        self.culprits_: dict[str, str] = {}

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
                    # The public part this aggregator combines under: the requester checks its keys
                    # match it, so a granter cannot publish one key and hand out another.
                    "public": (self.public_bytes or b"") if granted else b"",
                },
            )
        if phase == DECRYPT:
            if party not in (self.decryptor, self.verifier) or self.combined is None:
                return encode_record(b"SKDq", {"count": 0}, {"sum": b""})
            return encode_record(
                b"SKDq", {"count": len(self.contributors_)}, {"sum": self.combined.payload()}
            )
        return b""

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        receiver = self._receivers.get(phase)
        if receiver is None:
            raise ProtocolError(f"{self.scheme.name} has no phase {phase!r}")
        try:
            receiver(party, payload)
        except Exception:
            if phase == DECRYPT and party in (self.decryptor, self.verifier):
                self.distrusted.add(party)  # a malformed sealed model: not asked to decrypt again
            raise

    def _receive_key_offer(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(payload, b"SKOr", {"fingerprint": str}, ("channel", "signature"))
        if header["fingerprint"]:
            if parts["channel"] or parts["signature"]:
                raise WireError("a key holder's offer carries no channel key and no signature")
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
            if header["granted"] or header["sizes"] or any(parts.values()):
                raise ProtocolError("granted keys without being asked to")
            return
        granted, sizes = header["granted"], header["sizes"]
        if any(not isinstance(g, str) for g in granted) or sorted(granted) != sorted(self.requesters):
            raise ProtocolError("the key holder did not grant keys to exactly the requesting parties")
        if len(sizes) != len(granted) or any(type(s) is not int or s <= 0 for s in sizes):
            raise WireError("sealed key material sizes are not one positive integer per requester")
        if sum(sizes) != len(parts["sealed"]):
            raise WireError("sealed key material sizes do not add up")
        if self.public_bytes is not None and parts["public"] != self.public_bytes:
            raise ProtocolError("the key holder published a different public key than the federation's")
        if granted and len(parts["channel"]) != channel.KEY_BYTES:
            raise WireError("the key holder's channel must be a 32-byte X25519 public key")
        if len(parts["signature"]) not in (0, signing.SIGNATURE_BYTES):
            raise WireError("the key holder's signature must be empty or 64 bytes")
        public = self.scheme.public_from_bytes(parts["public"])  # raises before any state changes
        self.public, self.public_bytes = public, parts["public"]
        self.granter_channel = parts["channel"]
        self.grant_signature = parts["signature"]
        offsets = np.cumsum([0, *sizes])
        self.grants = {g: parts["sealed"][offsets[i] : offsets[i + 1]] for i, g in enumerate(granted)}

    def _receive_key_install(self, party: str, payload: bytes) -> None:
        header, _ = decode_record(payload, b"SKIr", {"installed": bool, "problem": str}, ())
        if party in self.grants and not header["installed"]:
            # Kept live (not dropped): the fault may be the granter's. Judged at close_phase.
            self.install_failures[party] = header["problem"][:300] or "no reason given"

    def _receive_encrypt(self, party: str, payload: bytes) -> None:
        if payload[:4] == _ABSTAIN:
            header, _ = decode_record(payload, _ABSTAIN, {"reason": str}, ())
            self.abstained[party] = header["reason"][:300]
            return
        if self.public is None:
            raise ProtocolError("no public key is known yet; the key phases did not complete")
        if self.combined is None:
            self.combined = self.scheme.combiner(self.public, self.ctx)
        # The combiner checks the whole payload before folding any of it in: on an exception the
        # running sum is exactly as before and only this party is dropped.
        self.combined.add(payload)  # combined as they arrive: memory does not grow with parties
        self.contributors_.add(party)

    def _receive_decrypt(self, party: str, payload: bytes) -> None:
        if party not in (self.decryptor, self.verifier):
            header, parts = decode_record(payload, b"SKDr", {"sealed": bool}, ())
            if header["sealed"]:
                raise ProtocolError("returned a sealed model without being asked to decrypt")
            return
        header, parts = decode_record(payload, b"SKDr", {"sealed": bool}, ("model",))
        if not header["sealed"]:
            raise ProtocolError("asked to decrypt, it returned no sealed model")
        # What the aggregator can check without the model key: a sealed-model record for this
        # session and round, long enough to hold a nonce and a tag. (The contents are AEAD-sealed;
        # a decryptor that seals a wrong model is a key holder, trusted for the model's integrity.)
        model, model_parts = decode_record(
            parts["model"], b"SKMD", {"round": int, "session": str}, ("sealed",)
        )
        if model["round"] != self.ctx.round or model["session"] != self.ctx.session:
            raise ProtocolError(
                f"the sealed model is labelled round {model['round']} of session {model['session'][:32]!r}, "
                f"not round {self.ctx.round} of this session"
            )
        if len(model_parts["sealed"]) < channel.sealed_size(8):
            raise WireError("the sealed model is too short to hold a model")
        self.sealed_by[party] = parts["model"]

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
            # Prefer a holder this aggregator saw receive the keys; never one caught misbehaving.
            trusted = [p for p in self.offered_holders if p not in self.distrusted]
            known = [p for p in trusted if p in self.holders]
            candidates = known or trusted
            if self.public is None:  # no key yet: any survivor may generate it
                candidates = [p for p in sorted(survivors) if p not in self.distrusted]
            if not candidates:
                raise RoundFailed(
                    f"{name}: the only key holders invited ({', '.join(self.offered_holders)}) misbehaved "
                    "before and are not trusted to grant keys; invite another key holder"
                )
            self.granter = candidates[0]
            self.requesters.pop(self.granter, None)  # the generator of brand-new keys needs no grant
        elif phase == KEY_GRANT:
            if self.granter not in survivors or self.public is None:
                raise RoundFailed(
                    f"{name}: the key holder {self.granter} dropped before granting keys; nothing was "
                    "encrypted and the model is unchanged"
                )
            self.holders.add(self.granter)
        elif phase == KEY_INSTALL:
            failed = {p: why for p, why in self.install_failures.items() if p in survivors}
            self.holders |= {p for p in self.grants if p in survivors and p not in failed}
            if failed:
                # A requester that could not open or check its keys cannot contribute, and one
                # complaint alone cannot say who lies (a requester can frame an honest granter). So
                # the round fails naming both sides, and nobody is dropped for it. Two complaints or
                # more: with at most one malicious party one of them is honest, so the granter is at
                # fault (or the relay); it is dropped and never asked to grant or decrypt again.
                reasons = "; ".join(f"{p}: {why}" for p, why in sorted(failed.items()))
                if len(failed) >= 2:
                    self._blame(self.granter, f"gave keys that {len(failed)} requesters refused ({reasons})")
                raise RoundFailed(
                    f"{name}: keys granted by {self.granter} could not be opened or verified by "
                    f"{', '.join(sorted(failed))} ({reasons}); the round is abandoned and the model is "
                    "unchanged"
                )
        elif phase == ENCRYPT:
            self.contributors_ &= survivors
            if not self.contributors_ or self.combined is None:
                raise RoundFailed(f"{name}: no ciphertexts arrived")
            # The decryptor contributed, holds the keys, and has not misbehaved before.
            holders = sorted(
                p
                for p in self.contributors_
                if (p in self.holders or self.keys_preloaded) and p not in self.distrusted
            )
            if not holders:
                raise RoundFailed(f"{name}: no key holder is left to decrypt the sum")
            # Two key holders decrypt the same sum and seal deterministically: the aggregator, which
            # cannot open a sealed model, can still see that they agree, so one malicious decryptor
            # cannot pass off a wrong or unopenable model (it would end every later round).
            self.decryptor = holders[0]
            self.verifier = holders[1] if len(holders) > 1 else None
        elif phase == DECRYPT:
            if self.decryptor not in self.sealed_by:
                raise RoundFailed(
                    f"{name}: the decryptor {self.decryptor} dropped or returned no valid sealed model; "
                    "the model is unchanged"
                )
            if self.verifier is not None:
                if self.verifier not in self.sealed_by:
                    raise RoundFailed(
                        f"{name}: the verifier {self.verifier} dropped or returned no valid sealed model to "
                        f"check the decryptor {self.decryptor}'s against; the model is unchanged"
                    )
                if not hmac.compare_digest(self.sealed_by[self.decryptor], self.sealed_by[self.verifier]):
                    raise RoundFailed(
                        f"{name}: the decryptor {self.decryptor} and the verifier {self.verifier} sealed "
                        "different models from the same sum, so one of them is faulty; the model is unchanged"
                    )
            self.sealed = self.sealed_by[self.decryptor]

    def _blame(self, party: str | None, reason: str) -> None:
        if party is None:
            return
        self.culprits_[party] = reason
        self.distrusted.add(party)
        self.holders.discard(party)

    def culprits(self) -> dict[str, str]:
        return dict(self.culprits_)

    def contributors(self) -> frozenset[str]:
        return frozenset(self.contributors_)

    def result(self) -> SealedModel:
        return SealedModel(self.sealed)


class _Party(SumParty):
    """A party's side. What it refuses from an aggregator that may send anything in any order:
    phases it does not have (dispatch is by a fixed table, never by name lookup); a second encrypt
    or decrypt in one round; a decrypt count outside [min_parties, invited parties] or contradicted
    by the counter slot; a sum beyond the scheme's bound; keys it did not ask for, that do not
    verify (signed mode), that fail the scheme's checks or do not match the public part the
    aggregator combines under; and a sealed model of another session, of a round not before this
    one, or older than one it has already opened (replay / rollback)."""

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
        self.ctx: RoundContext | None = None
        self.latest_model_round = -1  # the newest sealed model this party has trained on
        self._opening_for_round = False
        self._handlers = {
            KEY_OFFER: self._key_offer,
            KEY_GRANT: self._key_grant,
            KEY_INSTALL: self._key_install,
            ENCRYPT: self._encrypt,
            DECRYPT: self._decrypt,
        }

    def attach_fuser(self, fuse: Fuser) -> None:
        self.fuse = fuse

    def start_round(self, ctx: RoundContext, provide: Provider) -> None:
        self.ctx = ctx
        self.provide = provide
        self.channel_secret: bytes | None = None
        self.done: set[str] = set()

    def respond(self, phase: str, request: bytes) -> bytes:
        # A fixed table: a phase name is never looked up as an attribute, so an aggregator cannot
        # call any other method (e.g. ask for an identity signature on bytes of its choice).
        handler = self._handlers.get(phase)
        if handler is None:
            raise ProtocolError(f"{self.scheme.name} has no phase {phase!r}")
        if phase in (ENCRYPT, DECRYPT) and phase in self.done:
            raise ProtocolError(f"phase {phase!r} was already answered in this round; replay refused")
        self.done.add(phase)
        return handler(request)

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
        if any(not isinstance(r, str) for r in requesters) or len(set(requesters)) != len(requesters):
            raise ProtocolError("the requester list must name distinct parties")
        if self.me in requesters or any(r not in self.ctx.parties for r in requesters):
            raise ProtocolError("keys may be granted only to other parties invited to this round")
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
            request, b"SKIq", {"granter": str}, ("granter_channel", "sealed", "signature", "public")
        )
        if not parts["sealed"]:
            return encode_record(b"SKIr", {"installed": self.material is not None, "problem": ""}, {})
        if self.channel_secret is None:
            raise ProtocolError("received keys this party did not ask for")
        secret, self.channel_secret = self.channel_secret, None  # one use only
        try:
            material = self._open_grant(header["granter"], parts, secret)
        except (ProtocolError, WireError, ConfigError, ValueError) as exc:
            # Not a withdrawal: the fault may be the granter's, and the aggregator judges that from
            # every requester's answer. This party sits the round out without keys.
            return encode_record(b"SKIr", {"installed": False, "problem": f"{type(exc).__name__}: {exc}"}, {})
        self.material = material
        return encode_record(b"SKIr", {"installed": True, "problem": ""}, {})

    def _open_grant(self, granter: str, parts: dict[str, bytes], secret: bytes) -> Any:
        if self.identities is not None:
            # Open keys only from a member's signed channel: keys the aggregator made are refused.
            statement = _grant_statement(self.ctx, granter, parts["granter_channel"])
            self.identities.verify(granter, parts["signature"], statement)
        key = channel.agree(secret, parts["granter_channel"], _ctx("key-channel", self.ctx, self.me))
        blob = channel.open_sealed(key, parts["sealed"], _ctx("key-material", self.ctx, self.me))
        material = self.scheme.material_from_bytes(blob)  # the scheme checks the keys are sound
        if not hmac.compare_digest(self.scheme.public_to_bytes(material), parts["public"]):
            raise ProtocolError(
                "the keys received do not match the public key the aggregator combines under: the key "
                "holder published one key and handed out another"
            )
        return material

    # the sum

    def _encrypt(self, request: bytes) -> bytes:
        if self.material is None:
            # No keys (key distribution failed for this party): sit the round out, visibly, instead
            # of withdrawing — whoever caused it, this party did nothing wrong.
            return encode_record(_ABSTAIN, {"reason": f"this party holds no {self.scheme.name} keys"}, {})
        self._opening_for_round = True  # provide() opens this round's sealed global model
        try:
            vector = self.provide()
        finally:
            self._opening_for_round = False
        return self.scheme.encrypt(self.material, vector, self.ctx)

    def _decrypt(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SKDq", {"count": int}, ("sum",))
        if not parts["sum"]:
            return encode_record(b"SKDr", {"sealed": False}, {})
        if self.material is None or self.fuse is None:
            raise ProtocolError("asked to decrypt without holding the keys")
        if ENCRYPT not in self.done:
            raise ProtocolError("asked to decrypt a sum before contributing to it")
        count = header["count"]
        if not max(1, self.ctx.min_parties) <= count <= len(self.ctx.parties):
            # Fewer than min_parties would reveal (to every key holder, through the next model) a sum
            # of too few parties — e.g. one party's ciphertext passed off as the sum.
            raise ProtocolError(
                f"the sum is said to hold {count} contributions; a round of {len(self.ctx.parties)} invited "
                f"parties needs between {self.ctx.min_parties} and {len(self.ctx.parties)}"
            )
        # The scheme checks the counter slot against `count` and the sum against count × bound.
        total = self.scheme.decrypt(self.material, parts["sum"], count, self.ctx)
        model = self.fuse(total, contributors=count)  # the core's sum check (quantized stacks)
        sealed = _seal_model(
            self.scheme.model_key(self.material),
            np.ascontiguousarray(model, dtype="<f8").tobytes(),
            _model_aad(self.scheme.name, self.ctx.session, self.ctx.round),
        )
        record = encode_record(
            b"SKMD", {"round": self.ctx.round, "session": self.ctx.session}, {"sealed": sealed}
        )
        return encode_record(b"SKDr", {"sealed": True}, {"model": record})

    def open_model(self, sealed: bytes) -> np.ndarray:
        if self.material is None:
            raise ProtocolError("this party holds no model key to open the sealed model")
        header, parts = decode_record(sealed, b"SKMD", {"round": int, "session": str}, ("sealed",))
        round_, session = header["round"], header["session"]
        if self.ctx is not None and session != self.ctx.session:
            raise ProtocolError("the sealed model belongs to another session; replay refused")
        if not 0 <= round_ <= MAX_ROUND or not _is_session(session):
            raise WireError("the sealed model's round or session is malformed")
        if self._opening_for_round:
            # Training in round r starts from the newest model: sealed before r, and not older than
            # one this party already trained on (an aggregator replaying an old model is refused).
            if round_ >= self.ctx.round:
                raise ProtocolError(
                    f"the sealed model is from round {round_}, not from before this round ({self.ctx.round})"
                )
            if round_ < self.latest_model_round:
                raise ProtocolError(
                    f"the sealed model is from round {round_}, older than the round-"
                    f"{self.latest_model_round} model this party already trained on; rollback refused"
                )
        aad = _model_aad(self.scheme.name, session, round_)
        plain = channel.open_sealed(self.scheme.model_key(self.material), parts["sealed"], aad)
        if len(plain) % 8:
            raise WireError("the sealed model is not a whole number of float64 values")
        if self._opening_for_round:
            self.latest_model_round = round_
        return np.frombuffer(plain, dtype="<f8").copy()


def _seal_model(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM with a synthetic nonce (SIV): nonce = HMAC-SHA256(k', associated ‖ plaintext)[:12],
    k' derived from the model key. Deterministic, so two honest key holders that fuse the same sum
    seal byte-identical models and the aggregator can compare them; different plaintexts get
    different nonces (a PRF of the whole input), so GCM's nonce is never reused for two messages and
    equal ciphertexts reveal only equal (round, session, model). Opened like any channel.seal blob."""
    siv_key = hashlib.sha256(b"securefl/shared-key/model-siv" + key).digest()
    nonce = hmac.new(siv_key, associated + plaintext, hashlib.sha256).digest()[: channel.NONCE_BYTES]
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def _is_session(session: str) -> bool:
    return len(session) == 32 and all(c in "0123456789abcdef" for c in session)
