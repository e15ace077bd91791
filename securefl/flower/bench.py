"""Side by side on the same clients: Flower plain, Flower's SecAgg+, securefl's secure sum.

The same clients (each returns the global model plus its own fixed update of ``--params`` float32
values, weighted by its example count) run in one process run:

* ``flower-plain``: Flower's FedAvg on the Message API (``strategy.start``);
* ``flower-secagg+`` / ``flower-secagg+k18``: Flower's SecAgg+ (``SecAggPlusWorkflow`` in
  ``DefaultWorkflow``, legacy API, threshold 2/3) with ``secaggplus_mod`` on the clients, on the
  complete graph (``num_shares`` = clients) and with 18 neighbours (``num_shares`` = 19);
* ``securefl-secagg`` / ``securefl-secagg+k18`` / ``securefl-secagg+``: ``securefl.flower`` (client
  mod + securefl's aggregator over Flower's grid) on the same two graphs and thresholds, and on
  secagg+'s default k-regular graph;
* ``securefl-native-*``: the same securefl stacks in securefl's own runtime (``securefl.Federation``,
  parties in this process) — what a securefl user runs — with ``securefl-native-plain`` beside
  ``flower-plain`` to show each runtime's own cost.

The Flower-engine arms share one simulation backend (one ClientApp actor with every CPU); every
exchange over the grid is timed and its payload bytes counted by one wrapper around the grid (the
same for all), labelled by stage (Flower's ``secaggplus_configs`` stage, securefl's envelope phase,
or plain ``train``). Each stage costs at least ~0.2 s of the engine's polling (its grid pulls every
0.1 s, its nodes every 0.1 s), whatever the protocol computes: four stages bound a secure round
inside the engine from below at ~0.8 s, which is why the native arms are run too. Then the same
with one client's ClientApp crashing during key setup (``--drop-stage``: Flower ``share_keys`` /
securefl ``share``, or ``setup`` / ``advertise``; natively the party goes offline in that phase) in
every round. Each arm's fused model is checked against the exact weighted mean of the clients
summed. Round figures are the last round's (the first includes starting the actor).

    python benchmarks/flower_secagg.py --clients 50 --params 100000 --rounds 2
    python benchmarks/flower_secagg.py --clients 8 --params 1000 --json out.json   # quick

(``benchmarks/flower_secagg.py`` runs :func:`main`; it lives in the library so that Flower's actors
can import the clients, and so that ``securefl bench`` can call it.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from securefl.flower import SecureFL, backend_config
from securefl.flower.records import envelope_of, is_securefl, message_bytes
from securefl.flower.server import default_pull_interval
from securefl.wire import Envelope

K_SPARSE = 18  # the sparse graph both sides are compared on: 18 neighbours, threshold 2/3
# securefl's arms: the complete graph with threshold 2/3, as Flower's flower-secagg+ run (num_shares =
# clients); the same k-regular graph as flower-secagg+k18; secagg+'s default graph (k = 2⌈2 log2 n⌉,
# threshold 0.6).
SECUREFL_LAYERS = {
    "securefl-secagg": {"layer": "secagg", "threshold": 2 / 3},
    "securefl-secagg+k18": {"layer": "secagg+", "degree": K_SPARSE, "threshold": 2 / 3},
    "securefl-secagg+": {"layer": "secagg+"},
}
# securefl's arms in its own runtime (securefl.Federation, parties in this process): the same clients,
# vector, stacks and dropout, without Flower's simulation engine.
NATIVE = {f"securefl-native-{arm.removeprefix('securefl-')}": arm for arm in SECUREFL_LAYERS}
NATIVE["securefl-native-plain"] = "plain"  # the runtime's own cost, beside flower-plain
# Which Flower arm each securefl arm is compared with (the same graph and threshold).
COMPARED = {"securefl-secagg": "flower-secagg+", "securefl-secagg+k18": "flower-secagg+k18"}
COMPARED.update({native: COMPARED[arm] for native, arm in NATIVE.items() if arm in COMPARED})
SECAGG_RECORD = "secaggplus_configs"
SECAGG_STAGE = "stage"
DROP_STAGES = {"share": ("share_keys", "share"), "setup": ("setup", "advertise")}


def examples(partition: int) -> int:
    return 10 + partition


def update(partition: int, size: int) -> np.ndarray:
    return np.random.default_rng(partition).uniform(-0.1, 0.1, size).astype(np.float32)


def expected_model(summed: list[list[int]], size: int) -> np.ndarray:
    model = np.zeros(size)
    for partitions in summed:
        total = sum(examples(p) for p in partitions)
        model += sum(examples(p) * update(p, size).astype(np.float64) for p in partitions) / total
    return model


# --- the metered grid ------------------------------------------------------------------------


@dataclass
class Exchange:
    round: str
    stage: str
    started: float
    seconds: float
    bytes_down: int
    bytes_up: int
    errors: int


@dataclass
class MeteredGrid:
    """Delegates to Flower's grid; times every exchange and counts its payload bytes: each
    ``send_and_receive`` (Flower's workflows and strategies), and each push with the pulls of its
    replies (securefl's server, which pulls at its own interval). A pushed exchange lasts until the
    last pull that asked for its replies: when they were all in, or when the server gave up."""

    grid: Any
    log: list[Exchange] = field(default_factory=list)
    _open: dict[str, Exchange] = field(default_factory=dict)  # pushed message id -> its exchange

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if not messages:  # e.g. FedAvg's evaluation with fraction_evaluate=0
            return self.grid.send_and_receive(messages, timeout=timeout)
        stage, round_ = _label(messages[0])
        down = sum(message_bytes(m) for m in messages)
        started = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        seconds = time.perf_counter() - started
        up = sum(message_bytes(r) for r in replies)
        errors = sum(1 for r in replies if r.has_error())
        self.log.append(Exchange(round_, stage, started, seconds, down, up, errors))
        return replies

    def push_messages(self, messages):
        messages = list(messages)
        started = time.perf_counter()
        ids = list(self.grid.push_messages(messages))
        if messages:
            stage, round_ = _label(messages[0])
            exchange = Exchange(round_, stage, started, 0.0, sum(message_bytes(m) for m in messages), 0, 0)
            self.log.append(exchange)
            self._open.update(dict.fromkeys(ids, exchange))
        return ids

    def pull_messages(self, message_ids):
        message_ids = list(message_ids)
        replies = list(self.grid.pull_messages(message_ids))
        now = time.perf_counter()
        for exchange in {id(e): e for e in (self._open.get(i) for i in message_ids) if e}.values():
            exchange.seconds = now - exchange.started
        for reply in replies:
            exchange = self._open.pop(reply.metadata.reply_to_message_id, None)
            if exchange is not None:
                exchange.bytes_up += message_bytes(reply)
                exchange.errors += int(reply.has_error())
        return replies


def _label(message: Message) -> tuple[str, str]:
    round_ = message.metadata.group_id
    if is_securefl(message):
        envelope = Envelope.decode(envelope_of(message))
        return envelope.phase, str(envelope.round + 1)
    records = message.content.config_records
    if "server-round" in records.get("config", {}):  # Flower's Message-API strategies
        round_ = str(records["config"]["server-round"])
    if SECAGG_RECORD in records and SECAGG_STAGE in records[SECAGG_RECORD]:
        return str(records[SECAGG_RECORD][SECAGG_STAGE]), round_
    return message.metadata.message_type, round_


# --- the clients ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrashMod:
    """The ClientApp of partition ``partition`` crashes on requests of ``stages`` (any round)."""

    partition: int
    stages: tuple[str, ...]

    def __call__(self, message: Message, context: Context, call_next):
        if int(context.node_config["partition-id"]) == self.partition:
            stage, _ = _label(message)
            if stage in self.stages:
                raise RuntimeError(f"partition {self.partition} crashes in {stage}")
        return call_next(message, context)


def message_train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"]
    size = arrays["w"].numpy().size
    new = ArrayRecord({"w": Array(arrays["w"].numpy() + update(partition, size))})
    metrics = MetricRecord({"num-examples": examples(partition)})
    return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)


def message_client(mods: list) -> ClientApp:
    app = ClientApp(mods=mods)
    app.train()(message_train)
    return app


def legacy_client(mods: list) -> ClientApp:
    from flwr.client import NumPyClient

    class Numpy(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters, config):
            (w,) = parameters
            return [w + update(self.partition, w.size)], examples(self.partition), {}

    def client_fn(context: Context):
        return Numpy(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=mods)


# --- the three arms -------------------------------------------------------------------------


def securefl_stack(arm: str, size: int) -> list[dict]:
    """The privacy stack of a securefl arm: every coordinate of an update is within ±0.1, so the
    clip never clips; 24-bit fixed point; the arm's secure sum."""
    arm = NATIVE.get(arm, arm)
    if arm == "plain":
        return ["plain"]
    return [
        {"layer": "clip", "norm": 0.1 * size**0.5 + 1.0},
        {"layer": "quantize", "bits": 24},
        SECUREFL_LAYERS[arm],
    ]


def run_native_arm(arm: str, clients: int, size: int, rounds: int, drop: int | None, drop_stage: str) -> dict:
    """A securefl arm in securefl's own runtime: the same clients (update and example count per
    partition), stack and crash (the party goes offline in the same phase), timed per round."""
    from securefl import Federation, TrainResult
    from securefl.bench import instrument
    from securefl.faults import Faults

    _, securefl_stage = DROP_STAGES[drop_stage]

    def client(partition: int):
        def train(weights, info):
            return TrainResult({"w": weights["w"] + update(partition, size)}, examples(partition), {})

        return train

    names = {p: f"client-{p:03d}" for p in range(clients)}
    faults = Faults()
    if drop is not None:  # plain has one phase, "input": its party crashes there, as Flower's in train
        faults.add("offline", names[drop], phase="input" if NATIVE[arm] == "plain" else securefl_stage)
    federation = Federation(
        {"w": np.zeros(size, np.float32)},
        {names[p]: client(p) for p in range(clients)},
        securefl_stack(arm, size),
        weight_bound=examples(clients),
        min_parties=2,
        faults=faults,
    )
    inst = instrument(federation)
    log: list[Exchange] = []
    started = time.perf_counter()
    error = None
    reports = []
    try:
        for r in range(rounds):
            inst.reset()
            begin = time.perf_counter()
            report = federation.run_round()
            seconds = time.perf_counter() - begin
            reports.append((report.status, len(report.survivors), sorted(report.dropouts.values())))
            down, up = sum(inst.down.values()), sum(inst.up.values())
            log.append(Exchange(str(r + 1), "round", begin, seconds, down, up, len(report.dropouts)))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        federation.close()
    out = {"grid": MeteredGrid(None, log), "model": federation.global_weights["w"], "reports": reports}
    return summarize(arm, out, clients, size, rounds, drop, time.perf_counter() - started, error)


def run_arm(arm: str, clients: int, size: int, rounds: int, drop: int | None, drop_stage: str) -> dict:
    if arm in NATIVE:
        return run_native_arm(arm, clients, size, rounds, drop, drop_stage)
    flower_stage, securefl_stage = DROP_STAGES[drop_stage]
    # A plain client has one stage (train): it crashes there.
    crash = [] if drop is None else [CrashMod(drop, (flower_stage, securefl_stage, "train"))]
    server = ServerApp()
    out: dict[str, Any] = {}
    initial = np.zeros(size, np.float32)

    if arm == "flower-plain":
        client = message_client(crash)

        @server.main()
        def _plain(grid: Grid, context: Context) -> None:
            metered = MeteredGrid(grid)
            out["grid"] = metered
            strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=clients, min_train_nodes=clients)
            result = strategy.start(metered, ArrayRecord({"w": Array(initial)}), num_rounds=rounds)
            out["model"] = result.arrays["w"].numpy()

    elif arm in ("flower-secagg+", "flower-secagg+k18"):
        from flwr.client.mod import secaggplus_mod
        from flwr.common import ndarrays_to_parameters
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.strategy import FedAvg as LegacyFedAvg
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

        client = legacy_client([*crash, secaggplus_mod])

        @server.main()
        def _secagg(grid: Grid, context: Context) -> None:
            metered = MeteredGrid(grid)
            out["grid"] = metered
            strategy = LegacyFedAvg(
                fraction_evaluate=0.0,
                min_available_clients=clients,
                min_fit_clients=clients,
                initial_parameters=ndarrays_to_parameters([initial]),
            )
            legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
            # Flower's num_shares counts the client itself: k neighbours are k + 1 shares.
            shares = clients if arm == "flower-secagg+" else K_SPARSE + 1
            workflow = DefaultWorkflow(
                fit_workflow=SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=2 / 3)
            )
            workflow(metered, legacy)
            out["model"] = legacy.state.array_records["parameters"].to_numpy_ndarrays()[0]

    elif arm in SECUREFL_LAYERS:
        secure = SecureFL(
            privacy=securefl_stack(arm, size),
            weight_bound=examples(clients),
            min_parties=2,
        )
        client = message_client([*crash, secure.client_mod])

        @server.main()
        def _securefl(grid: Grid, context: Context) -> None:
            # What securefl's server picks for this grid (it cannot see through the meter).
            secure.pull_interval = default_pull_interval(grid)
            metered = MeteredGrid(grid)
            out["grid"] = metered
            result = secure.run(metered, ArrayRecord({"w": Array(initial)}), rounds, min_nodes=clients)
            out["model"] = result.arrays["w"].numpy()
            out["reports"] = [
                (r.status, len(r.survivors), sorted(r.dropouts.values())) for r in result.history.rounds
            ]
    else:
        raise ValueError(arm)

    started = time.perf_counter()
    error = None
    try:
        run_simulation(server, client, num_supernodes=clients, backend_config=backend_config())
    except Exception as exc:  # Flower's SecAgg+ may end the run: report it
        error = f"{type(exc).__name__}: {exc}"
    total = time.perf_counter() - started
    return summarize(arm, out, clients, size, rounds, drop, total, error)


