"""Run a task through a federation and report it: the code path shared by ``demo`` and ``run``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefl.aggregator import RoundReport
from securefl.errors import ConfigError
from securefl.federation import Federation, PrivacySpec
from securefl.tasks import Task, load_task


@dataclass
class RunSettings:
    """Everything a run needs; built from CLI flags (demo) or a TOML file (run)."""

    task: str = "breast-cancer"
    parties: int = 5
    rounds: int = 10
    privacy: str | Sequence[PrivacySpec] = "plain"
    seed: int = 0
    min_parties: int = 1
    selection: str | Mapping[str, Any] = "all"
    strategy: str | Mapping[str, Any] = "fedavg"
    phase_timeout: float = 600.0
    weight_bound: float | None = None
    plot: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def privacy_label(self) -> str:
        if isinstance(self.privacy, str):
            return self.privacy
        return "+".join(
            p if isinstance(p, str) else p.get("layer", "?") if isinstance(p, Mapping) else p.name
            for p in self.privacy
        )


class Reporter:
    """Receives progress; the base class is silent (tests, library use)."""

    def start(self, settings: RunSettings, task: Task) -> None: ...

    def round(self, report: RoundReport, accuracy: float | None, loss: float | None) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


def build_federation(settings: RunSettings, task: Task) -> Federation:
    return Federation(
        task.model,
        task.clients,
        settings.privacy,
        train_metrics=task.train_metrics,
        eval_metrics=task.eval_metrics,
        metric_bounds=task.metric_bounds,
        weight_bound=settings.weight_bound or task.weight_bound,
        min_parties=settings.min_parties,
        selection=settings.selection,
        strategy=settings.strategy,
        phase_timeout=settings.phase_timeout,
    )


def run(settings: RunSettings, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train ``settings.task`` for ``settings.rounds`` rounds; return the summary (JSON-ready)."""
    reporter = reporter or Reporter()
    if not isinstance(settings.rounds, int) or settings.rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {settings.rounds!r}")
    task = load_task(settings.task, settings.parties, settings.seed)
    federation = build_federation(settings, task)
    reporter.start(settings, task)
    started = time.perf_counter()
    accuracy: list[float | None] = []
    losses: list[float | None] = []
    for _ in range(settings.rounds):
        report = federation.run_round()
        scores = task.evaluate(federation.global_weights) if task.evaluate else {}
        accuracy.append(scores.get("accuracy"))
        losses.append(scores.get("loss"))
        reporter.round(report, accuracy[-1], losses[-1])
    history = federation.history
    summary: dict[str, Any] = {
        "task": task.name,
        "final_accuracy": accuracy[-1],
        "final_loss": losses[-1],
        "accuracy_per_round": accuracy,
        "rounds": settings.rounds,
        "rounds_failed": len(history.failed),
        "parties": len(task.clients),
        "privacy": settings.privacy_label(),
        "stack": federation.stack.names,
        "seconds": round(time.perf_counter() - started, 3),
        "bytes_up": history.bytes_up,
        "bytes_down": history.bytes_down,
        "dropouts": sum(len(r.dropouts) for r in history.rounds),
        "plot": None,
    }
    if settings.plot:
        summary["plot"] = str(plot_accuracy(history.rounds, accuracy, settings.plot, summary))
    reporter.finish(summary)
    return summary


def plot_accuracy(
    rounds: list[RoundReport], accuracy: list[float | None], path: str, summary: Mapping[str, Any]
) -> Path:
    """A PNG of held-out accuracy and federated evaluation accuracy per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.round + 1 for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(
        xs, [a if a is not None else float("nan") for a in accuracy], "o-", label="held-out test accuracy"
    )
    federated = [r.eval_metrics.get("accuracy", float("nan")) if r.ok else float("nan") for r in rounds]
    ax.plot(xs, federated, "s--", alpha=0.7, label="federated evaluation (before local training)")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"securefl {summary['task']}: {summary['parties']} parties, privacy={summary['privacy']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
