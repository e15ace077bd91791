"""The rounds a deployed party has taken part in, kept on disk so that they survive its restarts.

A party takes part in each round of a session once. In memory, :class:`securefl.party.PartyNode`
already refuses a round it has started; this log makes the rule hold across process restarts.
Why it matters (found by an attacker of active-mode SecAgg): a party that forgot round r ran it
again with fresh keys and signed a second survivor list for it, and with signatures from both
runs an aggregator showed different holders different lists, each carrying enough valid
signatures — and recovered an honest party's input with no colluder. The proof of active mode
rests on an honest party signing one list per round; a party that starts each round once, ever,
signs at most one.

Format: one JSON object per line, ``{"session": "<32 hex>", "round": <int>}``, appended and
fsynced *before* the party answers the round's first request. A line torn by a crash (no final
newline) was never acted upon, so it is ignored. The file is created 0600 and never followed
through a symlink.
"""

from __future__ import annotations

from pathlib import Path

from securefl.durable import append_entry, damaged, read_entries
from securefl.errors import ProtocolError

_WHAT = "round log"


class RoundLog:
    """A party's durable record of the latest round it started in each session."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._latest: dict[str, int] = {}
        for number, entry in read_entries(self.path, _WHAT):
            try:
                session, round_ = entry["session"], entry["round"]
                if not isinstance(session, str) or isinstance(round_, bool) or not isinstance(round_, int):
                    raise TypeError
            except (KeyError, TypeError):
                raise damaged(self.path, _WHAT, number) from None
            self._latest[session] = max(round_, self._latest.get(session, -1))

    def latest(self, session: str) -> int | None:
        """The latest round this party started in ``session`` (None if none)."""
        return self._latest.get(session)

    def claim(self, session: str, round: int) -> None:
        """Record that this party starts ``round`` of ``session``, durably, before it answers; raise
        ProtocolError if it has started this round, or a later one, of that session before."""
        latest = self._latest.get(session)
        if latest is not None and round <= latest:
            raise ProtocolError(
                f"this party already took part in round {latest + 1} of session {session} (before a "
                f"restart, or the aggregator is running round {round + 1} again); it takes part in each "
                "round once: refused"
            )
        append_entry(self.path, {"round": round, "session": session}, _WHAT)
        self._latest[session] = round
