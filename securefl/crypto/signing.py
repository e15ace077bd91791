"""Ed25519 identity keys: sign protocol transcripts, verify them with a clear error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Identities:
    """Ed25519 identity keys: every party's public key is known to all in advance (e.g. from its
    certificate); each party holds only its own private key (a simulation holds them all)."""

    public: Mapping[str, bytes]
    private: Mapping[str, Ed25519PrivateKey]

    @classmethod
    def generate(cls, party_ids: Iterable[str]) -> Identities:
        public, private = {}, {}
        for party in party_ids:
            private[party], public[party] = generate_identity()
        return cls(public, private)

    def public_only(self) -> Identities:
        return Identities(dict(self.public), {})

    def verify(self, party: str, signature: bytes, message: bytes) -> None:
        """Raise ProtocolError unless ``party`` is registered and signed ``message``."""
        if party not in self.public:
            raise ProtocolError(
                f"{party!r} has no registered identity key; add it to the federation's identities"
            )
        verify(self.public[party], signature, message, party)
