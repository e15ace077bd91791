"""The rounds a deployed party has taken part in, kept on disk so that they survive its restarts.

A party takes part in each round of a session once. In memory, :class:`securefl.party.PartyNode`
already refuses a round it has started; this log makes the rule hold across process restarts.
Why it matters (found by an attacker of active-mode SecAgg): a party that forgot round r ran it
again with fresh keys and signed a second survivor list for it, and with signatures from both
runs an aggregator showed different holders different lists, each carrying enough valid
signatures — and recovered an honest party's input with no colluder. The proof of active mode
rests on an honest party signing one list per round; a party that starts each round once, ever,
signs at most one.

A deployed party also takes part in no more rounds than the federation's settings agree on
(``rounds``, part of the agreement hash both sides check), counted over every session under those
settings: found by an attacker, a malicious aggregator ran each new session from round 0 and
collected 80 noised updates of the same model where 3 were agreed — averaging them strips local
DP. Taking part again under the same settings takes new settings (more rounds) or removing the log.

Format: one JSON object per line, ``{"session": "<32 hex>", "round": <int>}`` and, for a party
bound to settings, ``"agreement": "<hex>"``, appended and fsynced *before* the party answers the
round's first request. A line torn by a crash (no final newline) was never acted upon, so it is
ignored. The file is created 0600 and never followed through a symlink.
"""

from __future__ import annotations

import threading
from pathlib import Path

from securefl.durable import append_entry, damaged, read_entries
from securefl.errors import ProtocolError

_WHAT = "round log"


class RoundLog:
    """A party's durable record of the latest round it started in each session."""

    def __init__(
        self, path: str | Path | None, agreement: str | None = None, rounds: int | None = None
    ) -> None:
        """``agreement`` and ``rounds``: the federation settings' hash and the rounds they agree on —
        the party then takes part in at most that many rounds under them, over all sessions.
        ``path`` None: the log lives in this process's memory only (the same rules while it lives:
        a Flower ClientApp without a round log directory)."""
        self.path = None if path is None else Path(path)
        self.agreement, self.rounds = agreement, rounds
        self._memory: list[tuple[int, object]] | None = [] if path is None else None
        self._lock = threading.Lock()
        self._read(self._memory if self.path is None else read_entries(self.path, _WHAT))

    def _read(self, entries: list[tuple[int, object]]) -> None:
        """The latest round of each session, and the rounds started under ``agreement``."""
        latest: dict[str, int] = {}
        taken = 0
        for number, entry in entries:
            try:
                session, round_ = entry["session"], entry["round"]
                if not isinstance(session, str) or isinstance(round_, bool) or not isinstance(round_, int):
                    raise TypeError
                if not isinstance(entry.get("agreement", ""), str):
                    raise TypeError
            except (KeyError, TypeError):
                raise damaged(self.path, _WHAT, number) from None
            latest[session] = max(round_, latest.get(session, -1))
            if self.agreement is not None and entry.get("agreement") == self.agreement:
                taken += 1
        self._latest, self._taken = latest, taken

    def latest(self, session: str) -> int | None:
        """The latest round this party started in ``session`` (None if none)."""
        return self._latest.get(session)

    def claim(self, session: str, round: int) -> None:
        """Record that this party starts ``round`` of ``session``, durably, before it answers; raise
        ProtocolError if it has started this round, or a later one, of that session before, or as
        many rounds as its settings agree on. Decided from the file itself under its lock, in the
        same step as the append: two processes of one party sharing the log (found by an attacker:
        each took the whole budget, and round 0 of one session twice) see each other's claims."""

        removed = f", or this party's round log {self.path} removed by its operator" if self.path else ""

        def decide(entries: list[tuple[int, object]]) -> bool:
            self._read(entries)
            latest = self._latest.get(session)
            if latest is not None and round <= latest:
                raise ProtocolError(
                    f"this party already took part in round {latest + 1} of session {session} (before "
                    f"a restart, or the aggregator is running round {round + 1} again); it takes part in "
                    "each round once: refused"
                )
            if self.rounds is not None and self._taken >= self.rounds:
                raise ProtocolError(
                    f"this party has taken part in {self._taken} rounds under these federation "
                    f"settings, which agree on {self.rounds}: refused (a further run needs settings that "
                    f"agree on more rounds{removed})"
                )
            return True

        entry: dict = {"round": round, "session": session}
        if self.agreement is not None:
            entry["agreement"] = self.agreement
        if self._memory is None:
            append_entry(self.path, entry, _WHAT, decide)
        else:
            with self._lock:
                decide(list(self._memory))
                self._memory.append((len(self._memory), entry))
        self._latest[session] = round
        self._taken += self.agreement is not None
