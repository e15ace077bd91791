"""The two frames that open a stream: the party's hello and the aggregator's welcome (JSON).

After them every frame is a wire envelope (``protocols/wire.md``): requests down, replies up.
Also here: :func:`printable`, which makes text a party supplied safe to write to a log, and the log
formatter the aggregator and party processes use so that every record is one line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from securefl.errors import WireError

METHOD = "/securefl.Federation/Connect"
VERSION = 1
MAX_OPENING_BYTES = 1 << 20
MAX_LOGGED_CHARS = 400


def printable(text: object, limit: int = MAX_LOGGED_CHARS, backslashes: bool = True) -> str:
    """``text`` as one printable line: backslashes, control and format characters (newlines, ANSI
    escapes, bidi overrides) escaped, and at most ``limit`` characters kept. Anything a party sent
    (a withdraw reason, an exception about its bytes) goes through this before reaching a log, so
    a party can neither forge log lines nor hide text in the operator's terminal. Without
    ``backslashes`` a backslash stays as it is (for text that may already be escaped)."""
    text = str(text)
    more = len(text) - limit
    if more > 0:
        text = text[:limit]
    keep = str.isprintable if not backslashes else lambda c: c.isprintable() and c != "\\"
    escaped = "".join(c if keep(c) else c.encode("unicode_escape").decode("ascii") for c in text)
    return escaped + (f"…(+{more} characters)" if more > 0 else "")


class OneLineFormatter(logging.Formatter):
    """Each record's message as one line, control and format characters escaped (:func:`printable`;
    backslashes kept, as text may be escaped already); a traceback, when a record carries one,
    follows on its own lines as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message, limit=1 << 16, backslashes=False)
        return super().formatMessage(record)


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
