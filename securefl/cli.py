"""The ``securefl`` command: ``demo`` (the main job) and ``run CONFIG``."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from securefl.aggregator import RoundReport
from securefl.config import load_config
from securefl.errors import ConfigError, SecureFLError
from securefl.layers import PRESETS
from securefl.runner import Reporter, RunSettings, run
from securefl.tasks import Task


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
            f"[bold]securefl[/] {task.name}: {len(task.clients)} parties, {settings.rounds} rounds, "
            f"privacy [cyan]{escape(settings.privacy_label())}[/]"
        )
        self.progress = Progress(
            TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console
        )
        self.progress.start()
        self.task_id = self.progress.add_task("rounds", total=settings.rounds)

    def round(self, report: RoundReport, accuracy: float | None, loss: float | None) -> None:
        if report.ok:
            line = (
                f"round {report.round + 1:>3}/{self.total_rounds}  accuracy {accuracy:.3f}  loss {loss:.4f}  "
                f"bytes up {_size(report.bytes_up):>9}  "
                f"parties {len(report.survivors)}/{len(report.selected)}"
            )
            if report.dropouts:
                line += f"  dropouts: {escape(', '.join(sorted(report.dropouts)))}"
        else:
            failure = escape(str(report.error))
            line = f"round {report.round + 1:>3}/{self.total_rounds}  [red]failed[/]: {failure}"
        self.progress.console.print(line)
        self.progress.advance(self.task_id)

    def finish(self, summary: dict[str, Any]) -> None:
        self.progress.stop()
        table = Table(title="summary", show_header=False)
        for key in (
            "final_accuracy",
            "final_loss",
            "rounds",
            "rounds_failed",
            "parties",
            "privacy",
            "seconds",
            "bytes_up",
            "bytes_down",
            "dropouts",
            "plot",
        ):
            value = summary[key]
            if key in ("bytes_up", "bytes_down"):
                value = f"{_size(value)} ({value} bytes)"
            elif key == "seconds":
                value = f"{value:.2f} s"
            elif isinstance(value, float):
                value = f"{value:.4f}"
            table.add_row(key.replace("_", " "), escape(str(value)))
        self.console.print(table)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON summary as the last line of stdout"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log protocol events (dropouts, refusals)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securefl", description="Privacy-preserving federated learning with secure aggregation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train on breast-cancer data across simulated hospitals")
    demo.add_argument("--parties", type=int, default=5, help="number of hospitals (default 5)")
    demo.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    demo.add_argument("--privacy", default="plain", choices=sorted(PRESETS), help="privacy stack preset")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data split only (default 0)")
    demo.add_argument("--plot", default="securefl-demo.png", help="PNG of accuracy per round ('' to skip)")
    _add_common(demo)
    run_cmd = sub.add_parser("run", help="run a federation described in a TOML file")
    run_cmd.add_argument("config", help="path to the TOML file")
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
    _add_common(bench)
    keys = sub.add_parser("keys", help="create key material")
    keys_sub = keys.add_subparsers(dest="kind", required=True)
    pk = keys_sub.add_parser("paillier", help="a shared Paillier key set for the paillier layer")
    pk.add_argument("--bits", type=int, default=2048, help="key size: 2048 (default) or 3072")
    pk.add_argument(
        "--out", default=".", help="directory for paillier.keys.json (0600) and paillier.public.json"
    )
    _add_common(pk)
    return parser


def _bench(args: argparse.Namespace, console: Console) -> int:
    from securefl import bench

    layers = [name.strip() for name in args.privacy.split(",") if name.strip()]
    if "plain" not in layers:
        layers.insert(0, "plain")
    if args.repeat < 1:
        raise ConfigError(f"--repeat must be at least 1, got {args.repeat}")
    estimates = {name: bench.check_fits(name, args.params, args.parties) for name in layers}
    for name, est in estimates.items():
        rounds = args.repeat + 1
        console.print(
            f"{name:>9}: about {est['memory_gib']:.2f} GiB, ~{est['seconds_per_round'] * rounds:.0f} s "
            f"for {rounds} rounds of {args.parties} parties × {args.params:,} parameters"
        )
    results = []
    phases = {"plain": 1, "secagg": 4, "secagg+": 4, "paillier": 2, "ckks": 2}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for name in layers:
            total = args.parties * (
                phases[name] * (args.repeat + 1) + (3 if name in ("paillier", "ckks") else 0)
            )
            task = progress.add_task(f"{name:>9}", total=total)
            result, federation = bench.measure(
                name,
                args.params,
                args.parties,
                args.dropout,
                args.repeat,
                on_reply=lambda _p, t=task: progress.advance(t),
            )
            progress.update(task, completed=total)
            results.append(result)
            del federation  # one layer's simulated parties at a time
            gc.collect()
    bench.add_plain_ratios(results)
    title = f"{args.parties} parties × {args.params:,} parameters, dropout {args.dropout:.0%}"
    table = Table(title=f"{title}, medians of {args.repeat} rounds")
    for column in (
        "layer",
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
    if any(r.naive_extrapolated for r in results):
        console.print("* naive baseline timed on a sample and extrapolated")
    if args.plot:
        console.print(f"plot: {bench.plot(results, args.plot)}")
    if args.json:
        print(json.dumps({"results": [r.to_json() for r in results], "cpus": os.cpu_count()}))
    return 0


def _keys_paillier(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from securefl.layers.paillier import KeyMaterial, save_public

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / "paillier.keys.json", out / "paillier.public.json"
    if private_path.exists():
        raise ConfigError(f"{private_path} exists; remove it first (keys are never overwritten)")
    material = KeyMaterial.generate(args.bits)
    material.save(private_path)
    save_public(material.public, public_path)
    return {
        "keys": str(private_path),
        "public": str(public_path),
        "bits": material.public.bits,
        "fingerprint": material.fingerprint,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    # With --json the human-readable output goes to stderr so stdout ends with the JSON line.
    stream = sys.stderr if args.json else sys.stdout
    # Off a terminal (logs, CI), rich would squeeze tables into 80 columns: give it room.
    console = Console(stderr=args.json, soft_wrap=True, width=None if stream.isatty() else 120)
    try:
        if args.command == "bench":
            return _bench(args, console)
        if args.command == "keys":
            summary = _keys_paillier(args)
            if args.json:
                print(json.dumps(summary))
            else:
                print(
                    f"wrote {summary['keys']} (0600: give it to the parties only) and {summary['public']} "
                    f"(for the aggregator); {summary['bits']}-bit key, fingerprint {summary['fingerprint']}"
                )
            return 0
        if args.command == "demo":
            settings = RunSettings(
                parties=args.parties,
                rounds=args.rounds,
                privacy=args.privacy,
                seed=args.seed,
                plot=args.plot or None,
            )
        else:
            settings = load_config(args.config)
        summary = run(settings, ConsoleReporter(console))
    except SecureFLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        return 2
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
