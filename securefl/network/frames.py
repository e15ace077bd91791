"""The two frames that open a stream: the party's hello and the aggregator's welcome (JSON).

After them every frame is a wire envelope (``protocols/wire.md``): requests down, replies up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from securefl.errors import WireError

METHOD = "/securefl.Federation/Connect"
VERSION = 1
MAX_OPENING_BYTES = 1 << 20


def _decode(data: bytes, what: str, fields: dict[str, type]) -> dict[str, Any]:
    if len(data) > MAX_OPENING_BYTES:
        raise WireError(f"{what} of {len(data)} bytes is over {MAX_OPENING_BYTES}")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict) or value.get("version") != VERSION:
        raise WireError(f"{what} must be a JSON object of version {VERSION}")
    for name, kind in fields.items():
        if not isinstance(value.get(name), kind):
            raise WireError(f"{what} lacks {name!r} ({kind.__name__})")
    return value


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
        value = _decode(data, "hello", {"party": str, "agreement": str})
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
        value = _decode(data, "welcome", {"session": str, "spec": dict, "agreement": str})
        return cls(value["session"], value["spec"], value["agreement"])
