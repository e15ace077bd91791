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


def test_ratios_compare_each_securefl_arm_with_flower_on_the_same_graph():
    from securefl.flower.bench import ratios

    def arm(name, dropout, seconds, changed=True, error=None, err=1e-6):
        return {
            "arm": name,
            "dropout": dropout,
            "round_seconds": seconds,
            "changed": changed,
            "error": error,
            "max_abs_error": err,
        }

    lines = ratios(
        [
            arm("flower-secagg+", False, 18.0),
            arm("securefl-secagg", False, 1.5),
            arm("flower-secagg+k18", False, 8.0),
            arm("securefl-secagg+k18", False, 1.6),
            arm("flower-secagg+", True, 15.0, changed=False, err=0.08),
            arm("securefl-secagg", True, 1.4),
        ]
    )
    assert lines[0].startswith("securefl-secagg is 12.0x faster per round than flower-secagg+")
    assert "securefl-secagg completed every round" in lines[1]
    assert "flower-secagg+ lost the round" in lines[2]
    assert any(line.startswith("securefl-secagg+k18 is 5.0x faster") for line in lines)


def test_native_arm_runs_the_same_clients_in_securefls_runtime_and_survives_the_crash():
    result = run_arm("securefl-native-secagg", clients=5, size=200, rounds=1, drop=1, drop_stage="share")
    assert result["error"] is None
    assert result["securefl_rounds"][0][:2] == ("ok", 4)
    assert result["max_abs_error"] < 1e-5 and result["changed"]  # the exact weighted mean of the other 4
    plain = run_arm("securefl-native-plain", clients=3, size=50, rounds=1, drop=None, drop_stage="share")
    assert plain["max_abs_error"] < 1e-6 and plain["bytes_up"] > 3 * 50 * 4
