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


def generate_keypair(rng: SecureRandom) -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (private, public) raw bytes."""
    private = X25519PrivateKey.from_private_bytes(rng.bytes(KEY_BYTES))
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private.private_bytes_raw(), public


def public_of(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, context: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of the X25519 shared secret, bound to ``context``."""
    if len(peer_public) != KEY_BYTES:
        raise ProtocolError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise ProtocolError(f"invalid X25519 public key: {exc}") from None
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=context).derive(shared)


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
