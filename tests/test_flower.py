"""securefl inside Flower (issue 17), run in Flower's own simulation engine (run_simulation, Ray).

A quickstart-style ClientApp (``@app.train()`` returning an ArrayRecord and ``num-examples``) behind
``secure.client_mod``; the ServerApp's main runs securefl's aggregator over the Flower grid. Each
partition p trains the same deterministic update every round, so the fused model after R rounds is
R times the weighted mean of the summed partitions' updates, to the quantization step.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from securefl.cli import main as securefl_main
from securefl.errors import ConfigError
from securefl.federation import Federation, build_stack, validate_stack
from securefl.flower import FlowerRun, SecureFL, backend_config
from securefl.flower.faults import drop_mod, tamper_mod
from securefl.flower.identities import IdentityKeys, resolve
from securefl.privacy.guard import Budget, PrivacyGuard
from securefl.privacy.ledger import open_ledger
from securefl.selection import build_selection

SHAPES = {"w": (3, 4), "b": (5,)}
WEIGHT_BOUND = 100
NODES = 4


def delta(partition: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + partition)
    return {k: rng.uniform(-0.5, 0.5, size=s).astype(np.float32) for k, s in SHAPES.items()}


def examples(partition: int) -> int:
    return 10 * (partition + 1)


def initial() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}


def as_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def train(msg: Message, context: Context) -> Message:
    """A quickstart-style Flower train function: global arrays in, new arrays and num-examples out."""
    partition = int(context.node_config["partition-id"])
    arrays = msg.content["arrays"]
    step = delta(partition)
    new = ArrayRecord({k: Array(arrays[k].numpy() + step[k]) for k in arrays})
    metrics = MetricRecord({"num-examples": examples(partition)})
    return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)


def simulate(secure: SecureFL, rounds: int, mods=(), nodes: int = NODES, **run) -> FlowerRun:
    client = ClientApp(mods=[*mods, secure.client_mod])
    client.train()(train)
    server = ServerApp()
    out: list[FlowerRun] = []

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        out.append(secure.run(grid, as_record(initial()), rounds, min_nodes=nodes, **run))

    run_simulation(server, client, num_supernodes=nodes, backend_config=backend_config(1))
    assert out, "the ServerApp did not finish"
    return out[0]


def expected(rounds_of_partitions: list[list[int]]) -> dict[str, np.ndarray]:
    model = {k: v.astype(np.float64) for k, v in initial().items()}
    for partitions in rounds_of_partitions:
        total = sum(examples(p) for p in partitions)
        for k in model:
            model[k] += sum(examples(p) * delta(p)[k].astype(np.float64) for p in partitions) / total
    return model


def tolerance(secure: SecureFL, rounds: int) -> float:
    """What quantization can move the fused model by: one step per party and round, over the weight."""
    from securefl.codec import VectorLayout

    stack = build_stack(resolve(secure.privacy, None))
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    validate_stack(
        stack, VectorLayout(size), build_selection(None), NODES, secure.min_parties, WEIGHT_BOUND, None
    )
    step = float(np.max(stack.resolution()))
    smallest_total = sum(examples(p) for p in range(NODES - 1))
    return rounds * NODES * step / smallest_total * 2


def assert_model(run: FlowerRun, want: dict[str, np.ndarray], atol: float) -> None:
    got = {k: run.arrays[k].numpy() for k in SHAPES}
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=atol)
    # The partitions' updates differ by far more than the tolerance: the sum is not close by chance.
    assert np.abs(delta(0)["w"] - delta(1)["w"]).min() > 100 * atol


@pytest.mark.slow
@pytest.mark.parametrize("privacy", ["secagg+", "secagg"])
def test_two_rounds_in_flowers_simulation_give_the_exact_sum(privacy):
    secure = SecureFL(privacy=privacy, min_parties=3, weight_bound=WEIGHT_BOUND)
    run = simulate(secure, rounds=2)
    assert [r.status for r in run.history.rounds] == ["ok", "ok"], [r.error for r in run.history.rounds]
    for report in run.history.rounds:
        assert len(report.survivors) == NODES and not report.dropouts
        assert report.total_weight == pytest.approx(sum(examples(p) for p in range(NODES)), abs=1e-3)
    assert_model(run, expected([list(range(NODES))] * 2), tolerance(secure, 2))
    phases = [t.phase for t in run.timings if t.round == 0]
    assert phases == ["advertise", "share", "masked", "unmask"]
    assert all(t.bytes_up > 0 and t.bytes_down > 0 for t in run.timings)


@pytest.mark.slow
def test_a_client_dropping_during_key_setup_costs_only_itself():
    """Partition 1's ClientApp crashes while advertising its keys in round 0, partition 2's while
    sharing them in round 1 (Flower answers with an error message each time): each round completes
    with the exact sum of the other three; in round 2 all four are back."""
    secure = SecureFL(privacy="secagg+", min_parties=3, weight_bound=WEIGHT_BOUND)
    drops = [drop_mod((1,), phase="advertise", round=0), drop_mod((2,), phase="share", round=1)]
    run = simulate(secure, rounds=3, mods=drops)
    reports = run.history.rounds
    assert [r.status for r in reports] == ["ok"] * 3, [r.error for r in reports]
    for report, phase in zip(reports[:2], ["advertise", "share"], strict=True):
        assert len(report.dropouts) == 1 and len(report.survivors) == NODES - 1, report.dropouts
        reason = next(iter(report.dropouts.values()))
        assert reason.startswith(f"{phase}: withdrew: Flower error reply (code 2: the ClientApp raised)")
    assert len(reports[2].survivors) == NODES and not reports[2].dropouts
    assert_model(run, expected([[0, 2, 3], [0, 1, 3], [0, 1, 2, 3]]), tolerance(secure, 3))


@pytest.mark.slow
def test_a_reply_tampered_with_inside_the_flower_record_drops_its_sender():
    """A node's securefl bytes are altered inside the Flower record after its party made them —
    partition 2's key advertisement truncated in round 0, partition 1's masked input replaced by
    garbage in round 1: the aggregator's wire checks reject them, the node is dropped and the round
    completes with the exact sum of the others (a dropped masked input is unmasked from shares)."""
    secure = SecureFL(privacy="secagg+", min_parties=3, weight_bound=WEIGHT_BOUND)
    tampers = [
        tamper_mod((2,), phase="advertise", how="truncate", round=0),
        tamper_mod((1,), phase="masked", how="replace", round=1, data=b"SFLE\x00\x01garbage"),
    ]
    run = simulate(secure, rounds=2, mods=tampers)
    reports = run.history.rounds
    assert [r.status for r in reports] == ["ok"] * 2, [r.error for r in reports]
    for report, phase in zip(reports, ["advertise", "masked"], strict=True):
        assert len(report.dropouts) == 1 and len(report.survivors) == NODES - 1, report.dropouts
        assert next(iter(report.dropouts.values())).startswith(f"{phase}:")
    assert_model(run, expected([[0, 1, 3], [0, 2, 3]]), tolerance(secure, 2))


def partition_name(context: Context) -> str:
    return f"client-{context.node_config['partition-id']}"


@pytest.mark.slow
def test_active_mode_with_named_parties_signed_keys_and_a_forged_advertisement():
    """Active secagg+ (signed key advertisements, consistency round) with stable party names from
    the nodes' config: round 0 loses client-1 while sharing keys; in round 1 client-2's signed
    advertisement is altered in the Flower record (its signature no longer verifies): each costs
    only its sender and the sums are exact."""
    names = [f"client-{p}" for p in range(NODES)]
    keys = IdentityKeys.generate(names)
    privacy = [
        {"layer": "clip", "norm": 10.0},
        {"layer": "quantize", "bits": 24},
        {"layer": "secagg+", "identities": keys},
    ]
    secure = SecureFL(privacy=privacy, min_parties=3, weight_bound=WEIGHT_BOUND, party_name=partition_name)
    faults = [
        drop_mod((1,), phase="share", round=0),
        tamper_mod((2,), phase="advertise", how="flip_last", round=1),
    ]
    run = simulate(secure, rounds=2, mods=faults)
    first, second = run.history.rounds
    assert [first.status, second.status] == ["ok", "ok"], [first.error, second.error]
    assert set(first.dropouts) == {"client-1"} and first.dropouts["client-1"].startswith("share:")
    assert set(second.dropouts) == {"client-2"}, second.dropouts
    assert "advertise:" in second.dropouts["client-2"] and "signature" in second.dropouts["client-2"]
    assert [t.phase for t in run.timings if t.round == 0] == [
        "advertise",
        "share",
        "masked",
        "consistency",
        "unmask",
    ]
    assert_model(run, expected([[0, 2, 3], [0, 1, 3]]), tolerance(secure, 2))


DP_PRIVACY = [
    {"layer": "clip", "norm": 10.0},
    {"layer": "quantize", "bits": 24},
    {"layer": "dp", "noise_multiplier": 2.0},
    {"layer": "secagg+"},
]


@pytest.mark.slow
def test_distributed_dp_budget_and_ledger_from_a_flower_run_audit(tmp_path, capsys):
    """Distributed DP (Skellam noise on the parties, summed by secagg+) with a budget that admits one
    round: the second is refused before anyone trains, both decisions are in the signed ledger, and
    `securefl audit` verifies it. The ε recorded is the one securefl alone records for the same
    federation."""
    secure = SecureFL(
        privacy=DP_PRIVACY, min_parties=3, weighting="uniform", rounds=2, party_name=partition_name
    )
    # The same federation through securefl alone, unlimited budget: ε after one and two rounds.
    reference = PrivacyGuard(Budget(float("inf")))
    clients = {f"p{p}": (lambda p: lambda weights, info: (weights, examples(p)))(p) for p in range(NODES)}
    fed = Federation(initial(), clients, DP_PRIVACY, min_parties=3, weighting="uniform", guard=reference)

    def projected():  # what the guard admits a round at (the fewest survivors: the worst case)
        fields = reference._fields()
        sees = reference._party_sees(NODES)
        return reference.accounts.projected(
            fields, reference.budget.delta, NODES, None, ["participants"], sees
        )

    admitted, eps = [], []
    for _ in range(2):
        admitted.append(projected()["participants"])
        eps.append(fed.run_round().epsilon)
    assert 0 < eps[0] < eps[1] and eps[0] <= admitted[0] < admitted[1]

    ledger = tmp_path / "flower.jsonl"
    guard = PrivacyGuard(Budget((admitted[0] + admitted[1]) / 2), open_ledger(ledger))
    run = simulate(secure, rounds=2, guard=guard)
    first, second = run.history.rounds
    assert first.status == "ok" and first.epsilon == pytest.approx(eps[0])
    assert second.status == "refused" and "budget" in second.error
    assert second.selected == [] and run.arrays is not None

    capsys.readouterr()
    assert securefl_main(["audit", str(ledger), "--public-key", f"{ledger}.pub", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["valid"] is True and out["problems"] == []
    assert out["records"] >= 2


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps new messages with the process's task identity (set inside a run)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@pytest.mark.parametrize("kind", ["train", "train.custom"])
def test_a_plain_train_message_is_refused_and_never_reaches_the_app(task_identity, kind):
    """Found by an attacker: after a secure round, a plain train message (arrays and config, no
    securefl record) reached the app and returned each node's raw update, bit for bit. The app's
    train function is reached only through the secure sum; evaluate and query pass through."""
    secure = SecureFL(privacy="secagg+")
    seen = []

    def call_next(message, context):
        seen.append(message)
        return Message(RecordDict({"arrays": as_record(delta(0))}), reply_to=message)

    msg = Message(RecordDict({"arrays": as_record(initial())}), dst_node_id=1, message_type=kind)
    reply = secure.client_mod(msg, None, call_next)
    assert reply.has_error() and "securefl refuses a train message" in reply.error.reason
    assert not reply.has_content() and seen == []
    evaluate = Message(RecordDict({"arrays": as_record(initial())}), dst_node_id=1, message_type="evaluate")
    assert secure.client_mod(evaluate, None, call_next).has_content() and seen == [evaluate]


logging.getLogger("flwr").setLevel(logging.WARNING)


# --- without a simulation: the record layout, hello and the transport on a scripted grid -------------


class ScriptedGrid:
    """A grid whose nodes answer with ``answer(message) -> Message | None`` (None: no reply)."""

    def __init__(self, answer):
        self.answer = answer

    def get_node_ids(self):
        return [11, 12, 13]

    def send_and_receive(self, messages, *, timeout=None):
        return [reply for m in messages if (reply := self.answer(m)) is not None]

    # The push/pull interface securefl's server uses: replies wait in a table until pulled.
    def push_messages(self, messages):
        self.waiting = getattr(self, "waiting", {})
        ids = []
        for i, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{len(self.waiting)}-{i}"
            ids.append(message.metadata.message_id)
            if (reply := self.answer(message)) is not None:
                self.waiting[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.waiting.pop(i) for i in list(message_ids) if i in self.waiting]


def _hello_reply(message, name, signature=b""):
    from securefl.flower.records import hello_content

    reply = Message(hello_content(name, signature), reply_to=message)
    reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
    return reply


def test_hello_refuses_a_name_two_nodes_claim_and_names_that_are_not_party_ids(task_identity):
    from securefl.flower.server import hello

    names = {11: "alice", 12: "alice", 13: "bob", 14: "not a name!"}

    def answer(message):
        return _hello_reply(message, names[message.metadata.dst_node_id])

    assert hello(ScriptedGrid(answer), [11, 12, 13, 14], 1.0) == {"bob": 13}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(squatter=st.sampled_from([11, 12, 13]), how=st.sampled_from(["unsigned", "replayed", "other key"]))
def test_in_active_mode_a_node_claiming_anothers_name_is_refused_alone(task_identity, squatter, how):
    """Found by an attacker: a node answering the hello with another party's name had both refused
    (the honest one shut out of every round, or the run ended for too few parties). In active mode
    the hello is a challenge each party answers with its identity key: only the squatter goes."""
    from securefl.flower.identities import hello_signature
    from securefl.flower.server import hello

    keys = IdentityKeys.generate(["alice", "bob", "carol"])
    names = {11: "alice", 12: "bob", 13: "carol"}
    victim = names[11 if squatter != 11 else 12]
    earlier: dict[int, bytes] = {}

    def answer(message):
        node = message.metadata.dst_node_id
        own = names[node]
        if node != squatter:
            signature = hello_signature(keys, own, message)
            earlier[node] = signature
            return _hello_reply(message, own, signature)
        if how == "unsigned":
            return _hello_reply(message, victim)
        if how == "replayed":  # the victim's signature over another challenge
            return _hello_reply(message, victim, earlier.get(11 if victim == "alice" else 12, b"\0" * 64))
        return _hello_reply(message, victim, hello_signature(keys, names[squatter], message))

    nodes = hello(ScriptedGrid(answer), [11, 12, 13], 1.0, keys)
    assert nodes == {name: node for node, name in names.items() if node != squatter}


def test_the_transport_turns_error_replies_into_withdraws_and_drops_malformed_ones(task_identity):
    from flwr.app import Error

    from securefl.flower.records import envelope_of, reply_content
    from securefl.flower.server import FlowerTransport
    from securefl.wire import REQUEST, WITHDRAW, Envelope

    session = "ab" * 16

    def answer(message):
        node = message.metadata.dst_node_id
        if node == 11:
            return Message(Error(code=2, reason="secret training detail"), reply_to=message)
        if node == 12:
            return Message(
                RecordDict({"securefl": ConfigRecord({"envelope": "not bytes"})}), reply_to=message
            )
        return Message(reply_content(envelope_of(message)), reply_to=message)  # echo

    transport = FlowerTransport(ScriptedGrid(answer), setup="{}")
    requests = {
        str(n): Envelope(REQUEST, session, 3, "share", str(n), {"layer": b"x"}).encode() for n in (11, 12, 13)
    }
    replies = {r.sender: r.data for r in transport.exchange(requests, 1.0)}
    assert set(replies) == {"11", "13"}
    withdraw = Envelope.decode(replies["11"])
    assert withdraw.kind == WITHDRAW and (withdraw.round, withdraw.phase) == (3, "share")
    assert withdraw.parts["reason"] == b"Flower error reply (code 2: the ClientApp raised)"
    assert replies["13"] == requests["13"]
    (timing,) = transport.timings
    assert (timing.round, timing.phase, timing.replies, timing.errors) == (3, "share", 1, 2)


def test_the_server_pulls_at_its_own_interval_until_every_reply_is_in_or_the_phase_ends(task_identity):
    """Replies that come in over several pulls are all collected; the phase ends as soon as the last
    is in (not after the grid's own interval), or at the timeout with those that came."""
    from securefl.flower.server import send_and_collect

    class SlowGrid(ScriptedGrid):
        """Node 13's reply appears only at the third pull; node 12 never answers."""

        pulls = 0

        def pull_messages(self, message_ids):
            self.pulls += 1
            message_ids = list(message_ids)
            if self.pulls < 3:
                message_ids = [
                    i for i in message_ids if i in self.waiting and self.waiting[i].metadata.src_node_id != 13
                ]
            return super().pull_messages(message_ids)

    def answer(message):
        if message.metadata.dst_node_id == 12:
            return None
        reply = Message(RecordDict(), reply_to=message)
        reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
        return reply

    def messages():
        return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (11, 13)]

    grid = SlowGrid(answer)
    replies = send_and_collect(grid, messages(), timeout=5.0, interval=0.001)
    assert sorted(r.metadata.src_node_id for r in replies) == [11, 13] and grid.pulls == 3
    grid = SlowGrid(answer)
    with_silent = [*messages(), Message(RecordDict(), dst_node_id=12, message_type="train")]
    replies = send_and_collect(grid, with_silent, timeout=0.05, interval=0.001)
    assert sorted(r.metadata.src_node_id for r in replies) == [11, 13] and grid.pulls > 3


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf"), True, "0.1", 7200])
def test_a_pull_interval_that_is_not_a_sensible_number_of_seconds_is_refused(interval):
    with pytest.raises(ConfigError, match="pull_interval"):
        SecureFL(pull_interval=interval)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "{",
        '{"v": 1, "arrays": [["w", [4611686018427387904, 4], "<f4"]], "population": 3}',  # wraps int64
        '{"v": 1, "arrays": [["w", [8589934592, 2], "<f4"]], "population": 3}',  # 2^34 values
        '{"v": 1, "arrays": [["w", [' + ", ".join(["1"] * 40) + '], "<f4"]], "population": 3}',  # 40 dims
        '{"v": 2, "arrays": [["w", [2], "<f4"]], "population": 3}',
        '{"v": 1, "arrays": [["w", [2], "<i8"]], "population": 3}',
        '{"v": 1, "arrays": [["w", [2], "<f4"], ["w", [1], "<f4"]], "population": 3}',
        '{"v": 1, "arrays": [["w", [-1], "<f4"]], "population": 3}',
        '{"v": 1, "arrays": [["w", [2], "<f4"]], "population": 0}',
        '{"v": 1, "arrays": [], "population": 3}',
    ],
)
def test_a_malformed_setup_record_is_a_wire_error(text):
    from securefl.errors import WireError
    from securefl.flower.records import Setup

    with pytest.raises(WireError):
        Setup.decode(text)


