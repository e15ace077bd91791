"""examples/flower: the quickstart-style Flower app with securefl's secure sum swapped in (≤ 10
changed lines) runs in Flower's simulation engine and fuses the same model, to the quantization
step, as the same federation run through securefl alone."""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flower"


def test_the_secure_app_is_the_quickstart_with_at_most_ten_changed_lines():
    quickstart = (EXAMPLE / "quickstart.py").read_text().splitlines()
    secure = (EXAMPLE / "secure.py").read_text().splitlines()
    changed = [
        line
        for line in difflib.unified_diff(quickstart, secure, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert 0 < len(changed) <= 10, changed
    assert any("secure.client_mod" in line for line in changed)


@pytest.mark.slow
def test_the_flower_example_fuses_the_same_model_as_securefl_alone():
    logging.getLogger("flwr").setLevel(logging.WARNING)
    sys.path.insert(0, str(EXAMPLE))
    try:
        run = importlib.import_module("run")
        out = run.run(clients=3)
    finally:
        sys.path.remove(str(EXAMPLE))
    assert out["same_model"], out
    assert out["max_abs_difference"] <= out["quantization_tolerance"]
    assert out["accuracy_flower_securefl"] > 0.9
