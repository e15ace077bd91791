"""The design's boundaries, checked on the source: core ↛ crypto, no pickle, seeds for tests only."""

import ast
import os
from pathlib import Path

import pytest

from securefl.errors import SeedRefused
from securefl.randomness import SecureRandom

PACKAGE = Path(__file__).resolve().parent.parent / "securefl"
CORE = [
    "aggregator.py",
    "party.py",
    "federation.py",
    "transport.py",
    "codec.py",
    "wire.py",
    "fusion.py",
    "selection.py",
    "roundinfo.py",
    "transcript.py",
    "faults.py",
    "runner.py",
    "config.py",
]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_imports_no_cryptography(module):
    bad = {
        n
        for n in imports_of(PACKAGE / module)
        if n.startswith(("cryptography", "securefl.crypto", "phe", "tenseal"))
    }
    assert not bad, f"{module} imports {bad}: the core must not know cryptography"


def test_layers_do_not_touch_the_transport():
    for path in (PACKAGE / "layers").glob("*.py"):
        bad = {n for n in imports_of(path) if n.startswith(("securefl.transport", "socket", "grpc"))}
        assert not bad, f"{path.name} imports {bad}: a layer knows no networking"


def test_no_pickle_anywhere():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "pickle" not in imports_of(path) and "allow_pickle=True" not in text, path


def test_seeds_are_refused_outside_tests(monkeypatch):
    monkeypatch.delenv("SECUREFL_ALLOW_TEST_SEEDS", raising=False)
    with pytest.raises(SeedRefused, match="seeds are for known-answer tests only"):
        SecureRandom(seed=1)
    rng = SecureRandom()
    assert not rng.seeded and len(rng.bytes(32)) == 32


def test_seeded_source_is_deterministic_and_uniform():
    assert os.environ["SECUREFL_ALLOW_TEST_SEEDS"] == "1"
    a, b = SecureRandom(seed=5).uniform(10_000), SecureRandom(seed=5).uniform(10_000)
    assert (a == b).all() and a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.02
