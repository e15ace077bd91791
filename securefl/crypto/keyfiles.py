"""Secret files: readable by their owner only from the moment they exist, never through a symlink.

A secret is never written into a file that someone else could have prepared. :func:`write_private`
creates a fresh file with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 next to the target, writes
and fsyncs it there, and only then moves it into place with ``rename`` (which replaces a planted
symlink or a looser-permission file *itself*, never following or reusing it) — or, when the caller
must not overwrite, with ``link`` (which fails on anything already at the path, a dangling symlink
included). Directories created on the way are 0700 (:func:`private_directory`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
import time
from pathlib import Path

from securefl.errors import ConfigError


def private_directory(path: str | Path, *, tighten: bool = False) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (an existing directory is kept as is,
    or set to 0700 when ``tighten``). Refuses a symlink where a private directory should be."""
    path = Path(path)
    missing = []
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created meanwhile by someone else: checked below
            os.mkdir(directory, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} should be a directory for private keys but is not (a symlink or a file)")
    if tighten and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def read_private(path: str | Path, what: str) -> bytes:
    """The bytes of a secret file, refused if it is a symlink (``O_NOFOLLOW``) or readable by
    anyone but its owner: a share or key that others could read must be treated as leaked, so the
    user decides (``chmod 600``), not this library. FileNotFoundError passes through."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if os.path.islink(path):
            raise ConfigError(f"{what} {str(path)!r} is a symlink; give the file itself") from None
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):  # a directory, a FIFO (which would block): named
        os.close(fd)
        raise ConfigError(f"{what} {str(path)!r} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{what} {str(path)!r} is readable by others (mode {mode:04o}): if nobody else could have "
                f"read it, make it private with 'chmod 600 {path}'; otherwise treat it as leaked"
            )
        return handle.read()


def write_private(path: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path``, mode 0600 before the first byte of it exists on disk, fsynced.

    ``overwrite=False`` refuses (:class:`ConfigError`) when anything is already at ``path``: for
    keys whose loss or replacement would break what was signed or issued with them."""
    path = Path(path)
    private_directory(path.parent)
    remove_stale_temporaries(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only narrow 0600; say it anyway
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        put_in_place(temporary, path, replace=overwrite, what="a key")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    sync_directory(path.parent)
    return path


def put_in_place(temporary: Path, target: Path, *, replace: bool, what: str = "it") -> None:
    """Move a written, fsynced ``temporary`` to ``target``: renamed over whatever is there
    (``replace``), or hard-linked, which fails if anything — a file, a link — is at ``target``
    (ConfigError naming ``what`` is refused). The caller removes ``temporary`` afterwards."""
    if replace:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target, follow_symlinks=False)
    except FileExistsError:
        raise ConfigError(
            f"{target} already exists: refusing to overwrite {what} (move it away first)"
        ) from None


def remove_stale_temporaries(path: Path, older_than: float = 60.0) -> None:
    """Remove what a process killed inside :func:`write_private` left of an earlier write of
    ``path``: a 0600 copy of a secret under a temporary name nothing would ever clean (found by an
    attacker). Only files of exactly that name pattern, untouched for ``older_than`` seconds (a
    writer still at work is not disturbed), and never through a link."""
    now = time.time()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        middle = candidate.name[len(path.name) + 2 : -4]
        if len(middle) != 16 or any(c not in "0123456789abcdef" for c in middle):
            continue
        with contextlib.suppress(OSError):
            info = candidate.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > older_than:
                candidate.unlink()


def sync_directory(path: str | Path) -> None:
    """fsync a directory, so that a file created or renamed in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