def test_a_node_sent_another_session_or_run_and_back_keeps_its_party(task_identity, tmp_path, monkeypatch):
    """The mod keeps one party per (node, session) for the process's life: a server that sends a
    node another session and then the first again, or the same session in another Flower run,
    reaches the party that already started its rounds, never a fresh one that would run a finished
    round again (tests/test_secagg_restarts.py: the attack). With ``round_log``, a restarted
    ClientApp process refuses such a round too."""
    from flwr.supercore.task_identity import TaskIdentity

    from securefl.codec import ArraySpec
    from securefl.flower import client as flower_client
    from securefl.flower.records import Setup, request_content
    from securefl.roundinfo import RoundInfo
    from securefl.wire import REQUEST, Envelope, pack_array

    secure = SecureFL(
        privacy="secagg+", min_parties=3, weight_bound=WEIGHT_BOUND, round_log=tmp_path / "rounds"
    )
    setup = Setup(ArraySpec.of({"w": np.zeros(2, dtype=np.float32)}), 3).encode()
    first, detour = "ab" * 16, "cd" * 16

    def message(session, run_id=1):
        monkeypatch.setattr(TaskIdentity, "_run_id", run_id)
        model = pack_array(np.zeros(2, dtype=np.float32))  # a party is built for a round's first request
        request = Envelope(REQUEST, session, 0, "advertise", "n1", {"layer": b"", "model": model}).encode()
        return Message(request_content(request, setup), dst_node_id=1, message_type="train"), request

    hosted = [
        secure.client_mod._party(*message(s, run), "n1") for s, run in ((first, 1), (detour, 1), (first, 2))
    ]
    assert hosted[0] is hosted[2] and hosted[1] is not hosted[0]
    info = RoundInfo(0, ("n1", "n2", "n3"), 3, {})
    start = Envelope(
        REQUEST, first, 0, "advertise", "n1", {"model": b"", "round": info.encode(), "layer": b""}
    )
    hosted[0].node.round_log.claim(first, 0)  # round 0 of the first session was started
    monkeypatch.setattr(flower_client, "_PARTIES", OrderedDict())  # the ClientApp process restarts
    monkeypatch.setattr(flower_client, "_ROUND_LOGS", {})
    fresh = secure.client_mod._party(*message(first), "n1")
    reply = Envelope.decode(fresh.node.handle(start.encode()))
    assert reply.kind == "withdraw" and b"already took part in round 1" in reply.parts["reason"]


