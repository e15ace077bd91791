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

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.errors import ConfigError

GENESIS = "0" * 64
_RESERVED = {"seq", "prev", "signer", "sig", "time"}


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


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


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` (owner-only file) and fsync it before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_append(path: Path, data: bytes) -> None:
    _write_synced(path, data, os.O_APPEND)


def _fsync_replace(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a crash leaves the old content or the new, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(tmp, data, os.O_TRUNC)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class Verification:
    """What an audit of the ledger's integrity found."""

    valid: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    signer: str | None = None


def verify(path: str | Path, public_key: str | None = None) -> Verification:
    """Check lines, chain, sequence, signatures and the head; ``public_key`` (hex) pins the signer."""
    path = Path(path)
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Verification(False, problems=[f"ledger {path} does not exist"])
    if raw and not raw.endswith(b"\n"):
        problems.append("the last line is incomplete: the ledger was truncated mid-record")
    prev, signer = GENESIS, public_key
    for number, line in enumerate(raw.split(b"\n")[:-1] if raw.endswith(b"\n") else raw.split(b"\n")):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            problems.append(f"line {number + 1} is not a JSON object ({exc})")
            break
        if record.get("seq") != number:
            problems.append(
                f"line {number + 1} has seq {record.get('seq')!r}, expected {number} (reordered or removed)"
            )
        if record.get("prev") != prev:
            problems.append(f"record {number}: chain broken (prev does not match the previous line's hash)")
        if signer is None:
            signer = record.get("signer")
        if record.get("signer") != signer:
            problems.append(
                f"record {number}: signed by {record.get('signer')!r}, not the ledger's key {signer}"
            )
        elif not _signature_ok(record, signer or ""):
            problems.append(f"record {number}: signature does not verify (tampered)")
        records.append(record)
        prev = line_hash(line)
    head_problem = _check_head(path, len(records), prev, signer)
    if head_problem:
        problems.append(head_problem)
    if public_key is None and signer is not None:
        problems_note = "signer not pinned: give the ledger's public key to rule out a re-signed ledger"
        return Verification(not problems, records, [*problems, f"note: {problems_note}"], signer)
    return Verification(not problems, records, problems, signer)


def _check_head(path: Path, count: int, last_hash: str, signer: str | None) -> str | None:
    head_path = path.with_name(path.name + ".head")
    if not head_path.exists():
        return (
            "the head file is missing: records removed from the end could not be detected" if count else None
        )
    try:
        head = json.loads(head_path.read_bytes())
    except ValueError:
        return "the head file is not JSON"
    if not _signature_ok(head, signer or ""):
        return "the head file's signature does not verify"
    if head.get("count") != count or head.get("last") != last_hash:
        return (
            f"the head says {head.get('count')} records ending in {str(head.get('last'))[:12]}…, the ledger "
            f"has {count}: records were removed or altered"
        )
    return None


def load_or_create_key(ledger_path: str | Path) -> Ed25519PrivateKey:
    """The ledger's signing key, ``<ledger>.key`` (PEM, 0600); created with ``<ledger>.pub`` (the
    public key in hex, for auditors) if missing."""
    key_path = Path(str(ledger_path) + ".key")
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{key_path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write_synced(key_path, pem, os.O_EXCL)
    public = key.public_key().public_bytes_raw().hex()
    Path(str(ledger_path) + ".pub").write_text(public + "\n", encoding="ascii")
    return key


def read_public_key(value: str) -> str:
    """A public key given as 64 hex digits or as the path of a ``.pub`` file."""
    text = value.strip()
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        try:
            text = Path(value).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"public key {value!r} is neither 64 hex digits nor a readable file: {exc}"
            ) from None
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise ConfigError(f"public key {value!r} is not an Ed25519 public key in hex") from None
    return text.lower()


def open_ledger(path: str | Path) -> Ledger:
    """A ledger at ``path`` signed with the key kept next to it (see :func:`load_or_create_key`)."""
    return Ledger(path, load_or_create_key(path))


class Ledger:
    """Appends signed, chained records; verifies the existing file before the first append."""

    def __init__(self, path: str | Path, signing_key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self.key = signing_key
        self.signer = signing_key.public_key().public_bytes_raw().hex()
        state = verify(self.path, self.signer) if self.path.exists() else Verification(True)
        real_problems = [p for p in state.problems if not p.startswith("note:")]
        if real_problems:
            raise ConfigError(
                f"refusing to append to ledger {self.path}: it does not verify ({real_problems[0]}); keep it "
                "for the auditor and start a new ledger"
            )
        self.records = state.records  # what the ledger held when opened (a guard replays them)
        self.count = len(state.records)
        self.last = line_hash(canonical(state.records[-1])) if state.records else GENESIS

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Sign, write and fsync one record (and the head) before returning it."""
        clash = _RESERVED & set(fields)
        if clash:
            raise ConfigError(f"ledger fields {sorted(clash)} are reserved")
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
        _fsync_append(self.path, line + b"\n")
        self.count += 1
        self.last = line_hash(line)
        head = _sign(self.key, {"count": self.count, "last": self.last, "signer": self.signer})
        _fsync_replace(self.path.with_name(self.path.name + ".head"), canonical(head))
        return record
