"""Append-only JSON-lines files a party keeps so that a promise it made survives its restarts.

A party's round log (``securefl.network.round_log``) and a threshold key share's acknowledgements
(``securefl.layers.ack_log``) are such files. Each line is written and fsynced *before* the party
acts on it, so a line torn by a crash (no final newline) was never acted upon and is ignored. A
file is created 0600 and never followed through a symlink; a file that cannot be parsed is refused
(its owner decides, never the code: rewriting it could forget a promise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from securefl.crypto.keyfiles import sync_directory
from securefl.errors import ConfigError, ProtocolError


def read_entries(path: Path, what: str) -> list[tuple[int, Any]]:
    """The complete lines of ``path`` as (line number, parsed JSON); [] if there is no file.
    ConfigError if it cannot be read or a complete line is not JSON."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"the {what} {str(path)!r} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]  # a torn last line was never acted upon
    entries = []
    for number, line in enumerate(complete.splitlines(), 1):
        try:
            entries.append((number, json.loads(line)))
        except ValueError:
            raise damaged(path, what, number) from None
    return entries


def damaged(path: Path, what: str, number: int) -> ConfigError:
    return ConfigError(
        f"the {what} {str(path)!r} is damaged at line {number}; it records promises this party made, "
        "so it is not rewritten: move it aside only if you know none of them can matter again"
    )


def append_entry(path: Path, entry: dict, what: str) -> None:
    """Append ``entry`` as one JSON line and fsync it (and, for a new file, its directory) before
    returning: the caller acts on it only after this. A torn last line left by a crash is cut off
    first (it was never acted upon; appended to, it would make the file unreadable). ProtocolError
    if the file cannot be written."""
    line = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    created = not os.path.lexists(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ProtocolError(f"the {what} {str(path)!r} cannot be written: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        end = os.pread(fd, size, 0).rfind(b"\n") + 1 if size else 0
        if end != size:
            os.ftruncate(fd, end)
        os.pwrite(fd, line, end)
        os.fsync(fd)
    except OSError as exc:
        raise ProtocolError(f"the {what} {str(path)!r} cannot be written: {exc.strerror}") from None
    finally:
        os.close(fd)
    if created:
        sync_directory(path.parent)