# --- found by the Flower attacker of 2026-12-01: sessions, setups and the agreed rounds ---------------


def _opening(session, parties=("1", "2", "3"), model=None, me="1"):
    """A secagg+ round's first request to party ``me`` of ``session``: the model, a valid advertise."""
    from securefl.roundinfo import RoundInfo
    from securefl.wire import REQUEST, Envelope, encode_record, pack_array

    model = pack_array(np.zeros(2, dtype=np.float32)) if model is None else model
    info = RoundInfo(0, parties, len(parties), {}).encode()
    layer = encode_record(b"SAAq", {}, {"graph_seed": os.urandom(32)})
    return Envelope(REQUEST, session, 0, "advertise", me, {"model": model, "round": info, "layer": layer})


def _send(secure, envelope, setup=None, node=1):
    """``envelope`` through the mod as Flower delivers it to ``node``; the reply envelope."""
    from securefl.codec import ArraySpec
    from securefl.flower.records import Setup, envelope_of, request_content
    from securefl.wire import Envelope

    setup = setup or Setup(ArraySpec.of({"w": np.zeros(2, dtype=np.float32)}), 3).encode()
    message = Message(request_content(envelope.encode(), setup), dst_node_id=node, message_type="train")
    return Envelope.decode(envelope_of(secure.client_mod(message, None, lambda m, c: m)))


