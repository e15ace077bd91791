"""Issue 20: what a newcomer runs first ends in a result or one clear line, never a traceback."""

import json
from pathlib import Path

import pytest

from securefl import cli
from securefl.cli import main

DP = ["demo", "--privacy", "secagg", "--dp", "distributed", "--noise-multiplier", "1", "--plot", ""]


def test_a_refused_round_ends_the_demo_with_a_summary_and_a_plot(tmp_path, capsys):
    """Defect 1: the README's DP demo crashed in its plot when the budget refused a round."""
    plot = tmp_path / "acc.png"
    argv = [*DP[:-2], "--budget-epsilon", "9.5", "--ledger", str(tmp_path / "l.jsonl"), "--plot", str(plot)]
    assert main([*argv, "--rounds", "4", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["stopped"] and 0 < summary["rounds_run"] < 4
    # Item 9: the refusal counts rounds from 1, as the terminal does (a fresh ledger: the next round).
    assert summary["stopped"].startswith(f"round {summary['rounds_run'] + 1} (counting every round")
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _by_hand(tmp_path, edit=lambda text: text):
    """The README's "by hand" commands, in a copy of examples/network/ (another port, 2 rounds)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    here = tmp_path / "network"
    shutil.copytree(Path(__file__).resolve().parent.parent / "examples/network", here)
    fed = here / "fed.toml"
    text = fed.read_text().replace("127.0.0.1:50051", f"127.0.0.1:{_free_port()}")
    fed.write_text(edit(text.replace("rounds = 5", "rounds = 2")))
    cli_ = [sys.executable, "-m", "securefl.cli"]

    def start(*args):
        return subprocess.Popen(
            [*cli_, *args], cwd=here, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    keys = start("keys", "tls", "--parties", "hospital-1,hospital-2,hospital-3", "--out", "certs")
    assert keys.wait(timeout=120) == 0
    aggregator = start("aggregator", "--config", "fed.toml", "--save-model", "final.npz")
    parties = [
        start("party", "--config", f"hospital-{h}.toml", "--train", "hospital:make_client") for h in (1, 2, 3)
    ]
    out, err = aggregator.communicate(timeout=600)
    for party in parties:
        party.communicate(timeout=120)
    return aggregator.returncode, out, err, here


# Defect 5 (the README named fed.toml and hospital-1.toml, which did not exist): the README's by-hand
# commands run as written in tests/test_readme.py, which checks the sentence that ends them.


@pytest.mark.slow
def test_a_federation_in_which_no_round_completed_fails_and_saves_nothing(tmp_path):
    """Defect 5: with the parties' metric names not the agreed ones, every round failed while the
    aggregator exited 0 and saved the untrained model."""
    code, _out, err, here = _by_hand(
        tmp_path,
        lambda text: text.replace('eval_metrics = ["loss", "accuracy"]', 'eval_metrics = ["auc"]').replace(
            "metric_bounds = { loss = 10.0, accuracy = 1.0 }", "metric_bounds = { loss = 10.0, auc = 1.0 }"
        ),
    )
    assert code == 2
    assert "no round of the federation completed (round 1:" in err
    assert not (here / "final.npz").exists()


class _DataBug(Exception):
    pass


def _buggy(weights, info):
    raise _DataBug("column 'age' missing")


def test_a_training_error_is_logged_whole_or_raised_with_fail_fast(caplog):
    """Defect 10: an error in a user's own training function was one warning line and the run went
    on with the model unchanged."""
    import numpy as np

    import securefl

    good = lambda weights, info: ({"w": weights["w"] + 1.0}, 1, {})  # noqa: E731
    clients = {"a": good, "b": _buggy, "c": good}
    fed = securefl.Federation({"w": np.zeros(2)}, clients, "plain")
    report = fed.run_round()
    assert report.ok and list(report.dropouts) == ["b"]
    logged = caplog.text
    assert "its train function raised _DataBug" in logged and "Traceback" in logged and "_buggy" in logged
    assert "column 'age' missing" not in report.dropouts["b"]  # the aggregator learns the type only
    strict = securefl.Federation({"w": np.zeros(2)}, clients, "plain", fail_fast=True)
    with pytest.raises(_DataBug, match="column 'age' missing"):
        strict.run_round()


def test_fail_fast_on_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "buggy.py").write_text(
        "import numpy as np\n"
        "from securefl.tasks import Task\n"
        "def train(weights, info):\n"
        "    raise KeyError('age')\n"
        "def make(parties, seed):\n"
        "    clients = {f'c{i}': train for i in range(parties)}\n"
        "    return Task(name='buggy', model={'w': np.zeros(2)}, clients=clients)\n"
    )
    (tmp_path / "fed.toml").write_text('task = "buggy:make"\nrounds = 1\nprivacy = "plain"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", "fed.toml"]) == 2  # every party dropped: no round completed
    assert "no round of the run completed" in capsys.readouterr().err
    assert main(["run", "fed.toml", "--fail-fast"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "raise KeyError('age')" in err and "error: the run failed: KeyError" in err


@pytest.mark.parametrize("privacy", ["plain", "secagg"])
def test_the_demo_shows_what_the_aggregator_saw(capsys, privacy):
    """ "The demo shows the privacy": one party's update beside what the aggregator received —
    under plain the update itself (times the party's weight), under secagg words that are not."""
    import numpy as np

    assert main(["demo", "--privacy", privacy, "--rounds", "1", "--plot", "", "--json"]) == 0
    view = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["aggregator_view"]
    update, received = np.array(view["update"]), np.array(view["received"], dtype=float)
    ratios = received / update
    if privacy == "plain":
        assert view["phase"] == "input" and np.allclose(ratios, ratios[0])  # one weight for all
    else:
        assert view["phase"] == "masked" and view["received_kind"] == "masked words (mod 2^32)"
        assert not np.allclose(ratios, ratios[0], rtol=1e-3)


def test_a_party_waiting_for_its_aggregator_says_so(monkeypatch, caplog):
    """Defect 14: `securefl party` with no aggregator was silent for the whole connect timeout."""
    import grpc

    from securefl.network import client

    monkeypatch.setattr(client, "READY_LOG_EVERY", 0.5)
    target = f"127.0.0.1:{_free_port()}"  # nothing listens there
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.FutureTimeoutError):
        client._wait_until_ready(channel, target, 2.0)
    waiting = [r.getMessage() for r in caplog.records if "waiting for the aggregator" in r.getMessage()]
    assert len(waiting) == 3  # at 0.5, 1.0 and 1.5 s; then the timeout
    assert all(w.startswith(f"waiting for the aggregator at {target}: no connection after") for w in waiting)
    assert waiting[-1].endswith("(gives up after 2s)")


def test_bench_shows_progress_off_a_terminal(monkeypatch, capsys):
    """Defect 13: off a terminal `securefl bench` printed nothing for a 28-minute run."""
    monkeypatch.setattr(cli, "PLAIN_PROGRESS_SECONDS", 0.0)
    assert main(["bench", "--privacy", "secagg", "--params", "100", "--parties", "3", "--repeat", "1"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "replies after" in line]
    assert any(line.startswith("secagg: ") for line in lines) and any("/24 replies" in line for line in lines)


def test_audit_names_what_is_wrong_in_one_line(tmp_path, capsys):
    """Defect 8: empty and binary files, and a wrong --public-key (one problem per record)."""
    empty, binary = tmp_path / "empty.jsonl", tmp_path / "binary.jsonl"
    empty.write_bytes(b"")
    binary.write_bytes(bytes(range(256)))
    assert main(["audit", str(empty)]) == 2
    assert "is empty and has no signed head" in capsys.readouterr().err
    assert main(["audit", str(binary)]) == 2
    assert "is not text (binary data at byte 128)" in capsys.readouterr().err
    ledgers = []
    for name in ("a", "b"):
        ledger = str(tmp_path / f"{name}.jsonl")
        assert main([*DP, "--ledger", ledger, "--rounds", "2", "--budget-epsilon", "50"]) == 0
        ledgers.append(ledger)
    capsys.readouterr()
    main(["audit", ledgers[0], "--public-key", ledgers[1] + ".pub"])
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem")]
    assert len(problems) == 1 and "2 records signed by" in problems[0]
    assert "does --public-key name another ledger's key?" in problems[0]


def test_the_audit_report_states_the_guarantee_the_pinning_and_the_rounds_from_1(
    tmp_path, capsys, monkeypatch
):
    """Defects 8 and 9: the report's headline says which ε is the guarantee, whether the budget holds
    and whether the signer was pinned (an unpinned ledger is not shown verified in green), the records'
    time range and the report's date; rounds count from 1 as in the terminal; the chart keeps the
    budget line and the refused round readable."""
    import matplotlib.pyplot as plt

    ledger = str(tmp_path / "l.jsonl")
    argv = [*DP, "--budget-epsilon", "9.5", "--ledger", ledger, "--rounds", "4", "--json"]
    assert main(argv) == 0
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    unpinned = tmp_path / "unpinned.html"
    assert main(["audit", ledger, "--report", str(unpinned), "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert "signer not pinned" in out and result["pinned"] is False and result["budget_holds"] is True
    rounds = [row["round"] for row in result["rounds"]]
    assert rounds == list(range(1, run["rounds_run"] + 2))  # the released rounds, then the refused one
    assert result["rounds"][-1]["decision"] == "refused"
    page = unpinned.read_text()
    assert "the signer was not pinned" in page and "#1a7f37" not in page  # not verified in green
    assert "The guarantee: <b>ε = " in page and "budget ε = 9.5: <b>holds</b>" in page
    assert "records from 20" in page and "Report written 20" in page
    pinned = tmp_path / "pinned.html"
    assert main(["audit", ledger, "--public-key", ledger + ".pub", "--report", str(pinned)]) == 0
    assert "verified, signed by the key you gave" in pinned.read_text()
    axes = figures[0].axes[0]
    labels = [line.get_label() for line in axes.get_lines()]
    assert "budget" in labels and "refused" in labels
    assert axes.get_ylim()[0] == 0 and axes.get_legend().get_bbox_to_anchor().x0 > axes.bbox.x1 - 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bench"], ["(default: 0.0)", "(default: 100000)", "(default: inprocess)"]),
        (["demo"], ["{central,distributed,local}", "{prv,rdp,pld}", "(default: securefl-demo.png)"]),
        (["keys", "tls"], ["(default certs/)", "(default: securefl)", "-v, --verbose show the traceback"]),
        (["audit"], ["(default 1000)", "log protocol events (dropouts, refusals) and show the traceback"]),
    ],
)
def test_every_help_states_defaults_choices_and_what_verbose_does(capsys, argv, expected):
    """Defect 15: defaults and valid choices in every --help; -v says what it does where it is."""
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for piece in expected:
        assert piece in text, piece


def test_counts_are_written_in_words_with_plurals():
    from securefl.cli import _served
    from securefl.logtext import counted

    assert [counted(n, "party") for n in (0, 1, 2)] == ["0 parties", "1 party", "2 parties"]
    assert counted(1, "round") == "1 round" and counted(3, "release") == "3 releases"
    summary = {"rounds": 1, "rounds_ok": 1, "rounds_failed": 0, "parties_seen": ["a"]}
    assert _served(summary).startswith("1 of 1 round completed; 1 party seen")


def _small_federation(privacy="plain", size=3, strategy="fedadam"):
    import numpy as np

    from securefl import Federation, TrainResult

    def client(i):
        def train(weights, info):
            return TrainResult({"w": weights["w"] + (i + 1) * 0.1, "b": weights["b"] - 0.05}, 10, {})

        return train

    model = {"w": np.zeros(size, np.float32), "b": np.zeros((2, 2), np.float32)}
    return Federation(
        model, {f"p{i}": client(i) for i in range(3)}, privacy, strategy=strategy, weight_bound=10
    )


def test_a_resumed_federation_is_the_uninterrupted_one(tmp_path):
    """Missing piece: save the model and the strategy's state, resume after a stop."""
    import numpy as np

    path = tmp_path / "checkpoint.npz"
    first = _small_federation()
    first.run(4)
    first.save(path)
    whole = _small_federation()
    whole.run(6)
    resumed = _small_federation()
    assert resumed.resume(path) == 4
    resumed.run(2)
    assert [r.number for r in resumed.history.rounds] == [5, 6]  # numbered on from the checkpoint
    assert np.array_equal(resumed.global_vector, whole.global_vector)  # FedAdam's moments came back


def test_a_checkpoint_that_cannot_be_resumed_is_refused_with_its_reason(tmp_path, monkeypatch):
    import numpy as np

    from securefl.errors import ConfigError

    path = tmp_path / "checkpoint.npz"
    saved = _small_federation()
    saved.run(1)
    saved.save(path)
    with pytest.raises(ConfigError, match="other arrays or shapes"):
        _small_federation(size=4).resume(path)
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="is not a securefl checkpoint"):
        _small_federation().resume(tmp_path / "x.npz")
    with pytest.raises(ConfigError, match="seals the model to the parties"):
        _small_federation("paillier", strategy="fedavg").save(tmp_path / "p.npz")
    # A crash while saving leaves the previous checkpoint whole.
    saved.run(1)
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        saved.save(path)
    assert _small_federation().resume(path) == 1


def test_the_demo_saves_and_resumes_with_the_ledger_continuing(tmp_path, capsys):
    ledger, checkpoint = str(tmp_path / "l.jsonl"), str(tmp_path / "ck.npz")
    argv = [*DP, "--budget-epsilon", "30", "--ledger", ledger, "--save", checkpoint, "--json"]
    assert main([*argv, "--rounds", "2"]) == 0
    capsys.readouterr()
    assert main([*argv, "--rounds", "2", "--resume", checkpoint]) == 0
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())  # the console may wrap lines
    assert "resuming from" in text and "2 rounds run before; rounds 3 to 4 follow" in text
    assert "it records 2 releases" in text
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["resumed_after"] == 2 and summary["saved"] == checkpoint
    assert main(["audit", ledger, "--json"]) == 0
    rounds = [r["round"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rounds"]]
    assert rounds == [1, 2, 3, 4]


def test_a_budgeted_run_checkpoints_and_resumes_only_with_its_ledger(tmp_path, capsys):
    """Found by an attacker: --save/--resume with a budget but no ledger started the budget again at
    zero every run (five runs of 3 rounds, each reporting ε 4.0 against a budget of 8; the model
    went through 15 releases, ε ≥ 9.6). A budgeted run now saves only with a ledger (refused before
    any round), and its checkpoint resumes only with that ledger, not fewer of its records, and not
    as a budgeted run when it was saved without a budget."""
    checkpoint, ledger = str(tmp_path / "ck.npz"), tmp_path / "l.jsonl"
    budget = [*DP, "--budget-epsilon", "30", "--rounds", "1"]
    assert main([*budget, "--save", checkpoint]) == 2
    assert "this one has none" in capsys.readouterr().err and not Path(checkpoint).exists()
    assert main([*budget, "--save", checkpoint, "--ledger", str(ledger)]) == 0
    capsys.readouterr()
    assert main([*budget, "--resume", checkpoint]) == 2  # the budget would restart at zero
    assert "resume with that ledger" in " ".join(capsys.readouterr().err.split())
    other = tmp_path / "other.jsonl"
    assert main([*budget, "--resume", checkpoint, "--ledger", str(other)]) == 2
    assert "resume with the ledger the run wrote" in " ".join(capsys.readouterr().err.split())
    # Rolled back: the ledger and its head restored from before the last resumed run (found by the
    # attacker of this fix: the checkpoint named the count at the run's start, so every resume from
    # restored files spent the budget again).
    saved = {p: p.read_bytes() for p in (ledger, Path(f"{ledger}.head"))}
    resumed = [*budget, "--resume", checkpoint, "--save", checkpoint, "--ledger", str(ledger)]
    assert main(resumed) == 0
    for file, data in saved.items():
        file.write_bytes(data)
    capsys.readouterr()
    assert main(resumed) == 2
    assert "an older copy of it" in " ".join(capsys.readouterr().err.split())
    # The checkpoint's entry edited to "0 records" (which every ledger of the key follows): refused,
    # as the entry is signed by the ledger's key together with the model (third attacker).
    import numpy as np

    with np.load(checkpoint, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(bytes(arrays["securefl_checkpoint"]).decode())
    header["privacy"].update(ledger_records=0, ledger_last="0" * 64)
    arrays["securefl_checkpoint"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(checkpoint, **arrays)
    assert main(resumed) == 2
    assert "is not signed by the ledger it names" in " ".join(capsys.readouterr().err.split())
    unbudgeted = str(tmp_path / "plain.npz")
    assert main(["demo", "--rounds", "1", "--plot", "", "--save", unbudgeted]) == 0
    capsys.readouterr()
    assert main([*budget, "--resume", unbudgeted, "--ledger", str(tmp_path / "new.jsonl")]) == 2
    assert "without a privacy budget" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("damage", ["not a zip", "torn zip", "model entries"])
def test_a_damaged_checkpoint_is_named_not_a_crash(tmp_path, capsys, damage):
    """Found by an attacker: a corrupt zip and a header with malformed model entries fell through to
    "the demo failed: BadZipFile" / "ValueError" (exit 1, the code for a bug)."""
    import numpy as np

    path = tmp_path / "ck.npz"
    _small_federation().save(path)
    if damage == "not a zip":
        path.write_bytes(b"PK\x03\x04 not really")
    elif damage == "torn zip":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        header = json.loads(bytes(arrays["securefl_checkpoint"]).decode())
        header["model"] = [["w"], 7]
        arrays["securefl_checkpoint"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        np.savez(path, **arrays)
    from securefl.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint"):
        _small_federation().resume(path)


@pytest.mark.parametrize(
    "where", ["audit head is a directory", "ledger key is a directory", "ledger under a file"]
)
def test_a_file_the_command_cannot_use_is_named_with_exit_2(tmp_path, capsys, where):
    """Found by an attacker: a directory where a ledger's head or key belongs, or a ledger path under
    a regular file, ended as "the audit failed: IsADirectoryError" (exit 1, the code for a bug)."""
    ledger = tmp_path / "l.jsonl"
    if where == "audit head is a directory":
        assert main([*DP, "--rounds", "1", "--ledger", str(ledger)]) == 0
        capsys.readouterr()
        head = Path(str(ledger) + ".head")
        head.unlink()
        head.mkdir()
        assert main(["audit", str(ledger)]) == 2
    elif where == "ledger key is a directory":
        Path(str(ledger) + ".key").mkdir()
        assert main([*DP, "--rounds", "1", "--ledger", str(ledger)]) == 2
    else:
        (tmp_path / "file").write_text("x")
        assert main([*DP, "--rounds", "1", "--ledger", str(tmp_path / "file" / "l.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and "failed:" not in err


def test_clipped_updates_are_reported_where_they_are_known(capsys, caplog):
    """Defect 11: clipping was silent. Each party logs its own; a simulation counts them per round
    (nothing is sent to the aggregator, so nothing tells it which party clipped)."""
    import logging

    caplog.set_level(logging.INFO, logger="securefl.layers.clip")
    argv = ["demo", "--rounds", "2", "--plot", "", "--dp", "distributed", "--clip", "0.05", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "clipped 5" in captured.out + captured.err  # the round lines (on stderr with --json)
    assert json.loads(captured.out.strip().splitlines()[-1])["clipped_per_round"] == [5, 5]
    clipped = [r.getMessage() for r in caplog.records if "was clipped" in r.getMessage()]
    assert len(clipped) == 10 and "to the clip norm 0.05" in clipped[0]
    assert main(["demo", "--rounds", "1", "--plot", "", "--json"]) == 0  # norm 10: nothing clipped
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["clipped_per_round"] == [0]


def test_the_audit_report_of_a_ledger_holding_text_where_figures_belong(tmp_path):
    """A signed record may hold anything its signer wrote: text where ε and the budget belong is
    named as a problem, the record left out of the recomputation (which reads numbers), the report
    escapes it — never a traceback (the recomputation raised ValueError before) nor markup."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from securefl.privacy.audit import audit, write_report
    from securefl.privacy.ledger import Ledger

    path = tmp_path / "odd.jsonl"
    record = {
        "unit": "party",
        "neighbouring": "add/remove one party",
        "mechanism": "gaussian",
        "noise_multiplier": 1.1,
        "sample_rate": 1.0,
        "steps": 1,
        "parties_summed": 3,
        "delta": 1e-5,
        "decision": "released",
        "round": 0,
        "epsilon": "<b>tiny</b>",
        "budget_epsilon": "<script>lots</script>",
    }
    Ledger(path, Ed25519PrivateKey.generate()).append(record)
    result = audit(path)
    assert not result.valid and result.releases == 0 and result.budget_holds is None
    assert any("where numbers or text belong: its ε cannot be recomputed" in p for p in result.problems)
    page = write_report(result, tmp_path / "odd.html").read_text()
    assert "<script>" not in page and "&lt;b&gt;tiny&lt;/b&gt;" in page and "no budget recorded" in page
    assert main(["audit", str(path)]) == 1  # invalid, said in the table: no traceback


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1"])
def test_a_budget_that_is_not_a_finite_positive_number_is_refused_before_any_round(tmp_path, capsys, value):
    """`--budget-epsilon inf` was recorded as an unlimited budget without a word: a limit the user
    typed must never silently turn into none. Leaving the flag out is how a run goes unlimited."""
    ledger = tmp_path / "l.jsonl"
    assert main([*DP, "--ledger", str(ledger), "--rounds", "1"]) == 0  # unlimited: no flag
    written = ledger.read_bytes()
    capsys.readouterr()
    assert main([*DP, f"--budget-epsilon={value}", "--ledger", str(ledger), "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "finite positive number" in err and "no --budget-epsilon" in err, err
    assert "Traceback" not in err and ledger.read_bytes() == written
    assert main(["audit", str(ledger), f"--budget-epsilon={value}"]) == 2
    assert "finite positive number" in capsys.readouterr().err
