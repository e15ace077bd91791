"""The privacy ledger: an append-only, hash-chained, signed record of every DP release and refusal.

Format (specified for auditors in ``protocols/ledger.md``): JSON Lines. Each line is one record,
a JSON object with sorted keys and no insignificant whitespace, holding the release's fields plus:

* ``seq`` — 0, 1, 2, … without gaps;
* ``prev`` — SHA-256 (hex) of the previous line's bytes, without its newline (64 zeros for the
  first record);
* ``signer`` — the Ed25519 public key (hex) of the ledger's writer;
* ``sig`` — Ed25519 signature (hex) of the record's canonical JSON *without* ``sig``.

Every append is written and fsynced before :meth:`Ledger.append` returns, so a release recorded
"before its result leaves" survives a crash. A signed head file (``<ledger>.head``) holds the last
``seq`` and line hash, so removing records from the end is detected too; rolling both back to an
older signed state is not (anchor the head elsewhere for that).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.crypto.keyfiles import (
    private_directory,
    remove_stale_temporaries,
    sync_directory,
    write_private,
)
from securefl.errors import ConfigError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_RESERVED = {"seq", "prev", "signer", "sig", "time"}


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _statement_bytes(statement: dict[str, Any]) -> bytes:
    return canonical({"securefl/checkpoint-binding": statement})


def attested(statement: dict[str, Any], signature: object, signer: str) -> bool:
    """Whether ``signature`` is ``signer``'s :meth:`Ledger.attest` of ``statement``."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer))
        key.verify(bytes.fromhex(signature), _statement_bytes(statement))  # type: ignore[arg-type]
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _sign(key: Ed25519PrivateKey, record: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in record.items() if k != "sig"}
    return {**body, "sig": key.sign(canonical(body)).hex()}


