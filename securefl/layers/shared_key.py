"""Secure sum under a homomorphic key all parties share and the aggregator lacks.

The protocol is the same whatever the scheme (Paillier, CKKS); a :class:`Scheme` supplies the
arithmetic. Phases of a round (the key phases only while an invited party lacks the keys):

``key_offer``    every party says whether it holds the keys; one that does not sends a fresh
                 X25519 public key;
``key_grant``    a key holder (in the federation's first round, the first invited party, which
                 generates the keys) seals the key material to each requester (AES-256-GCM under
                 X25519 + HKDF) and publishes the scheme's public part for the aggregator;
``key_install``  requesters open their sealed keys;
``encrypt``      parties send ciphertexts (vector + a counter slot of 1), each plaintext padded with a
                 pseudorandom **contribution pad** only key holders can compute; the aggregator
                 checks each payload whole, then combines it;
``decrypt``      two key holders (the decryptor and a verifier) each decrypt the combined sum, remove
                 the pads of the contributors the request names (so only the sum of exactly those
                 parties' ciphertexts unpads to anything but noise), check it (count, counter,
                 bounds), fuse, and seal the next global model deterministically under the model key
                 every party holds; the aggregator keeps it only if both agree;
``arbitrate``    only when they disagree (or one is silent): a third key holder decrypts the same sum
                 and the one it contradicts is named and never given a role again.

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
import logging
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securefl.crypto import channel, signing
from securefl.crypto.signing import Identities
from securefl.errors import ConfigError, ProtocolError, RoundFailed, UpdateError, WireError
from securefl.layers.base import (
    Fuser,
    ImpossibleSum,
    Provider,
    RoundContext,
    SealedModel,
    SecureSum,
    SumAggregator,
    SumParty,
)
from securefl.randomness import SecureRandom
from securefl.wire import MAX_ROUND, decode_record, encode_record

KEY_OFFER, KEY_GRANT, KEY_INSTALL, ENCRYPT, DECRYPT, ARBITRATE = (
    "key_offer",
    "key_grant",
    "key_install",
    "encrypt",
    "decrypt",
    "arbitrate",
)
_MAX_KEY_REPLY = 64 << 20
_ABSTAIN = b"SKAb"  # an encrypt reply from a party without keys: it sits the round out
_MAX_COMPLAINTS = 2  # a requester that refused keys this often is no longer invited to key phases
# After this many rounds without a new sealed record (a model or a refusal marker: the aggregator
# cannot tell which) every party sits ONE round out together, then the count starts again (N4: a
# permanent sit-out turned three short failures into a stall for ever): an unchanged update is
# fresh-encrypted at most STALE_LIMIT times in every STALE_LIMIT + 1 round numbers.
STALE_LIMIT = 3
_MODEL, _REFUSED = 0, 1  # status byte of a sealed record's plaintext

log = logging.getLogger(__name__)


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
    def encrypt(self, material: Any, vector: np.ndarray, ctx: RoundContext, party: str) -> bytes:
        """``party``'s ciphertexts for its protected vector, every plaintext padded with
        :func:`pad_seed` ``(model key, ctx, party)``'s pads (one per ciphertext index)."""

    @abstractmethod
    def combiner(self, public: Any, ctx: RoundContext) -> Combiner: ...

    @abstractmethod
    def decrypt(
        self, material: Any, combined: bytes, contributors: tuple[str, ...], ctx: RoundContext
    ) -> np.ndarray:
        """The revealed sum of the named contributors' vectors (what the fuser decodes): decrypt,
        remove the sum of exactly their pads, check; raise ImpossibleSum if it cannot be theirs."""

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


def pad_seed(model_key: bytes, ctx: RoundContext, party: str) -> bytes:
    """The 32-byte AES-256-CTR seed of ``party``'s contribution pads in this round.

    HMAC-SHA256 under a key derived from the model key (never the sealing key itself), over
    ctx("contribution-pad", session, party, round): a PRF only key holders can evaluate. Each
    scheme expands it into one pad per ciphertext index, uniform in the plaintext space (Z_n for
    Paillier, Z_q^N in NTT form for CKKS), and adds it to that plaintext. The decryptor subtracts
    the pads of exactly the contributors the request names: a sum in which a named party's
    ciphertext of index j is missing, repeated, scaled, shifted to another index or another round,
    or an unnamed party's is present, keeps a uniformly random pad term and unpads to noise, which
    the bound checks refuse (see protocols/paillier.md, "Contribution pads")."""
    pad_key = hmac.new(model_key, b"securefl/shared-key/pad-key", hashlib.sha256).digest()
    return hmac.new(pad_key, _ctx("contribution-pad", ctx, party, str(ctx.round)), hashlib.sha256).digest()


def model_key_id(model_key: bytes) -> bytes:
    """SHA-256 identifier of a model key: what a key fingerprint binds so that a granter cannot hand
    one requester another model key unnoticed (N1). The key is 256 uniform bits: its hash hides it."""
    return hashlib.sha256(b"securefl/shared-key/model-key-id" + model_key).digest()


def holder_signing_key(model_key: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key every key holder derives from the model key: a holder offering its keys signs
    (session, round, its name, fingerprint) with it, and the aggregator checks the signature with
    the public half it learnt from the generator's grant (N2: a fingerprint is public; this proves
    possession of the model key without revealing it, and binds the proof to one party and round)."""
    seed = hmac.new(model_key, b"securefl/shared-key/holder-proof-key", hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def holder_public_key(model_key: bytes) -> bytes:
    """The raw 32-byte public half of :func:`holder_signing_key`."""
    return holder_signing_key(model_key).public_key().public_bytes_raw()


def _holder_statement(ctx: RoundContext, party: str, fingerprint: str) -> bytes:
    return _ctx("holder-proof", ctx, party, str(ctx.round), fingerprint)


def _x25519_usable(public: bytes) -> bool:
    """A peer X25519 key gives a non-zero shared secret and has one encoding (channel.usable_public)."""
    return channel.usable_public(public)


def _model_aad(scheme: str, session: str, round: int, contributors: list[str], sum_digest: str) -> bytes:
    """Associated data of a sealed record: the scheme, session and round (its label), the named
    contributors (so a key holder knows what the model averages) and SHA-256 of the received sum
    (so replies to different requests never repeat a synthetic nonce, whatever they hold)."""
    fields = [
        b"securefl/shared-key/model/v2",
        scheme.encode(),
        bytes.fromhex(session),
        struct.pack(">I", round),
        struct.pack(">I", len(contributors)),
        *(c.encode() for c in contributors),
        bytes.fromhex(sum_digest),
    ]
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def sum_digest(combined: bytes) -> str:
    """The hex SHA-256 of an encrypted sum as a decrypt request carries it."""
    return hashlib.sha256(b"securefl/shared-key/sum" + combined).hexdigest()


_RECORD_HEAD = 8 + 32  # status, 3 zero bytes, count (u32 BE), the base's digest


def sealed_record_size(vector_size: int) -> int:
    """Bytes of every sealed record (model or refusal marker) for a protected vector of
    ``vector_size`` values: a 40-byte header and ``vector_size`` float64 slots, sealed."""
    return channel.sealed_size(_RECORD_HEAD + 8 * vector_size)


def model_digest(vector: np.ndarray) -> bytes:
    """A model's identity: SHA-256 of its float64 LE values."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f8").tobytes()).digest()