@pytest.fixture
def fresh_process(monkeypatch, task_identity):
    """The mod's process-wide state, as a fresh ClientApp process has it."""
    from securefl.flower import client as flower_client

    monkeypatch.setattr(flower_client, "_PARTIES", OrderedDict())
    monkeypatch.setattr(flower_client, "_ROUND_LOGS", {})
    return flower_client


def test_a_party_takes_part_in_no_more_rounds_than_agreed_over_every_session(fresh_process):
    """Found by an attacker: each new session got a fresh party that trained and released again —
    300 one-round sessions averaged the DP noise off a party's update. With rounds=3 the party
    answers round 0 of three sessions and refuses every further session, in this process (and with
    round_log across restarts); the sessions the mod evicted cannot run their round again either."""
    secure = SecureFL(
        privacy="secagg+", min_parties=3, weight_bound=WEIGHT_BOUND, rounds=3, party_name=lambda ctx: "alice"
    )
    sessions = [f"{i:032x}" for i in range(1, 9)]
    parties = ("alice", "bob", "carol")
    # Each session reaches the party under another Flower node id, as each Flower run draws new ones
    # (found by a second attacker: counted under node ids, every run started the count again).
    replies = [
        _send(secure, _opening(session, parties, me="alice"), node=100 + i)
        for i, session in enumerate(sessions)
    ]
    assert [r.kind for r in replies[:3]] == ["reply"] * 3, [r.parts.get("reason") for r in replies]
    for refused in replies[3:]:
        assert refused.kind == "withdraw" and b"agree on 3" in refused.parts["reason"]
    hosted = [key for key in fresh_process._PARTIES if key[0] == 107]
    assert len(hosted) <= fresh_process._SESSIONS_KEPT  # an attacker's sessions held 1 GB each
    _send(secure, _opening(sessions[1], parties, me="alice"), node=100)
    _send(secure, _opening(sessions[2], parties, me="alice"), node=100)  # session 0's party evicted
    again = _send(secure, _opening(sessions[0], parties, me="alice"), node=100)
    assert again.kind == "withdraw" and b"already took part in round 1" in again.parts["reason"]