def summarize(arm, out, clients, size, rounds, drop, total, error) -> dict:
    log: list[Exchange] = out["grid"].log if "grid" in out else []
    by_round: dict[str, list[Exchange]] = defaultdict(list)
    for exchange in log:
        by_round[exchange.round].append(exchange)
    numbered = [r for r in by_round if r.isdigit()]
    last = by_round[max(numbered, key=int)] if numbered else []
    stages: dict[str, dict[str, float]] = {}
    for e in last:
        s = stages.setdefault(e.stage, {"seconds": 0.0, "bytes_down": 0, "bytes_up": 0, "errors": 0})
        s["seconds"] += e.seconds
        s["bytes_down"] += e.bytes_down
        s["bytes_up"] += e.bytes_up
        s["errors"] += e.errors
    round_seconds = (last[-1].started + last[-1].seconds - last[0].started) if last else None
    survivors = [p for p in range(clients) if p != drop]
    model = out.get("model")
    result: dict[str, Any] = {
        "arm": arm,
        "dropout": drop is not None,
        "run_seconds": round(total, 2),
        "round_seconds": None if round_seconds is None else round(round_seconds, 3),
        "bytes_down": sum(e.bytes_down for e in last),
        "bytes_up": sum(e.bytes_up for e in last),
        "stages": {k: {**v, "seconds": round(v["seconds"], 3)} for k, v in stages.items()},
        "error": error,
    }
    if model is not None:
        want = expected_model([survivors] * rounds, size)
        result["max_abs_error"] = float(np.max(np.abs(model.astype(np.float64) - want)))
        everyone = expected_model([list(range(clients))] * rounds, size)
        result["changed"] = bool(np.max(np.abs(model)) > 0)
        result["error_vs_all_clients"] = float(np.max(np.abs(model.astype(np.float64) - everyone)))
    if "reports" in out:
        result["securefl_rounds"] = out["reports"]
    return result