def _record_plaintext(status: int, model: np.ndarray, vector_size: int, base: np.ndarray) -> bytes:
    """status (1 byte) ‖ 3 zero bytes ‖ number of model values (u32 BE) ‖ SHA-256 of the base the
    sealer fused on ‖ the values as float64 LE, zero-padded to ``vector_size`` slots. A model has
    fewer values than the protected vector (which adds the weight at least), so every record of a
    round has the same size. A refusal marker carries a model too: the sealer's base."""
    values = np.ascontiguousarray(model, dtype="<f8").tobytes()
    if len(values) > 8 * vector_size:
        raise ProtocolError("the model is larger than the protected vector; cannot seal it at a fixed size")
    head = struct.pack(">B3xI", status, len(values) // 8) + model_digest(base)
    return head + values + bytes(8 * vector_size - len(values))


def _labelled_values(values: np.ndarray, model_key: bytes, associated: bytes) -> np.ndarray:
    """The model a record carries: ``values`` with each coordinate moved by a pseudo-random number of
    ulps (0 or 1 for a model of at least 128 values; at most 255 for models under 16 values, whose
    records then collide with probability 2^-(8·size)), drawn from the model key and the record's
    associated data (session, round, contributors, sum digest).

    Why: everything the aggregator can compare after records are sealed and opened must come out
    the same for a refusal marker as for a model. A model is a function of (base, sum); a marker
    carries the base. Moved by a PRF of the whole request, a record's content depends on the request
    the way a model's and a marker's alike do: equal requests give equal records (honest holders on
    one base agree), different requests — other bytes for the same plaintext included — different
    ones (chance of a collision ≤ 2^-128 from 128 values on), and a marker never equals its base
    (a party that opened it no longer equals one that did not). Found by attackers: markers that
    left the base alone were equal across decryptors on different bases; markers moved at one
    PRF-chosen coordinate differed across two encodings of one sum where models did not (the
    "twin-request oracle": an update coordinate to 1.3 quantisation steps)."""
    moved = np.array(values, dtype="<f8", copy=True)
    size = moved.size
    if not size:
        return moved
    bits = min(8, -(-128 // size))
    stream = hashlib.shake_256(model_key + b"securefl/shared-key/record" + associated).digest(8 * size)
    steps = np.frombuffer(stream, dtype="<u8") >> np.uint64(64 - bits)
    # float64 → uint64 keys in the floats' order (sign set: all bits flipped; else the sign bit set),
    # so that adding k moves a value k ulps up, across zero included; down where up leaves the floats.
    raw = moved.view("<u8")
    keys = np.where(raw >> np.uint64(63) == 1, ~raw, raw | np.uint64(1 << 63))
    up, down = _from_order_keys(keys + steps), _from_order_keys(keys - steps)
    return np.where(np.isfinite(up), up, down)


def _from_order_keys(keys: np.ndarray) -> np.ndarray:
    return np.where(keys >> np.uint64(63) == 1, keys & np.uint64((1 << 63) - 1), ~keys).view("<f8")


def _record_header() -> dict[str, type]:
    return {"round": int, "session": str, "contributors": list, "sum": str}


def _offer_statement(ctx: RoundContext, requester: str, channel_key: bytes) -> bytes:
    return _ctx("key-offer", ctx, requester, str(ctx.round)) + channel_key


def _grant_statement(
    ctx: RoundContext, granter: str, channel_key: bytes, fingerprint: str = "", holder_key: bytes = b""
) -> bytes:
    return _ctx("key-grant", ctx, granter, str(ctx.round), fingerprint) + channel_key + holder_key


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
        return _Aggregator(
            self.scheme, self._public, self.identities.public_only() if self.identities else None
        )

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
    decryptor whose sealed model the verifier and an arbiter contradict) is named in the round's
    report and never given a role again.

    Key-holder bookkeeping (which parties hold the keys) comes only from what this aggregator saw:
    the generator, requesters that said they installed their keys, and parties offering the
    federation's fingerprint (learned from a known holder). A claim to hold keys before any key
    exists is a lie, and its sender is named.
    """

    def __init__(
        self, scheme: Scheme, public_bytes: bytes | None, identities: Identities | None = None
    ) -> None:
        self.scheme = scheme
        self.public_bytes = public_bytes
        self.public = scheme.public_from_bytes(public_bytes) if public_bytes is not None else None
        self.identities = identities  # public identity keys only (signed mode)
        self.keys_preloaded = public_bytes is not None  # every party was given the keys out of band
        self.holders: set[str] = set()  # parties known to hold the keys
        # The federation's key fingerprint (binds every key a holder installs) and the public half of
        # the holders' proof key, as the generator's grant published them (N1/N2).
        self.fingerprint: str | None = None
        self.holder_key: bytes | None = None
        # Parties caught misbehaving as granter, decryptor, verifier or arbiter: never given a role.
        self.distrusted: set[str] = set()
        # Decrypting roles that did not answer: no role while other holders are available (a lost
        # reply is not proof of malice, so they come back when the others run out).
        self.silent: set[str] = set()
        # Requester -> granters whose keys it refused; after _MAX_COMPLAINTS refusals it is no
        # longer invited to key phases (it sits rounds out without keys).
        self.complaints: dict[str, list[str]] = {}
        self.excluded: set[str] = set()  # requesters no longer invited to key phases
        # The party this aggregator asked to generate the federation's first keys, while its grant
        # has not arrived: it holds keys nobody else has seen. Its offer of them is no lie, and it is
        # asked to grant them (which publishes them) before anyone is asked to generate others.
        self.unpublished: str | None = None
        self.asked_to_generate: set[str] = set()  # every party ever asked to generate keys
        # Fingerprints of keys retired because no trusted party held them: an honest party may still
        # hold them (its install went unrecorded); it sits out until it learns the new ones.
        self.retired: set[str] = set()
        self.model_sealed = False  # a round's sealed model exists under the current keys
        self._receivers = {
            KEY_OFFER: self._receive_key_offer,
            KEY_GRANT: self._receive_key_grant,
            KEY_INSTALL: self._receive_key_install,
            ENCRYPT: self._receive_encrypt,
            DECRYPT: self._receive_decrypt,
            ARBITRATE: self._receive_decrypt,
        }

    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        tail = (ENCRYPT, DECRYPT, ARBITRATE) if len(ctx.parties) >= 3 else (ENCRYPT, DECRYPT)
        self._readmit_waiting()
        waiting = set(ctx.parties) - self.holders - self.excluded
        if not self.keys_preloaded and waiting:
            return (KEY_OFFER, KEY_GRANT, KEY_INSTALL, *tail)
        return tail

    def start_round(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        self.requesters: dict[str, bytes] = {}
        self.offer_signatures: dict[str, bytes] = {}
        self.grant_signature = b""
        self.offered_holders: list[str] = []
        self.offered: dict[str, str] = {}  # party -> fingerprint it offered
        self.granter: str | None = None
        self.generate = False
        self.grants: dict[str, bytes] = {}
        self.granter_channel = b""
        self.install_failures: dict[str, str] = {}
        self.grant_fingerprint = ""
        self.combined: Combiner | None = None
        self.contributors_: set[str] = set()
        self.abstained: dict[str, str] = {}
        self.sealed: bytes | None = None
        self.decryptor: str | None = None
        self.verifier: str | None = None
        self.arbiter: str | None = None
        self.sealed_by: dict[str, bytes] = {}
        self._sum_payload: bytes | None = None
        self._sum_digest = ""  # what the decrypt request carried: a sealed record must name it
        self._named: list[str] = []
        self.culprits_: dict[str, str] = {}
        self._phase_now = ""
        self._spare: list[str] = []

    def max_reply_bytes(self, phase: str) -> int:
        if phase == ENCRYPT:
            return self.scheme.max_encrypt_bytes(self.ctx)
        if phase in (DECRYPT, ARBITRATE):
            return sealed_record_size(self.ctx.vector_size) + 8192 + 256 * len(self.ctx.parties)
        return _MAX_KEY_REPLY

    def _decrypt_request(self, party: str | None) -> bytes:
        roles = (self.decryptor, self.verifier) if self._phase_now == DECRYPT else (self.arbiter,)
        if party is None or party not in roles or self.combined is None:
            return encode_record(b"SKDq", {"contributors": []}, {"sum": b""})
        if self._sum_payload is None:
            self._sum_payload = self.combined.payload()
            self._sum_digest = sum_digest(self._sum_payload)
        self._named = sorted(self.contributors_)
        return encode_record(b"SKDq", {"contributors": self._named}, {"sum": self._sum_payload})

    def request(self, phase: str, party: str) -> bytes:
        if phase == KEY_OFFER:
            # The federation's key fingerprint, once a grant published it: a party holding keys it
            # generated that were never published learns they are not the federation's (below).
            return encode_record(b"SKOq", {"fingerprint": self.fingerprint or ""}, {})
        if phase == KEY_GRANT:
            if party != self.granter:
                return encode_record(
                    b"SKGq", {"requesters": [], "generate": False}, {"channels": b"", "signatures": b""}
                )
            requesters = sorted(self.requesters)
            blob = b"".join(self.requesters[r] for r in requesters)
            signatures = b"".join(self.offer_signatures[r] for r in requesters)
            return encode_record(
                b"SKGq",
                {"requesters": requesters, "generate": self.generate},
                {"channels": blob, "signatures": signatures},
            )
        if phase == KEY_INSTALL:
            granted = self.grants.get(party, b"")
            return encode_record(
                b"SKIq",
                {
                    "granter": self.granter if granted else "",
                    "fingerprint": self.grant_fingerprint if granted else "",
                },
                {
                    "holder_key": (self.holder_key or b"") if granted else b"",
                    "granter_channel": self.granter_channel if granted else b"",
                    "sealed": granted,
                    "signature": self.grant_signature if granted else b"",
                    # The public part this aggregator combines under: the requester checks its keys
                    # match it, so a granter cannot publish one key and hand out another.
                    "public": (self.public_bytes or b"") if granted else b"",
                },
            )
        if phase in (DECRYPT, ARBITRATE):
            self._phase_now = phase
            return self._decrypt_request(party)
        return b""

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        receiver = self._receivers.get(phase)
        if receiver is None:
            raise ProtocolError(f"{self.scheme.name} has no phase {phase!r}")
        try:
            if phase in (DECRYPT, ARBITRATE):
                receiver(phase, party, payload)
            else:
                receiver(party, payload)
        except Exception:
            roles = (self.decryptor, self.verifier) if phase == DECRYPT else (self.arbiter,)
            if phase in (DECRYPT, ARBITRATE) and party in roles:
                # A malformed sealed model from the party asked for it: no role again. (Not the
                # decryptor's or verifier's empty answer in arbitrate, where they have none — found
                # by a ninth attacker: one flipped byte there distrusted the decryptor for good.)
                self.distrusted.add(party)
            raise

    def _receive_key_offer(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(
            payload, b"SKOr", {"fingerprint": str}, ("channel", "signature", "proof")
        )
        if header["fingerprint"]:
            if parts["channel"] or parts["signature"]:
                raise WireError("a key holder's offer carries no channel key and no signature")
            if self.public is None and self.holder_key is None:
                if party == self.unpublished:
                    # Asked to generate, its grant never arrived: it holds the keys it made (unproved:
                    # no proof key is known yet). It is asked to grant them, which publishes them.
                    self.offered[party] = header["fingerprint"][:128]
                    return
                if party in self.asked_to_generate or header["fingerprint"] in self.retired:
                    # It made keys nobody has seen and had its chance to publish them: not a liar, not
                    # a holder either. It sits the round out; once the federation's keys exist, the
                    # key offer request names them and an honest party drops its own and asks.
                    self.abstained[party] = "offers keys that were never published, or were retired"
                    return
                # Nobody holds keys yet (this aggregator has seen no public key): provably false.
                raise ProtocolError(
                    "claimed to hold the keys before any key existed in this federation (no key was "
                    "ever granted): a false key-holder claim"
                )
            if len(header["fingerprint"]) > 128:
                raise WireError("a key fingerprint is at most 128 characters")
            self.offered[party] = header["fingerprint"]
            problem = self._holder_problem(party, header["fingerprint"], parts["proof"])
            if problem:
                # Treated as a failed install, not as a holder (N1/N2): no role, its ciphertexts are
                # refused, and nobody is blamed for it (an honest party never offers other keys).
                self.holders.discard(party)
                self.abstained[party] = problem
                log.warning("%s: %s is not counted as a key holder: %s", self.scheme.name, party, problem)
                return
            self.offered_holders.append(party)
            return
        if party in self.holders:
            self.holders.discard(party)  # it says it lost its keys: it is a requester again
        if party in self.excluded:
            return  # refused keys too often: not invited to key phases (it sits rounds out)
        if len(parts["channel"]) != channel.KEY_BYTES:
            raise WireError("a key request needs a 32-byte X25519 public key")
        if len(parts["signature"]) not in (0, signing.SIGNATURE_BYTES):
            raise WireError("a key request's signature must be empty or 64 bytes")
        if not _x25519_usable(parts["channel"]):
            raise ProtocolError(
                "the key request's X25519 key is a low-order point (it gives an all-zero shared "
                "secret); send a freshly generated key"
            )
        if self.identities is not None:
            # Checked here to drop impostors early; the granter checks again itself.
            self.identities.verify(
                party, parts["signature"], _offer_statement(self.ctx, party, parts["channel"])
            )
        self.requesters[party] = parts["channel"]
        self.offer_signatures[party] = parts["signature"]

    def _holder_problem(self, party: str, fingerprint: str, proof: bytes) -> str:
        """Why an offer does not prove that ``party`` holds the federation's keys ('' if it does):
        its fingerprint must be the federation's, and signed for this session, round and party with
        the holders' proof key (derived from the model key: a fingerprint alone is public)."""
        if self.fingerprint is None or self.holder_key is None:
            return "offered keys, but no grant this aggregator saw published the federation's fingerprint"
        if not hmac.compare_digest(fingerprint.encode(), self.fingerprint.encode()):
            return "offered a key fingerprint other than the federation's (other keys)"
        try:
            signing.verify(self.holder_key, proof, _holder_statement(self.ctx, party, fingerprint), party)
        except ProtocolError as exc:
            return f"its key-holder proof failed: {exc}"
        return ""

    def _receive_key_grant(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(
            payload,
            b"SKGr",
            {"granted": list, "sizes": list, "refused": list, "fingerprint": str},
            ("channel", "public", "sealed", "signature", "holder_key"),
        )
        if party != self.granter:
            if (
                header["granted"]
                or header["sizes"]
                or header["refused"]
                or header["fingerprint"]
                or any(parts.values())
            ):
                raise ProtocolError("granted keys without being asked to")
            return
        granted, sizes, refused = header["granted"], header["sizes"], header["refused"]
        if any(not isinstance(g, str) for g in (*granted, *refused)) or sorted(
            [*granted, *refused]
        ) != sorted(self.requesters):
            raise ProtocolError("the key holder did not answer exactly the requesting parties")
        for requester in refused:
            # An honest granter skips only a requester whose key it cannot use (low-order point, or
            # in signed mode a bad signature). This aggregator checks the same on arrival, so a
            # refused key that passes here is the granter's lie.
            if self._request_usable(requester):
                raise ProtocolError(f"the key holder refused {requester}'s usable key request")
        if len(sizes) != len(granted) or any(type(s) is not int or s <= 0 for s in sizes):
            raise WireError("sealed key material sizes are not one positive integer per requester")
        if sum(sizes) != len(parts["sealed"]):
            raise WireError("sealed key material sizes do not add up")
        if granted or self.generate:
            if self.public_bytes is not None and parts["public"] != self.public_bytes:
                raise ProtocolError("the key holder published a different public key than the federation's")
            if len(parts["signature"]) not in (0, signing.SIGNATURE_BYTES):
                raise WireError("the key holder's signature must be empty or 64 bytes")
            if granted and len(parts["channel"]) != channel.KEY_BYTES:
                raise WireError("the key holder's channel must be a 32-byte X25519 public key")
            fingerprint, holder_key = header["fingerprint"], parts["holder_key"]
            if not 0 < len(fingerprint) <= 128 or len(holder_key) != signing.PUBLIC_BYTES:
                raise WireError("a grant publishes a key fingerprint and a 32-byte holder proof key")
            if self.fingerprint is not None and (
                fingerprint != self.fingerprint or holder_key != self.holder_key
            ):
                # The granter would hand out keys other than the federation's (N1): it is named.
                self._blame(party, "offered to grant keys with another fingerprint than the federation's")
                raise ProtocolError(
                    "the key holder published a different key fingerprint than the federation's"
                )
            public = self.scheme.public_from_bytes(parts["public"])  # raises before any state changes
            self.public, self.public_bytes = public, parts["public"]
            self.fingerprint, self.holder_key = fingerprint, holder_key
            self.grant_fingerprint = fingerprint
        elif any(parts.values()):
            raise WireError("a grant to nobody carries no keys")
        self.granter_channel = parts["channel"]
        self.grant_signature = parts["signature"]
        offsets = np.cumsum([0, *sizes])
        self.grants = {g: parts["sealed"][offsets[i] : offsets[i + 1]] for i, g in enumerate(granted)}
        for requester in refused:
            self.culprits_[requester] = "its key request could not be used by the key holder"

    def _request_usable(self, requester: str) -> bool:
        key = self.requesters[requester]
        if not _x25519_usable(key):
            return False
        if self.identities is not None:
            try:
                self.identities.verify(
                    requester, self.offer_signatures[requester], _offer_statement(self.ctx, requester, key)
                )
            except ProtocolError:
                return False
        return True

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
        if party in self.install_failures:
            raise ProtocolError("sent ciphertexts after saying it could not install its keys")
        if not self.keys_preloaded and party not in self.holders:
            raise ProtocolError(
                "sent ciphertexts without having been granted the keys or proved it holds them"
            )
        if self.public is None:
            raise ProtocolError("no public key is known yet; the key phases did not complete")
        if self.combined is None:
            self.combined = self.scheme.combiner(self.public, self.ctx)
        # The combiner checks the whole payload before folding any of it in: on an exception the
        # running sum is exactly as before and only this party is dropped.
        self.combined.add(payload)  # combined as they arrive: memory does not grow with parties
        self.contributors_.add(party)

    def _receive_decrypt(self, phase: str, party: str, payload: bytes) -> None:
        roles = (self.decryptor, self.verifier) if phase == DECRYPT else (self.arbiter,)
        header, parts = decode_record(payload, b"SKDr", {"sealed": bool, "refused": str}, ("model",))
        if party not in roles:
            if header["sealed"] or header["refused"] or parts["model"]:
                raise ProtocolError("answered a decryption it was not asked for")
            return
        if not header["sealed"] or header["refused"]:
            # An honest key holder never refuses in the clear: a sum it cannot accept is answered
            # with a sealed refusal marker, the same size as a model (F1: a clear refusal was a
            # 1-bit oracle on crafted sums).
            raise ProtocolError("asked to decrypt, it refused in the clear instead of sealing a record")
        # What the aggregator can check without the model key: a sealed record for this session and
        # round, naming the contributors and the sum it was sent, of the one size every sealed record
        # of this round has. (The contents are AEAD-sealed; the verifier, and if needed an arbiter,
        # check them by sealing the same bytes.)
        model, model_parts = decode_record(parts["model"], b"SKMD", _record_header(), ("sealed",))
        if model["round"] != self.ctx.round or model["session"] != self.ctx.session:
            raise ProtocolError(
                f"the sealed model is labelled round {model['round']} of session {model['session'][:32]!r}, "
                f"not round {self.ctx.round + 1} of this session"
            )
        if model["contributors"] != self._named or model["sum"] != self._sum_digest:
            raise ProtocolError("the sealed model names other contributors or another sum than it was sent")
        if len(model_parts["sealed"]) != sealed_record_size(self.ctx.vector_size):
            raise WireError("the sealed model does not have the size of a sealed record of this round")
        self.sealed_by[party] = parts["model"]

    def _outcome(self, party: str | None) -> tuple[str, Any]:
        """What a decrypting role returned: ("sealed", bytes) or ("missing", None). Whether the
        sealed record holds a model or a refusal marker is hidden from this aggregator."""
        if party in self.sealed_by:
            return "sealed", self.sealed_by[party]
        return "missing", None

    @staticmethod
    def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
        return a[0] == b[0] == "sealed" and hmac.compare_digest(a[1], b[1])

    def _eligible_holders(self) -> list[str]:
        """Contributors that hold the keys and were never caught misbehaving, in a round-dependent
        rotation: after a failure the roles move on even among equally trusted holders."""
        holders = sorted(
            p
            for p in self.contributors_
            if (p in self.holders or self.keys_preloaded) and p not in self.distrusted
        )
        answering = [p for p in holders if p not in self.silent]
        holders = answering if len(answering) >= min(3, len(holders)) else holders
        if not holders:
            return holders
        start = self.ctx.round % len(holders)
        return holders[start:] + holders[:start]

    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        name = self.scheme.name
        if phase == KEY_OFFER:
            self._close_key_offer(survivors)
        elif phase == KEY_GRANT:
            if self.granter is None:
                return  # nobody needed keys: no grant
            if self.granter not in survivors or self.public is None:
                # A lost reply is no proof of malice, but a granter that never answers must not
                # stall the federation (attacker: one holder withdrew from every grant and every
                # round failed): it is silent, and the next grant goes to another holder if any.
                self.silent.add(self.granter)
                if self.generate:
                    self.unpublished = self.granter  # it may hold keys nobody has seen
                elif self.granter == self.unpublished:
                    self.unpublished = None  # its one chance to publish them is spent
                if self.public is None:
                    raise RoundFailed(
                        f"{name}: the key holder {self.granter} dropped before granting keys; nothing was "
                        "encrypted and the model is unchanged"
                    )
                # The federation's keys exist: the requesters sit this round out without them (they
                # abstain at encrypt) and the holders' round goes on.
                self.grants = {}
                log.warning(
                    "%s: the key holder %s dropped before granting keys; %d requesters sit this round out",
                    name,
                    self.granter,
                    len(self.requesters),
                )
                return
            self.holders.add(self.granter)
            if self.granter == self.unpublished or self.generate:
                self.unpublished = None  # its keys are the federation's now, published
        elif phase == KEY_INSTALL:
            self._close_key_install(survivors)
        elif phase == ENCRYPT:
            self.contributors_ &= survivors
            if not self.contributors_ or self.combined is None:
                raise RoundFailed(f"{name}: no ciphertexts arrived")
            if len(self.contributors_) < self.ctx.min_parties:
                # Never a sum of fewer than min_parties to a key holder (whatever the live count).
                raise RoundFailed(
                    f"{name}: only {len(self.contributors_)} contributions arrived, {self.ctx.min_parties} "
                    "are needed; no sum is sent to be decrypted"
                )
            # The decryptor contributed, holds the keys, and has not misbehaved before.
            holders = self._eligible_holders()
            if not holders:
                raise RoundFailed(f"{name}: no key holder is left to decrypt the sum")
            # Two key holders decrypt the same sum and seal deterministically: the aggregator, which
            # cannot open a sealed model, can still see that they agree, so one malicious decryptor
            # cannot pass off a wrong or unopenable model (it would end every later round).
            self.decryptor = holders[0]
            self.verifier = holders[1] if len(holders) > 1 else None
            self._spare = holders[2:]
        elif phase == DECRYPT:
            self._close_decrypt(survivors)
        elif phase == ARBITRATE:
            self._close_arbitrate(survivors)

    def _close_key_offer(self, survivors: frozenset[str]) -> None:
        name = self.scheme.name
        self.offered_holders = sorted(p for p in self.offered_holders if p in survivors)
        self.requesters = {p: k for p, k in self.requesters.items() if p in survivors}
        # Offers were checked on arrival (the federation's fingerprint, signed with the holders' proof
        # key for this round and party): those parties hold the keys (e.g. an install reply was lost).
        self.holders |= set(self.offered_holders)
        if not self.requesters:
            self.granter = None  # everyone invited holds the keys, or sits out: no grant this round
            return
        if self.public is not None and not self.keys_preloaded and not self.holders - self.distrusted:
            # Every party known to hold the keys was caught misbehaving (a third attacker: a generator
            # that published a valid public key and sealed garbage to every requester was distrusted,
            # and as the only holder left every later round without a granter). Nobody trusted holds
            # them, no honest party installed them: they are retired and a requester generates anew —
            # unless the global model is sealed under them, which new keys could never open (a sixth
            # attacker: every later round failed, nobody named). Then the federation cannot go on.
            if self.model_sealed:
                raise RoundFailed(
                    f"{name}: the global model is sealed under keys that only distrusted parties "
                    f"({', '.join(sorted(self.holders))}) hold; no trusted party can open it or grant "
                    "them: restart the federation from its initial model (or give the parties a key file)"
                )
            log.warning("%s: no trusted party holds the federation's keys; new keys are generated", name)
            if self.fingerprint is not None:
                self.retired.add(self.fingerprint)
            for granter in self.holders:
                self._readmit_complainers_of(granter)
            self.public = self.public_bytes = self.fingerprint = self.holder_key = None
            self.holders, self.unpublished = set(), None
        if self.public is None and self.unpublished in self.offered:
            # The party asked to generate, whose grant was lost, grants the keys it made: that
            # publishes them (attacker: it was named a liar for offering them, then locked out). One
            # chance: if that grant fails too, another requester generates (a second attacker made
            # the "unpublished generator" withdraw from every grant and stalled every round).
            candidates = [self.unpublished]
        elif self.public is None:
            # The federation's first keys: a requester (never a party claiming keys, there are none
            # yet — those were dropped on arrival) generates them, one that answered before first.
            candidates = self._by_standing([p for p in self.requesters if p not in self.distrusted])
            self.generate = True
            self.asked_to_generate.update(candidates[:1])
        else:
            known = [p for p in self.offered_holders if p in self.holders and p not in self.distrusted]
            if not known:
                raise RoundFailed(
                    f"{name}: parties without keys were invited but no key holder known to this "
                    "aggregator was, so nobody can grant them keys; invite a key holder, or give every "
                    "party the key file"
                )
            # A requester that refused a granter's keys before gets them from another one if it can.
            candidates = self._by_standing(known)
        if not candidates:
            raise RoundFailed(f"{name}: no party is left to generate the keys")
        self.granter = candidates[0]
        self.requesters.pop(self.granter, None)  # the generator of brand-new keys needs no grant
        self.offer_signatures.pop(self.granter, None)
        others = self.holders - self.distrusted - {self.granter}
        for requester in sorted(self.requesters):
            if self.granter in self.complaints.get(requester, []) and others:
                # It refused this granter's keys before and another trusted holder exists, absent or
                # not: it waits for that one, sitting this round out (a fourth attacker had an honest
                # requester excluded for good when only the granter it refused was selected twice).
                del self.requesters[requester]
                self.offer_signatures.pop(requester, None)
                self.abstained[requester] = f"waits for keys from a holder other than {self.granter}"
        if not self.requesters and self.public is not None:
            self.granter = None  # every requester waits for another holder: no grant this round

    def _by_standing(self, parties: list[str]) -> list[str]:
        """``parties`` as granter candidates: rotated by the round (equally trusted holders take
        turns), then those the requesters complained about least, then those never silent first."""
        parties = sorted(parties)
        if parties:
            start = self.ctx.round % len(parties)
            parties = parties[start:] + parties[:start]
        return sorted(
            parties,
            key=lambda p: (sum(p in self.complaints.get(r, []) for r in self.requesters), p in self.silent),
        )

    def _close_key_install(self, survivors: frozenset[str]) -> None:
        name = self.scheme.name
        failed = {p: why for p, why in self.install_failures.items() if p in survivors}
        self.holders |= {p for p in self.grants if p in survivors and p not in failed}
        if not failed:
            return
        for party in failed:
            self.complaints.setdefault(party, []).append(self.granter)
            # It sits this round out (an encrypt from it is refused): not dropped, not summed.
            self.abstained[party] = f"could not install keys from {self.granter}"
        reasons = "; ".join(f"{p}: {why}" for p, why in sorted(failed.items()))
        if len(failed) >= 2:
            # With at most one malicious party, one of two complainers is honest: the granter (or
            # the relay) is at fault. It is dropped and never granter or decryptor again; the
            # complainers sit the round out and the round goes on.
            self._blame(self.granter, f"gave keys that {len(failed)} requesters refused ({reasons})")
            self._readmit_complainers_of(self.granter)
            return
        (party,) = failed
        complainers = sorted(r for r, granters in self.complaints.items() if self.granter in granters)
        if len(complainers) >= 2:
            # Two different requesters, over any rounds, refused this granter's keys; at most one party
            # is malicious, so the granter is (a fourth attacker sealed garbage to one newcomer at a
            # time: each round failed on one complaint, and the granter kept every role).
            refused_by = ", ".join(complainers)
            self._blame(self.granter, f"gave keys that {len(complainers)} requesters refused ({refused_by})")
            self._readmit_complainers_of(self.granter)
            return
        granters = sorted(set(self.complaints[party]))
        if len(granters) >= 2:
            # It refused keys from two different holders; at most one party is malicious, so it is.
            self.excluded.add(party)
            self._blame(
                party,
                f"refused keys from {len(granters)} different key holders ({', '.join(granters)}), at most "
                "one of which can be faulty",
            )
            return
        if len(self.complaints[party]) >= _MAX_COMPLAINTS:
            # The same holder again (no other was available): who lies cannot be told. It sits this
            # and every later round out, no longer invited to key phases; the others go on.
            self.excluded.add(party)
            return
        # One complaint alone cannot say who lies (a requester can frame an honest granter): the
        # round fails naming both, nobody is dropped, and the complainer's next keys come from
        # another holder if there is one.
        raise RoundFailed(
            f"{name}: keys granted by {self.granter} could not be opened or verified by {party} "
            f"({reasons}); the round is abandoned and the model is unchanged"
        )

    def _close_decrypt(self, survivors: frozenset[str]) -> None:
        name = self.scheme.name
        first = self._outcome(self.decryptor)
        for role in (self.decryptor, self.verifier):
            if role is not None and self._outcome(role)[0] == "missing":
                self.silent.add(role)  # no role while other holders answer
        if self.verifier is None:
            self.arbiter = None
            if first[0] == "sealed":
                self.sealed = first[1]
                return
            raise RoundFailed(
                f"{name}: the decryptor {self.decryptor} dropped or returned no valid sealed model; "
                "the model is unchanged"
            )
        second = self._outcome(self.verifier)
        if first[0] == second[0] == "missing":
            # Neither answered: an arbiter's answer alone could not be checked against anyone.
            self.arbiter = None
            raise RoundFailed(
                f"{name}: neither the decryptor {self.decryptor} nor the verifier {self.verifier} returned "
                "a valid answer; the model is unchanged"
            )
        if self._same(first, second):
            self.arbiter = None
            self.sealed = first[1]
            return
        # They disagree (or one is silent): a third key holder decides, if there is one.
        spare = [p for p in self._spare if p in survivors and p not in self.distrusted]
        self.arbiter = spare[0] if spare else None
        if self.arbiter is None:
            if first[0] == "missing" or second[0] == "missing":
                silent = self.decryptor if first[0] == "missing" else self.verifier
                raise RoundFailed(
                    f"{name}: the {'decryptor' if silent == self.decryptor else 'verifier'} {silent} dropped "
                    "or returned no valid sealed model, and no third key holder is left to check the other; "
                    "the model is unchanged"
                )
            raise RoundFailed(
                f"{name}: the decryptor {self.decryptor} and the verifier {self.verifier} sealed different "
                "records for the same sum, so one of them is faulty, and no third key holder is left to tell "
                "which; the model is unchanged"
            )

    def _close_arbitrate(self, survivors: frozenset[str]) -> None:
        name = self.scheme.name
        if self.arbiter is None:
            if self.sealed is None:
                raise RoundFailed(f"{name}: no sealed model was agreed; the model is unchanged")
            return
        judge = self._outcome(self.arbiter)
        if judge[0] == "missing":
            self.silent.add(self.arbiter)
            raise RoundFailed(
                f"{name}: the decryptor {self.decryptor} and the verifier {self.verifier} disagree, and the "
                f"arbiter {self.arbiter} dropped or returned no valid answer; the model is unchanged"
            )
        roles = (self.decryptor, self.verifier)
        answered = [r for r in roles if self._outcome(r)[0] != "missing"]
        agree = [r for r in answered if self._same(self._outcome(r), judge)]
        if not agree:
            if len(answered) == 1:
                # One role is silent (only that: never distrusted for a disagreement it did not voice)
                # and the arbiter contradicts the one that answered: one word against another, with no
                # third to tell who lies (P6). Nobody is distrusted; the round fails.
                raise RoundFailed(
                    f"{name}: {answered[0]} and the arbiter {self.arbiter} sealed different records for the "
                    f"same sum and the other role was silent, so who is faulty cannot be told; the model is "
                    "unchanged"
                )
            # Three different answers to one sum: honest holders seal identical bytes, so at most one
            # of the three is honest — beyond the one-malicious-party model; none gets a role again.
            for r in (*roles, self.arbiter):
                self.distrusted.add(r)
            raise RoundFailed(
                f"{name}: the decryptor {self.decryptor}, the verifier {self.verifier} and the arbiter "
                f"{self.arbiter} all disagree; the model is unchanged"
            )
        for r in answered:
            if r not in agree:
                self._blame(r, "sealed a record that two other key holders contradicted")
        self.sealed = judge[1]

    def _blame(self, party: str | None, reason: str) -> None:
        if party is None:
            return
        self.culprits_[party] = reason
        self.distrusted.add(party)

    def culprits(self) -> dict[str, str]:
        return dict(self.culprits_)

    def contributors(self) -> frozenset[str]:
        return frozenset(self.contributors_)

    def result(self) -> SealedModel:
        self.model_sealed = True  # the global model is sealed under the federation's current keys
        return SealedModel(self.sealed)

    def _readmit_waiting(self) -> None:
        """A requester excluded after refusing the only holder there was, twice, is invited again
        once a trusted holder it has not refused exists (a seventh attacker's honest requester sat out
        for good although another holder had appeared); if it then refuses that one too, the
        two-holders rule names it."""
        for requester in sorted(self.excluded - self.distrusted):
            refused = set(self.complaints.get(requester, []))
            if self.holders - self.distrusted - refused - {requester}:
                self.excluded.discard(requester)

    def inputs_summed(self, phase: str, live: frozenset[str]) -> int:
        """The contributions summed, not the parties answering: a party that abstains at ``encrypt``
        answers validly but adds nothing, and once ``encrypt`` closes the sum is fixed — a decrypting
        role dropping after it has decrypted no longer fails the round (the arbiter decides). Found by
        a seventh attacker: abstainers counted towards min_parties sent a key holder the sum of two
        parties' updates at min_parties 3; and a key holder that decrypted legal sums and then
        withdrew failed rounds of exactly min_parties, collecting subset sums of unchanged updates."""
        if phase == ENCRYPT:
            return len(live - set(self.abstained))
        if phase in (DECRYPT, ARBITRATE):
            return len(self.contributors_)
        return len(live)

    def _readmit_complainers_of(self, granter: str) -> None:
        """Once ``granter`` is found at fault, its complaints are settled: a requester excluded for
        refusing only its keys is invited again (a sixth attacker's honest requester stayed excluded
        for good after the granter it had refused was convicted)."""
        for requester, granters in list(self.complaints.items()):
            left = [g for g in granters if g != granter]
            if left:
                self.complaints[requester] = left
            else:
                del self.complaints[requester]
                self.excluded.discard(requester)


class _Party(SumParty):
    """A party's side. What it refuses from an aggregator that may send anything in any order:
    phases it does not have (dispatch is by a fixed table, never by name lookup); a second encrypt
    or decryption in one round; a decrypt request naming contributors that are not distinct invited
    parties including this one, or fewer than its own min_parties; a sum that, once exactly those
    contributors' pads are removed, fails the counter slot or the scheme's bound (refused inside a
    sealed refusal marker the aggregator cannot tell from a model, never in the clear); keys it did
    not ask for, that do not verify (signed mode), that fail the scheme's checks or do not match the
    public part the aggregator combines under; a sealed record of another session, of a round not
    before this one, older than one it has already opened (replay / rollback), or different from the
    one it holds for the same round label (equivocation); an encryption in a round not after the
    last it encrypted in; and, after STALE_LIMIT consecutive encryptions without a new sealed record,
    any further encryption until one arrives (it sits the round out)."""

    def __init__(
        self, scheme: Scheme, party_id: str, material: Any | None, identities: Identities | None = None
    ) -> None:
        self.scheme = scheme
        self.me = party_id
        self.material = material
        # Keys this party generated or was granted (not given in a key file): dropped when a key offer
        # request names other keys as the federation's.
        self._from_key_phases = False
        self.identity = identities.private[party_id] if identities else None
        self.identities = identities.public_only() if identities else None
        self.fuse: Fuser | None = None
        self.rng = SecureRandom()
        self.ctx: RoundContext | None = None
        self.latest_model_round = -1  # the newest sealed record this party has trained on (or sealed)
        # The digest of the model this party is on, and of every model it has been on: a record fused
        # on one it has moved past is refused (N3), whatever the record holds.
        self._on: bytes | None = None
        self._bases: set[bytes] = set()
        # Label -> SHA-256 of the one sealed record this party accepts under that label: the one it
        # sealed itself as a decrypting role, or the one it first trained on (F2: one label, one content).
        self._label_digest: dict[int, bytes] = {}
        self._base: Any = None  # () -> the global vector this round trained from (for refusal markers)
        self._last_model: np.ndarray | None = None  # the last global vector a sealed record gave
        self._current: np.ndarray | None = None  # the global vector this party last trained on
        self.refusals: list[tuple[int, str]] = []  # (round, reason): sums this party refused to fuse
        self._last_encrypt_round = -1  # pads are per (session, party, round): never a round twice
        self._opening_for_round = False
        self._handlers = {
            KEY_OFFER: self._key_offer,
            KEY_GRANT: self._key_grant,
            KEY_INSTALL: self._key_install,
            ENCRYPT: self._encrypt,
            DECRYPT: self._decrypt,
            ARBITRATE: self._decrypt,
        }

    def attach_fuser(self, fuse: Fuser, base: Any = None) -> None:
        """Keep ``fuse``; ``base`` (optional) returns the global vector this round trained from: the
        party keeps it as its own current model, which it keeps when it opens a refusal marker (a
        marker carries no model; without ``base``, the last model this party opened)."""
        self.fuse = fuse
        self._base = base

    def start_round(self, ctx: RoundContext, provide: Provider) -> None:
        self.ctx = ctx
        self.provide = provide
        self.channel_secret: bytes | None = None
        self.done: set[str] = set()
        self.decrypted = False  # one decryption per round, whichever phase asks for it

    def respond(self, phase: str, request: bytes) -> bytes:
        # A fixed table: a phase name is never looked up as an attribute, so an aggregator cannot
        # call any other method (e.g. ask for an identity signature on bytes of its choice).
        handler = self._handlers.get(phase)
        if handler is None:
            raise ProtocolError(f"{self.scheme.name} has no phase {phase!r}")
        if phase in (ENCRYPT, DECRYPT, ARBITRATE) and phase in self.done:
            raise ProtocolError(f"phase {phase!r} was already answered in this round; replay refused")
        self.done.add(phase)
        return handler(request)

    # key distribution

    def _key_offer(self, request: bytes) -> bytes:
        header, _ = decode_record(request, b"SKOq", {"fingerprint": str}, ())
        federation = header["fingerprint"]
        if (
            self.material is not None
            and self._from_key_phases
            and federation
            and not hmac.compare_digest(self.scheme.fingerprint(self.material).encode(), federation.encode())
        ):
            # Keys this party generated or was granted that are not the federation's now: never
            # published (its grant was lost and others generated since), or retired (no trusted
            # party held them). They are dropped and the federation's requested — found by
            # attackers: such parties were locked out for good. On the aggregator's word, which
            # costs availability at most: a party installs keys only from a member's signed
            # grant (or, unsigned, from an aggregator trusted to relay them). Keys given in a key
            # file are never dropped.
            log.warning(
                "%s: %s drops keys that are not the federation's any more (never published, or retired)",
                self.scheme.name,
                self.me,
            )
            self.material, self._from_key_phases = None, False
        if self.material is not None:
            fingerprint = self.scheme.fingerprint(self.material)
            proof = holder_signing_key(self.scheme.model_key(self.material)).sign(
                _holder_statement(self.ctx, self.me, fingerprint)
            )
            return encode_record(
                b"SKOr", {"fingerprint": fingerprint}, {"channel": b"", "signature": b"", "proof": proof}
            )
        self.channel_secret, public = channel.generate_keypair(self.rng)
        signature = self._sign(_offer_statement(self.ctx, self.me, public))
        return encode_record(
            b"SKOr", {"fingerprint": ""}, {"channel": public, "signature": signature, "proof": b""}
        )

    def _sign(self, statement: bytes) -> bytes:
        return signing.sign(self.identity, statement) if self.identity is not None else b""

    def _key_grant(self, request: bytes) -> bytes:
        header, parts = decode_record(
            request, b"SKGq", {"requesters": list, "generate": bool}, ("channels", "signatures")
        )
        requesters = header["requesters"]
        empty = {"channel": b"", "public": b"", "sealed": b"", "signature": b"", "holder_key": b""}
        if not requesters and not header["generate"]:
            return encode_record(
                b"SKGr", {"granted": [], "sizes": [], "refused": [], "fingerprint": ""}, empty
            )
        if any(not isinstance(r, str) for r in requesters) or len(set(requesters)) != len(requesters):
            raise ProtocolError("the requester list must name distinct parties")
        if self.me in requesters or any(r not in self.ctx.parties for r in requesters):
            raise ProtocolError("keys may be granted only to other parties invited to this round")
        if header["generate"]:
            if self.material is not None:
                raise ProtocolError("asked to generate keys, but this party already holds them")
            self.material = self.scheme.generate()
            self._from_key_phases = True
        if self.material is None:
            raise ProtocolError("asked to grant keys this party does not hold")
        keys = parts["channels"]
        if len(keys) != channel.KEY_BYTES * len(requesters):
            raise WireError("requesters' channel keys have the wrong size")
        unsigned: set[str] = set()
        if self.identities is not None:
            # Seal only to keys their requesters signed: an aggregator's substituted key is refused.
            signatures = parts["signatures"]
            if len(signatures) != signing.SIGNATURE_BYTES * len(requesters):
                raise ProtocolError("key requests arrived unsigned; this federation signs key distribution")
            for i, requester in enumerate(requesters):
                peer = keys[i * channel.KEY_BYTES : (i + 1) * channel.KEY_BYTES]
                signature = signatures[i * signing.SIGNATURE_BYTES : (i + 1) * signing.SIGNATURE_BYTES]
                try:
                    self.identities.verify(requester, signature, _offer_statement(self.ctx, requester, peer))
                except ProtocolError:
                    unsigned.add(requester)
        secret, public = channel.generate_keypair(self.rng)
        plaintext = self.scheme.material_to_bytes(self.material)
        sealed, granted, refused = [], [], []
        for i, requester in enumerate(requesters):
            peer = keys[i * channel.KEY_BYTES : (i + 1) * channel.KEY_BYTES]
            if requester in unsigned or not _x25519_usable(peer):
                # Skipped and named, not a withdrawal: one bad key request must not cost the others.
                refused.append(requester)
                continue
            key = channel.agree(secret, peer, _ctx("key-channel", self.ctx, requester))
            sealed.append(channel.seal(key, plaintext, _ctx("key-material", self.ctx, requester), self.rng))
            granted.append(requester)
        fingerprint = self.scheme.fingerprint(self.material)
        holder_key = holder_public_key(self.scheme.model_key(self.material))
        statement = _grant_statement(self.ctx, self.me, public, fingerprint, holder_key)
        return encode_record(
            b"SKGr",
            {
                "granted": granted,
                "sizes": [len(s) for s in sealed],
                "refused": refused,
                "fingerprint": fingerprint,
            },
            {
                "channel": public if granted else b"",
                "public": self.scheme.public_to_bytes(self.material),
                "sealed": b"".join(sealed),
                "signature": self._sign(statement) if granted else b"",
                "holder_key": holder_key,
            },
        )

    def _key_install(self, request: bytes) -> bytes:
        header, parts = decode_record(
            request,
            b"SKIq",
            {"granter": str, "fingerprint": str},
            ("holder_key", "granter_channel", "sealed", "signature", "public"),
        )
        if not parts["sealed"]:
            return encode_record(b"SKIr", {"installed": self.material is not None, "problem": ""}, {})
        if self.channel_secret is None:
            raise ProtocolError("received keys this party did not ask for")
        secret, self.channel_secret = self.channel_secret, None  # one use only
        try:
            material = self._open_grant(header["granter"], header["fingerprint"], parts, secret)
        except (ProtocolError, WireError, ConfigError, ValueError) as exc:
            # Not a withdrawal: the fault may be the granter's, and the aggregator judges that from
            # every requester's answer. This party sits the round out without keys.
            return encode_record(b"SKIr", {"installed": False, "problem": f"{type(exc).__name__}: {exc}"}, {})
        self.material, self._from_key_phases = material, True
        return encode_record(b"SKIr", {"installed": True, "problem": ""}, {})

    def _open_grant(self, granter: str, fingerprint: str, parts: dict[str, bytes], secret: bytes) -> Any:
        if self.identities is not None:
            # Open keys only from a member's signed channel: keys the aggregator made are refused.
            statement = _grant_statement(
                self.ctx, granter, parts["granter_channel"], fingerprint, parts["holder_key"]
            )
            self.identities.verify(granter, parts["signature"], statement)
        key = channel.agree(secret, parts["granter_channel"], _ctx("key-channel", self.ctx, self.me))
        blob = channel.open_sealed(key, parts["sealed"], _ctx("key-material", self.ctx, self.me))
        material = self.scheme.material_from_bytes(blob)  # the scheme checks the keys are sound
        if not hmac.compare_digest(self.scheme.public_to_bytes(material), parts["public"]):
            raise ProtocolError(
                "the keys received do not match the public key the aggregator combines under: the key "
                "holder published one key and handed out another"
            )
        # Every key installed (a CKKS secret key, a model key) must be the federation's: the
        # fingerprint binds them all, and the proof key derives from the model key (N1). A granter
        # that hands this party other keys is refused here, and the complaint accounting re-grants.
        if not hmac.compare_digest(self.scheme.fingerprint(material).encode(), fingerprint.encode()):
            raise ProtocolError(
                "the keys received are not the federation's (their fingerprint, which binds the secret "
                "and model keys, differs from the one the key holder published)"
            )
        holder_key = holder_public_key(self.scheme.model_key(material))
        if not hmac.compare_digest(holder_key, parts["holder_key"]):
            raise ProtocolError("the model key received is not the federation's (its proof key differs)")
        return material

    # the sum

    def _encrypt(self, request: bytes) -> bytes:
        if self.material is None:
            # No keys (key distribution failed for this party): sit the round out, visibly, instead
            # of withdrawing — whoever caused it, this party did nothing wrong.
            return encode_record(_ABSTAIN, {"reason": f"this party holds no {self.scheme.name} keys"}, {})
        if self.ctx.round <= self._last_encrypt_round:
            # The pads derive from (session, party, round): a second encryption in one round would
            # reuse them, so that the quotient of the two ciphertexts is unpadded.
            raise ProtocolError(
                f"asked to encrypt in round {self.ctx.round + 1}, but this party already encrypted in round "
                f"{self._last_encrypt_round}; its pads are not reused"
            )
        self._opening_for_round = True  # provide() opens this round's sealed global model
        try:
            vector = self.provide()
        finally:
            self._opening_for_round = False
        base = self._base() if self._base is not None else None
        if base is not None:
            # The model this party trains on from now: what it fuses a sum on (and names as its base).
            self._current = np.asarray(base, dtype=np.float64).copy()
            self._move_to(self._current)
        # Every (STALE_LIMIT + 1)-th round after the newest record (model or refusal marker: the
        # aggregator cannot tell which) every party sits out together — decided only from what all of
        # them share, the round number and that record's label. Counted by each party, the sit-outs
        # fell out of step after transient dropouts and some party sat out in every round (an eighth
        # attacker stalled four honest parties at min_parties 4 for ever; a ninth, with the own count
        # kept beside the shared rule, eight parties under a period-4 selection). Round numbers only
        # increase and a party encrypts once per round, so an unchanged update is fresh-encrypted at
        # most STALE_LIMIT times in every STALE_LIMIT + 1 round numbers, whatever the aggregator does.
        since = self.ctx.round - self.latest_model_round - 1
        if since % (STALE_LIMIT + 1) == STALE_LIMIT:
            # Rounds keep failing and the update has not changed: sit THIS round out instead of handing
            # out yet another fresh encryption of it, then count again (bounded and resumable: a
            # permanent sit-out let three short failures stall the federation for ever, N4). Decided
            # from what the aggregator did (it served no new sealed record), never from a record's
            # hidden content, so sitting out tells it nothing.
            return encode_record(
                _ABSTAIN,
                {
                    "reason": f"{STALE_LIMIT} rounds without a new sealed model: every party sits this "
                    "round out"
                },
                {},
            )
        ciphertexts = self.scheme.encrypt(self.material, vector, self.ctx, self.me)
        self._last_encrypt_round = self.ctx.round
        return ciphertexts

    def _decrypt(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SKDq", {"contributors": list}, ("sum",))
        if not parts["sum"]:
            return encode_record(b"SKDr", {"sealed": False, "refused": ""}, {"model": b""})
        if self.material is None or self.fuse is None:
            raise ProtocolError("asked to decrypt without holding the keys")
        if ENCRYPT not in self.done:
            raise ProtocolError("asked to decrypt a sum before contributing to it")
        if self.decrypted:
            raise ProtocolError("already decrypted a sum in this round; replay refused")
        self.decrypted = True
        # Checks on what the aggregator sent (public to it) may end in a withdrawal; nothing that
        # depends on the decrypted sum may (F1).
        contributors = _contributor_list(header["contributors"], self.ctx, self.me)
        if self.ctx.round in self._label_digest or self.ctx.round < self.latest_model_round:
            raise ProtocolError(
                f"already holds a sealed record labelled round {self.ctx.round + 1} or later; not sealing "
                "another"
            )
        digest = sum_digest(parts["sum"])
        names = list(contributors)
        aad = _model_aad(self.scheme.name, self.ctx.session, self.ctx.round, names, digest)
        key = self.scheme.model_key(self.material)
        plaintext = self.record_plaintext(
            lambda: self.fuse(
                # The scheme removes exactly these contributors' pads, then checks the counter slot
                # against their number and the sum against number × bound; the fuser checks again.
                self.scheme.decrypt(self.material, parts["sum"], contributors, self.ctx),
                contributors=len(contributors),
            ),
            key,
            aad,
        )
        sealed = _seal_model(key, plaintext, aad)
        record = encode_record(
            b"SKMD",
            {"round": self.ctx.round, "session": self.ctx.session, "contributors": names, "sum": digest},
            {"sealed": sealed},
        )
        # This party accepts no other content under this label later (F2).
        self._label_digest[self.ctx.round] = hashlib.sha256(record).digest()
        return encode_record(b"SKDr", {"sealed": True, "refused": ""}, {"model": record})

    def record_plaintext(self, fuse: Callable[[], np.ndarray], model_key: bytes, associated: bytes) -> bytes:
        """The plaintext of the record this party seals for a sum: the fused model, or — if the sum
        cannot come from its contributors — a refusal marker, sealed the same way and at the same
        size (F1: "refused" vs "sealed" was a 1-bit oracle on crafted sums), carrying this party's
        base. Both name the base they were fused on, and both carry their model moved by a PRF of
        the request (:meth:`labelled`)."""
        base = self._current
        if base is None:
            raise ProtocolError("asked to seal a model before training on one")
        try:
            model, status = fuse(), _MODEL
        except (ImpossibleSum, UpdateError, ArithmeticError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.refusals.append((self.ctx.round, reason))
            log.warning("%s: refused the round-%d sum (sealed a marker): %s", self.me, self.ctx.round, reason)
            model, status = base, _REFUSED
        return _record_plaintext(
            status, self.labelled(model, model_key, associated), self.ctx.vector_size, base
        )

    def labelled(self, model: np.ndarray, model_key: bytes, associated: bytes) -> np.ndarray:
        """The model a record carries (:func:`_labelled_values`: see there why it moves)."""
        return _labelled_values(model, model_key, associated)

    def open_model(self, sealed: bytes) -> np.ndarray:
        if self.material is None:
            raise ProtocolError("this party holds no model key to open the sealed model")
        header, parts = decode_record(sealed, b"SKMD", _record_header(), ("sealed",))
        round_, session = header["round"], header["session"]
        names, digest = header["contributors"], header["sum"]
        if self.ctx is not None and session != self.ctx.session:
            raise ProtocolError("the sealed model belongs to another session; replay refused")
        if not 0 <= round_ <= MAX_ROUND or not _is_session(session):
            raise WireError("the sealed model's round or session is malformed")
        if (
            any(not isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
            or not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise WireError("the sealed model's contributors or sum digest are malformed")
        floor = self.ctx.min_parties if self.ctx is not None else 1
        if len(names) < max(1, floor):
            raise ProtocolError(
                f"the sealed model averages {len(names)} contributions, below this party's minimum {floor}"
            )
        record_digest = hashlib.sha256(sealed).digest()
        known = self._label_digest.get(round_)
        if known is not None and not hmac.compare_digest(known, record_digest):
            # Two different sealed records under one label (F2): e.g. the models of two different
            # contributor sets of the same round, whose difference would reveal one party's update.
            raise ProtocolError(
                f"a second, different sealed model labelled round {round_ + 1}: this party already holds one "
                "for that round; equivocation refused"
            )
        if self._opening_for_round:
            # Training in round r starts from the newest model: sealed before r, and not older than
            # one this party already trained on (an aggregator replaying an old model is refused).
            if round_ >= self.ctx.round:
                raise ProtocolError(
                    f"the sealed model is from round {round_ + 1}, not from before this round "
                    f"({self.ctx.round + 1})"
                )
            if round_ < self.latest_model_round:
                raise ProtocolError(
                    f"the sealed model is from round {round_ + 1}, older than the round-"
                    f"{self.latest_model_round} model this party already trained on; rollback refused"
                )
        aad = _model_aad(self.scheme.name, session, round_, names, digest)
        plain = channel.open_sealed(self.scheme.model_key(self.material), parts["sealed"], aad)
        if len(plain) < _RECORD_HEAD or len(plain) % 8:
            raise WireError("the sealed record is not a header and whole float64 values")
        status, count = struct.unpack(">B3xI", plain[:8])
        if status not in (_MODEL, _REFUSED) or 8 * count > len(plain) - _RECORD_HEAD:
            raise WireError("the sealed record's header is malformed")
        base = plain[8:_RECORD_HEAD]
        vector = np.frombuffer(plain[_RECORD_HEAD : _RECORD_HEAD + 8 * count], dtype="<f8").copy()
        if self._opening_for_round and known is None and base in self._bases and base != self._on:
            # Fused on a model this party has moved past: opening it would take the party back (N3:
            # a sealer held on M0 sealed a record served to a party on M1). Decided from the base the
            # record names, the same for a marker and a model — never from which of the two it is.
            raise ProtocolError(
                f"the round-{round_ + 1} sealed model was fused on a model this party has already moved "
                "past; rollback refused"
            )
        if status == _REFUSED:
            # The key holders refused that round's sum: it could not come from the named contributors.
            # Said here, locally; the aggregator cannot tell a marker from a model. The marker moves
            # the party as a model would (to the sealer's base, a few ulps on): see _labelled_values.
            log.warning(
                "%s: the round-%d sealed record is a refusal marker: the sum could not come from its %d "
                "named contributors; the model did not move (but for a few ulps)",
                self.me,
                round_,
                len(names),
            )
            if self._opening_for_round:
                self.refusals.append((round_, "opened a refusal marker: the model did not move"))
        if self._opening_for_round:
            self.latest_model_round = round_
            self._label_digest[round_] = record_digest
            self._last_model = vector.copy()
            self._move_to(vector)
        return vector

    def _move_to(self, model: np.ndarray) -> None:
        """This party is on ``model`` now; every model it has been on is remembered (N3)."""
        self._on = model_digest(model)
        self._bases.add(self._on)


def _contributor_list(names: Any, ctx: RoundContext, me: str) -> tuple[str, ...]:
    """The contributor set a decrypt request names, checked: distinct parties invited to this round,
    this party among them, and at least this party's own min_parties of them (a sum of fewer would
    reveal too little-mixed a sum — e.g. one party's ciphertext passed off as the sum — to every key
    holder through the next model). The pads of exactly these parties are removed."""
    if any(not isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ProtocolError("the decrypt request must name distinct contributors")
    if any(n not in ctx.parties for n in names):
        raise ProtocolError("the decrypt request names a contributor not invited to this round")
    if me not in names:
        raise ProtocolError("asked to decrypt a sum this party's own ciphertexts are not named in")
    if not max(1, ctx.min_parties) <= len(names) <= len(ctx.parties):
        raise ProtocolError(
            f"the sum is said to hold {len(names)} contributions; a round of {len(ctx.parties)} invited "
            f"parties needs between {ctx.min_parties} and {len(ctx.parties)}"
        )
    return tuple(sorted(names))


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
