"""Append-only JSON-lines files a party keeps so that a promise it made survives its restarts.

A party's round log (``securefl.network.round_log``) and a threshold key share's acknowledgements
(``securefl.layers.ack_log``) are such files. Each line is written and fsynced *before* the party
acts on it, so a line torn by a crash (no final newline) was never acted upon and is ignored. A
file is created 0600 and never followed through a symlink; a file that cannot be parsed is refused
(its owner decides, never the code: rewriting it could forget a promise).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from securefl.crypto.keyfiles import put_in_place, sync_directory
from securefl.errors import ConfigError, ProtocolError


def read_entries(path: Path, what: str) -> list[tuple[int, Any]]:
    """The complete lines of ``path`` as (line number, parsed JSON); [] if there is no file.
    ConfigError if it cannot be read or a complete line is not JSON."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"the {what} {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        return _parse_lines(_read_regular(fd, path, what), path, what)
    finally:
        os.close(fd)


def _read_regular(fd: int, path: Path, what: str) -> bytes:
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a FIFO, a device: never read
        raise ConfigError(f"the {what} {str(path)!r} is not a regular file")
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _parse_lines(data: bytes, path: Path, what: str) -> list[tuple[int, Any]]:
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


def append_entry(
    path: Path,
    entry: dict,
    what: str,
    decide: Callable[[list[tuple[int, Any]]], bool] | None = None,
) -> None:
    """Append ``entry`` as one JSON line and fsync it (and, for a new file, its directory) before
    returning: the caller acts on it only after this. ``decide(entries)``, if given, sees the file's
    entries under an exclusive lock held until the line is written — so a check and its append are
    one step for every process and thread using the file — and returns False to append nothing (or
    raises to refuse). A torn last line left by a crash is cut off first (it was never acted upon;
    appended to, it would make the file unreadable). ProtocolError if the file cannot be written."""
    line = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    created = not os.path.lexists(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ProtocolError(f"the {what} {str(path)!r} cannot be written: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = _read_regular(fd, path, what)
        if decide is not None and not decide(_parse_lines(data, path, what)):
            return
        end = data.rfind(b"\n") + 1
        if end != len(data):
            os.ftruncate(fd, end)
        os.pwrite(fd, line, end)
        os.fsync(fd)
    except OSError as exc:
        raise ProtocolError(f"the {what} {str(path)!r} cannot be written: {exc.strerror}") from None
    finally:
        os.close(fd)  # releases the lock
    if created:
        sync_directory(path.parent)


def write_replacing(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write an output file whole: under a fresh exclusive name beside ``path`` (never through a
    link), fsynced, then renamed into place and the rename made durable. A link at ``path`` is
    replaced, never followed, and a reader never sees half a file (found by attackers: a report, a
    model and a plot written through a link planted at their path replaced the ledger, a key or a
    party's certificate)."""
    return _write_whole(Path(path), data, mode, replace=True)


def write_new(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write a file that must not exist yet — a certificate or a public key a ceremony issues: as
    :func:`write_replacing`, but hard-linked into place, which fails if anything (a file, a link) is
    at ``path`` (found by an attacker: `keys tls` and `keys paillier` wrote certificates and a
    public key through links planted at their paths)."""
    return _write_whole(Path(path), data, mode, replace=False)


def _write_whole(target: Path, data: bytes, mode: int, replace: bool) -> Path:
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        put_in_place(temporary, target, replace=replace)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # after a rename, nothing is left to remove
    sync_directory(target.parent)
    return target


def require_absent(paths: Iterable[str | Path], what: str) -> None:
    """Refuse, before anything is generated, if any of ``paths`` exists (a link counts, dangling or
    not): a ceremony writes all of its files or none."""
    present = [str(p) for p in paths if os.path.lexists(p)]
    if present:
        raise ConfigError(
            f"{what}: refusing to overwrite {', '.join(present)}: files of a key ceremony are never "
            "overwritten (move them away first)"
        )


def save_figure(figure: Any, path: str | Path) -> Path:
    """A matplotlib figure written with :func:`write_replacing`, in the format its suffix names."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png")
    return write_replacing(path, buffer.getvalue())
