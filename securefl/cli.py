"""The ``securefl`` command: ``demo`` (the main job), ``run``, ``bench``, ``audit``, ``keys``, and the
long-lived ``aggregator`` and ``party`` processes."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from securefl import __version__
from securefl.aggregator import RoundReport
from securefl.config import load_config
from securefl.durable import write_replacing
from securefl.errors import ConfigError, SecureFLError
from securefl.layers import PRESET_NAMES
from securefl.logtext import counted, printable
from securefl.privacy.accountants import ACCOUNTANTS
from securefl.privacy.ledger import ledger_files
from securefl.privacy.observers import OBSERVERS
from securefl.runner import BudgetSettings, DPSettings, Reporter, RunSettings, run
from securefl.simulation.allocator import keep_freed_memory
from securefl.tasks import Task


def escape(text: object) -> str:
    """Text for the console from a file, a party or an exception: control and format characters
    escaped (ESC sequences and newlines in a ledger field erased the "valid NO" line and printed
    forged ones — found by an attacker), then rich markup escaped."""
    return escape_markup(printable(text, 4000, backslashes=False))


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class ConsoleReporter(Reporter):
    """A progress bar, one line per round, and a summary table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task_id = None
        self.total_rounds = 0

    def start(self, settings: RunSettings, task: Task) -> None:
        self.total_rounds = settings.rounds
        self.console.print(
            f"[bold]securefl[/] {task.name}: {counted(len(task.clients), 'party')}, "
            f"{counted(settings.rounds, 'round')}, "
            f"privacy [cyan]{escape(settings.privacy_label())}[/]"
        )
        self.progress = Progress(
            TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console
        )
        self.progress.start()
        self.task_id = self.progress.add_task("rounds", total=settings.rounds)

    def resumed(self, path: str, rounds: int) -> None:
        self.total_rounds += rounds  # rounds are numbered on from the checkpoint's
        self.progress.console.print(
            f"resuming from {escape(path)}: {counted(rounds, 'round')} run before; rounds "
            f"{rounds + 1} to {self.total_rounds} follow"
        )

    def round(self, report: RoundReport, accuracy: float | None, loss: float | None) -> None:
        if report.status == "refused":
            refusal = escape(str(report.error))
            line = f"round {report.number:>3}/{self.total_rounds}  [yellow]refused[/]: {refusal}"
        elif report.ok:
            # A task without evaluate() scores nothing: the line says so instead of a number.
            scores = f"accuracy {accuracy:.3f}  " if accuracy is not None else "not evaluated  "
            if loss is not None:
                scores += f"loss {loss:.4f}  "
            line = (
                f"round {report.number:>3}/{self.total_rounds}  {scores}"
                f"bytes up {_size(report.bytes_up):>9}  "
                f"parties {len(report.survivors)}/{len(report.selected)}"
            )
            if report.epsilon is not None:
                line += f"  ε {report.epsilon:.3f}"
            if report.clipped:
                line += f"  clipped {report.clipped}"
            if report.dropouts:
                line += f"  dropouts: {escape(', '.join(sorted(report.dropouts)))}"
            if report.sidelined:
                line += f"  sidelined: {escape(', '.join(sorted(report.sidelined)))}"
        else:
            failure = escape(str(report.error))
            line = f"round {report.number:>3}/{self.total_rounds}  [red]failed[/]: {failure}"
        self.progress.console.print(line)
        self.progress.advance(self.task_id)

    def finish(self, summary: dict[str, Any]) -> None:
        self.progress.stop()
        table = Table(title="summary", show_header=False)
        for key in (
            "final_accuracy",
            "final_loss",
            "rounds",
            "rounds_run",
            "rounds_failed",
            "parties",
            "privacy",
            "seconds",
            "bytes_up",
            "bytes_down",
            "dropouts",
            "plot",
            "epsilon",
            "delta",
            "noise_multiplier",
            "ledger",
        ):
            value = summary[key]
            if value is None and key in ("epsilon", "delta", "noise_multiplier", "ledger"):
                continue
            if value is None:
                value = "not evaluated" if key.startswith("final_") else "—"
            elif key in ("bytes_up", "bytes_down"):
                value = f"{_size(value)} ({value} bytes)"
            elif key == "seconds":
                value = f"{value:.2f} s"
            elif key == "delta":
                value = f"{value:g}"
            elif isinstance(value, float):
                value = f"{value:.4f}"
            table.add_row(key.replace("_", " "), escape(str(value)))
        self.console.print(table)
        if summary.get("aggregator_view"):
            self.console.print(_view_text(summary["aggregator_view"], summary))
        if summary.get("stopped"):
            self.console.print(f"[yellow]stopped:[/] {escape(summary['stopped'])}")


def _view_text(view: dict[str, Any], summary: dict[str, Any]) -> str:
    """The demo's last lines: one party's update against what the aggregator received for it."""

    def values(items: list) -> str:
        return "  ".join(f"{v:+.5f}" if isinstance(v, float) else str(v) for v in items)

    party = escape(view["party"])
    lines = [
        f"[bold]What the aggregator saw[/] of {party} in round {view['round']} ({escape(view['phase'])}):",
        f"  {party}'s update, first values:  {values(view['update'])}",
        f"  what the aggregator received:   {escape(values(view['received']))}  "
        f"({escape(view['received_kind'])}, {_size(view['received_bytes'])})",
    ]
    if summary["privacy"] == "plain":
        lines.append("  [yellow]plain protects nothing[/]: try --privacy secagg and compare")
    else:
        lines.append(
            f"  the aggregator learns only the sum of the {counted(summary['parties'], 'party')}' updates, "
            "never one of them"
        )
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the text already states it (choices are
    listed by argparse itself); descriptions keep their line breaks (run's TOML format)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS  # --help, --version
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


def _add_common(parser: argparse.ArgumentParser, events: bool = True) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON summary as the last line of stdout"
    )
    what = "log protocol events (dropouts, refusals) and show" if events else "show"
    parser.add_argument(
        "-v", "--verbose", action="store_true", help=f"{what} the traceback of an unexpected error"
    )


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save",
        help="write the model and the server strategy's state here after every completed round (.npz, "
        "no pickle), to --resume from after a stop",
    )
    parser.add_argument(
        "--resume",
        help="continue from a checkpoint --save wrote: its model and strategy, rounds numbered on from "
        "it (--rounds more rounds); with DP give the same --ledger, which continues the budget",
    )


