"""Active SecAgg inside Flower: the parties' Ed25519 identity keys in a form Flower can ship.

``cryptography``'s private keys cannot be pickled, and Flower pickles a ClientApp (with its mods
and their configuration) to send it to its actors. :class:`IdentityKeys` holds raw key bytes and
turns into securefl's :class:`~securefl.crypto.signing.Identities` where a stack is built: on the
ServerApp with public keys only (the aggregator never holds a party's private key), on a party with
every public key and its own private key only.

    keys = IdentityKeys.generate([f"client-{i}" for i in range(n)])   # a simulation deals them all
    secure = SecureFL(privacy=[..., {"layer": "secagg+", "identities": keys}],
                      party_name=lambda ctx: f"client-{ctx.node_config['partition-id']}")

A deployment gives each node ``IdentityKeys(public=everyone's, private={own name: own key})``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.crypto.signing import Identities
from securefl.errors import ConfigError


@dataclass(frozen=True)
class IdentityKeys:
    public: Mapping[str, bytes]  # party id -> raw 32-byte Ed25519 public key
    private: Mapping[str, bytes]  # party id -> raw 32-byte Ed25519 private key (only one's own)

    @classmethod
    def generate(cls, party_ids: Iterable[str]) -> IdentityKeys:
        public, private = {}, {}
        for party in party_ids:
            key = Ed25519PrivateKey.generate()
            private[party] = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            public[party] = key.public_key().public_bytes_raw()
        return cls(public, private)

    def public_only(self) -> Identities:
        return Identities(dict(self.public), {})

    def for_party(self, party: str) -> Identities:
        if party not in self.private:
            raise ConfigError(f"no identity private key for party {party!r} on this node")
        return Identities(
            dict(self.public), {party: Ed25519PrivateKey.from_private_bytes(self.private[party])}
        )


def identity_keys(privacy: Any) -> IdentityKeys | None:
    """The :class:`IdentityKeys` a ``privacy`` configuration carries (active mode), or None."""
    if isinstance(privacy, IdentityKeys):
        return privacy
    if isinstance(privacy, Mapping):
        return identity_keys(privacy.get("identities"))
    if isinstance(privacy, Sequence) and not isinstance(privacy, str):
        for item in privacy:
            found = identity_keys(item)
            if found is not None:
                return found
    return None


HELLO_CHALLENGE_BYTES = 32


def _hello_statement(challenge: bytes, name: str) -> bytes:
    encoded = name.encode()
    return b"securefl/flower/hello/v1" + len(challenge).to_bytes(2, "big") + challenge + encoded


def hello_signature(keys: IdentityKeys | None, name: str, request: Any) -> bytes:
    """A party's answer to the hello's challenge: its identity's signature over the challenge and
    its name (b"" without an identity key for that name, as in passive mode)."""
    from securefl.flower.records import hello_challenge

    if keys is None or name not in keys.private:
        return b""
    challenge = hello_challenge(request)
    if len(challenge) != HELLO_CHALLENGE_BYTES:
        raise ValueError(f"a hello challenge is {HELLO_CHALLENGE_BYTES} bytes, got {len(challenge)}")
    key = Ed25519PrivateKey.from_private_bytes(keys.private[name])
    return key.sign(_hello_statement(challenge, name))


def hello_verified(keys: IdentityKeys, name: str, challenge: bytes, signature: bytes) -> bool:
    """Whether ``signature`` proves that the node answering ``challenge`` holds ``name``'s key."""
    public = keys.public.get(name)
    if public is None or len(signature) != 64 or len(challenge) != HELLO_CHALLENGE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, _hello_statement(challenge, name))
    except (InvalidSignature, ValueError):
        return False
    return True


def resolve(privacy: Any, party: str | None) -> Any:
    """``privacy`` with every :class:`IdentityKeys` turned into :class:`Identities` for ``party``
    (None: the aggregator, public keys only)."""
    if isinstance(privacy, Mapping):
        keys = privacy.get("identities")
        if isinstance(keys, IdentityKeys):
            return {**privacy, "identities": keys.public_only() if party is None else keys.for_party(party)}
        return privacy
    if isinstance(privacy, Sequence) and not isinstance(privacy, str):
        return [resolve(item, party) for item in privacy]
    return privacy


__all__ = ["IdentityKeys", "hello_signature", "hello_verified", "identity_keys", "resolve"]
