"""The two frames that open a stream: the party's hello and the aggregator's welcome (JSON).

After them every frame is a wire envelope (``protocols/wire.md``): requests down, replies up. Both
are parsed with :func:`securefl.wire.load_json` (no duplicate keys, no NaN or infinities, bounded
integers and nesting), so any bytes give a :class:`~securefl.errors.WireError`, nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from securefl.errors import ConfigError, WireError
from securefl.wire import check_session, load_json

METHOD = "/securefl.Federation/Connect"
VERSION = 1
MAX_HELLO_BYTES = 4096  # a party id (≤ 64 characters) and a 64-hex agreement fit many times over
MAX_WELCOME_BYTES = 1 << 20  # the model's array layout: names and shapes of every array
# gRPC counts a message's bytes in a signed 32-bit integer (and reads −1 as "no limit").
MAX_MESSAGE_LIMIT = (1 << 31) - 1


def check_message_limit(max_message_bytes: object) -> int:
    """A frame-size limit for either end: a whole number of bytes in [1, 2 GiB − 1]. FED.toml's
    ``max_message_mb`` is checked when the file is read; this holds the same line for callers of
    the library API (found by an attacker: −1 turned gRPC's limit off on a party)."""
    if (
        not isinstance(max_message_bytes, int)
        or isinstance(max_message_bytes, bool)
        or not 1 <= max_message_bytes <= MAX_MESSAGE_LIMIT
    ):
        raise ConfigError(
            f"max_message_bytes must be a whole number of bytes from 1 to 2 GiB − 1, got "
            f"{max_message_bytes!r} (FED.toml: [network] max_message_mb, 1 to 2047)"
        )
    return max_message_bytes


def _decode(data: bytes, what: str, limit: int, fields: dict[str, type]) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise WireError(f"{what} of {len(data)} bytes is over {limit}")
    value = load_json(data, what)
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a JSON object of version {VERSION}")
    version = value.get("version")
    if type(version) is not int or version != VERSION:  # not true, not 1.0
        raise WireError(f"{what} has version {_short(version)}; this is version {VERSION}")
    unknown = sorted(set(value) - set(fields) - {"version"})
    if unknown:
        raise WireError(f"{what} has unknown fields {_short(unknown)}")
    for name, kind in fields.items():
        if not isinstance(value.get(name), kind):
            raise WireError(f"{what} lacks {name!r} ({kind.__name__})")
    return value


def _short(value: object, limit: int = 80) -> str:
    """A short repr for an error message about a peer's value (the log escapes it again)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class Hello:
    """Party → aggregator, first: who it is (checked against its certificate) and the agreement it
    holds (the hash of the federation settings it will enforce)."""

    party: str
    agreement: str

    def encode(self) -> bytes:
        return json.dumps({"version": VERSION, "party": self.party, "agreement": self.agreement}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        value = _decode(data, "hello", MAX_HELLO_BYTES, {"party": str, "agreement": str})
        return cls(value["party"], value["agreement"])


@dataclass(frozen=True)
class Welcome:
    """Aggregator → party, first: the session and the model's array layout."""

    session: str
    spec: dict[str, Any]
    agreement: str

    def encode(self) -> bytes:
        return json.dumps(
            {"version": VERSION, "session": self.session, "spec": self.spec, "agreement": self.agreement}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Welcome:
        value = _decode(data, "welcome", MAX_WELCOME_BYTES, {"session": str, "spec": dict, "agreement": str})
        return cls(check_session(value["session"]), value["spec"], value["agreement"])
