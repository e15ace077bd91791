"""Run a federation in one process: the embedded default, and what the demo and examples use.

:class:`Federation` assembles an aggregator, one :class:`~securefl.party.PartyNode` per client and
an in-process transport, validates the privacy stack against the federation (design invariant 3)
and runs rounds. Every message still travels as bytes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefl.aggregator import Aggregator, ReleaseGuard, RoundReport
from securefl.codec import ArraySpec, HonestBounds, NamedArrays, VectorLayout
from securefl.deadlines import check_deadline
from securefl.errors import BudgetExhausted, ConfigError, ProtocolError, SecureFLError
from securefl.fusion import FedAvg, Strategy, build_strategy
from securefl.layers import Clip, Layer, PrivacyStack, StackContext, build_layer, preset
from securefl.party import Client, PartyNode
from securefl.selection import Selection, build_selection
from securefl.simulation import RayBackend, backend_options, simulated_parties
from securefl.transcript import Transcript
from securefl.transport import FaultInjector, InProcessTransport
from securefl.wire import check_name

log = logging.getLogger(__name__)

PrivacySpec = str | Layer | Mapping[str, Any]


@dataclass
class History:
    """The reports of every round run so far."""

    rounds: list[RoundReport] = field(default_factory=list)

    @property
    def bytes_up(self) -> int:
        return sum(r.bytes_up for r in self.rounds)

    @property
    def bytes_down(self) -> int:
        return sum(r.bytes_down for r in self.rounds)

    @property
    def failed(self) -> list[RoundReport]:
        return [r for r in self.rounds if not r.ok]


def build_stack(
    privacy: PrivacySpec | Sequence[PrivacySpec] | None, parties: Sequence[str] | None = None
) -> PrivacyStack:
    """A stack from a preset name, layer objects, or config entries (``{"layer": ...}``);
    ``parties``: the federation's ids, for a preset whose key is dealt to them."""
    if privacy is None:
        privacy = "plain"
    if isinstance(privacy, str):
        return PrivacyStack.of(preset(privacy, parties))
    if isinstance(privacy, PrivacyStack):
        return privacy
    items = [privacy] if isinstance(privacy, Mapping) or not isinstance(privacy, Sequence) else privacy
    layers: list[Layer] = []
    for item in items:
        if isinstance(item, str):
            layers.append(build_layer({"layer": item}))
        elif isinstance(item, Mapping):
            layers.append(build_layer(item))
        else:
            layers.append(item)
    return PrivacyStack.of(layers)


def party_weight_bound(weighting: str, weight_bound: float | None) -> float | None:
    """The cap on a party's weight: as given, or 1 under uniform weighting."""
    return 1.0 if weight_bound is None and weighting == "uniform" else weight_bound


def validate_stack(
    stack: PrivacyStack,
    layout: VectorLayout,
    selection: Selection,
    parties: int,
    min_parties: int,
    weight_bound: float | None,
    metric_bounds: Mapping[str, float] | None,
) -> None:
    """Check the stack against the federation it will run in (design invariant 3), the same
    whether it runs in one process or as separate ones; raise ConfigError naming the problem."""
    if len(set(layout.train_metrics)) != len(layout.train_metrics) or len(set(layout.eval_metrics)) != len(
        layout.eval_metrics
    ):
        raise ConfigError("metric names must be unique")
    context = StackContext(
        layout=layout,
        max_parties=selection.max_selected(parties),
        min_parties=min(min_parties, selection.max_selected(parties)),
        weight_bound=weight_bound,
        metric_bounds=dict(metric_bounds or {}),
    )
    if min_parties > context.max_parties:
        raise ConfigError(
            f"min_parties={min_parties} but at most {context.max_parties} parties take part in a round"
        )
    stack.validate(context)


def party_strategy(stack: PrivacyStack, strategy: Strategy) -> FedAvg | None:
    """The FedAvg the parties step with when the layer fuses on them (else None); a server
    optimizer is refused there, since parties cannot share its state."""
    if stack.secure_sum.fuses_on_parties and not isinstance(strategy, FedAvg):
        raise ConfigError(
            f"{stack.secure_sum.name!r} fuses on the parties, which cannot share the state of "
            f"server optimizer {strategy.name!r}; use strategy 'fedavg'"
        )
    return FedAvg(strategy.lr) if isinstance(strategy, FedAvg) else None


