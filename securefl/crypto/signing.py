"""Ed25519 identity keys: sign protocol transcripts, verify them with a clear error."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.errors import ProtocolError

SIGNATURE_BYTES = 64
PUBLIC_BYTES = 32


def generate_identity() -> tuple[Ed25519PrivateKey, bytes]:
    """A new identity: the private key and its raw 32-byte public key."""
    private = Ed25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def sign(private: Ed25519PrivateKey, message: bytes) -> bytes:
    return private.sign(message)


def verify(public: bytes, signature: bytes, message: bytes, who: str) -> None:
    """Raise ProtocolError naming ``who`` unless ``signature`` is theirs on ``message``."""
    if len(signature) != SIGNATURE_BYTES:
        raise ProtocolError(f"signature of {who} is {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        raise ProtocolError(f"signature of {who} does not verify: forged or substituted") from None