def _signature_ok(record: dict[str, Any], public_hex: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        key.verify(bytes.fromhex(record["sig"]), canonical({k: v for k, v in record.items() if k != "sig"}))
        return True
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False


def _open_synced(path: Path, flags: int) -> int:
    """A ledger file descriptor, owner-only when created, never through a planted symlink, and only
    for a regular file (a FIFO planted in its place would block the writer for ever)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"the ledger file {path} cannot be written: {exc.strerror}") from None
    return _regular(fd, path)


def _regular(fd: int, path: Path, what: str = "ledger file") -> int:
    """``fd`` if it is a regular file; else it is closed and ConfigError names the file."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"the {what} {path} is not a regular file (a directory, a pipe, a device)")
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_replace(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a crash leaves the old content or the new, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = _open_synced(tmp, os.O_CREAT | os.O_TRUNC)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_directory(path.parent)


def ledger_files(path: str | Path) -> tuple[Path, ...]:
    """Every file a ledger at ``path`` keeps: the records, the head (and its temporary), the signing
    key and the public key — what no output of any command may be written over."""
    path = Path(path)
    head = head_path(path)
    return (path, head, head.with_name(head.name + ".tmp"), key_path(path), public_key_path(path))


def head_path(path: str | Path) -> Path:
    return Path(str(path) + ".head")


def key_path(path: str | Path) -> Path:
    """The ledger's signing key, ``<ledger>.key``."""
    return Path(str(path) + ".key")


def public_key_path(path: str | Path) -> Path:
    """The ledger's public key for auditors, ``<ledger>.pub``."""
    return Path(str(path) + ".pub")


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines (each ended by a newline) and the bytes after the last newline."""
    cut = raw.rfind(b"\n") + 1
    return raw[:cut].split(b"\n")[:-1], raw[cut:]


@dataclass
class Verification:
    """What an audit of the ledger's integrity found.

    ``interrupted`` describes an append that a crash cut short (see ``protocols/ledger.md`` §
    Crashes): such a ledger is valid — the damage is exactly what the writing order can leave —
    and the next writer (or ``securefl audit --repair``) completes it; ``valid`` is False only for
    damage no crash can cause. ``readable`` is the byte length of the complete records kept."""

    valid: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    signer: str | None = None
    interrupted: list[str] = field(default_factory=list)
    last_hash: str = GENESIS  # SHA-256 of the last record's line as written (not re-serialized)
    first_hash: str = GENESIS  # SHA-256 of record 0's line: names the chain (a repair starts a new one)
    head_count: int | None = None
    readable: int = 0
    # What a writer does to complete an interrupted append: "newline", "truncate", "head", "tmp".
    repairs: list[str] = field(default_factory=list)


def read_nofollow(path: Path, what: str) -> bytes | None:
    """A ledger file's bytes, never through a symbolic link; None if it does not exist. ConfigError
    (naming the file and the reason) if it is a link, a directory or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        link = " (a symbolic link: ledger files are never followed)" if exc.errno == errno.ELOOP else ""
        raise ConfigError(f"the {what} {path} cannot be read: {exc.strerror}{link}") from None
    with os.fdopen(_regular(fd, path), "rb") as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise ConfigError(f"the {what} {path} cannot be read: {exc.strerror}") from None


def verify(path: str | Path, public_key: str | None = None) -> Verification:
    """Check lines, chain, sequence, signatures and the head; ``public_key`` (hex) pins the signer.

    A crash can leave three things, none of which is tampering (protocols/ledger.md § Crashes): a
    torn last line (the append's write was cut: the record never counted and is dropped), a last
    record written and signed but not yet covered by the head (the head's replacement was cut: the
    record counts, the head is completed), and a stray ``.head.tmp``."""
    path = Path(path)
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    result = Verification(False, records, problems)
    raw = read_nofollow(path, "ledger")
    if raw is None:
        head = head_path(path)
        head_raw = read_nofollow(head, "ledger head")
        parsed = (_parse(head_raw) or {}) if head_raw is not None else {}
        if head_raw is not None and parsed.get("count") == 0:
            # Created, nothing recorded yet — if the head is the writer's: signed by the ledger's key
            # (pinned, or the one it names) over count 0 and the genesis hash. An unsigned or foreign
            # "empty" head planted where the ledger was removed would restart the budget at zero
            # (found by an attacker: three releases disappeared and the audit said valid).
            signer = public_key or parsed.get("signer")
            if (
                parsed.get("last") == GENESIS
                and isinstance(signer, str)
                and parsed.get("signer") == signer
                and _signature_ok(parsed, signer)
            ):
                result.signer = signer
                if public_key is None:
                    problems.append(
                        "note: signer not pinned: give the ledger's public key to rule out a re-signed ledger"
                    )
                result.valid = True
                return result
            problems.append(
                f"ledger {path} is missing and its head {head.name} says no records were written, but the "
                "head is not signed by the ledger's key: the records were removed and a head planted; "
                "restore the ledger from a backup (its budget must not restart at zero)"
            )
            return result
        if head_raw is not None:
            problems.append(
                f"ledger {path} is missing but its head {head.name} exists: the records were removed; "
                "restore the ledger from a backup (its budget must not restart at zero)"
            )
        else:
            problems.append(f"ledger {path} does not exist")
        return result
    lines, tail = _split(raw)
    prev, signer = GENESIS, public_key
    hashes = [GENESIS]
    for number, line in enumerate(lines):
        record = _parse(line)
        if record is None:
            problems.append(
                f"line {number + 1} (record {number}) is not a JSON object: the ledger was altered"
            )
            break
        problem = _check_record(record, number, prev, signer or record.get("signer"))
        if signer is None:
            signer = record.get("signer")
        if problem:
            problems.extend(problem)
        records.append(record)
        prev = line_hash(line)
        hashes.append(prev)
    result.signer = signer
    result.readable = len(raw) - len(tail)
    if tail and not problems:
        # A cut append: a complete record missing only its newline is kept, anything else dropped.
        record = _parse(tail)
        if record is not None and not _check_record(
            record, len(records), prev, signer or record.get("signer")
        ):
            signer = signer or record.get("signer")
            result.signer = signer
            records.append(record)
            prev = line_hash(tail)
            hashes.append(prev)
            result.readable = len(raw)
            result.repairs.append("newline")
            result.interrupted.append(
                f"record {len(records) - 1} was written without its final newline (the append was cut); "
                "it counts and its newline is restored"
            )
        else:
            result.repairs.append("truncate")
            result.interrupted.append(
                f"{len(tail)} bytes after record {len(records) - 1} are a torn record (the append was cut "
                "before it completed, so the result it would describe was never stored or sent); they are "
                "dropped"
            )
    elif tail:
        problems.append("the last line is incomplete: the ledger was truncated mid-record")
    result.last_hash = hashes[-1]
    result.first_hash = hashes[1] if len(hashes) > 1 else GENESIS
    if not problems:
        _check_head(path, records, hashes, signer, result)
    if head_path(path).with_name(head_path(path).name + ".tmp").exists():
        result.repairs.append("tmp")
        result.interrupted.append("a temporary head file was left by a cut head replacement; it is removed")
    if problems:
        result.repairs.clear()
    if public_key is None and result.signer is not None:
        problems.append(
            "note: signer not pinned: give the ledger's public key to rule out a re-signed ledger"
        )
    result.valid = not [p for p in problems if not p.startswith("note:")]
    return result


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a ledger")


def _small_int(literal: str) -> int:
    # An integer beyond a float's range (10**400) is no figure a writer emits, and the audit's
    # arithmetic would overflow on it (found by an attacker): the line is unreadable.
    if len(literal.lstrip("-")) > 300:
        raise ValueError("an integer out of range")
    return int(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e999 parses to infinity, which no writer emits and JSON cannot hold
        raise ValueError(f"the number {literal[:20]} is out of range")
    return value


def _parse(line: bytes) -> dict[str, Any] | None:
    """A record, or None: not JSON, not an object, or holding NaN/Infinity (which no writer emits and
    no canonical form has)."""
    try:
        record = json.loads(
            line, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_small_int
        )
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _check_record(record: dict[str, Any], number: int, prev: str, signer: Any) -> list[str]:
    problems = []
    if record.get("seq") != number:
        problems.append(
            f"line {number + 1} has seq {record.get('seq')!r}, expected {number} (reordered or removed)"
        )
    if record.get("prev") != prev:
        problems.append(f"record {number}: chain broken (prev does not match the previous line's hash)")
    if record.get("signer") != signer:
        problems.append(f"record {number}: signed by {record.get('signer')!r}, not the ledger's key {signer}")
    elif not _signature_ok(record, signer if isinstance(signer, str) else ""):
        problems.append(f"record {number}: signature does not verify (tampered)")
    return problems


def _check_head(
    path: Path, records: list[dict[str, Any]], hashes: list[str], signer: str | None, result: Verification
) -> None:
    """The head must cover every record, or every record but the last (its replacement was cut)."""
    count = len(records)
    head_file = head_path(path)
    head_raw = read_nofollow(head_file, "ledger head")
    if head_raw is None:
        # A writer signs the head before it creates the ledger file (Ledger._open_locked, then
        # append), so a ledger file without a head is never a crash — even an empty or torn one
        # (found by an attacker: the head deleted and the file cut to a torn first line audited
        # "valid, 0 released", and a guard started the budget again from zero).
        result.problems.append(
            f"the head file {head_file.name} is missing beside a ledger file of {count} records (a writer "
            "creates the head before the ledger file): records were removed; restore the ledger and its "
            "head from a backup (the budget must not restart at zero)"
        )
        return
    head = _parse(head_raw)
    if head is None:
        result.problems.append("the head file is not a JSON object")
        return
    if signer is None and isinstance(head.get("signer"), str):
        # No complete record names the key and none was pinned (a crash cut the first append): the
        # head is checked against the key it names, as an empty ledger's is, and the "not pinned"
        # note says so (before, an honest crash there was reported as a bad head signature).
        signer = result.signer = head["signer"]
    if not _signature_ok(head, signer or ""):
        result.problems.append("the head file's signature does not verify")
        return
    result.head_count = head.get("count")
    if result.head_count == count and head.get("last") == hashes[count]:
        return
    if count and result.head_count == count - 1 and head.get("last") == hashes[count - 1]:
        result.repairs.append("head")
        result.interrupted.append(
            f"record {count - 1} was written and signed but the head not yet updated (the append was cut "
            "after the record was made durable); it counts — a crash only ever over-reports — and the "
            "head is completed"
        )
        return
    if "truncate" in result.repairs and result.head_count == count + 1:
        result.problems.append(
            f"the last line is incomplete but the head covers it: record {count} was truncated mid-record"
        )
        return
    result.problems.append(
        f"the head says {head.get('count')} records ending in {str(head.get('last'))[:12]}…, the ledger "
        f"has {count}: records were removed or altered"
    )


def load_or_create_key(ledger_path: str | Path) -> Ed25519PrivateKey:
    """The ledger's signing key, ``<ledger>.key`` (PEM, 0600); created with ``<ledger>.pub`` (the
    public key in hex, for auditors) if missing — but never for a ledger that already has records:
    a new key would sign a second chain and the spent budget would look like someone else's."""
    key, fresh = _read_or_generate_key(ledger_path)
    if fresh:
        _persist_key(ledger_path, key)
    return key


def _read_or_generate_key(ledger_path: str | Path) -> tuple[Ed25519PrivateKey, bool]:
    signing_key_file = key_path(ledger_path)
    if signing_key_file.parent.is_dir():
        remove_stale_temporaries(signing_key_file)  # a kill inside the key's first write left a copy of it
    if os.path.lexists(signing_key_file):
        try:  # never through a planted symlink; a key left readable by others is tightened
            fd = os.open(signing_key_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the ledger's signing key {signing_key_file} ({exc.strerror}; a symlink is "
                "refused)"
            ) from None
        with os.fdopen(_regular(fd, signing_key_file), "rb") as handle:
            if os.fstat(fd).st_mode & 0o077:
                log.warning("ledger key %s was readable by others: set to 0600", signing_key_file)
                os.fchmod(fd, 0o600)
            data = handle.read()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the ledger's signing key {signing_key_file}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{signing_key_file} is not an Ed25519 private key")
        _write_public(public_key_path(ledger_path), key)  # a crash between the files, a torn .pub
        return key, False
    ledger = Path(ledger_path)
    if ledger.exists() and ledger.stat().st_size:
        raise ConfigError(
            f"the ledger {ledger} has records but its signing key {signing_key_file} is missing: restore "
            "the key (a new key would start a second chain, and the budget spent so far would be lost)"
        )
    return Ed25519PrivateKey.generate(), True


def _persist_key(ledger_path: str | Path, key: Ed25519PrivateKey) -> None:
    signing_key_file = key_path(ledger_path)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_directory(signing_key_file.parent)
    write_private(signing_key_file, pem, overwrite=False)
    _write_public(public_key_path(ledger_path), key)


def _write_public(path: Path, key: Ed25519PrivateKey) -> None:
    """``<ledger>.pub``, the hex public key for auditors: (re)written atomically unless it is right."""
    text = (key.public_key().public_bytes_raw().hex() + "\n").encode("ascii")
    try:
        if read_nofollow(path, "ledger public key") == text:
            return
    except ConfigError:  # a link, a pipe, a directory: replaced by the right file (or named, below)
        pass
    _fsync_replace(path, text)


def read_public_key(value: str) -> str:
    """A public key given as 64 hex digits or as the path of a ``.pub`` file."""
    text = value.strip()
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        try:
            # Non-blocking and regular files only: a pipe given as the key made `audit` wait for ever
            # (found by an attacker). A public key may be reached through a link.
            fd = os.open(value, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            fd = _regular(fd, Path(value), "public key file")
            with os.fdopen(fd, "rb") as handle:
                text = handle.read(4096).decode("ascii").strip()
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            raise ConfigError(
                f"public key {value!r} is neither 64 hex digits nor a readable file: {exc}"
            ) from None
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise ConfigError(f"public key {value!r} is not an Ed25519 public key in hex") from None
    return text.lower()


def open_ledger(path: str | Path) -> Ledger:
    """A ledger at ``path`` signed with the key kept next to it (see :func:`load_or_create_key`).

    A new ledger's signed empty head is written *before* its key: a key without ledger and head can
    then only mean both were removed, which is refused instead of restarting the budget at zero."""
    key, fresh = _read_or_generate_key(path)
    ledger = Ledger(path, key, new_key=fresh)
    if fresh:
        _persist_key(path, key)
    return ledger


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the ledger's append lock (flock on the ledger file) while opening it, if it exists."""
    try:
        fd = _regular(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK), path)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _repair_command(path: Path) -> str:
    return f"securefl audit {path} --repair"


class Ledger:
    """Appends signed, chained records; verifies the existing file before the first append and
    completes an append that a crash cut short (:func:`verify`'s ``interrupted``)."""

    def __init__(self, path: str | Path, signing_key: Ed25519PrivateKey, new_key: bool = False) -> None:
        self.path = Path(path)
        self.new_key = new_key  # the key was just made: no key file existed (open_ledger)
        self.key = signing_key
        self.signer = signing_key.public_key().public_bytes_raw().hex()
        self._failed: str | None = None  # why an append failed part-way (then no further append)
        self.recovered: list[str] = []  # what opening completed, for the caller to report
        self._open()

    @property
    def failed(self) -> str | None:
        """Why an append failed part-way (None if none has): then this writer appends no more."""
        return self._failed

    def _open(self) -> None:
        with _locked(self.path):  # a writer mid-append is not mistaken for a crash, nor "repaired"
            self._open_locked()

    def _open_locked(self) -> None:
        self.first, self.spent, self.costliest = GENESIS, 0.0, None
        missing = not os.path.lexists(self.path) and not head_path(self.path).exists()
        if missing and os.path.lexists(key_path(self.path)):
            # A writer creates the head before the key (open_ledger): a key with neither file
            # means both were removed, not a ledger never written.
            raise ConfigError(
                f"ledger {self.path} and its head are missing but its signing key exists: the records were "
                "removed; restore them from a backup (starting again would reset the spent budget)"
            )
        if self.new_key and not os.path.lexists(self.path) and head_path(self.path).exists():
            # No key file and a head without records: what a crash leaves between a new ledger's
            # empty head and its key (open_ledger writes them in that order). That head is signed by
            # the key that was never saved; if it verifies under the key it names, it is re-signed
            # with this one. (An unsigned head never comes from a writer: it is refused below.)
            leftover = verify(self.path)
            if leftover.valid and not leftover.records:
                self._write_head(0, GENESIS)
        state = Verification(True) if missing else verify(self.path, self.signer)
        self.first = state.first_hash
        self.spent, self.costliest = _summary(state.records)
        real_problems = [p for p in state.problems if not p.startswith("note:")]
        if real_problems:
            raise ConfigError(
                f"refusing to append to ledger {self.path}: it does not verify ({real_problems[0]}). The "
                f"budget it records must not be lost: run `{_repair_command(self.path)}` to keep every "
                "record it still holds in a re-signed ledger (the damaged files are kept beside it for "
                "the auditor), or restore it from a backup"
            )
        if state.repairs:
            self._complete(state)
            state = verify(self.path, self.signer)
            if state.repairs or not state.valid:  # cannot happen: the repairs are exactly the damage
                raise ConfigError(
                    f"ledger {self.path} could not be recovered: {state.problems or state.repairs}"
                )
        self.records = state.records  # what the ledger held when opened (a guard replays them)
        self.count = len(state.records)
        self.last = state.last_hash
        self.size = state.readable
        if not state.records and not head_path(self.path).exists():
            private_directory(self.path.parent)  # a ledger in a directory not yet made: 0700
            self._write_head(0, GENESIS)  # before any record: a missing head is then always damage

    def _complete(self, state: Verification) -> None:
        """Finish what a crash interrupted, in the writing order's own steps (protocols/ledger.md)."""
        if "truncate" in state.repairs:
            fd = _open_synced(self.path, 0)
            try:
                os.ftruncate(fd, state.readable)
                os.fsync(fd)
            finally:
                os.close(fd)
        if "newline" in state.repairs:
            fd = _open_synced(self.path, os.O_APPEND)
            try:
                _write_all(fd, b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        if "head" in state.repairs:
            self._write_head(len(state.records), state.last_hash)
        stray = head_path(self.path).with_name(head_path(self.path).name + ".tmp")
        if "tmp" in state.repairs and os.path.lexists(stray):
            os.unlink(stray)
        self.recovered = list(state.interrupted)
        for what in state.interrupted:
            log.warning("ledger %s: last append interrupted and recovered: %s", self.path, what)

    def _write_head(self, count: int, last: str) -> None:
        """The signed head: how many records, the last one's hash — and what a repair must not lose
        if records are removed or altered: the chain's first record (``first``: a head of another
        chain, e.g. one kept beside an earlier repair, is not this ledger's), the most ε any record
        stated (``spent``) and the costliest release so far (``costliest``)."""
        fields = {"count": count, "last": last, "signer": self.signer, "first": self.first}
        fields["spent"] = self.spent
        if self.costliest is not None:
            fields["costliest"] = self.costliest
        _fsync_replace(head_path(self.path), canonical(_sign(self.key, fields)))

    def attest(self, statement: dict[str, Any]) -> str:
        """The ledger key's signature (hex) on ``statement`` under the checkpoint domain: what binds a
        checkpoint to this ledger's state (securefl.checkpoint)."""
        return self.key.sign(_statement_bytes(statement)).hex()

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Sign, write and fsync one record, then replace and fsync the head, before returning it.

        The file is locked for the append and must be exactly as this writer left it: a second
        writer on the same ledger (which would fork the chain) is refused, not interleaved."""
        clash = _RESERVED & set(fields)
        if clash:
            raise ConfigError(f"ledger fields {sorted(clash)} are reserved")
        if self._failed is not None:
            raise ConfigError(
                f"ledger {self.path}: an earlier append failed part-way ({self._failed}); what it left is "
                "known only to the file: reopen the ledger (a new guard, or `securefl audit "
                f"{self.path} --repair`) to recover it before recording more"
            )
        try:
            record = _sign(
                self.key,
                {
                    **fields,
                    "seq": self.count,
                    "prev": self.last,
                    "signer": self.signer,
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                },
            )
            line = canonical(record)
            if not self.size:
                private_directory(self.path.parent)  # a ledger in a directory not yet made: 0700
            return self._append_line(record, line)
        except BaseException as exc:
            # The record may be on disk whole, torn, or absent, and the head may or may not cover it:
            # a crash's states, which reopening recovers. This writer's own idea of the file is no
            # longer to be trusted (its next append saw "another writer" in its own partial write).
            self._failed = f"{type(exc).__name__}: {exc}"
            raise

    def _append_line(self, record: dict[str, Any], line: bytes) -> dict[str, Any]:
        fd = _open_synced(self.path, os.O_CREAT | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size != self.size:
                raise ConfigError(
                    f"ledger {self.path} changed since this writer opened it ({size} bytes, expected "
                    f"{self.size}): another process is writing it; one writer per ledger"
                )
            _write_all(fd, line + b"\n")
            os.fsync(fd)
            if self.count == 0:
                self.first = line_hash(line)
            self.spent, self.costliest = _summary([record], self.spent, self.costliest)
            self.count += 1
            self.last = line_hash(line)
            self.size += len(line) + 1
            self._write_head(self.count, self.last)
        finally:
            os.close(fd)  # releases the lock
        return record


@dataclass
class Repair:
    """What :func:`repair` did: ``recovered`` (an interrupted append completed) or ``carried``
    (a damaged ledger re-signed record by record; the damaged files kept at ``kept``)."""

    path: Path
    recovered: list[str] = field(default_factory=list)
    carried: int = 0
    unreadable: list[str] = field(default_factory=list)
    placeholders: int = 0
    replaced: int = 0  # readable records whose signature failed, accounted as the costliest release
    kept: list[Path] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)


def _at_fewest_summed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as if its round had summed the fewest parties its noise allows (as many as share
    the noise): the costliest way it could have been released, as a summed party sees it. What a
    hidden or altered record stands as — its own count of parties summed is not known, and the
    verified releases may all have summed more (found by an attacker: altering the 3-of-5 records
    left only a 5-of-5 one to copy, and the budget fell from 16.1 to 12.9)."""
    out = dict(record)
    threshold = record.get("noise_threshold")
    if type(threshold) is int and threshold >= 1 and record.get("placement") == "distributed":
        # Shares are sized on the fewest less the coalition the figures hold against (dp colluders).
        colluders = record.get("colluders")
        fewest = threshold + (colluders if type(colluders) is int and colluders > 0 else 0)
        out["parties_summed"] = fewest
        if isinstance(record.get("noise_std"), (int, float)):
            out["noise_std_in_sum"] = record["noise_std"] * math.sqrt(fewest / threshold)
        if isinstance(record.get("variance"), (int, float)):
            out["variance_in_sum"] = record["variance"] * fewest / threshold
    return out


def _replayed_cost(record: dict[str, Any]) -> float:
    """RDP ε of one release of ``record`` as a resumed guard replays it (accounts.replay)."""
    from securefl.privacy.accountants.base import entry_of
    from securefl.privacy.accounts import recorded_as_a_party_sees, single_cost

    try:
        delta = _number_or(record.get("delta"), 1e-5)
        entry = entry_of({**recorded_as_a_party_sees(record), "sample_rate": 1.0})
        if (entry, delta) not in _COSTS:  # releases repeat one mechanism: one RDP curve each
            _COSTS[entry, delta] = single_cost(entry, delta)
        return _COSTS[entry, delta]
    except (ValueError, TypeError, KeyError, ArithmeticError):
        return math.inf  # a release whose figures cannot be read counts as the costliest


_COSTS: dict[tuple[Any, float], float] = {}


def _finish_repair(path: Path, signer: str) -> None:
    """Complete a repair a crash interrupted. Before its first rename the damaged pair still stands
    (the half-built files are removed); between its two renames the new records stand beside the old
    head, and the new head waits as ``.NAME.repairing-STAMP.head``: it is put in place if it is
    signed by the key and is exactly this ledger's (count, first and last records)."""
    prefix = f".{path.name}.repairing-"
    strays = sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix))
    names = {p.name for p in strays}
    for stray in strays:
        if stray.name.endswith(".head") and stray.name[: -len(".head")] not in names:
            raw = read_nofollow(path, "ledger") or b""
            lines, tail = _split(raw)
            head = _parse(read_nofollow(stray, "ledger head") or b"")
            hashes = [line_hash(line) for line in lines]
            if (
                head is not None
                and not tail
                and head.get("signer") == signer
                and _signature_ok(head, signer)
                and head.get("count") == len(lines)
                and head.get("first") == (hashes[0] if hashes else GENESIS)
                and head.get("last") == (hashes[-1] if hashes else GENESIS)
            ):
                os.replace(stray, head_path(path))
                sync_directory(path.parent)
                log.warning("ledger %s: a repair interrupted between its renames was completed", path)
                continue
        if os.path.lexists(stray):
            os.unlink(stray)  # a half-built replacement: the damaged pair it was for still stands


def _require_this_chains_head(path: Path, head: dict[str, Any], hashes: list[str]) -> None:
    """The signed head must be this ledger's: its last record where the file still holds that many
    lines, or this chain's first record. A head of another chain — e.g. the one kept beside an
    earlier repair (`NAME.damaged-*.head`) — would set the count of a truncated ledger (found by an
    attacker: the ledger cut back and an old head copied in, repaired as whole, again and again)."""
    count = head.get("count")
    if type(count) is not int or count < 0:
        raise ConfigError(f"ledger {path}: its head's count {count!r} is not a count")
    first = hashes[0] if hashes else GENESIS
    if head.get("first") == first:
        return
    if count <= len(hashes) and head.get("last") == (hashes[count - 1] if count else GENESIS):
        return
    raise ConfigError(
        f"ledger {path}: its head (count {count}) is not this ledger's — its records end elsewhere "
        "and it names another first record (an older or another chain's head, such as one kept beside "
        "an earlier repair) —, so how many records were removed cannot be known; restore the ledger "
        "and its head from a backup"
    )


def _placeholder(
    costliest: dict[str, Any], spent: float, carried: dict[str, Any], round_: int | None = None
) -> dict[str, Any]:
    """A release standing for a record the damage hid or altered: the costliest verified release's
    mechanism, one more release for every party (its per-observer figures and counts, which are
    cumulative, are dropped: copied, a count of 1 would make six placeholders one release), and the
    most ε the verified records had reached."""
    placeholder = {k: v for k, v in costliest.items() if k not in ("observers", "projected")}
    placeholder["epsilon"] = max(spent, _number_or(costliest.get("epsilon"), 0.0))
    placeholder["carried"] = carried
    if round_ is not None:
        placeholder["round"] = round_
    return placeholder


_NOT_MECHANISM = _RESERVED | {"observers", "projected", "carried"}


def _summary(
    records: list[dict[str, Any]], spent: float = 0.0, costliest: dict[str, Any] | None = None
) -> tuple[float, dict[str, Any] | None]:
    """The most ε the records state, and their costliest release as a resumed guard replays it (at
    the fewest parties its noise allows to be summed), folded onto ``spent`` and ``costliest``."""
    best = _replayed_cost(costliest) if costliest is not None else -math.inf
    for record in records:
        spent = max(spent, _number_or(record.get("epsilon"), 0.0))
        if record.get("decision") == "released":
            candidate = {k: v for k, v in _at_fewest_summed(record).items() if k not in _NOT_MECHANISM}
            cost = _replayed_cost(candidate)
            if cost > best:
                best, costliest = cost, candidate
    return spent, costliest


def repair(path: str | Path) -> Repair:
    """Make the ledger at ``path`` writable again without losing a release it records.

    An interrupted append is completed (as any writer does on open). A damaged ledger — one no
    crash explains — is copied aside (``NAME.damaged-TIME`` and its head, for the auditor) and
    replaced by a ledger, signed with the same key, that carries every record still readable, each
    marked ``carried`` (the damaged file's SHA-256, the record's original ``seq`` and ``time``,
    whether its signature still verified). Records the damage hid — lines that no longer parse, or
    the records the head counts beyond what remains — and records whose signature no longer verifies
    (their figures may have been edited) are carried as placeholders that repeat the most costly
    verified release's mechanism, so the spent budget is never lower than before (the assumption is
    printed and recorded). The replacement is built aside and renamed into place: a
    crash during repair leaves either ledger, each of which a second repair carries again."""
    path = Path(path)
    key = load_or_create_key(path)
    signer = key.public_key().public_bytes_raw().hex()
    _finish_repair(path, signer)
    state = verify(path, signer)
    report = Repair(path, damage=[p for p in state.problems if not p.startswith("note:")])
    if not report.damage:
        report.recovered = Ledger(path, key).recovered
        return report
    raw = read_nofollow(path, "ledger") or b""
    digest = hashlib.sha256(raw).hexdigest()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = path.with_name(f"{path.name}.damaged-{stamp}")
    lines, tail = _split(raw)
    readable: list[dict[str, Any]] = []
    genuine: list[dict[str, Any]] = []  # signed by the key, wherever they stand: floors, never less
    hashes: list[str] = []
    prev = GENESIS
    for number, line in enumerate([*lines, tail] if tail else lines):
        record = _parse(line)
        previous, prev = prev, line_hash(line)
        hashes.append(prev)
        if record is None:
            report.unreadable.append(f"line {number + 1}")
            continue
        if record.get("signer") == signer and _signature_ok(record, signer):
            genuine.append(dict(record))
        # Verified: signed by the key *and* in its place (its seq, chained to the line before it). A
        # signature alone would let a copy of a genuine record stand anywhere (found by an attacker:
        # every line overwritten with record 0, all "verified", and the budget went back to one
        # release's worth).
        verified = not _check_record(record, number, previous, signer)
        carried = {
            "from": kept.name,
            "sha256": digest,
            "seq": record.get("seq"),
            "time": record.get("time"),
            "verified": verified,
        }
        if "carried" in record:  # repaired before: keep the whole chain of custody
            carried["earlier"] = record["carried"]
        record["carried"] = carried
        readable.append(record)
    head_raw = read_nofollow(head_path(path), "ledger head")
    head = _parse(head_raw) if head_raw is not None else None
    if not head or head.get("signer") != signer or not _signature_ok(head, signer):
        # The signed head is what bounds the records removed from the end (a writer makes it before
        # the first record and replaces it whole): without it, carrying what remains could restart
        # the budget low — an unsigned "empty" head planted where the ledger was removed made a
        # repair start again at zero.
        raise ConfigError(
            f"ledger {path}: its head is missing or not signed by the ledger's key, so how many records "
            "were removed from its end cannot be known; restore the ledger and its head from a backup"
        )
    claimed = head.get("count")
    _require_this_chains_head(path, head, hashes)
    damaged_head = {k: head.get(k) for k in ("count", "last", "first", "spent")}
    for record in readable:
        record["carried"]["head"] = damaged_head
    missing = len(report.unreadable)
    if isinstance(claimed, int) and claimed > len(readable):
        missing = max(missing, claimed - len(readable))
    # A record whose signature no longer verifies says nothing the budget may rest on: it may have
    # been edited to read cheaper (another unit, a larger noise multiplier, "refused"). It is
    # accounted like a record the damage hid — the costliest *verified* release's mechanism —, its
    # bytes kept in the damaged copy for the auditor (an attacker edited every record, then had the
    # repair carry them: the next guard started again at zero).
    trusted = [r for r in readable if r["carried"]["verified"]]
    altered = [r for r in readable if not r["carried"]["verified"]]
    releases = [r for r in trusted if r.get("decision") == "released"]
    # The costliest verified release — never simply the last, which an attacker who deleted records
    # could have forged weaker — ranked by what one release of it costs as the guard replays it (as a
    # summed party saw it: the smallest noise multiplier alone ignored how few parties were summed).
    # Candidates: the verified releases, every release the key signed wherever it now stands (an
    # edited record's successors, copies), and the head's own account of the costliest release and
    # of the most ε stated — which records removed from the end no longer show (found by an
    # attacker: cheaper releases appended last, deleted, and the placeholders copied an earlier,
    # noisier one).
    candidates = [_at_fewest_summed(r) for r in [*releases, *genuine] if r.get("decision") == "released"]
    if isinstance(head.get("costliest"), dict):
        candidates.append(head["costliest"])
    costliest = max(candidates, key=_replayed_cost) if candidates else None
    if (missing or altered) and costliest is None:
        raise ConfigError(
            f"ledger {path}: {missing + len(altered)} records are unreadable, missing or no longer signed, "
            "and no release the key signed shows their mechanism; restore the ledger from a backup"
        )
    stated = [_number_or(r.get("epsilon"), 0.0) for r in [*trusted, *genuine]]
    spent = max([_number_or(head.get("spent"), 0.0), *stated])
    carried_records = []
    for record in readable:
        if record["carried"]["verified"]:
            carried_records.append(record)
            continue
        round_ = record.get("round") if type(record.get("round")) is int else None
        replaced = {**record["carried"], "replaced": True}
        carried_records.append(_placeholder(costliest, spent, replaced, round_))
    readable = carried_records
    report.replaced = len(altered)
    for _ in range(missing):
        hidden = {"from": kept.name, "sha256": digest, "missing": True}
        readable.append(_placeholder(costliest, spent, hidden))
    report.placeholders = missing
    building = path.with_name(f".{path.name}.repairing-{stamp}")
    fresh = Ledger(building, key)
    for record in readable:
        fresh.append({k: v for k, v in record.items() if k not in _RESERVED})
    # The damaged records are kept for the auditor, but not their head: a kept (ledger, head) pair is
    # an older signed state, which whoever can write the directory could put back to erase every
    # release since (found by an attacker). The head's figures go into each carried record instead.
    if path.exists():
        _write_new_synced(raw, kept)  # exactly the bytes read, hashed and carried from above
        report.kept.append(kept)
    os.replace(building, path)  # a crash between these two renames: new records, old head — which
    os.replace(head_path(building), head_path(path))  # the next repair completes (_finish_repair)
    sync_directory(path.parent)
    report.carried = len(readable) - missing
    log.warning(
        "ledger %s repaired: %d records carried, %d placeholders; damaged copy %s",
        path,
        report.carried,
        missing,
        kept,
    )
    return report


def _number_or(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _write_new_synced(data: bytes, target: Path) -> None:
    fd = _open_synced(target, os.O_CREAT | os.O_EXCL)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