class Federation:
    """An aggregator and its parties in one process.

    ``model`` gives the initial global weights (named arrays); ``clients`` maps party ids to a
    :class:`~securefl.party.Client` or a bare train function. Metric names are declared up front
    because every party's vector must have the same layout. ``fail_fast=True`` re-raises, from
    :meth:`run_round`, what a party's own ``train``/``evaluate`` raised (by default that party drops
    out of the round and the traceback goes to its log). ``backend="ray"`` (or a
    :class:`~securefl.simulation.RayBackend`) hosts the parties on Ray actors instead of this process.
    """

    def __init__(
        self,
        model: NamedArrays,
        clients: Mapping[str, Client | Callable],
        privacy: PrivacySpec | Sequence[PrivacySpec] | None = None,
        *,
        train_metrics: Sequence[str] = (),
        eval_metrics: Sequence[str] = (),
        metric_bounds: Mapping[str, float] | None = None,
        weighting: str = "examples",
        weight_bound: float | None = None,
        min_parties: int = 1,
        selection: str | Mapping[str, Any] | Selection | None = None,
        strategy: str | Mapping[str, Any] | Strategy | None = None,
        phase_timeout: float = 600.0,
        round_config: Mapping[str, Any] | None = None,
        transcript: Transcript | None = None,
        faults: FaultInjector | None = None,
        workers: int = 1,
        guard: ReleaseGuard | None = None,
        backend: str | Mapping[str, Any] | RayBackend | None = None,
        fail_fast: bool = False,
    ) -> None:
        if not clients:
            raise ConfigError("a federation needs at least one party")
        if weighting not in ("examples", "uniform"):
            raise ConfigError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        phase_timeout = check_deadline(phase_timeout, "phase_timeout")
        party_ids = [check_name(p, "party id") for p in clients]
        self.fail_fast = fail_fast
        self.spec = ArraySpec.of(model)
        self.layout = VectorLayout(self.spec.size, tuple(train_metrics), tuple(eval_metrics))
        self.stack = build_stack(privacy, party_ids)
        self.selection = build_selection(selection)
        weight_bound = party_weight_bound(weighting, weight_bound)
        validate_stack(
            self.stack, self.layout, self.selection, len(party_ids), min_parties, weight_bound, metric_bounds
        )
        strategy = build_strategy(strategy)
        parties_strategy = party_strategy(self.stack, strategy)
        honest = HonestBounds.of(weighting, weight_bound, metric_bounds)
        if guard is not None:
            # A PrivacyGuard hands back its binding to this federation (retired if bound elsewhere).
            guard = guard.bind(self.stack, self.selection, len(party_ids)) or guard
        self.session = secrets.token_hex(16)
        self.transcript = transcript
        node_options = {
            "spec": self.spec,
            "layout": self.layout,
            "stack": self.stack,
            "session": self.session,
            "weighting": weighting,
            "weight_bound": weight_bound,
            "strategy": parties_strategy,
            "min_parties": min_parties,
            "honest": honest,
        }
        simulation = backend_options(backend)
        if simulation is None:
            self.nodes = {
                pid: PartyNode(pid, c if isinstance(c, Client) else Client(train=c), **node_options)
                for pid, c in clients.items()
            }
            self.transport = InProcessTransport(
                {pid: node.handle for pid, node in self.nodes.items()}, faults=faults, workers=workers
            )
        else:  # the parties live on Ray actors; self.nodes are handles on them
            if getattr(self.stack.secure_sum, "active", False):
                # Every actor would receive the stack, and with it every party's signing key.
                raise ConfigError(
                    f"the ray backend cannot host an active {self.stack.secure_sum.name} stack "
                    "(identities=): each actor would hold every party's signing key. Run active mode with "
                    "the in-process backend, or each party in its own process (securefl party, mutual TLS)"
                )
            self.transport, self.nodes = simulated_parties(simulation, clients, node_options, faults)
        self.aggregator = Aggregator(
            self.spec,
            self.spec.flatten(model),
            self.layout,
            self.stack,
            self.transport,
            party_ids,
            self.session,
            self.selection,
            strategy,
            min_parties=min_parties,
            phase_timeout=phase_timeout,
            round_config=dict(round_config or {}),
            transcript=transcript,
            guard=guard,
            honest=honest,
        )
        self.guard = guard
        self.history = History()
        self.first_round = 0  # rounds run before a resume (securefl.checkpoint)

    @property
    def global_weights(self) -> NamedArrays:
        """The current global model. When the layer seals it, the simulation opens it as a
        key-holding party would (the aggregator itself cannot)."""
        return self.spec.unflatten(self.global_vector)

    @property
    def global_vector(self) -> np.ndarray:
        sealed = self.aggregator.sealed
        if sealed is None:
            return self.aggregator.weights.copy()
        # Any party holding the keys can open it (one that dropped before receiving them cannot). A
        # party still inside a call abandoned at its deadline is skipped: another thread is in its
        # objects (found by an attacker), and it may never come back.
        busy = getattr(self.transport, "busy", lambda party: False)
        for party, node in self.nodes.items():
            if busy(party):
                continue
            try:
                return node.open_global(sealed.data)
            except SecureFLError:
                continue
        raise ProtocolError("no party of this federation can open the sealed global model")

    def close(self) -> None:
        """Stop the parties this federation hosts elsewhere (Ray actors); in-process, nothing to do."""
        shutdown = getattr(self.transport, "shutdown", None)
        if shutdown is not None:
            shutdown()

    @property
    def parties_in_process(self) -> bool:
        """Whether the parties run in this process (not on Ray actors): their objects are here."""
        return hasattr(self.transport, "handlers")

    @property
    def rounds_run(self) -> int:
        """Rounds this federation has run, those before a resume included."""
        return self.first_round + len(self.history.rounds)

    def save(self, path: str | Path) -> Path:
        """Save the global model, the server strategy's state and the rounds run to ``path``
        (``.npz``, no pickle; atomic), to :meth:`resume` from after a stop. See
        :mod:`securefl.checkpoint` for what it holds and which layers it supports."""
        from securefl import checkpoint

        return checkpoint.save(self, path)

    def resume(self, path: str | Path) -> int:
        """Continue from a checkpoint :meth:`save` wrote: its model and strategy state, and round
        numbers going on from it. Returns the rounds it had run. The privacy budget continues
        through the ledger, not the checkpoint: give the guard the same ledger."""
        from securefl import checkpoint

        if self.history.rounds:
            raise ConfigError("resume a federation before it runs any round")
        return checkpoint.load(self, path)

    def run_round(self) -> RoundReport:
        """Run one round; raise BudgetExhausted if the privacy guard refused it (it is in the history
        and the ledger, and the model is unchanged)."""
        report = self.aggregator.run_round(self.rounds_run)
        if self.parties_in_process:  # count their clipping (where the parties run, only they know)
            clips = [t for t in self.stack.transforms if isinstance(t, Clip)]
            if clips:
                report.clipped = max(clip.clipped.pop(report.round, 0) for clip in clips)
        self.history.rounds.append(report)
        if report.status == "refused":
            raise BudgetExhausted(report.error)
        if self.fail_fast:
            # A party's own train/evaluate raised: re-raise it here, with its traceback, instead
            # of going on without that party (in-process parties only keep the traceback).
            for party in report.dropouts:
                try:
                    error = getattr(self.nodes.get(party), "user_error", None)
                except SecureFLError as exc:  # its actor is gone or hung: nothing to re-raise
                    log.warning("fail_fast: %s", exc)
                    continue
                if error is not None:
                    self.nodes[party].user_error = None
                    raise error
        return report

    def run(self, rounds: int, on_round: Callable[[RoundReport], None] | None = None) -> History:
        """Run ``rounds`` more rounds; ``on_round`` is called after each (for progress output)."""
        if not isinstance(rounds, int) or rounds < 0:
            raise ConfigError(f"rounds must be a non-negative integer, got {rounds!r}")
        for _ in range(rounds):
            report = self.run_round()
            if on_round is not None:
                on_round(report)
        return self.history