def test_a_dp_stack_needs_the_agreed_rounds_on_both_sides(fresh_process):
    with pytest.raises(ConfigError, match="rounds needs party_name"):
        SecureFL(privacy=DP_PRIVACY, rounds=2)
    secure = SecureFL(privacy=DP_PRIVACY, min_parties=3, weighting="uniform")
    refused = _send(secure, _opening("ab" * 16))
    assert refused.kind == "withdraw" and b"SecureFL(rounds=N, party_name" in refused.parts["reason"]
    with pytest.raises(ConfigError, match=r"rounds=N"):
        secure.run(ScriptedGrid(lambda m: None), as_record(initial()), 1, node_ids=[11, 12, 13])
    with pytest.raises(ConfigError, match="more than the 2 rounds"):
        SecureFL(privacy="secagg+", rounds=2, party_name=partition_name).run(
            ScriptedGrid(lambda m: None), as_record(initial()), 3, node_ids=[11, 12, 13]
        )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 2**63), min_size=1, max_size=40),
    carried=st.sampled_from(["none", "short", "other dtype"]),
)
def test_a_setup_the_request_does_not_pay_for_builds_no_party(fresh_process, shape, carried):
    """Found by an attacker: 200-byte requests declaring 2^26 values each made the ClientApp process
    allocate 2 GB per session, for ever (and [2^62, 4] wrapped to 0 values). A setup is checked as
    the network party checks a welcome's layout, and a party is built only for a request carrying
    the model that setup declares."""
    from securefl.codec import ArrayEntry, ArraySpec
    from securefl.flower.records import Setup
    from securefl.wire import pack_array

    spec = ArraySpec((ArrayEntry("w", tuple(shape), "<f4"),))
    setup = json_setup = Setup(spec, 3).encode()
    model = {"none": None, "short": pack_array(np.zeros(3, dtype=np.float32))}.get(carried)
    if carried == "other dtype":
        model = pack_array(np.zeros(2, dtype=np.float64))
    envelope = _opening("ef" * 16, model=model if model is not None else b"")
    if carried == "none":
        envelope.parts.pop("model")
    before = len(fresh_process._PARTIES)
    reply = _send(SecureFL(privacy="secagg+", weight_bound=WEIGHT_BOUND), envelope, json_setup)
    assert reply.kind == "withdraw" and len(fresh_process._PARTIES) == before, setup[:200]


