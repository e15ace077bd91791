"""Side by side in Flower's simulation engine: Flower plain, Flower's SecAgg+, securefl's secure sum.

The same clients (each returns the global model plus its own fixed update of ``--params`` float32
values, weighted by its example count) and the same simulation backend (one ClientApp actor with
every CPU) run three ways in one process run:

* ``flower-plain``: Flower's FedAvg on the Message API (``strategy.start``);
* ``flower-secagg+``: Flower's SecAgg+ (``SecAggPlusWorkflow`` in ``DefaultWorkflow``, legacy API,
  complete graph: ``num_shares`` = clients, threshold 2/3) with ``secaggplus_mod`` on the clients;
* ``securefl-secagg`` / ``securefl-secagg+``: ``securefl.flower`` (client mod + securefl's aggregator
  over the grid), on the complete graph with threshold 2/3 like Flower's run, and on secagg+'s
  default k-regular graph.

Every exchange over the grid is timed and its payload bytes counted by one wrapper around the
grid (the same for all three), labelled by stage (Flower's ``secaggplus_configs`` stage, securefl's
envelope phase, or plain ``train``). Then the same with one client's ClientApp crashing during key
setup (``--drop-stage``: Flower ``share_keys`` / securefl ``share``, or ``setup`` / ``advertise``)
in every round. Each arm's fused model is checked against the exact weighted mean of the clients
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
from securefl.wire import Envelope

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
    """Delegates to Flower's grid; times every send_and_receive and counts its payload bytes."""

    grid: Any
    log: list[Exchange] = field(default_factory=list)

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


def run_arm(arm: str, clients: int, size: int, rounds: int, drop: int | None, drop_stage: str) -> dict:
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

    elif arm == "flower-secagg+":
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
            workflow = DefaultWorkflow(
                fit_workflow=SecAggPlusWorkflow(num_shares=clients, reconstruction_threshold=2 / 3)
            )
            workflow(metered, legacy)
            out["model"] = legacy.state.array_records["parameters"].to_numpy_ndarrays()[0]

    elif arm in ("securefl-secagg", "securefl-secagg+"):
        # securefl-secagg: the complete graph with threshold 2/3, as Flower's run here (num_shares =
        # clients); securefl-secagg+: its default k-regular graph (k = 2⌈2 log2 n⌉), threshold 0.6.
        layer = {"layer": "secagg", "threshold": 2 / 3} if arm == "securefl-secagg" else {"layer": "secagg+"}
        secure = SecureFL(
            privacy=[
                # Every coordinate of an update is within ±0.1: this clip never clips.
                {"layer": "clip", "norm": 0.1 * size**0.5 + 1.0},
                {"layer": "quantize", "bits": 24},
                layer,
            ],
            weight_bound=examples(clients),
            min_parties=2,
        )
        client = message_client([*crash, secure.client_mod])

        @server.main()
        def _securefl(grid: Grid, context: Context) -> None:
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
        f"{'arm':<18} {'dropout':<8} {'round s':>8} {'MB down':>8} {'MB up':>8} {'max |err|':>10}  stages (s)"
    ]
    for r in results:
        stages = ", ".join(f"{k} {v['seconds']:.2f}" for k, v in r["stages"].items())
        err = r.get("max_abs_error")
        lines.append(
            f"{r['arm']:<18} {'yes' if r['dropout'] else 'no':<8} "
            f"{(r['round_seconds'] or float('nan')):>8.2f} {r['bytes_down'] / 1e6:>8.2f} "
            f"{r['bytes_up'] / 1e6:>8.2f} {(err if err is not None else float('nan')):>10.2e}  {stages}"
            + (f"  [{r['error']}]" if r["error"] else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arms", default="flower-plain,flower-secagg+,securefl-secagg,securefl-secagg+")
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "load": load, "results": results}, f, indent=2)
    return 0


__all__ = ["MeteredGrid", "main", "run_arm"]
