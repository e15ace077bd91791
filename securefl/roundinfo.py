"""What a party is told about a round: its number, who takes part, and the local configuration.

The roster (the invited parties) grows with the round, so it travels in a binary part of the record,
not in the JSON header (whose size is bounded, ``wire.MAX_HEADER_BYTES``): the header stays the
same size whatever the number of parties, and the roster is checked as strictly (see
``protocols/wire.md``, "Round info").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Any

from securefl.errors import WireError
from securefl.wire import MAX_ROUND, check_name, decode_record, encode_record

_MAGIC = b"SFLR"
_SCHEMA = {"round": int, "count": int, "min_parties": int, "config": dict}
MAX_ROSTER = 1 << 20  # parties in one round
_NAME_BYTES = 64  # the longest party id (wire.check_name)


@dataclass(frozen=True)
class RoundInfo:
    """Round number, invited parties (sorted), minimum survivors, and user config (JSON values)."""

    round: int
    parties: tuple[str, ...]
    min_parties: int
    config: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        header = {
            "round": self.round,
            "count": len(self.parties),
            "min_parties": self.min_parties,
            "config": self.config,
        }
        return encode_record(_MAGIC, header, {"parties": encode_roster(self.parties)})

    @classmethod
    def decode(cls, data: bytes) -> RoundInfo:
        """Parse and check a round info record (``protocols/wire.md``); any bytes that are not one
        raise :class:`WireError`. ``config`` holds only finite numbers, at most 32 levels deep."""
        header, parts = decode_record(data, _MAGIC, _SCHEMA, part_names=("parties",))
        if not 0 <= header["round"] <= MAX_ROUND:
            raise WireError(f"round info round {header['round']} out of range 0..{MAX_ROUND}")
        parties = decode_roster(parts["parties"], header["count"])
        if not 1 <= header["min_parties"] <= max(len(parties), 1):
            raise WireError(f"round info min_parties {header['min_parties']} is impossible")
        return cls(header["round"], parties, header["min_parties"], header["config"])


def encode_roster(parties: tuple[str, ...] | list[str]) -> bytes:
    """Party ids, each a valid name (so never a newline), joined by ``\\n``."""
    return "\n".join(check_name(p, "party id") for p in parties).encode("ascii")


def decode_roster(data: bytes, count: object) -> tuple[str, ...]:
    """The roster part: exactly ``count`` valid party ids, sorted, each once; else WireError."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_ROSTER:
        raise WireError(f"round info count {count!r} out of range 0..{MAX_ROSTER}")
    if len(data) > count * (_NAME_BYTES + 1):
        raise WireError(f"round info roster of {len(data)} bytes is too long for {count} party ids")
    return _parse_roster(bytes(data), count)


@lru_cache(maxsize=4)
def _parse_roster(data: bytes, count: int) -> tuple[str, ...]:
    # Cached: every party of a round hosted in one process (a Ray actor) parses the same bytes; the
    # tuple is immutable and shared. Errors are not cached (lru_cache keeps only results).
    if count == 0:
        if data:
            raise WireError("round info lists no parties but its roster part is not empty")
        return ()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("round info roster is not ASCII") from None
    names = text.split("\n")
    if len(names) != count:
        raise WireError(f"round info roster holds {len(names)} entries, its header says {count}")
    for name in names:
        check_name(name, "party id")
    for a, b in pairwise(names):
        if a >= b:
            raise WireError(
                "round info lists a party twice" if a == b else "round info must list its parties sorted"
            )
    return tuple(names)
