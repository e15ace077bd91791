"""What a party is told about a round: its number, who takes part, and the local configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from securefl.errors import WireError
from securefl.wire import MAX_ROUND, check_name, decode_record, encode_record

_MAGIC = b"SFLR"
_SCHEMA = {"round": int, "parties": list, "min_parties": int, "config": dict}


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
            "parties": list(self.parties),
            "min_parties": self.min_parties,
            "config": self.config,
        }
        return encode_record(_MAGIC, header, {})

    @classmethod
    def decode(cls, data: bytes) -> RoundInfo:
        """Parse and check a round info record (``protocols/wire.md``); any bytes that are not one
        raise :class:`WireError`. ``config`` holds only finite numbers, at most 32 levels deep."""
        header, _ = decode_record(data, _MAGIC, _SCHEMA, part_names=())
        if not 0 <= header["round"] <= MAX_ROUND:
            raise WireError(f"round info round {header['round']} out of range 0..{MAX_ROUND}")
        parties = tuple(check_name(p, "party id") for p in header["parties"])
        if len(set(parties)) != len(parties):
            raise WireError("round info lists a party twice")
        if list(parties) != sorted(parties):
            raise WireError("round info must list its parties sorted")
        if not 1 <= header["min_parties"] <= max(len(parties), 1):
            raise WireError(f"round info min_parties {header['min_parties']} is impossible")
        return cls(header["round"], parties, header["min_parties"], header["config"])
