"""Text from parties on its way into logs: one printable line, never a forged record.

Anything a party sent (a withdraw reason, an exception about its bytes) may hold newlines, ANSI
escapes or bidi overrides; it goes through :func:`printable` before reaching a log line, and the
aggregator and party processes format every record with :class:`OneLineFormatter`.
"""

from __future__ import annotations

import logging
import threading
import time

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


_PLURALS = {"party": "parties", "query": "queries"}


def counted(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless the number is 1: "1 party", "2 parties", "0 rounds"."""
    if number == 1:
        return f"{number} {noun}"
    return f"{number} {_PLURALS.get(noun, noun + 's')}"


class RateLimitedLog:
    """At most one line per ``every`` seconds per (party, kind) on ``logger``; the next line says
    how many were left out, so a peer that keeps triggering one kind of line (a member churning
    streams, an aggregator sending a party junk requests) cannot flood the operator's log."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._logger, self._every = logger, every
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, level: int, party: str, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last, skipped = self._last.get((party, kind), (-self._every, 0))
            if now - last < self._every:
                self._last[(party, kind)] = (last, skipped + 1)
                return
            if len(self._last) > 4096:  # bounded: forget the oldest half
                for key in sorted(self._last, key=lambda k: self._last[k][0])[:2048]:
                    del self._last[key]
            self._last[(party, kind)] = (now, 0)
        suffix = f" ({skipped} more like it in the last {now - last:.0f}s not logged)" if skipped else ""
        self._logger.log(level, message + "%s", *args, suffix)
