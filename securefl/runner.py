"""Run a task through a federation and report it: the code path shared by ``demo`` and ``run``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefl.aggregator import ReleaseGuard, RoundReport
from securefl.aggregator_view import AggregatorView
from securefl.durable import save_figure
from securefl.errors import BudgetExhausted, ConfigError
from securefl.federation import Federation, PrivacySpec, build_stack
from securefl.layers import DPNoise, PrivacyStack, with_dp
from securefl.logtext import counted
from securefl.party import Client, TrainResult, as_train_result
from securefl.tasks import Task, load_task
from securefl.transcript import Transcript


@dataclass
class DPSettings:
    """Party-level DP noise added to a preset stack: where it goes and how much."""

    placement: str = "distributed"
    clip: float = 1.0
    noise_multiplier: float = 1.0


@dataclass
class BudgetSettings:
    """How a run's DP releases are accounted, limited and recorded."""

    epsilon: float | None = None  # None: accounted and recorded, never refused
    delta: float = 1e-5
    ledger: str | None = None
    accountant: str = "prv"
    observer: str | None = None  # the observer class the budget holds against; None: the strictest
    # Continue an existing ledger under another budget than its last record's (refused otherwise:
    # two runs chained into one ledger by accident would end overspent).
    allow_budget_change: bool = False


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
    dp: DPSettings | None = None
    budget: BudgetSettings | None = None
    # Where the parties run: None/"inprocess", "ray", or ray options ({"backend": "ray", "actors": 8,
    # "address": "HOST:PORT"} or a securefl.simulation.RayBackend).
    backend: Any = None
    # Re-raise what a party's own train/evaluate raised instead of going on without that party.
    fail_fast: bool = False
    # Keep what the aggregator received from the first party beside that party's update, for the
    # summary (securefl.aggregator_view; in-process parties only).
    show_view: bool = False
    # securefl.checkpoint: write the model and the strategy's state here after every completed round
    # (atomically); continue from a checkpoint (its rounds count, the ledger continues the budget).
    save: str | None = None
    resume: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stack(self, parties: Sequence[str] | None = None) -> PrivacyStack:
        """The privacy stack; with ``dp`` set, the preset's clip set to ``dp.clip`` and noise added.
        ``parties``: the federation's ids, for a preset whose key is dealt to them."""
        stack = build_stack(self.privacy, parties)
        if self.dp is None:
            return stack
        if any(isinstance(t, DPNoise) for t in stack.transforms):
            raise ConfigError("the privacy stack already has a 'dp' layer; drop it or the DP options")
        noise = DPNoise(self.dp.noise_multiplier, self.dp.placement)
        return PrivacyStack.of(with_dp([*stack.transforms, stack.secure_sum], noise, self.dp.clip))

    def releases_dp(self) -> bool:
        """Whether the stack adds DP noise (so a guard must account it), without building it: a
        dealt preset would generate a key."""
        if self.dp is not None:
            return True
        items = [self.privacy] if isinstance(self.privacy, (str, Mapping)) else list(self.privacy)
        return any(
            (item.get("layer") if isinstance(item, Mapping) else getattr(item, "name", item)) == "dp"
            for item in items
        )

    def privacy_label(self) -> str:
        if isinstance(self.privacy, str):
            return self.privacy + (f"+dp({self.dp.placement})" if self.dp else "")
        return "+".join(
            p if isinstance(p, str) else p.get("layer", "?") if isinstance(p, Mapping) else p.name
            for p in self.privacy
        )


class Reporter:
    """Receives progress; the base class is silent (tests, library use)."""

    def start(self, settings: RunSettings, task: Task) -> None: ...

    def resumed(self, path: str, rounds: int) -> None: ...

    def round(self, report: RoundReport, accuracy: float | None, loss: float | None) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...


def build_federation(
    settings: RunSettings, task: Task, guard: ReleaseGuard | None = None, transcript: Transcript | None = None
) -> Federation:
    """The task's federation. A DP stack weighs every party 1 and releases no party metrics (they
    would leave un-noised): the task's held-out evaluation scores the released model instead."""
    stack = settings.stack(list(task.clients))
    dp = any(isinstance(t, DPNoise) for t in stack.transforms)
    return Federation(
        task.model,
        {pid: _without_metrics(c) for pid, c in task.clients.items()} if dp else task.clients,
        stack,
        train_metrics=() if dp else task.train_metrics,
        eval_metrics=() if dp else task.eval_metrics,
        metric_bounds={} if dp else task.metric_bounds,
        weighting="uniform" if dp else "examples",
        weight_bound=1.0 if dp else settings.weight_bound or task.weight_bound,
        min_parties=settings.min_parties,
        selection=settings.selection,
        strategy=settings.strategy,
        phase_timeout=settings.phase_timeout,
        guard=guard,
        backend=settings.backend,
        fail_fast=settings.fail_fast,
        transcript=transcript,
    )


def _without_metrics(client: Client) -> Client:
    """The client with its metrics kept on the party (a DP stack releases none)."""

    def train(weights, info):
        result = as_train_result(client.train(weights, info))
        return TrainResult(result.weights, result.num_examples, {})

    return Client(train=train)


