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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["demo", "--rounds", "1", "--plot", "{tmp}/missing/acc.png"],
            "the directory {tmp}/missing does not exist",
        ),
        (["demo", "--rounds", "1", "--plot", "{tmp}"], "is a directory; give a file name"),
        (["bench", "--params", "10", "--parties", "3", "--plot", "{tmp}/missing/b.png"], "does not exist"),
        (["audit", "{tmp}"], "is a directory; give the ledger file"),
        (["audit", "{tmp}/l.jsonl", "--report", "{tmp}/missing/r.html"], "does not exist"),
        (
            ["demo", "--dp", "central", "--ledger", "{tmp}", "--rounds", "1"],
            "the ledger {tmp} is a directory",
        ),
    ],
)
def test_impossible_paths_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    """Defect 3: a plot or report into a missing directory failed after the whole run; a directory
    given as a ledger ended in a traceback."""
    monkeypatch.setattr(cli, "run", lambda *a, **k: pytest.fail("the run started"))
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err


def test_seed_and_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--seed", "-5"])
    assert exit_.value.code == 2 and "-5 is outside 0 … 4294967295" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("securefl ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[privacy]]\nlayer = "clip"\nnrom = 3',
            "privacy layer 'clip' has no option nrom; its options: norm",
        ),
        ("[[privacy]]\nnorm = 3", 'a privacy layer table needs layer = "..." naming one of: ckks, clip'),
        ("", 'or privacy = "plain" to run without protection on purpose'),
        ("rounds = 1.5", "rounds = 1.5 has the wrong type: expected an integer"),
    ],
)
def test_config_mistakes_name_the_fix(tmp_path, capsys, text, message):
    """Defects 6 and 7: a misspelt option lists the valid ones, a missing layer names them, an empty
    file does not silently run "plain", a wrong type names the expected one."""
    path = tmp_path / "fed.toml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_task_module_in_the_working_directory_without_evaluate(tmp_path, monkeypatch, capsys):
    """Defect 4: `run` did not find a task module next to the config (`party` did), and a task
    without evaluate() crashed the summary."""
    (tmp_path / "mytask.py").write_text(
        "import numpy as np\n"
        "from securefl.tasks import Task\n"
        "def make(parties, seed):\n"
        "    def client(i):\n"
        "        return lambda weights, info: ({'w': weights['w'] + 0.1 * (i + 1)}, 1, {})\n"
        "    clients = {f'c{i}': client(i) for i in range(parties)}\n"
        "    return Task(name='mine', model={'w': np.zeros(3)}, clients=clients)\n"
    )
    (tmp_path / "fed.toml").write_text(
        'task = "mytask:make"\nrounds = 2\nprivacy = "secagg"\n[federation]\nparties = 3\nweight_bound = 10\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # undone after the test (the CLI adds "" itself)
    assert main(["run", "fed.toml", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["final_accuracy"] is None and summary["rounds_completed"] == 2
    assert "not evaluated" in captured.err and "None" not in captured.err  # --json: the table on stderr
