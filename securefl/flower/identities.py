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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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


__all__ = ["IdentityKeys", "resolve"]