def _add_fail_fast(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop with the traceback when a party's own training code raises (default: that party "
        "drops out of the round, its traceback in the log)",
    )


def _add_backend(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the parties run")
    where.add_argument(
        "--backend",
        choices=("inprocess", "ray"),
        help="inprocess (default) or ray: the parties on Ray actors (pip install 'securefl[simulation]')",
    )
    where.add_argument("--ray-address", help="join the Ray cluster at HOST:PORT (implies --backend ray)")
    where.add_argument("--ray-actors", type=int, help="Ray actors hosting the parties (default: one per CPU)")


def _backend(args: argparse.Namespace, configured: Any) -> Any:
    """The backend of a run: the command line's over the configuration's."""
    from securefl.simulation import RayBackend

    if args.backend is None and args.ray_address is None and args.ray_actors is None:
        return configured
    if args.backend == "inprocess":
        if args.ray_address is not None or args.ray_actors is not None:
            raise ConfigError("--ray-address and --ray-actors need --backend ray")
        return None
    base = configured if isinstance(configured, RayBackend) else RayBackend()
    return dataclasses.replace(
        base,
        address=args.ray_address if args.ray_address is not None else base.address,
        actors=args.ray_actors if args.ray_actors is not None else base.actors,
    )


def _seed(text: str) -> int:
    """argparse type of --seed: what numpy and scikit-learn take (0 … 2³² − 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 … 4294967295")
    return value


OUTPUT_SUFFIXES = {
    "plot": (".png", ".pdf", ".svg", ".jpg", ".jpeg"),
    "report": (".html", ".htm"),
    "model": (".npz",),
    "checkpoint": (".npz",),
}


def check_output(
    path: str, what: str, protected: tuple[str | Path | None, ...] = (), kind: str | None = None
) -> None:
    """Refuse, before any work, an output file that cannot be written where it is asked for, that
    is one of the ``protected`` inputs (found by an attacker: `audit --report L.key` replaced the
    ledger's signing key with the HTML report), also through a link, or — for an output ``kind`` —
    whose name does not end as that kind's files do (a third attacker had --save-model write over a
    party's certificate and the model's Python module: files no list of inputs had named)."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file name")
    suffixes = OUTPUT_SUFFIXES.get(kind or "", ())
    if suffixes and target.suffix.lower() not in suffixes:
        raise ConfigError(f"{what} {path}: give a file name ending in {' or '.join(suffixes)}")
    for kept in protected:
        if kept is not None and os.path.realpath(target) == os.path.realpath(kept):
            raise ConfigError(f"{what} {path} is {kept}, which this command reads; choose another file")
    parent = target.parent
    if not parent.is_dir():
        raise ConfigError(
            f"{what} {path}: the directory {parent} does not exist; create it or choose another path"
        )
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{what} {path}: the directory {parent} is not writable")


RUN_TOML_HELP = """Run a simulated federation described in a TOML file. Its keys (all optional but the
privacy stack):

  task = "breast-cancer"          # or "module:function" returning a securefl.tasks.Task
  rounds = 10
  seed = 0
  plot = "accuracy.png"
  save = "checkpoint.npz"         # model + strategy after every round; resume = "..." continues

  [federation]
  parties = 5                     # min_parties, selection, weight_bound, phase_timeout too

  [[privacy]]                     # one table per layer, in order; or privacy = "secagg+"
  layer = "clip"                  # clip, quantize, dp, plain, secagg, secagg+, paillier,
  norm = 1.0                      # paillier-threshold, ckks; the other keys are its options

  [budget]                        # with a dp layer: epsilon, delta, ledger, accountant,
  epsilon = 8.0                   # observer, allow_budget_change

  [simulation]                    # backend = "ray", actors, address
  backend = "inprocess"

Examples: examples/configs/*.toml. Reference: docs/configuration.md."""