def run(
    settings: RunSettings, reporter: Reporter | None = None, guard: ReleaseGuard | None = None
) -> dict[str, Any]:
    """Train ``settings.task`` for ``settings.rounds`` rounds; return the summary (JSON-ready).

    ``guard`` (a :class:`securefl.privacy.guard.PrivacyGuard`) accounts DP releases, enforces the
    budget and writes the ledger; the run stops at the first round it refuses."""
    reporter = reporter or Reporter()
    if not isinstance(settings.rounds, int) or settings.rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {settings.rounds!r}")
    task = load_task(settings.task, settings.parties, settings.seed)
    view = None
    if settings.show_view and settings.backend is None:
        watched = next(iter(task.clients))
        view = AggregatorView(watched)
        task.clients[watched] = view.watch(task.clients[watched])
    if settings.save:
        from securefl.checkpoint import require_savable

        require_savable(guard)  # before any round: a budget without a ledger cannot be checkpointed
    federation = build_federation(settings, task, guard, view)
    resumed = federation.resume(settings.resume) if settings.resume else 0
    reporter.start(settings, task)
    if settings.resume:
        reporter.resumed(settings.resume, resumed)
    started = time.perf_counter()
    accuracy: list[float | None] = []
    losses: list[float | None] = []
    stopped = None
    try:
        for _ in range(settings.rounds):
            try:
                report = federation.run_round()
            except BudgetExhausted as exc:
                stopped = str(exc)
                reporter.round(federation.history.rounds[-1], None, None)
                break
            if report.ok and settings.save:
                federation.save(settings.save)
            scores = task.evaluate(federation.global_weights) if task.evaluate else {}
            accuracy.append(scores.get("accuracy"))
            losses.append(scores.get("loss"))
            reporter.round(report, accuracy[-1], losses[-1])
    finally:
        federation.close()  # parties hosted elsewhere (Ray actors) stop here
    history = federation.history
    summary: dict[str, Any] = {
        "task": task.name,
        # None when no round ran (e.g. the budget refused the first one).
        "final_accuracy": accuracy[-1] if accuracy else None,
        "final_loss": losses[-1] if losses else None,
        "accuracy_per_round": accuracy,
        "rounds": settings.rounds,
        "rounds_run": len(accuracy),
        "rounds_failed": len(history.failed),
        "rounds_completed": sum(1 for r in history.rounds if r.ok),
        "resumed_after": resumed,
        # counted on the simulated parties (None on Ray): never sent to the aggregator
        "clipped_per_round": [r.clipped for r in history.rounds],
        "saved": settings.save if settings.save and any(r.ok for r in history.rounds) else None,
        "stopped": stopped,
        "parties": len(task.clients),
        "privacy": settings.privacy_label(),
        "stack": federation.stack.names,
        "seconds": round(time.perf_counter() - started, 3),
        "bytes_up": history.bytes_up,
        "bytes_down": history.bytes_down,
        "dropouts": sum(len(r.dropouts) for r in history.rounds),
        "plot": None,
        "aggregator_view": view.summary() if view is not None else None,
        **_dp_summary(settings, federation, task),
    }
    if settings.plot:
        summary["plot"] = str(plot_accuracy(history.rounds, accuracy, settings.plot, summary))
    reporter.finish(summary)
    return summary


def _dp_summary(settings: RunSettings, federation: Federation, task: Task) -> dict[str, Any]:
    """The DP fields of the summary (None without DP): ε spent so far, and what it was spent on."""
    guard = federation.guard
    released = [r.epsilon for r in federation.history.rounds if r.epsilon is not None]
    budget = settings.budget
    noise = next((t for t in federation.stack.transforms if isinstance(t, DPNoise)), None)
    return {
        "epsilon": (released[-1] if released else 0.0) if guard is not None else None,
        "epsilon_per_round": [r.epsilon for r in federation.history.rounds] if guard is not None else None,
        "delta": guard.budget.delta if guard is not None else None,
        "budget_epsilon": budget.epsilon if budget else None,
        "noise_multiplier": noise.noise_multiplier if noise else None,
        "dp_placement": noise.placement if noise else None,
        "accountant": guard.accountant.version if guard is not None else None,
        "sample_rate": federation.selection.sample_rate(len(task.clients)) if noise else None,
        "ledger": budget.ledger if budget else None,
    }


def plot_accuracy(
    rounds: list[RoundReport], accuracy: list[float | None], path: str, summary: Mapping[str, Any]
) -> Path:
    """A PNG of held-out accuracy and federated evaluation accuracy per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One accuracy per round that ran; a round the budget refused ends the run and has none.
    ran = rounds[: len(accuracy)]
    xs = [r.number for r in ran]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(
        xs, [a if a is not None else float("nan") for a in accuracy], "o-", label="held-out test accuracy"
    )
    federated = [r.eval_metrics.get("accuracy", float("nan")) if r.ok else float("nan") for r in ran]
    ax.plot(xs, federated, "s--", alpha=0.7, label="federated evaluation (before local training)")
    for refused in rounds[len(accuracy) :]:
        label = f"round {refused.round + 1} refused"
        ax.axvline(refused.round + 1, color="tab:red", linestyle=":", label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    parties = counted(summary["parties"], "party")
    ax.set_title(f"securefl {summary['task']}: {parties}, privacy={summary['privacy']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = save_figure(fig, path)  # never through a link planted at the path
    plt.close(fig)
    return out
