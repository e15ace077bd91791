"""Key agreement and authenticated channels: X25519, HKDF-SHA256 and AES-256-GCM.

Two parties that know each other's X25519 public keys derive a key the aggregator relaying their
messages cannot compute, and seal messages to each other with AES-GCM. ``context`` (session,
round, purpose, sender, recipient) goes into the HKDF info and the GCM associated data, so a
ciphertext cannot be replayed in another round, redirected, or reused for another purpose.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.errors import ProtocolError
from securefl.randomness import SecureRandom

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


# A private key as raw bytes or loaded. Loading costs a scalar multiplication (OpenSSL derives the
# public key), as much as an exchange: a key used more than once is loaded once (``load_private``).
PrivateKey = bytes | X25519PrivateKey


def generate_keypair(rng: SecureRandom) -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (private, public) raw bytes."""
    private, public = generate_loaded(rng)
    return private.private_bytes_raw(), public


def generate_loaded(rng: SecureRandom) -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key pair as (loaded private key, raw public key)."""
    private = X25519PrivateKey.from_private_bytes(rng.bytes(KEY_BYTES))
    return private, _raw_public(private)


def load_private(private: PrivateKey) -> X25519PrivateKey:
    if isinstance(private, bytes):  # (a bytes check: the key class is an ABC, slow to test against)
        return X25519PrivateKey.from_private_bytes(private)
    return private


def public_of(private: PrivateKey) -> bytes:
    return _raw_public(load_private(private))


def _raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


_FIELD_PRIME = 2**255 - 19

# The canonical encodings of every X25519 u-coordinate of small order (dividing 8): the curve's
# points of order 2 (u = 0), 4 (u = 1) and 8 (two u-values), and the twist's of order 4 (u = p − 1)
# — libsodium's blacklist, reduced to canonical encodings. Agreement with any of them gives the
# all-zero secret whatever the private key; agreement with any other u gives a non-zero secret.
# (tests/test_channel.py proves the list complete: these are all the roots in GF(p) of the
# x-only doubling chain to the point at infinity, and OpenSSL refuses exactly these.)
_LOW_ORDER = frozenset(
    u.to_bytes(KEY_BYTES, "little")
    for u in (
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _FIELD_PRIME - 1,
    )
)


def usable_public(public: bytes) -> bool:
    """Whether a peer may advertise ``public`` as its X25519 key: 32 bytes, canonically encoded, and
    not a low-order point.

    Canonical: u < 2^255 − 19, so the top bit is clear. X25519 ignores the top bit and reduces u, so
    one point has several encodings; a key compared by its bytes — to the public key of a private
    key rebuilt from shares, to a one-time key revealed in a dispute — would not match itself, and
    a party could make an honest round fail. Low order: agreement with such a point gives the
    all-zero secret (OpenSSL refuses it). Checked against the five canonical low-order encodings
    (a set lookup), not by a trial exchange: an aggregator checks two keys a party a round, and an
    exchange costs as much as masking 40,000 words."""
    if not isinstance(public, bytes) or len(public) != KEY_BYTES:
        return False
    if int.from_bytes(public, "little") >= _FIELD_PRIME:
        return False
    return public not in _LOW_ORDER


def agree(private: PrivateKey, peer_public: bytes, context: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of the X25519 shared secret, bound to ``context``."""
    return agree_many(private, peer_public, (context,), length)[0]


def agree_many(
    private: PrivateKey, peer_public: bytes, contexts: tuple[bytes, ...], length: int = KEY_BYTES
) -> list[bytes]:
    """One X25519 exchange, then one independent HKDF-SHA256 key per context (e.g. a key for each
    direction of a channel): the keys are as unrelated as if each came from its own exchange."""
    if len(peer_public) != KEY_BYTES:
        raise ProtocolError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        shared = load_private(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise ProtocolError(f"invalid X25519 public key: {exc}") from None
    return [
        HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=context).derive(shared)
        for context in contexts
    ]


def seal(key: bytes, plaintext: bytes, associated: bytes, rng: SecureRandom) -> bytes:
    """nonce ‖ AES-256-GCM(plaintext) ‖ tag."""
    nonce = rng.bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise ProtocolError("sealed message truncated")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise ProtocolError(
            "sealed message failed authentication (tampered, or not for this recipient)"
        ) from None


def sealed_size(plaintext_bytes: int) -> int:
    return NONCE_BYTES + plaintext_bytes + TAG_BYTES