class _Parser(argparse.ArgumentParser):
    """Every sub-command's parser formats its help with :class:`_HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securefl",
        description="Privacy-preserving federated learning with secure aggregation.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"securefl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="train on breast-cancer data across simulated hospitals")
    demo.add_argument("--parties", type=int, default=5, help="number of hospitals (default 5)")
    demo.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    demo.add_argument(
        "--privacy",
        default=None,
        choices=PRESET_NAMES,
        help="privacy stack preset (default secagg: pairwise-mask secure aggregation; plain with "
        "--dp central, whose noise goes on a sum the aggregator reads; plain: no protection). The "
        "secure presets clip each update at L2 norm 10 first (--dp sets the norm with --clip)",
    )
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the data split only (default 0)")
    demo.add_argument("--plot", default="securefl-demo.png", help="PNG of accuracy per round ('' to skip)")
    dp = demo.add_argument_group("differential privacy (party-level DP-FedAvg)")
    dp.add_argument(
        "--dp",
        choices=("central", "distributed", "local"),
        help="add Gaussian/Skellam noise: on the revealed sum (plain only), shared among the parties "
        "before the secure sum, or whole on each party",
    )
    dp.add_argument("--clip", type=float, default=1.0, help="L2 clip norm of each update (default 1.0)")
    dp.add_argument(
        "--noise-multiplier", type=float, default=1.0, help="noise std over the clip norm (default 1.0)"
    )
    dp.add_argument("--budget-epsilon", type=float, help="refuse rounds that would spend more ε than this")
    dp.add_argument("--delta", type=float, default=1e-5, help="δ of the (ε, δ) guarantee (default 1e-5)")
    dp.add_argument(
        "--ledger",
        help="append each release to this signed JSON Lines ledger (an existing one is continued: its "
        "releases count against the budget)",
    )
    dp.add_argument(
        "--budget-change",
        action="store_true",
        help="continue an existing ledger under another budget than the one it records",
    )
    dp.add_argument(
        "--accountant",
        default="prv",
        choices=tuple(ACCOUNTANTS),
        help="the accountant the budget is enforced with (default prv; Skellam noise uses rdp)",
    )
    dp.add_argument(
        "--budget-observer",
        choices=OBSERVERS,
        help="whom the budget holds against (default: participants — the parties, who are told each "
        "round's selection; where the aggregator is protected, its figure is the same)",
    )
    _add_backend(demo)
    _add_checkpoint(demo)
    _add_fail_fast(demo)
    _add_common(demo)
    run_cmd = sub.add_parser(
        "run",
        help="run a federation described in a TOML file",
        description=RUN_TOML_HELP,
    )
    run_cmd.add_argument("config", help="path to the TOML file (examples: examples/configs/*.toml)")
    _add_backend(run_cmd)
    _add_checkpoint(run_cmd)
    _add_fail_fast(run_cmd)
    _add_common(run_cmd)
    bench = sub.add_parser("bench", help="measure what each privacy layer costs, side by side")
    bench.add_argument(
        "--privacy",
        default="plain,secagg,secagg+,paillier,ckks",
        help="comma-separated layers (plain always runs)",
    )
    bench.add_argument("--params", type=int, default=100_000, help="parameters per party (10 to 10,000,000)")
    bench.add_argument("--parties", type=int, default=10, help="parties per round (2 to 1,000)")
    bench.add_argument("--dropout", type=float, default=0.0, help="fraction of parties that drop each round")
    bench.add_argument(
        "--repeat", type=int, default=3, help="measured rounds per layer; medians are reported"
    )
    bench.add_argument("--plot", default=None, help="write a PNG bar chart here")
    bench.add_argument(
        "--backend",
        default="inprocess",
        help="comma-separated: where the parties run, e.g. inprocess,ray to compare side by side",
    )
    bench.add_argument(
        "--scale",
        help="parties=10,100,1000: each layer at each count, with per-party, aggregator and round cost "
        "against n on a log-log plot (--plot, default securefl-scaling.png) and the fitted growth",
    )
    bench.add_argument("--ray-address", help="join the Ray cluster at HOST:PORT (with --backend ray)")
    bench.add_argument("--ray-actors", type=int, help="Ray actors hosting the parties (default: one per CPU)")
    bench.add_argument(
        "--flower",
        action="store_true",
        help="side by side in Flower's simulation engine: Flower plain, Flower's SecAgg+, securefl's "
        "secagg/secagg+ (--parties clients, --params, --repeat rounds; needs securefl[flower])",
    )
    _add_common(bench)
    audit = sub.add_parser("audit", help="verify a privacy ledger and recompute the ε it records")
    audit.add_argument("ledger", help="path to the ledger (.jsonl)")
    audit.add_argument("--public-key", help="the signer's Ed25519 public key: 64 hex digits or a .pub file")
    audit.add_argument(
        "--budget-epsilon", type=float, help="flag spending above this ε (default: as recorded)"
    )
    audit.add_argument("--report", help="write an HTML report for compliance officers here")
    audit.add_argument(
        "--empirical",
        action="store_true",
        help="also run a one-run canary audit of the ledger's mechanism through securefl's own noise "
        "layers and secure sums, and report an empirical ε lower bound beside the accounted ε",
    )
    audit.add_argument(
        "--canaries", type=int, default=1000, help="canary parties of --empirical (default 1000)"
    )
    audit.add_argument(
        "--empirical-rounds",
        type=int,
        default=10,
        help="releases of the ledger --empirical replays (default 10; more only adds leakage)",
    )
    audit.add_argument(
        "--repair",
        action="store_true",
        help="complete an append a crash interrupted; re-sign a damaged ledger keeping every release it "
        "records (the damaged files are kept beside it), so that its spent budget is never lost",
    )
    _add_common(audit)
    keys = sub.add_parser("keys", help="create key material")
    keys_sub = keys.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    pk = keys_sub.add_parser("paillier", help="a shared Paillier key set for the paillier layer")
    pk.add_argument("--bits", type=int, default=2048, help="key size: 2048 (default) or 3072")
    pk.add_argument(
        "--out", default=".", help="directory for paillier.keys.json (0600) and paillier.public.json"
    )
    _add_common(pk, events=False)
    tpk = keys_sub.add_parser(
        "paillier-threshold",
        help="the key ceremony of paillier-threshold: a t-of-n threshold Paillier key, one share per party",
    )
    tpk.add_argument("--parties", required=True, help="comma-separated party ids: one share file each")
    tpk.add_argument(
        "--threshold", type=int, required=True, help="how many holders must take part to decrypt (t)"
    )
    tpk.add_argument("--bits", type=int, default=2048, help="key size: 2048 (default) or more")
    tpk.add_argument(
        "--out", default="threshold-keys", help="directory for public.json and share-PARTY.json (0600)"
    )
    _add_common(tpk, events=False)
    tls = keys_sub.add_parser("tls", help="a federation CA, the aggregator's and each party's certificate")
    tls.add_argument("--parties", required=True, help="comma-separated party ids (the allowlist)")
    tls.add_argument("--out", default="certs", help="directory (default certs/); keys go to its private/")
    tls.add_argument("--federation", default="securefl", help="federation name in the certificates")
    tls.add_argument(
        "--server-names",
        default="127.0.0.1,localhost",
        help="comma-separated addresses the aggregator is reached at (default 127.0.0.1,localhost)",
    )
    tls.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    _add_common(tls, events=False)
    aggregator = sub.add_parser("aggregator", help="serve a federation to party processes over mutual TLS")
    aggregator.add_argument("--config", required=True, help="the federation's TOML file (FED.toml)")
    aggregator.add_argument("--save-model", help="write the final global model here (.npz, no pickle)")
    _add_common(aggregator)
    party = sub.add_parser("party", help="join a federation as one party process")
    party.add_argument("--config", required=True, help="this party's TOML file (PARTY.toml)")
    party.add_argument("--train", required=True, help="module:function returning the train function")
    _add_common(party)
    return parser


PLAIN_PROGRESS_SECONDS = 30.0  # off a terminal: a progress line at most this often


def _progress_reporter(progress: Progress, task: Any, label: str, total: int, console: Console):
    """Advance the bar; off a terminal (a log file, CI), where the bar is not drawn, also print a
    plain line every PLAIN_PROGRESS_SECONDS so a long run is seen to progress."""
    if console.is_terminal:
        return lambda _party: progress.advance(task)
    state = {"done": 0, "start": time.monotonic(), "last": time.monotonic()}

    def advance(_party: str) -> None:
        progress.advance(task)
        state["done"] += 1
        now = time.monotonic()
        if now - state["last"] >= PLAIN_PROGRESS_SECONDS:
            state["last"] = now
            print(
                # (the total is an estimate: key set-up and decryption replies vary by layer)
                f"{label.strip()}: {min(state['done'], total)}/{total} replies after "
                f"{now - state['start']:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    return advance


def _bench(args: argparse.Namespace, console: Console) -> int:
    from securefl import bench

    if args.flower:
        try:
            from securefl.flower.bench import main as flower_bench
        except ImportError as exc:
            raise ConfigError(f"--flower needs Flower: pip install 'securefl[flower]' ({exc})") from None
        rounds = str(max(args.repeat, 2))
        return flower_bench(
            ["--clients", str(args.parties), "--params", str(args.params), "--rounds", rounds]
        )

    if args.plot:
        check_output(args.plot, "--plot", kind="plot")
    layers = [name.strip() for name in args.privacy.split(",") if name.strip()]
    if "plain" not in layers:
        layers.insert(0, "plain")
    if args.repeat < 1:
        raise ConfigError(f"--repeat must be at least 1, got {args.repeat}")
    backends = [name.strip() for name in args.backend.split(",") if name.strip()]
    unknown = sorted(set(backends) - {"inprocess", "ray"})
    if unknown or not backends:
        raise ConfigError(f"--backend takes inprocess and/or ray, got {args.backend!r}")
    ray_backend = _backend(
        argparse.Namespace(backend="ray", ray_address=args.ray_address, ray_actors=args.ray_actors), None
    )
    if args.scale:
        return _bench_scale(args, console, layers, backends, ray_backend)
    estimates = {name: bench.check_fits(name, args.params, args.parties) for name in layers}
    for name, est in estimates.items():
        rounds = args.repeat + 1
        console.print(
            f"{name:>9}: about {est['memory_gib']:.2f} GiB, ~{est['seconds_per_round'] * rounds:.0f} s "
            f"for {counted(rounds, 'round')} of {counted(args.parties, 'party')} × {args.params:,} parameters"
        )
    results = []
    # Replies per party per round, for the progress bar only (an unknown layer counts one).
    phases = {"plain": 1, "secagg": 4, "secagg+": 4, "paillier": 2, "ckks": 2, "paillier-threshold": 4}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for name in layers:
            for where in backends:
                total = args.parties * (
                    phases.get(name, 1) * (args.repeat + 1) + (3 if name in ("paillier", "ckks") else 0)
                )
                label = name if len(backends) == 1 else f"{name} ({where})"
                task = progress.add_task(f"{label:>9}", total=total)
                result, federation = bench.measure(
                    name,
                    args.params,
                    args.parties,
                    args.dropout,
                    args.repeat,
                    on_reply=_progress_reporter(progress, task, label, total, console),
                    backend=ray_backend if where == "ray" else None,
                )
                progress.update(task, completed=total)
                results.append(result)
                federation.close()
                del federation  # one layer's simulated parties at a time
                gc.collect()
    bench.add_plain_ratios(results)
    title = f"{counted(args.parties, 'party')} × {args.params:,} parameters, dropout {args.dropout:.0%}"
    table = Table(title=f"{title}, medians of {counted(args.repeat, 'round')}")
    for column in (
        "layer",
        "backend",
        "round s",
        "party s",
        "aggregator s",
        "key holder s",
        "bytes up",
        "× float32",
        "max error",
        "vs naive",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.privacy,
            r.backend,
            f"{r.round_seconds:.3f}",
            f"{r.party_seconds:.4f}",
            f"{r.aggregator_seconds:.4f}",
            "—" if r.keyholder_seconds is None else f"{r.keyholder_seconds:.3f}",
            _size(r.bytes_up),
            f"{r.expansion:.2f}",
            f"{r.max_error:.2e}",
            "—"
            if r.speedup_vs_naive is None
            else f"{r.speedup_vs_naive:,.1f}×" + ("*" if r.naive_extrapolated else ""),
        )
    console.print(table)
    for r in results:
        if r.party_bound_seconds:
            console.print(
                f"{r.privacy} ({r.backend}): the masks' bound, measured now — a party "
                f"{r.party_bound_seconds * 1e3:.2f} ms ({r.party_masks} keystreams of {r.params:,} words "
                f"added), the aggregator {r.aggregator_bound_seconds * 1e3:.2f} ms "
                f"({r.parties - round(r.dropout * r.parties)} vectors added, {r.aggregator_masks} "
                "keystreams): party at "
                f"{r.party_seconds / r.party_bound_seconds:.2f}×, aggregator at "
                f"{r.aggregator_seconds / r.aggregator_bound_seconds:.2f}× its bound"
            )
        if r.party_agreement_seconds:
            floor = r.party_bound_seconds + r.party_agreement_seconds
            console.print(
                f"{r.privacy} ({r.backend}): a party's {r.party_agreements} X25519 key agreements "
                f"({r.party_agreements // (r.party_masks - 1)} per neighbour, fresh each round) take "
                f"{r.party_agreement_seconds * 1e3:.2f} ms, "
                f"{r.party_agreement_seconds / r.party_bound_seconds:.2f}× the masks' bound: with the masks, "
                f"a floor of {floor * 1e3:.2f} ms ({floor / r.party_bound_seconds:.2f}× the bound); "
                f"the party is at {r.party_seconds / floor:.2f}× this floor"
            )
        if r.naive_expansion:
            console.print(
                f"{r.privacy} ({r.backend}): {r.naive_baseline}: {r.naive_expansion:.2f}× float32 on the "
                f"wire against securefl's {r.expansion:.2f}×; its encryption takes "
                f"{r.speedup_vs_naive:.2f}× securefl's party time (above 1: securefl is faster)"
            )
        if r.decrypt_vs_phe:
            console.print(
                f"{r.privacy} ({r.backend}): the key holder decrypted the sum's {r.ciphertexts:,} "
                f"ciphertexts in {r.keyholder_seconds:.2f} s, {r.decrypt_vs_phe:.2f}× phe's raw_decrypt "
                "of as many, one at a time (timed on a sample, extrapolated); "
                f"{r.decrypt_per_value_vs_phe:,.0f}× phe decrypting the {r.params:,} values as it stores "
                "them, one ciphertext each"
            )
    ratios = bench.backend_ratios(results)
    for name, ratio in ratios.items():
        console.print(f"{name}: ray round wall time / in-process = {ratio:.2f}")
    if len(backends) > 1:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        console.print(f"load average {load} on {os.cpu_count()} CPUs (others' work skews the ratio)")
    if any(r.naive_extrapolated for r in results):
        console.print("* naive baseline timed on a sample and extrapolated")
    if args.plot:
        console.print(f"plot: {bench.plot(results, args.plot)}")
    if args.json:
        print(
            json.dumps(
                {
                    "results": [r.to_json() for r in results],
                    "cpus": os.cpu_count(),
                    "ray_over_inprocess": ratios,
                    "load_average": os.getloadavg(),
                }
            )
        )
    return 0


def _bench_scale(
    args: argparse.Namespace, console: Console, layers: list[str], backends: list[str], ray_backend: Any
) -> int:
    """``securefl bench --scale parties=10,100,1000``: how each layer's cost grows with n."""
    from securefl import bench
    from securefl.simulation import scale

    key, _, values = args.scale.partition("=")
    try:
        counts = sorted({int(v) for v in values.split(",") if v.strip()})
    except ValueError:
        counts = []
    if key.strip() != "parties" or len(counts) < 2:
        raise ConfigError(f"--scale takes parties=N1,N2[,...] (at least two counts), got {args.scale!r}")
    if len(backends) != 1:
        raise ConfigError("--scale measures one backend at a time: --backend inprocess or --backend ray")
    for name in layers:
        for n in counts:
            bench.check_fits(name, args.params, n)
    console.print(f"{', '.join(layers)} at {counts} parties × {args.params:,} parameters on {backends[0]}")
    report = scale.scaling(
        layers,
        counts,
        args.params,
        args.repeat,
        ray_backend if backends[0] == "ray" else None,
        on_done=lambda r: console.print(f"  {r.privacy:>9} n={r.parties:<6} round {r.round_seconds:.3f} s"),
    )
    table = Table(title=f"cost against n, {args.params:,} parameters, medians of {args.repeat} rounds")
    for column in ("layer", "parties", "party s", "aggregator s", "round s", "bytes up"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        table.add_row(
            r.privacy,
            str(r.parties),
            f"{r.party_seconds:.4f}",
            f"{r.aggregator_seconds:.4f}",
            f"{r.round_seconds:.3f}",
            _size(r.bytes_up_total),
        )
    console.print(table)
    for name, fits in report["fits"].items():
        console.print(
            f"{name}: "
            + "; ".join(
                f"{key.replace('_seconds', '')} {fit['growth']} (log-log slope {fit['slope']:.2f})"
                for key, fit in fits.items()
            )
        )
    path = scale.plot_scaling(report, args.plot or "securefl-scaling.png")
    console.print(f"plot: {path}")
    if args.json:
        print(
            json.dumps(
                {
                    "results": [r.to_json() for r in report["results"]],
                    "fits": report["fits"],
                    "plot": path,
                    "load_average": os.getloadavg(),
                }
            )
        )
    return 0


def _keys_paillier(args: argparse.Namespace) -> dict[str, Any]:
    from securefl.crypto.keyfiles import private_directory
    from securefl.crypto.paillier import check_key_bits
    from securefl.durable import require_absent
    from securefl.layers.paillier import KeyMaterial, save_public

    check_key_bits(args.bits)  # before anything exists on disk
    out = Path(args.out)
    private_path, public_path = out / "paillier.keys.json", out / "paillier.public.json"
    require_absent((private_path, public_path), "keys paillier")
    material = KeyMaterial.generate(args.bits)
    private_directory(out)
    material.save(private_path, overwrite=False)
    save_public(material.public, public_path)
    return {
        "keys": str(private_path),
        "public": str(public_path),
        "bits": material.public.bits,
        "fingerprint": material.fingerprint,
    }


def _keys_threshold(args: argparse.Namespace) -> dict[str, Any]:
    from securefl.layers.paillier_threshold import key_ceremony

    parties = [p.strip() for p in args.parties.split(",") if p.strip()]
    if len(set(parties)) != len(parties):
        raise ConfigError(f"--parties names a party twice: {args.parties!r}")
    if not 1 <= args.threshold <= len(parties):
        raise ConfigError(
            f"--threshold must be between 1 and the number of parties ({len(parties)}), got {args.threshold}"
        )
    return key_ceremony(args.out, parties, args.threshold, args.bits)


def _dp_settings(args: argparse.Namespace) -> DPSettings | None:
    if args.dp is None:
        given = [
            f"--{f.replace('_', '-')}" for f in ("budget_epsilon", "ledger") if getattr(args, f) is not None
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} need --dp central|distributed|local")
        return None
    return DPSettings(placement=args.dp, clip=args.clip, noise_multiplier=args.noise_multiplier)


def _budget_settings(args: argparse.Namespace) -> BudgetSettings | None:
    if args.dp is None:
        return None
    return BudgetSettings(
        args.budget_epsilon,
        args.delta,
        args.ledger,
        args.accountant,
        args.budget_observer,
        allow_budget_change=args.budget_change,
    )


def _federation_inputs(config: str) -> tuple[str, ...]:
    """What ``securefl aggregator --config`` reads or keeps: the TOML, its ledger's files, its TLS
    files (an unreadable config is left for the run to report)."""
    from securefl import deploy

    try:
        fed = deploy.load_federation(config)
    except SecureFLError:
        return (config,)
    tls = fed.tls if isinstance(fed.tls, dict) else {}
    files = [config, *(str(fed.base / v) for v in tls.values() if isinstance(v, str))]
    ledger = (fed.budget or {}).get("ledger")
    if ledger:
        files += [str(f) for f in ledger_files(fed.base / ledger)]
    return tuple(files)


def _ledger_files(settings: RunSettings) -> tuple[str, ...]:
    """The files of the run's privacy ledger (none without one): never an output's target."""
    ledger = settings.budget.ledger if settings.budget is not None else None
    return tuple(str(f) for f in ledger_files(ledger)) if ledger else ()


def _audit(args: argparse.Namespace, console: Console) -> int:
    from securefl.privacy.audit import audit, write_report
    from securefl.privacy.ledger import read_public_key

    if args.report:
        check_output(args.report, "--report", (*ledger_files(args.ledger), args.public_key), "report")
    if not os.path.lexists(args.ledger) and not os.path.lexists(f"{args.ledger}.head"):
        # Nothing to audit (a ledger removed with its head left behind is a finding: audited below).
        raise ConfigError(f"no ledger at {args.ledger}: give the path a guard wrote (--ledger)")
    public_key = read_public_key(args.public_key) if args.public_key else None
    if args.repair:
        _repair_ledger(args.ledger, console)
    result = audit(args.ledger, public_key, args.budget_epsilon)
    if args.empirical:
        _empirical(args, result)
    if args.report:
        write_report(result, args.report)
    table = Table(title=f"audit of {escape(args.ledger)}", show_header=False)
    if not result.valid:
        validity = "[red]NO[/]"
    elif result.pinned:
        validity = "[green]yes[/], signed by the key you gave"
    else:
        validity = (
            "[yellow]consistently signed, signer not pinned[/] (anyone who rewrote the file could have "
            "re-signed it: give --public-key to verify the signer)"
        )
    if result.valid and result.interrupted:
        validity += " (last append interrupted by a crash; recoverable: the next writer completes it)"
    table.add_row("valid", validity)
    table.add_row("records", f"{result.releases} released, {result.refusals} refused")
    if result.first_time:
        table.add_row("time range", f"{escape(result.first_time)} to {escape(result.last_time)} (UTC)")
    who, guaranteed = result.guarantee
    if guaranteed is not None:
        holds = result.budget_holds
        verdict = ""
        if holds is not None:
            verdict = " — [green]within the budget[/]" if holds else " — [red]overspent[/]"
        table.add_row("the guarantee", f"ε {guaranteed:.4f} against {escape(who)}{verdict}")
    table.add_row("unit", escape(result.unit or "—"))
    for name, value in result.epsilon.items():
        table.add_row(f"ε ({name}, at the sampling rate q)", "n/a" if value is None else f"{value:.4f}")
    table.add_row("ε reported", "—" if result.reported is None else f"{result.reported:.4f}")
    for observer, figure in result.observers.items():
        value = figure["epsilon"]
        shown = "not protected" if value is None else f"{value:.4f}"
        enforced = " [bold](the budget's)[/]" if figure["enforced"] else ""
        table.add_row(
            f"ε against {escape(observer)}", f"{shown}{enforced}: {escape(figure['protects_against'])}"
        )
    if result.empirical is not None:
        table.add_row("empirical ε lower bound", escape(result.empirical.summary()))
    table.add_row("δ", "—" if result.delta is None else f"{result.delta:g}")
    table.add_row("budget ε", "—" if result.budget_epsilon is None else f"{result.budget_epsilon:g}")
    console.print(table)
    for problem in result.problems:
        console.print(f"[red]problem:[/] {escape(problem)}")
    for what in result.interrupted:
        console.print(f"interrupted: {escape(what)}")
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if args.report:
        console.print(f"report: {escape(args.report)}")
    if args.json:
        print(json.dumps(result.to_json()))
    return 0 if result.valid else 1


def _empirical(args: argparse.Namespace, result: Any) -> None:
    """``securefl audit --empirical``: canaries through the ledger's mechanism (progress on stderr,
    so that --json keeps stdout to its one line)."""
    from securefl.privacy.empirical import rich_progress, run_for_ledger

    if not result.valid:
        result.notes.append("no empirical audit: the ledger does not verify")
        return
    if args.canaries < 10 or args.empirical_rounds < 1:
        raise ConfigError("--canaries must be at least 10 and --empirical-rounds at least 1")
    with rich_progress(Console(stderr=True)) as progress:
        result.empirical = run_for_ledger(
            result, max_rounds=args.empirical_rounds, canaries=args.canaries, progress=progress
        )
    result.problems.extend(result.empirical.problems)
    result.valid = not result.problems


def _repair_ledger(path: str, console: Console) -> None:
    from securefl.privacy.ledger import repair

    done = repair(path)
    if not done.damage and not done.recovered:
        console.print(f"repair: {escape(path)} needed none")
    for what in done.recovered:
        console.print(f"repair: recovered an interrupted append: {escape(what)}")
    if done.damage:
        console.print(f"repair: {escape(path)} was damaged ({escape(done.damage[0])})")
        console.print(
            f"repair: carried {counted(done.carried, 'record')} into a re-signed ledger; damaged files "
            "kept as " + ", ".join(escape(str(p)) for p in done.kept)
        )
    for line in done.unreadable:
        console.print(f"repair: {escape(line)} could not be read")
    if done.placeholders:
        console.print(
            f"repair: {counted(done.placeholders, 'record')} the damage hid counted as releases with the "
            "costliest verified release's mechanism (an assumption: check it against your own records)"
        )
    if done.replaced:
        console.print(
            f"repair: {counted(done.replaced, 'record')} no longer verified in place (edited, moved, or "
            "chained to an edited one) counted as the costliest verified release; their bytes are in the "
            "damaged copy"
        )


class _Stopped(BaseException):
    """Raised by SIGTERM or SIGINT in a long-lived process: it ends after closing its streams. A
    BaseException, so that no ``except Exception`` (a round's guard) mistakes it for a failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    raise _Stopped(signum)


def _serve(args: argparse.Namespace) -> int:
    """The long-lived processes. They end by their own decision only: at the end of the rounds
    (0), on SIGTERM or SIGINT (128 + the signal), on a configuration error or a refusal (2, with
    the message), or on a bug outside the rounds (1, with the message; the traceback with
    --verbose). Their log (rounds, parties, dropouts, ε) goes to stderr, one escaped line per
    record: nothing a party or the aggregator sends can forge a log line."""
    from securefl.logtext import OneLineFormatter

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if args.verbose:  # tracebacks of what failed, logged at debug level
        logging.getLogger("securefl").setLevel(logging.DEBUG)
    for handler in root.handlers:
        handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    try:
        summary = _serve_command(args)
    except _Stopped as stop:
        print(f"stopped by {stop}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": f"stopped by {stop}", "type": "Stopped"}))
        return 128 + stop.signum
    except SecureFLError as exc:
        print(f"error: {printable(exc, 4000)}", file=sys.stderr)
        if args.json:
            print(_json_error(exc))
        return 2
    except OSError as exc:
        logging.getLogger(__name__).debug("%s failed", args.command, exc_info=True)
        return _file_problem(args, exc)
    except Exception as exc:
        logging.getLogger(__name__).debug("%s failed", args.command, exc_info=True)
        return _unexpected(args, exc, traceback=False)
    print(json.dumps(summary) if args.json else f"finished: {_served(summary)}")
    return 0


def _json_error(exc: BaseException, message: str | None = None) -> str:
    """The ``--json`` error line: the message cut at 4,000 characters, as on stderr (it may quote
    what a peer sent: an aggregator's 1 MB array name made a 1 MB line; found by an attacker)."""
    text = str(exc) if message is None else message
    if len(text) > 4000:
        text = text[:4000] + f"…(+{len(text) - 4000} characters)"
    return json.dumps({"error": text, "type": type(exc).__name__})


def _file_problem(args: argparse.Namespace, exc: OSError) -> int:
    """A file or directory the command could not use, named with the system's reason: exit 2 (the
    input or the machine, not a bug)."""

    where = f"{exc.filename!s}" if exc.filename is not None else "a file"
    reason = exc.strerror or type(exc).__name__
    message = f"{printable(where, 500)}: {reason}; the {args.command} could not read or write it"
    print(f"error: {message}", file=sys.stderr)
    if args.json:
        print(_json_error(exc, message))
    return 2


def _unexpected(args: argparse.Namespace, exc: Exception, traceback: bool) -> int:
    """An exception no check anticipated, as one line on stderr (and the traceback if asked):
    exit status 1."""
    import traceback as tracebacks

    if traceback:
        tracebacks.print_exception(exc, file=sys.stderr)
    print(
        f"error: the {args.command} failed: {type(exc).__name__}: {printable(exc, 4000)}"
        + ("" if args.verbose else " (--verbose shows where)"),
        file=sys.stderr,
    )
    if args.json:
        print(_json_error(exc))
    return 1


class RoundsFailed(SecureFLError):
    """A federation in which no round completed."""


def _served(summary: dict[str, Any]) -> str:
    """The end of an aggregator or party process, in words."""
    if "party" in summary:
        requests, reconnects = summary["requests"], summary["reconnects"]
        return (
            f"{summary['party']} answered {counted(requests, 'request')} ({counted(reconnects, 'reconnect')})"
        )
    text = f"{summary['rounds_ok']} of {counted(summary['rounds'], 'round')} completed"
    if summary["rounds_failed"]:
        text += f", {summary['rounds_failed']} failed"
    seen = summary["parties_seen"]
    text += f"; {counted(len(seen), 'party')} seen"
    if summary.get("epsilon") is not None:
        text += f"; ε {summary['epsilon']:.3g} spent"
    if summary.get("refused"):
        text += f"; stopped: {summary['refused']}"
    if summary.get("model"):
        text += f"; model saved to {summary['model']}"
    return text


def _serve_command(args: argparse.Namespace) -> dict[str, Any]:
    from securefl import deploy

    if args.command == "aggregator":
        if args.save_model:  # checked before any round runs, never over what the run reads or writes
            check_output(args.save_model, "--save-model", _federation_inputs(args.config), "model")
        summary = deploy.run_aggregator(args.config)
        weights = summary.pop("weights", None)
        if summary["rounds_ok"] == 0:
            # Nothing was learnt: neither exit 0 nor save the initial model as if it were trained.
            first = next(iter(summary["failures"].items()), None)
            reason = f" (round {first[0]}: {first[1]})" if first else ""  # failures: by round number
            if not first and summary.get("refused"):
                reason = f" ({summary['refused']})"
            raise RoundsFailed(f"no round of the federation completed{reason}; the model is unchanged")
        if args.save_model:
            if weights is None:
                raise ConfigError("the global model is sealed (paillier, ckks): only the parties can open it")
            # Named arrays as named entries; a list-shaped model as arr_0, arr_1, … in order.
            arrays = weights if isinstance(weights, dict) else {f"arr_{i}": w for i, w in enumerate(weights)}
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            write_replacing(args.save_model, buffer.getvalue())
            summary["model"] = args.save_model
        return summary
    return deploy.run_party_process(args.config, args.train)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    # With --json the human-readable output goes to stderr so stdout ends with the JSON line.
    stream = sys.stderr if args.json else sys.stdout
    # Off a terminal (logs, CI), rich would squeeze tables into 80 columns: give it room.
    console = Console(stderr=args.json, soft_wrap=True, width=None if stream.isatty() else 120)
    if args.command in ("bench", "demo", "run", "aggregator", "party"):
        keep_freed_memory()  # model-sized buffers churn every phase: see securefl/simulation/allocator.py
    try:
        if args.command == "bench":
            return _bench(args, console)
        if args.command in ("aggregator", "party"):
            return _serve(args)
        if args.command == "keys" and args.kind == "tls":
            from securefl.crypto.certificates import write_federation

            names = tuple(n.strip() for n in args.server_names.split(",") if n.strip())
            parties = [p.strip() for p in args.parties.split(",") if p.strip()]
            written = write_federation(Path(args.out), args.federation, parties, names, args.days)
            print(
                json.dumps(written)
                if args.json
                else f"wrote {written}; private keys (0600) in {args.out}/private"
            )
            return 0
        if args.command == "keys" and args.kind == "paillier-threshold":
            summary = _keys_threshold(args)
            print(
                json.dumps(summary)
                if args.json
                else f"wrote {summary['public']} (for the aggregator and every party) and one share file "
                f"per party (0600; carry each to its party only): {', '.join(summary['shares'])}; "
                f"{summary['threshold']} of {len(summary['shares'])} holders decrypt; "
                f"fingerprint {summary['fingerprint']}. Erase this machine's copies of the share files."
            )
            return 0
        if args.command == "keys":
            summary = _keys_paillier(args)
            print(
                json.dumps(summary)
                if args.json
                else f"wrote {summary['keys']} (0600: give it to the parties only) and {summary['public']} "
                f"(for the aggregator); {summary['bits']}-bit key, fingerprint {summary['fingerprint']}"
            )
            return 0
        if args.command == "audit":
            return _audit(args, console)
        if args.command == "demo":
            settings = RunSettings(
                parties=args.parties,
                rounds=args.rounds,
                privacy=args.privacy or ("plain" if args.dp == "central" else "secagg"),
                seed=args.seed,
                plot=args.plot or None,
                show_view=True,
                dp=_dp_settings(args),
                budget=_budget_settings(args),
            )
        else:
            settings = load_config(args.config)
        settings.save = args.save or settings.save
        settings.resume = args.resume or settings.resume
        inputs = (getattr(args, "config", None), *_ledger_files(settings))  # never an output's target
        if settings.save:
            # Kind too (found by an attacker: --save over a Paillier private key, another ledger's
            # signing key and a party's TLS key, none of them inputs of this run)
            check_output(settings.save, "--save", inputs, "checkpoint")  # (--resume's file may be it)
        settings.backend = _backend(args, settings.backend)
        settings.fail_fast = settings.fail_fast or args.fail_fast
        if settings.plot:  # checked now, not after every round has run
            check_output(
                settings.plot,
                "the plot",
                (*inputs, settings.save, settings.resume),
                "plot",
            )
        guard = None
        if settings.releases_dp():
            from securefl.privacy.guard import continuation, guard_for

            guard = guard_for(settings.budget or BudgetSettings())
            if guard.ledger is not None and guard.ledger.records:
                console.print(
                    f"continuing {escape(str(guard.ledger.path))}: it {continuation(guard.ledger)}, "
                    "which this run's budget counts"
                )
        summary = run(settings, ConsoleReporter(console), guard)
    except SecureFLError as exc:
        print(f"error: {printable(exc, 4000)}", file=sys.stderr)
        if args.json:
            print(_json_error(exc))
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the {args.command} stopped (Ctrl-C)", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": "interrupted", "type": "KeyboardInterrupt"}))
        return 130
    except OSError as exc:  # a file it was given or writes (a directory, a missing parent, no access)
        return _file_problem(args, exc)
    except Exception as exc:  # a bug or an environment problem: one line, the traceback with --verbose
        return _unexpected(args, exc, traceback=args.verbose or getattr(args, "fail_fast", False))
    if args.json:
        print(json.dumps(summary))
    if summary["rounds_completed"] == 0:
        # Nothing was learnt (the budget refused the first round, or every round failed): a script
        # chaining this command must not go on as if a model had been trained.
        print(f"error: no round of the {args.command} completed; the model is unchanged", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
