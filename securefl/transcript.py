"""A record of everything the aggregator received: the aggregator's view, for tests and audits.

Design invariant 1 is checked against this: for each secure layer, tests show that nothing in the
transcript reveals an individual update.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TranscriptEntry:
    round: int
    phase: str
    direction: str  # "in" (party -> aggregator) or "out"
    party: str
    data: bytes


@dataclass
class Transcript:
    entries: list[TranscriptEntry] = field(default_factory=list)

    def record(self, round: int, phase: str, direction: str, party: str, data: bytes) -> None:
        self.entries.append(TranscriptEntry(round, phase, direction, party, bytes(data)))

    def received(self, round: int | None = None, phase: str | None = None) -> list[TranscriptEntry]:
        return [
            e
            for e in self.entries
            if e.direction == "in"
            and (round is None or e.round == round)
            and (phase is None or e.phase == phase)
        ]
