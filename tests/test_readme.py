"""Issue 20: every command in the README runs, in README order, in a fresh directory, without a
traceback — read from the README itself, so a command added there is run here too.

Sizes are made small where the README's are long (a million parameters, 100 parties, 2048-bit key
generation, ten demo rounds, five network rounds); what is not run says why (:func:`plan`). The
by-hand network section runs as an operator would: the aggregator in the background, then the
three parties.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECUREFL = (sys.executable, "-m", "securefl.cli")
# The README's sizes, and the small ones the suite runs them at.
SMALLER = {"--params": "2000", "--parties": "4"}
SKIPPED = {
    "make ": "the set-up itself: CI runs `make test`, which runs this test",
    "pip install": "installs packages into your own environment; the suite runs in the installed one",
    "HEAD:6379": "joins the reader's own Ray cluster (HEAD is a placeholder)",
}


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README's ``sh`` blocks, in order: continuations joined, comments
    and blank lines dropped."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


@dataclass
class Step:
    command: str  # as the README writes it
    argv: list[str] | None = None  # what runs (None: skipped, or a directory change)
    skipped: str | None = None
    cd: str | None = None
    background: bool = False  # the by-hand aggregator: the parties are started after it
    copies: int = 1  # "securefl party --config hospital-1.toml … # and 2, 3"


def plan(command: str) -> Step:
    for marker, reason in SKIPPED.items():
        if command.startswith(marker) or marker in command:
            return Step(command, skipped=reason)
    words = shlex.split(command)
    if words[0] == "cd":
        return Step(command, cd=words[1])
    program, args = words[0], words[1:]
    if program.endswith("securefl"):
        argv = [*SECUREFL, *args]
    elif program.endswith("python"):
        argv = [sys.executable, *args]
    else:
        raise AssertionError(f"the README runs {program!r}, which this test does not know how to run")
    for flag, small in SMALLER.items():
        if flag in argv and argv[argv.index(flag) + 1].isdigit():  # a size, not a list of names
            argv[argv.index(flag) + 1] = small
    if args[:1] == ["keys"] and args[1] in ("paillier", "paillier-threshold"):
        argv += ["--bits", "512"]  # test-sized keys (SECUREFL_ALLOW_TEST_SEEDS, set by conftest)
    if args[:1] == ["bench"] and "--repeat" not in argv:
        argv += ["--repeat", "1"]
    if args[:1] == ["demo"] and "--rounds" not in argv:
        argv += ["--rounds", "3"]
    if "examples/network/run.py" in command:
        argv += ["--rounds", "2"]
    step = Step(command, argv)
    step.background = args[:1] == ["aggregator"]
    step.copies = 3 if args[:1] == ["party"] else 1
    return step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workspace(tmp_path: Path) -> Path:
    """A fresh directory with the README's files (examples/), the network federation on a free port
    and for 2 rounds."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    fed = tmp_path / "examples/network/fed.toml"
    text = fed.read_text().replace("127.0.0.1:50051", f"127.0.0.1:{_free_port()}")
    fed.write_text(text.replace("rounds = 5", "rounds = 2"))
    return tmp_path


def test_the_readme_is_read_whole():
    steps = [plan(c) for c in readme_commands((ROOT / "README.md").read_text())]
    commands = [s.command for s in steps]
    assert any(c.startswith(".venv/bin/securefl demo --privacy plain") for c in commands)
    assert any("securefl audit dp-ledger.jsonl" in c for c in commands)
    assert any("aggregator --config fed.toml" in c for c in commands)
    assert all(s.skipped or s.cd or s.argv for s in steps)


@pytest.mark.slow
def test_every_readme_command_runs_in_readme_order(tmp_path):
    here = _workspace(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    background: list[tuple[Step, subprocess.Popen]] = []
    ran, skipped = [], []
    started = time.monotonic()
    for step in map(plan, readme_commands((ROOT / "README.md").read_text())):
        if step.skipped:
            skipped.append((step.command, step.skipped))
            continue
        if step.cd:
            here = here / step.cd
            continue
        runs = []
        for copy in range(1, step.copies + 1):
            argv = [a.replace("hospital-1", f"hospital-{copy}") for a in step.argv]
            runs.append(
                subprocess.Popen(
                    argv, cwd=here, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        if step.background:
            background.extend((step, run) for run in runs)
            continue
        for run in runs:
            out, err = run.communicate(timeout=900)
            assert run.returncode == 0 and "Traceback" not in err, f"{step.command}\n{out}\n{err}"
        ran.append(step.command)
        print(f"{time.monotonic() - started:6.1f} s  {step.command}")  # with -s: where the time goes
        started = time.monotonic()
    for step, run in background:
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0 and "Traceback" not in err, f"{step.command}\n{out}\n{err}"
        assert "finished: 2 of 2 rounds completed; 3 parties seen; model saved to final.npz" in out
        ran.append(step.command)
    assert (tmp_path / "dp-ledger.jsonl").exists() and (tmp_path / "audit.html").exists()
    assert (tmp_path / "examples/network/final.npz").exists()
    assert len(ran) >= 14 and {reason for _, reason in skipped} <= set(SKIPPED.values())