def test_a_sealed_model_builds_a_party_only_where_parties_fuse_and_only_at_its_full_size(fresh_process):
    """Found by a second attacker: a 1-byte-a-value "sealed model" built a secagg party (whose stack
    never opens one) holding 33 times the bytes sent. A sealed model is taken only by a stack whose
    parties fuse the sum, and only at 8 bytes a value (the float64 record it seals)."""
    from securefl.roundinfo import RoundInfo
    from securefl.wire import REQUEST, Envelope

    info = RoundInfo(0, ("1", "2", "3"), 3, {}).encode()
    for privacy, size in (("secagg+", 8 * 2), ("paillier", 2 * 8 - 1)):
        sealed = Envelope(REQUEST, "ab" * 16, 0, "encrypt", "1", {"sealed_model": bytes(size), "round": info})
        refused = _send(SecureFL(privacy=privacy, weight_bound=WEIGHT_BOUND), sealed)
        assert refused.kind == "withdraw" and b"carries the model the setup" in refused.parts["reason"]
    assert not fresh_process._PARTIES


@pytest.mark.parametrize("size", [0, 31, 33, 70_000])
def test_a_hello_with_a_challenge_of_another_size_is_refused_not_raised(task_identity, size):
    """Found by a second attacker: a 70,000-byte challenge made the mod raise (OverflowError)."""
    from securefl.flower.records import hello_content

    keys = IdentityKeys.generate(["alice"])
    secure = SecureFL(privacy=[{"layer": "secagg+", "identities": keys}], party_name=lambda ctx: "alice")
    hello = Message(hello_content(challenge=bytes(size)), dst_node_id=1, message_type="train")
    reply = secure.client_mod(hello, None, lambda m, c: m)
    assert reply.has_error() and "challenge" in reply.error.reason


@pytest.mark.parametrize("release", ["0.1.0", "9.9.9", None])
def test_a_party_of_another_release_withdraws_saying_so(fresh_process, monkeypatch, release):
    """Releases change protocols (0.2.0 moved SecAgg's Shamir coordinates): a server of another
    release, or one that names none, is refused at the setup, before any round, with the fix."""
    import json

    from securefl.codec import ArraySpec
    from securefl.flower.records import Setup

    setup = json.loads(Setup(ArraySpec.of({"w": np.zeros(2, dtype=np.float32)}), 3).encode())
    if release is None:
        setup["v"] = 1
        del setup["securefl"]
    else:
        setup["securefl"] = release
    reply = _send(
        SecureFL(privacy="secagg+", weight_bound=WEIGHT_BOUND), _opening("ef" * 16), json.dumps(setup)
    )
    assert reply.kind == "withdraw" and b"same release" in reply.parts["reason"], reply.parts
    assert not fresh_process._PARTIES
