import json
import subprocess
import sys
from pathlib import Path

import pytest

from securefl.cli import main
from securefl.config import load_config
from securefl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {"final_accuracy", "rounds", "parties", "privacy", "seconds", "bytes_up", "bytes_down"}


def test_demo_default_reaches_the_accuracy_target(tmp_path):
    """The main job, as a user runs it (installed console script), with the plot."""
    script = Path(sys.executable).parent / "securefl"
    result = subprocess.run(
        [str(script), "demo", "--json", "--plot", str(tmp_path / "acc.png")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= REQUIRED
    assert summary["final_accuracy"] >= 0.93
    assert summary["rounds"] == 10 and summary["parties"] == 5 and summary["privacy"] == "secagg"
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "round  10/10" in result.stderr and "summary" in result.stderr
    # The first minute shows the privacy: a party's update beside the masked words the aggregator got.
    assert "What the aggregator saw of hospital-1 in round 10 (masked)" in result.stderr
    assert "masked words (mod 2^32)" in result.stderr


def test_demo_options(capsys):
    assert main(["demo", "--parties", "3", "--rounds", "2", "--seed", "4", "--plot", "", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["parties"] == 3 and summary["rounds"] == 2 and summary["plot"] is None
    assert len(summary["accuracy_per_round"]) == 2


def test_demo_without_json_prints_rounds(capsys):
    assert main(["demo", "--parties", "2", "--rounds", "1", "--plot", "", "--privacy", "plain"]) == 0
    out = capsys.readouterr().out
    assert "round   1/1" in out and "accuracy" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parties", "0"], "parties must be a positive integer"),
        (["--parties", "500"], "use at most 37 parties"),
        (["--rounds", "0"], "rounds must be a positive integer"),
    ],
)
def test_demo_bad_arguments(capsys, args, message):
    assert main(["demo", "--plot", "", "--json", *args]) == 2
    captured = capsys.readouterr()
    assert message in json.loads(captured.out.strip().splitlines()[-1])["error"]
    assert "error:" in captured.err


@pytest.mark.parametrize(
    ("config", "stack"),
    [
        ("hospitals.toml", ["clip", "quantize", "plain"]),
        ("secagg_plus.toml", ["clip", "quantize", "secagg+"]),
        ("ckks.toml", ["clip", "ckks"]),
    ],
)
def test_run_config_file(capsys, config, stack):
    assert main(["run", str(ROOT / "examples/configs" / config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stack"] == stack
    assert summary["final_accuracy"] >= 0.93


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = 'ten'", 'rounds = "ten" has the wrong type: expected an integer'),
        (
            '[[privacy]]\nlayer = "dp"\n[budget]\nepsilon = true',
            "epsilon = true has the wrong type: expected a number",
        ),
        ('[[privacy]]\nlayer = "dp"\n[budget]\nallow_budget_change = 1', "expected true or false"),
        ("colour = 'red'", r"unknown key\(s\) \['colour'\]"),
        ("[federation]\nparty_count = 3", r"\[federation\]: unknown key"),
        ('privacy = "secagg"\n[budget]\nepsilon = 1.0', "no layer of the privacy stack releases DP noise"),
        ("", "no privacy stack: add \\[\\[privacy\\]\\] tables"),
        ("rounds = 3", 'or privacy = "plain" to run without protection on purpose'),
        (
            '[[privacy]]\nlayer = "clip"\nnrom = 3',
            "privacy layer 'clip' has no option nrom; its options: norm",
        ),
        ("[[privacy]]\nnorm = 3", 'a privacy layer table needs layer = "..." naming one of: ckks, clip'),
        ('[budget]\ncurrency = 3\n[[privacy]]\nlayer = "dp"', r"\[budget\]: unknown key"),
        ("rounds = ", "not valid TOML"),
        ("privacy = 3", "privacy must be a preset name"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "fed.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_and_impossible_stack(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = tmp_path / "fed.toml"
    path.write_text('rounds = 1\n[[privacy]]\nlayer = "quantize"\n[[privacy]]\nlayer = "plain"\n')
    assert main(["run", str(path)]) == 2
    assert "quantize needs a bound on the update" in capsys.readouterr().err.replace("\n", " ")


@pytest.mark.parametrize(
    ("example", "rounds", "floor"),
    [("pytorch_loop.py", 10, 0.85), ("numpy_loop.py", 10, 0.85), ("dpsgd_opacus.py", 3, 0.4)],
)
def test_examples_run(example, rounds, floor):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] >= floor


def _demo(capsys, privacy, seed=0):  # the CLI's default seed: what a user runs first
    assert main(["demo", "--privacy", privacy, "--seed", str(seed), "--plot", "", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("privacy", ["secagg", "secagg+", "paillier", "paillier-threshold", "ckks"])
def test_demo_with_secure_aggregation_matches_plain(capsys, privacy):
    plain = _demo(capsys, "plain")
    secure = _demo(capsys, privacy)
    assert secure["privacy"] == privacy and secure["stack"][0] == "clip" and secure["stack"][-1] == privacy
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.01
    assert secure["final_accuracy"] >= 0.93


def test_threshold_key_ceremony_from_the_cli_feeds_a_toml_federation(tmp_path, capsys):
    """`securefl keys paillier-threshold` writes the public key and one 0600 share per party, refuses
    to overwrite them or to deal an impossible key, and a TOML federation runs on the files."""
    keys = tmp_path / "keys"
    parties = [f"hospital-{i}" for i in (1, 2, 3)]  # the demo task's party ids
    argv = [
        "keys",
        "paillier-threshold",
        "--parties",
        ",".join(parties),
        "--threshold",
        "2",
        "--out",
        str(keys),
    ]
    assert main([*argv, "--json"]) == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert written["threshold"] == 2 and len(written["shares"]) == 3
    assert sorted(p.name for p in keys.iterdir()) == ["public.json", *(f"share-{p}.json" for p in parties)]
    assert all((keys / f"share-{p}.json").stat().st_mode & 0o777 == 0o600 for p in parties)
    assert json.loads((keys / "public.json").read_text())["threshold"] == 2
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    assert main(argv) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before
    for bad, message in [
        (["--parties", "a,b", "--threshold", "3"], "between 1 and the number of parties"),
        (["--parties", "a,b,a", "--threshold", "2"], "names a party twice"),
        (["--parties", "a,../b", "--threshold", "1"], "cannot name a share file"),
        (["--parties", "a,b", "--threshold", "1", "--bits", "1023"], "multiple of 16 bits"),
    ]:
        out = tmp_path / "other"
        assert main(["keys", "paillier-threshold", *bad, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()  # checked before a directory or a prime exists
    config = tmp_path / "fed.toml"
    config.write_text(
        "rounds = 2\n[federation]\nparties = 3\n"
        '[[privacy]]\nlayer = "clip"\nnorm = 10.0\n[[privacy]]\nlayer = "quantize"\nbits = 16\n'
        f'[[privacy]]\nlayer = "paillier-threshold"\nkey_dir = "{keys}"\n'
    )
    assert main(["run", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stack"] == ["clip", "quantize", "paillier-threshold"]
    assert summary["final_accuracy"] >= 0.9


def test_outputs_replace_a_link_at_their_path_and_refuse_names_not_of_their_kind(tmp_path, capsys):
    """Found by a third attacker: --plot wrote through a link planted at its path (a victim file
    became a PNG), and --save-model wrote over a party's certificate and the model's module."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    plot = tmp_path / "out.png"
    plot.symlink_to(victim)
    assert main(["demo", "--parties", "2", "--rounds", "1", "--privacy", "plain", "--plot", str(plot)]) == 0
    assert victim.read_text() == "keep me" and not plot.is_symlink()
    assert plot.read_bytes()[:4] == b"\x89PNG"
    for argv in (
        ["demo", "--rounds", "1", "--plot", str(tmp_path / "hospital.py")],
        ["aggregator", "--config", str(tmp_path / "fed.toml"), "--save-model", str(tmp_path / "party.pem")],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        assert "give a file name ending in" in capsys.readouterr().err