def table(results: list[dict]) -> str:
    lines = [
        f"{'arm':<27} {'dropout':<8} {'round s':>8} {'MB down':>8} {'MB up':>8} {'max |err|':>10}  stages (s)"
    ]
    for r in results:
        stages = ", ".join(f"{k} {v['seconds']:.2f}" for k, v in r["stages"].items())
        err = r.get("max_abs_error")
        lines.append(
            f"{r['arm']:<27} {'yes' if r['dropout'] else 'no':<8} "
            f"{(r['round_seconds'] or float('nan')):>8.2f} {r['bytes_down'] / 1e6:>8.2f} "
            f"{r['bytes_up'] / 1e6:>8.2f} {(err if err is not None else float('nan')):>10.2e}  {stages}"
            + (f"  [{r['error']}]" if r["error"] else "")
        )
    return "\n".join(lines)


def ratios(results: list[dict]) -> list[str]:
    """Flower's round over securefl's, per pair of arms on the same graph, and who completed the
    rounds with a client crashing in key setup (a lost round leaves the model where it was)."""
    by_arm = {(r["arm"], r["dropout"]): r for r in results}
    lines = []
    for ours, theirs in COMPARED.items():
        a, b = by_arm.get((ours, False)), by_arm.get((theirs, False))
        if a and b and a["round_seconds"] and b["round_seconds"]:
            where = "in securefl's own runtime" if ours in NATIVE else "both in Flower's simulation engine"
            lines.append(
                f"{ours} is {b['round_seconds'] / a['round_seconds']:.1f}x faster per round than {theirs} "
                f"({a['round_seconds']:.2f} s against {b['round_seconds']:.2f} s; {where})"
            )
        for arm in (ours, theirs):
            crashed = by_arm.get((arm, True))
            if crashed:
                kept = crashed.get("max_abs_error")
                exact = kept is not None and kept < 1e-3
                done = crashed["error"] is None and crashed.get("changed") and exact
                lines.append(
                    f"  with a client crashing in key setup, {arm} "
                    + ("completed every round" if done else "lost the round (model not updated)")
                )
    return lines


DEFAULT_ARMS = (
    "flower-plain",
    "flower-secagg+",
    "flower-secagg+k18",
    "securefl-secagg",
    "securefl-secagg+k18",
    "securefl-secagg+",
    "securefl-native-plain",
    "securefl-native-secagg",
    "securefl-native-secagg+k18",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
    )
    parser.add_argument("--drop-stage", choices=sorted(DROP_STAGES), default="share")
    parser.add_argument("--no-dropout", action="store_true", help="skip the runs with a dropout")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    results = []
    for drop in [None] if args.no_dropout else [None, 1]:
        for arm in args.arms.split(","):
            print(f"running {arm} {'with a dropout' if drop is not None else ''}...", file=sys.stderr)
            results.append(run_arm(arm, args.clients, args.params, args.rounds, drop, args.drop_stage))
    load = os.getloadavg()
    header = (
        f"{args.clients} clients x {args.params} params, {args.rounds} rounds (last reported), "
        f"drop stage {args.drop_stage}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{os.cpu_count()} CPUs"
    )
    print(header)
    print(table(results))
    for line in ratios(results):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "load": load, "results": results}, f, indent=2)
    return 0


__all__ = ["MeteredGrid", "main", "run_arm"]
