"""The side-by-side benchmark's machinery (securefl.flower.bench), small: the metered grid labels
Flower's SecAgg+ stages and securefl's phases, and securefl's arm with a client crashing during key
setup fuses the exact weighted mean of the others. No timing is asserted."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("flwr")

from securefl.flower.bench import run_arm


@pytest.mark.slow
def test_securefl_arm_with_a_dropout_during_key_setup_is_exact():
    logging.getLogger("flwr").setLevel(logging.ERROR)
    result = run_arm("securefl-secagg+", clients=5, size=200, rounds=1, drop=1, drop_stage="share")
    assert result["error"] is None
    assert list(result["stages"]) == ["advertise", "share", "masked", "unmask"]
    assert result["stages"]["share"]["errors"] == 1
    assert result["max_abs_error"] < 1e-5 and result["changed"]
    assert result["securefl_rounds"][0][:2] == ("ok", 4)


@pytest.mark.slow
def test_flower_secagg_plus_arm_is_metered_by_stage():
    logging.getLogger("flwr").setLevel(logging.ERROR)
    result = run_arm("flower-secagg+", clients=4, size=100, rounds=1, drop=None, drop_stage="share")
    assert result["error"] is None
    assert list(result["stages"]) == ["setup", "share_keys", "collect_masked_vectors", "unmask"]
    assert result["bytes_up"] > 4 * 100 and result["max_abs_error"] < 1e-3
