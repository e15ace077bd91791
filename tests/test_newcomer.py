"""Issue 20: what a newcomer runs first ends in a result or one clear line, never a traceback."""

import json

import pytest

from securefl import cli
from securefl.cli import main

DP = ["demo", "--privacy", "secagg", "--dp", "distributed", "--noise-multiplier", "1", "--plot", ""]


def test_a_refused_round_ends_the_demo_with_a_summary_and_a_plot(tmp_path, capsys):
    """Defect 1: the README's DP demo crashed in its plot when the budget refused a round."""
    plot = tmp_path / "acc.png"
    argv = [*DP[:-2], "--budget-epsilon", "6", "--ledger", str(tmp_path / "l.jsonl"), "--plot", str(plot)]
    assert main([*argv, "--rounds", "4", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["stopped"] and 0 < summary["rounds_run"] < 4
    assert plot.read_bytes()[:4] == b"\x89PNG" and "Traceback" not in captured.err


def test_a_refused_first_round_is_a_clear_failure(tmp_path, capsys):
    argv = [*DP, "--budget-epsilon", "0.5", "--ledger", str(tmp_path / "l.jsonl"), "--rounds", "2"]
    assert main([*argv, "--json"]) == 2
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rounds_run"] == 0 and summary["final_accuracy"] is None
    assert "no round of the demo completed" in captured.err and "Traceback" not in captured.err


def test_a_continued_ledger_is_announced_and_a_new_budget_refused(tmp_path, capsys):
    """Defect 2: a second run appended to the first one's ledger under a smaller budget, silently."""
    ledger = str(tmp_path / "l.jsonl")
    argv = [*DP, "--budget-epsilon", "15", "--ledger", ledger, "--rounds", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert f"continuing {ledger}: it records 1 release (ε" in capsys.readouterr().out
    smaller = [*DP, "--budget-epsilon", "8", "--ledger", ledger, "--rounds", "1"]
    assert main(smaller) == 2
    err = capsys.readouterr().err
    assert "records 2 releases" in err and "budget of ε=15" in err and "--budget-change" in err
    larger = [*DP, "--budget-epsilon", "30", "--ledger", ledger, "--rounds", "1", "--budget-change"]
    assert main(larger) == 0


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted: the demo stopped (Ctrl-C)"),
        (RuntimeError("disk on fire"), 1, "error: the demo failed: RuntimeError: disk on fire"),
    ],
)
def test_an_interrupt_or_an_unexpected_error_is_one_line(monkeypatch, capsys, raised, code, line):
    def run(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli, "run", run)
    assert main(["demo", "--rounds", "1"]) == code
    err = capsys.readouterr().err
    assert line in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
