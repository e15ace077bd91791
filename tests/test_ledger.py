"""The ledger: a valid chain verifies; tampering, reordering, truncation and re-signing are caught."""

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.errors import ConfigError
from securefl.privacy.ledger import Ledger, verify

RELEASE = {
    "unit": "party",
    "neighbouring": "add/remove one party",
    "mechanism": "gaussian",
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "sampling": "poisson",
    "sample_rate": 0.1,
    "steps": 1,
    "parties_summed": 9,
    "delta": 1e-5,
    "accountant": "prv (opacus 1.6.0)",
    "decision": "released",
}


@pytest.fixture
def ledger(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "privacy.jsonl"
    book = Ledger(path, key)
    for round, epsilon in enumerate((0.5, 0.8, 1.1)):
        book.append({**RELEASE, "round": round, "epsilon": epsilon})
    return path, key, book.signer


def lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def test_valid_ledger_verifies_with_the_pinned_key(ledger):
    path, _, signer = ledger
    result = verify(path, signer)
    assert result.valid and result.problems == []
    assert [r["epsilon"] for r in result.records] == [0.5, 0.8, 1.1]
    assert [r["seq"] for r in result.records] == [0, 1, 2]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_tampered_record_is_detected(ledger):
    path, _, signer = ledger
    data = lines(path)
    record = json.loads(data[1])
    record["epsilon"] = 0.1  # under-report
    data[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(data) + b"\n")
    result = verify(path, signer)
    assert not result.valid
    assert any("record 1: signature does not verify" in p for p in result.problems)
    assert any("record 2: chain broken" in p for p in result.problems)


def test_reordered_records_are_detected(ledger):
    path, _, signer = ledger
    data = lines(path)
    data[0], data[1] = data[1], data[0]
    path.write_bytes(b"\n".join(data) + b"\n")
    result = verify(path, signer)
    assert not result.valid and any("reordered or removed" in p for p in result.problems)


def test_truncation_mid_record_and_removed_tail_are_detected(ledger):
    path, _, signer = ledger
    original = path.read_bytes()
    path.write_bytes(original[:-20])
    assert any("truncated mid-record" in p for p in verify(path, signer).problems)
    path.write_bytes(b"\n".join(original.split(b"\n")[:2]) + b"\n")  # drop the last record
    result = verify(path, signer)
    assert not result.valid and any("records were removed or altered" in p for p in result.problems)


def test_a_re_signed_ledger_is_caught_when_the_signer_is_pinned(ledger, tmp_path):
    _path, _, signer = ledger
    forged_path = tmp_path / "forged.jsonl"
    forger = Ledger(forged_path, Ed25519PrivateKey.generate())
    for round, epsilon in enumerate((0.1, 0.2, 0.3)):
        forger.append({**RELEASE, "round": round, "epsilon": epsilon})
    unpinned = verify(forged_path)
    assert unpinned.valid and any("not pinned" in p for p in unpinned.problems)
    pinned = verify(forged_path, signer)
    assert not pinned.valid and any("not the ledger's key" in p for p in pinned.problems)


def test_appending_to_a_tampered_ledger_is_refused(ledger):
    path, key, _ = ledger
    path.write_bytes(path.read_bytes().replace(b'"epsilon":0.8', b'"epsilon":0.2'))
    with pytest.raises(ConfigError, match="refusing to append"):
        Ledger(path, key)


def test_reopening_continues_the_chain(ledger):
    path, key, signer = ledger
    Ledger(path, key).append({**RELEASE, "round": 3, "epsilon": 1.4})
    result = verify(path, signer)
    assert result.valid and len(result.records) == 4


def test_reserved_fields_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="reserved"):
        Ledger(tmp_path / "l.jsonl", Ed25519PrivateKey.generate()).append({"seq": 7})
