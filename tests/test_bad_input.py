"""Every bad input of issue 2: precise error, the bad party dropped, the round goes on."""

import numpy as np
import pytest
from conftest import fixed_delta_client, weighted_mean
from phase_layers import CommitOpen, SharedKeySum
from test_malicious_party import parse_record

import securefl
from securefl.errors import ProtocolError
from securefl.faults import Faults
from securefl.layers import SecAgg
from securefl.party import REFUSED_SUM, PartyNode
from securefl.roundinfo import RoundInfo
from securefl.wire import REPLY, Envelope, encode_record, pack_array, unpack_array

DIM = 4


def _with_layer(reply: bytes, layer: bytes) -> bytes:
    """The same reply envelope with another layer payload (what a party could send instead)."""
    envelope = Envelope.decode(reply)
    return Envelope(
        REPLY, envelope.session, envelope.round, envelope.phase, envelope.party, {"layer": layer}
    ).encode()


def setup(faults=None, privacy=None, clients_override=None, min_parties=1, **kw):
    deltas = {f"p{i}": np.full(DIM, float(i + 1)) for i in range(4)}
    examples = {p: 10 * (i + 1) for i, p in enumerate(deltas)}
    clients = {p: fixed_delta_client(deltas[p], examples[p]) for p in deltas}
    clients.update(clients_override or {})
    fed = securefl.Federation(
        {"w": np.zeros(DIM)}, clients, privacy or CommitOpen(), faults=faults, min_parties=min_parties, **kw
    )
    return fed, deltas, examples


def assert_dropped(fed, deltas, examples, report, party, *fragments, local=()):
    """``fragments`` must be in the aggregator's reason; ``local`` in the party's own last error."""
    assert report.ok, report.error
    assert party in report.dropouts, report.dropouts
    for fragment in fragments:
        assert fragment in report.dropouts[party], report.dropouts[party]
    for fragment in local:
        assert fragment in fed.nodes[party].last_error, fed.nodes[party].last_error
    survivors = sorted(set(deltas) - {party})
    assert report.survivors == survivors
    np.testing.assert_allclose(fed.global_weights["w"], weighted_mean(deltas, examples, survivors), rtol=1e-9)


@pytest.mark.parametrize("phase", ["commit", "open"])
@pytest.mark.parametrize("action", ["offline", "lose_reply"])
def test_dropout_in_every_phase(phase, action):
    fed, deltas, examples = setup(Faults().add(action, "p1", phase=phase))
    report = fed.run_round()
    assert_dropped(fed, deltas, examples, report, "p1", f"{phase}: no reply before the deadline")


def test_reply_after_deadline_is_a_dropout():
    fed, deltas, examples = setup(Faults().add("delay", "p2", phase="open", seconds=5.0), phase_timeout=1.0)
    report = fed.run_round()
    assert_dropped(fed, deltas, examples, report, "p2", "open: no reply before the deadline")


def test_truncated_reply():
    fed, deltas, examples = setup(Faults().add("truncate", "p0", phase="open"))
    assert_dropped(fed, deltas, examples, fed.run_round(), "p0", "open:", "truncated")


def test_tampered_payload_caught_by_the_layer():
    fed, deltas, examples = setup(Faults().add("flip", "p3", phase="open"))
    assert_dropped(fed, deltas, examples, fed.run_round(), "p3", "does not match its commitment")


def test_party_answering_twice():
    fed, deltas, examples = setup(Faults().add("duplicate", "p1", phase="commit"))
    assert_dropped(fed, deltas, examples, fed.run_round(), "p1", "answered phase 'commit' twice")


def test_message_from_another_round_is_a_replay():
    captured = {}

    def replay(party, request, deliver):
        reply = deliver(request)
        envelope = Envelope.decode(request)
        if party == "p2" and envelope.phase == "commit":
            if envelope.round == 0:
                captured["old"] = reply
            else:
                return [(captured["old"], 0.0)]
        return [(reply, 0.0)]

    fed, deltas, examples = setup(replay)
    fed.run_round()
    before = fed.global_vector
    report = fed.run_round()
    assert "p2" in report.dropouts
    assert "message is for round 1, the current round is 2 (replay?)" in report.dropouts["p2"]
    survivors = ["p0", "p1", "p3"]
    np.testing.assert_allclose(
        fed.global_vector - before, weighted_mean(deltas, examples, survivors), rtol=1e-9
    )


def test_party_using_another_partys_identity():
    def impersonate(party, request, deliver):
        reply = deliver(request)
        if party == "p1":
            envelope = Envelope.decode(reply)
            forged = Envelope(
                envelope.kind, envelope.session, envelope.round, envelope.phase, "p0", envelope.parts
            )
            return [(forged.encode(), 0.0)]
        return [(reply, 0.0)]

    fed, deltas, examples = setup(impersonate)
    assert_dropped(
        fed, deltas, examples, fed.run_round(), "p1", "claims to be from/for 'p0' but is routed as 'p1'"
    )


def test_oversized_message_is_refused():
    def bloat(reply: bytes) -> bytes:
        envelope = Envelope.decode(reply)
        parts = {"layer": envelope.parts["layer"] + b"\0" * 100_000}
        return Envelope(
            envelope.kind, envelope.session, envelope.round, envelope.phase, envelope.party, parts
        ).encode()

    fed, deltas, examples = setup(Faults().add("replace", "p0", phase="open", replace=bloat))
    assert_dropped(fed, deltas, examples, fed.run_round(), "p0", "exceeds the limit")


def test_nan_update_makes_the_party_withdraw():
    bad = fixed_delta_client(np.array([0.0, np.nan, 0.0, 0.0]), 5)
    fed, deltas, examples = setup(clients_override={"p2": bad})
    assert_dropped(
        fed,
        deltas,
        examples,
        fed.run_round(),
        "p2",
        "withdrew: UpdateError on the party",
        local=["non-finite", "coordinate 1"],
    )


def test_infinite_metric_makes_the_party_withdraw():
    bad = fixed_delta_client(np.zeros(DIM), 5, {"loss": float("inf")})
    fed, deltas, examples = setup(clients_override={"p2": bad}, train_metrics=["loss"])
    # the other parties do not report loss either: give them one
    for p in ("p0", "p1", "p3"):
        fed.nodes[p].client = fixed_delta_client(deltas[p], examples[p], {"loss": 1.0})
    assert_dropped(
        fed, deltas, examples, fed.run_round(), "p2", "UpdateError", local=["metric 'loss' is inf"]
    )


def test_wrong_shape_from_the_training_loop():
    def train(weights, info):
        return {"w": np.zeros(DIM + 1)}, 3, {}

    fed, deltas, examples = setup(clients_override={"p3": securefl.Client(train)})
    assert_dropped(
        fed,
        deltas,
        examples,
        fed.run_round(),
        "p3",
        "UpdateError",
        local=["'w' has shape (5,), the model expects (4,)"],
    )


def test_training_loop_that_raises():
    def train(weights, info):
        raise RuntimeError("GPU on fire")

    fed, deltas, examples = setup(clients_override={"p0": securefl.Client(train)})
    report = fed.run_round()
    assert_dropped(
        fed, deltas, examples, report, "p0", "RuntimeError on the party", local=["RuntimeError: GPU on fire"]
    )
    assert "GPU on fire" not in report.dropouts["p0"]


def test_training_loop_returning_garbage():
    fed, deltas, examples = setup(clients_override={"p0": securefl.Client(lambda w, i: "weights")})
    assert_dropped(
        fed, deltas, examples, fed.run_round(), "p0", "UpdateError", local=["train must return TrainResult"]
    )


def test_party_handler_crash_is_a_dropout():
    fed, deltas, examples = setup()

    def crash(data):
        raise MemoryError("out of memory")

    fed.transport.handlers["p1"] = crash
    assert_dropped(fed, deltas, examples, fed.run_round(), "p1", "no reply before the deadline")


def test_nan_smuggled_in_a_valid_float_payload_is_caught_by_the_aggregator():
    def poison(reply: bytes) -> bytes:
        envelope = Envelope.decode(reply)
        vector = np.full(DIM + 2, np.nan, dtype="<f4")  # update, weight, eval count
        parts = {"layer": pack_array(vector)}
        return Envelope(
            REPLY, envelope.session, envelope.round, envelope.phase, envelope.party, parts
        ).encode()

    fed, deltas, examples = setup(Faults().add("replace", "p2", replace=poison), privacy="plain")
    assert_dropped(fed, deltas, examples, fed.run_round(), "p2", "input from 'p2' has", "non-finite")


def test_wrong_dtype_payload_is_refused():
    def widen(reply: bytes) -> bytes:
        envelope = Envelope.decode(reply)
        parts = {"layer": pack_array(np.zeros(DIM + 2, dtype="<f8"))}
        return Envelope(
            REPLY, envelope.session, envelope.round, envelope.phase, envelope.party, parts
        ).encode()

    fed, deltas, examples = setup(Faults().add("replace", "p2", replace=widen), privacy="plain")
    assert_dropped(fed, deltas, examples, fed.run_round(), "p2", "array has dtype <f8, expected <f4")


def test_value_outside_quantize_bound_makes_the_party_withdraw():
    fed, deltas, examples = setup(
        clients_override={"p1": fixed_delta_client(np.full(DIM, 2.0), 20, {"loss": 11.0})},
        privacy=[securefl.Clip(100.0), securefl.Quantize(24), securefl.Plain()],
        train_metrics=["loss"],
        metric_bounds={"loss": 5.0},
        weight_bound=40,
    )
    for p in ("p0", "p2", "p3"):
        fed.nodes[p].client = fixed_delta_client(deltas[p], examples[p], {"loss": 1.0})
    report = fed.run_round()
    # the bound applies to weight * loss: 20 * 11 = 220 > 40 * 5. The party knows; the aggregator
    # learns only that p1 withdrew, never the offending value.
    assert (
        "training metrics coordinate 5 is 220, outside the quantize bound ±200" in fed.nodes["p1"].last_error
    )
    assert "UpdateError on the party" in report.dropouts["p1"] and "220" not in report.dropouts["p1"]
    np.testing.assert_allclose(
        fed.global_weights["w"], weighted_mean(deltas, examples, ["p0", "p2", "p3"]), atol=1e-5
    )


def test_below_minimum_the_round_fails_and_the_model_is_unchanged():
    fed, deltas, examples = setup(
        Faults().add("offline", "p0", phase="open", round=0).add("offline", "p1", phase="open", round=0),
        min_parties=3,
    )
    report = fed.run_round()
    assert not report.ok
    assert "only 2 of 4 parties left after open; at least 3 are needed" in report.error
    np.testing.assert_array_equal(fed.global_weights["w"], np.zeros(DIM))
    # the next round, with everyone back, works
    assert fed.run_round().ok
    np.testing.assert_allclose(fed.global_weights["w"], weighted_mean(deltas, examples, deltas), rtol=1e-9)


def test_party_refuses_to_restart_a_round_and_requests_for_others():
    fed, *_ = setup()
    requests = {}

    def spy(party, request, deliver):
        requests.setdefault(party, request)
        return [(deliver(request), 0.0)]

    fed.transport.faults = spy
    fed.run_round()
    node: PartyNode = fed.nodes["p0"]
    replay = Envelope.decode(node.handle(requests["p0"]))
    assert replay.kind == "withdraw" and b"replay refused" in replay.parts["reason"]
    misrouted = Envelope.decode(node.handle(requests["p1"]))
    assert misrouted.kind == "withdraw" and b"not addressed to this party" in misrouted.parts["reason"]
    garbage = Envelope.decode(node.handle(b"\x00garbage"))
    assert garbage.kind == "withdraw" and b"rejected a request" in garbage.parts["reason"]


def test_layer_bug_on_a_crafted_payload_drops_only_that_party():
    class Fragile(CommitOpen):
        def aggregator(self):
            agg = super().aggregator()
            original = agg.receive

            def receive(phase, party, payload):
                if payload == b"\xff" * 32:
                    raise IndexError("parser bug")
                return original(phase, party, payload)

            agg.receive = receive
            return agg

    fed, deltas, examples = setup(
        Faults().add("replace", "p1", phase="commit", replace=lambda r: _with_layer(r, b"\xff" * 32)),
        privacy=Fragile(),
    )
    assert_dropped(fed, deltas, examples, fed.run_round(), "p1", "IndexError: parser bug")


def _with_layer(reply: bytes, payload: bytes) -> bytes:
    e = Envelope.decode(reply)
    return Envelope(e.kind, e.session, e.round, e.phase, e.party, {"layer": payload}).encode()


# --- issue 13: nothing one party sends ends the round for the others, nor the process ------------


class _Broken(CommitOpen):
    """A layer with a bug at one place (``where``), triggered by one party's crafted payload."""

    def __init__(self, where, exc, culprit=None):
        self.where, self.exc, self.culprit = where, exc, culprit

    def aggregator(self):
        agg = super().aggregator()
        where, exc, culprit = self.where, self.exc, self.culprit
        originals = {name: getattr(agg, name) for name in ("request", "close_phase", "result", "culprits")}

        def close_phase(phase, survivors):
            if where == "close_phase" and phase == "open":
                raise exc
            return originals["close_phase"](phase, survivors)

        def request(phase, party):
            if where == "request" and phase == "open" and party == "p2":
                raise exc
            return originals["request"](phase, party)

        def result():
            if where == "result":
                raise exc
            return originals["result"]()

        def culprits():
            closed = agg.closed[-1][0] if agg.closed else ""
            return (
                {culprit: "sent a share that is not a field element"}
                if culprit and closed == "commit"
                else {}
            )

        agg.close_phase, agg.request, agg.result, agg.culprits = close_phase, request, result, culprits
        return agg


@pytest.mark.parametrize(
    ("where", "exc"),
    [
        ("close_phase", ProtocolError("a share is not a field element")),
        ("close_phase", IndexError("parser bug")),
        ("request", KeyError("p2")),
        ("result", ZeroDivisionError("division by zero")),
    ],
)
def test_a_layer_exception_outside_receive_fails_the_round_cleanly(where, exc):
    fed, *_ = setup(privacy=_Broken(where, exc))
    report = fed.run_round()  # never raises
    assert report.status == "failed" and not report.survivors
    assert f"{type(exc).__name__}: {exc}" in report.error and "global model is unchanged" in report.error
    np.testing.assert_array_equal(fed.global_weights["w"], np.zeros(DIM))
    fed.aggregator.secure_sum = CommitOpen().aggregator()  # the bug is fixed: the next round works
    assert fed.run_round().ok


def test_a_failed_round_names_the_party_the_layer_blames():
    fed, *_ = setup(privacy=_Broken("close_phase", ProtocolError("a share is not a field element"), "p3"))
    report = fed.run_round()
    assert not report.ok and "p3" in report.dropouts
    assert "the layer found misbehaving: p3: commit: sent a share that is not a field element" in report.error


def test_strategy_failure_leaves_model_and_optimizer_state_unchanged():
    class Exploding(securefl.FedAdam):
        def step(self, weights, mean_delta):
            super().step(weights, mean_delta)  # moves the moments, then fails
            return weights * np.nan

    fed, *_ = setup(strategy=Exploding())
    report = fed.run_round()
    assert not report.ok and "fused model" in report.error
    assert fed.aggregator.strategy.m is None and fed.aggregator.strategy.v is None
    np.testing.assert_array_equal(fed.global_weights["w"], np.zeros(DIM))


def test_an_impossible_input_to_plain_drops_its_sender_and_the_round_goes_on():
    """A party that sends an integer vector outside the quantize range: plain sees each input, so
    it names and drops that party before summing (secure layers can only refuse the sum)."""

    def forge(reply: bytes) -> bytes:
        return _with_layer(reply, pack_array(np.full(DIM + 2, 2**62, dtype="<u8")))

    fed, deltas, examples = setup(
        Faults().add("replace", "p2", replace=forge),
        privacy=[securefl.Clip(100.0), securefl.Quantize(24), securefl.Plain()],
        weight_bound=40,
    )
    report = fed.run_round()
    assert report.ok and set(report.dropouts) == {"p2"}, report
    assert "cannot come from an honest party" in report.dropouts["p2"]
    assert "outside ±1 × 4000" in report.dropouts["p2"]
    expected = weighted_mean(deltas, examples, ["p0", "p1", "p3"])
    np.testing.assert_allclose(fed.global_weights["w"], expected, atol=1e-3)


def test_secagg_unmask_reply_with_shares_outside_the_field_does_not_end_the_round():
    """Issue 13, defect 3: such a reply used to raise ProtocolError out of run_round."""

    def outside_the_field(reply: bytes) -> bytes:
        e = Envelope.decode(reply)
        magic, header, parts = parse_record(e.parts["layer"])  # whatever the header holds
        assert magic == b"SAUr" and len(parts["shares"]) >= 66
        layer = encode_record(magic, header, {**parts, "shares": b"\xff" * len(parts["shares"])})
        return Envelope(e.kind, e.session, e.round, e.phase, e.party, {"layer": layer}).encode()

    deltas = {f"p{i}": np.full(DIM, float(i + 1)) for i in range(5)}
    clients = {p: fixed_delta_client(deltas[p], 1) for p in deltas}
    fed = securefl.Federation(
        {"w": np.zeros(DIM)},
        clients,
        [securefl.Clip(100.0), securefl.Quantize(24), SecAgg()],
        weight_bound=1,
        faults=Faults().add("replace", "p1", phase="unmask", replace=outside_the_field),
    )
    report = fed.run_round()  # returns, whatever happens
    honest = set(deltas) - {"p1"}
    assert not honest & set(report.dropouts), report.dropouts
    if report.ok:
        assert "p1" in report.dropouts and "no reply" not in report.dropouts["p1"], report.dropouts
        np.testing.assert_allclose(
            fed.global_weights["w"], np.mean([deltas[p] for p in deltas], axis=0), atol=1e-4
        )
    else:
        assert "p1" in report.error or "p1" in report.dropouts


class _Garbled(CommitOpen):
    def party(self, party_id):
        party = super().party(party_id)

        def respond(phase, request):
            raise RecursionError("maximum recursion depth exceeded")

        party.respond = respond
        return party


def test_party_answers_any_request_with_a_withdraw_never_an_exception():
    fed, *_ = setup(privacy=_Garbled())
    node: PartyNode = fed.nodes["p0"]
    requests = {}

    def spy(party, request, deliver):
        requests.setdefault(party, request)
        return [(deliver(request), 0.0)]

    fed.transport.faults = spy
    report = fed.run_round()
    assert not report.ok and "RecursionError on the party" in report.dropouts["p0"]
    original = Envelope.decode(requests["p0"])
    for parts in ({}, {"layer": b"\xff" * 100}, {"model": b"", "round": b"junk"}, {"model": b"\x00" * 3}):
        for phase in ("commit", "open", "other"):
            request = Envelope("request", original.session, original.round + 1, phase, "p0", parts).encode()
            reply = Envelope.decode(node.handle(request))
            assert reply.kind == "withdraw"
    for data in (b"", b"\x00" * 10, requests["p0"][:-1], requests["p0"] + b"\x00"):
        assert Envelope.decode(node.handle(data)).kind == "withdraw"


def test_a_party_that_refuses_the_sum_revealed_to_it_fails_the_round_without_being_blamed():
    """A layer that fuses on the parties: the decrypting parties check the sum they see. An impossible
    one (here: p2 pads a forged in-range vector) is refused, the round fails naming the refusal, and
    the honest refusers are not dropouts."""

    def forge(reply: bytes) -> bytes:
        words = unpack_array(Envelope.decode(reply).parts["layer"], "<u8").copy()
        words[0] += np.uint64(2**40)
        return _with_layer(reply, pack_array(words))

    fed, *_ = setup(
        Faults().add("replace", "p2", phase="input", replace=forge),
        privacy=[securefl.Clip(100.0), securefl.Quantize(24), SharedKeySum()],
        weight_bound=40,
    )
    report = fed.run_round()
    assert not report.ok
    assert (
        "refused the revealed sum: ImpossibleSum: the revealed sum cannot come from 4 honest parties"
        in report.error
    )
    assert not report.dropouts, report.dropouts
    assert "cannot come from 4 honest parties: update coordinate 0" in fed.nodes["p0"].last_error


def test_a_false_refusal_only_drops_its_sender_when_the_round_goes_on():
    def refuse(reply: bytes) -> bytes:
        e = Envelope.decode(reply)
        parts = {"reason": b"I refuse", REFUSED_SUM: b""}
        return Envelope("withdraw", e.session, e.round, e.phase, e.party, parts).encode()

    # in the first phase a refusal is an ordinary withdrawal
    fed, deltas, examples = setup(Faults().add("replace", "p1", phase="commit", replace=refuse))
    assert_dropped(fed, deltas, examples, fed.run_round(), "p1", "commit: withdrew: I refuse")
    # in the last phase, where sums are revealed, the round goes on without it: an ordinary dropout too
    fed, *_ = setup(
        Faults().add("replace", "p1", phase="open", replace=refuse),
        privacy=[securefl.Clip(100.0), securefl.Quantize(24), SharedKeySum()],
        weight_bound=40,
    )
    report = fed.run_round()
    assert report.ok and report.dropouts == {"p1": "open: withdrew: I refuse"}


def test_a_party_keeps_its_own_min_parties_whatever_the_round_info_says():
    """A lying aggregator claims min_parties = 1 and selects two parties: a party configured for
    rounds of at least three refuses (so it never contributes to a sum too small to hide it)."""
    three = {f"p{i}": fixed_delta_client(np.ones(2), 1) for i in range(3)}
    fed = securefl.Federation({"w": np.zeros(2)}, three, "plain", min_parties=3)

    def shrink(request):
        env = Envelope.decode(request)
        info = RoundInfo.decode(env.parts["round"])
        small = RoundInfo(info.round, ("p0", "p1"), 1, info.config).encode()
        return Envelope(
            env.kind, env.session, env.round, env.phase, env.party, {**env.parts, "round": small}
        ).encode()

    fed.transport.faults = Faults().add("tamper_request", "p0", replace=shrink)
    report = fed.run_round()
    assert "p0" in report.dropouts and "at least 3" in report.dropouts["p0"], report.dropouts


def test_party_supplied_text_reaches_the_aggregator_log_as_one_line(caplog):
    """A withdraw reason carrying a newline and a forged log line is logged escaped, on one line."""
    forged = "x\nINFO securefl.aggregator: round 99 ok \x1b[31m"

    def withdraw(reply):
        env = Envelope.decode(reply)
        return Envelope(
            "withdraw", env.session, env.round, env.phase, env.party, {"reason": forged.encode()}
        ).encode()

    fed, *_ = setup(Faults().add("replace", "p1", replace=withdraw))
    with caplog.at_level("INFO", logger="securefl.aggregator"):
        fed.run_round()
    lines = [r.getMessage() for r in caplog.records if "dropping p1" in r.getMessage()]
    assert lines and all("\n" not in line and "\x1b" not in line for line in lines), lines


# --- found by an independent attacker of the core (one bad party costs only itself) -------------


def _vector_reply(change):
    """A Faults `replace` that edits the float vector inside a plain reply."""

    def replace(reply):
        vector = unpack_array(Envelope.decode(reply).parts["layer"]).copy()
        change(vector)
        return _with_layer(reply, pack_array(vector))

    return replace


def test_a_finite_float32_overflow_cannot_poison_later_rounds():
    """p2 sends 3e38 with a weight that almost cancels the others': once the model was 1.6e44
    (finite in float64), it overflowed to inf on the float32 wire and every honest party withdrew
    in every later round. Now p2's input is refused on arrival (weight below any honest one)."""
    clients = {f"p{i}": fixed_delta_client(np.full(DIM, 0.1), 10) for i in range(3)}

    def poison(vector):
        vector[:DIM] = 3e38
        vector[DIM] = -20 + 2**-19

    fed = securefl.Federation(
        {"w": np.zeros(DIM, dtype=np.float32)},
        clients,
        "plain",
        faults=Faults().add("replace", "p2", round=0, replace=_vector_reply(poison)),
    )
    first = fed.run_round()
    assert first.ok and set(first.dropouts) == {"p2"}, first
    for _ in range(2):
        report = fed.run_round()
        assert report.ok and not report.dropouts, report
    np.testing.assert_allclose(fed.global_weights["w"], np.full(DIM, 0.3), rtol=1e-6)


def test_an_unclipped_update_is_refused_before_it_reaches_the_optimizer():
    """p2 sends −3e38 once: FedAdam's second moment used to become ~1e72 and drag the model for
    rounds. With clip in the stack, plain refuses an input beyond norm × weight on arrival."""
    clients = {f"p{i}": fixed_delta_client(np.full(DIM, 0.1), 1) for i in range(3)}

    def unclipped(vector):
        vector[:DIM] = -3e38

    fed = securefl.Federation(
        {"w": np.zeros(DIM)},
        clients,
        [securefl.Clip(1.0), securefl.Plain()],
        strategy=securefl.FedAdam(lr=0.1),
        faults=Faults().add("replace", "p2", round=0, replace=_vector_reply(unclipped)),
    )
    report = fed.run_round()
    assert report.ok and set(report.dropouts) == {"p2"}
    assert "clip norm" in report.dropouts["p2"]
    for _ in range(3):
        assert fed.run_round().ok
    assert (fed.global_weights["w"] > 0).all()  # the honest parties all push it up


def test_a_party_refuses_a_global_model_holding_nan():
    """A dishonest aggregator puts NaN in the clear global model: the party does not train on it."""

    def nan_model(request):
        env = Envelope.decode(request)
        if "model" not in env.parts:
            return request
        parts = {**env.parts, "model": pack_array(np.full(DIM, np.nan))}
        return Envelope(env.kind, env.session, env.round, env.phase, env.party, parts).encode()

    trained = []
    clients = {f"p{i}": fixed_delta_client(np.ones(DIM), 1) for i in range(3)}
    clients["p0"] = securefl.Client(train=lambda w, info: trained.append(w) or ({"w": w["w"]}, 1))
    fed = securefl.Federation(
        {"w": np.zeros(DIM)}, clients, "plain", faults=Faults().add("tamper_request", "p0", replace=nan_model)
    )
    report = fed.run_round()
    assert "p0" in report.dropouts and "NaN or infinite" in report.dropouts["p0"] and not trained


def test_a_half_precision_model_is_refused_at_set_up():
    with pytest.raises(ValueError, match="float32 or float64"):
        securefl.Federation(
            {"w": np.zeros(DIM, dtype=np.float16)}, {"p0": fixed_delta_client(np.ones(DIM), 1)}, "plain"
        )


def test_the_fused_result_must_be_what_honest_parties_can_send():
    """unpack_sum with a contributor count: total weight at least contributors × the least honest
    weight, an evaluation count of 0 or at least that, finite everything."""
    from securefl.codec import HonestBounds, VectorLayout
    from securefl.errors import UpdateError

    layout = VectorLayout(2, ("loss",), ("acc",))
    ok = np.zeros(layout.size)
    ok[layout.weight_index] = 3.0
    layout.unpack_sum(ok, 3)
    for index, value, message in [
        (layout.weight_index, 2.0, "outside 3 × \\[1, inf\\]"),
        (layout.eval_count_index, 0.5, "evaluation count"),
        (0, np.inf, "non-finite"),
    ]:
        bad = ok.copy()
        bad[index] = value
        with pytest.raises(UpdateError, match=message):
            layout.unpack_sum(bad, 3)
    tiny = ok.copy()
    tiny[layout.eval_count_index] = 1e-6
    tiny[layout.eval_metrics_slice] = 1.0
    with pytest.raises(UpdateError, match="evaluation count"):
        layout.unpack_sum(tiny, 3)  # exact sums: no honest party counts 1e-6
    # within fixed-point rounding (three steps of 1e-5): nobody evaluated, no metric amplified
    assert layout.unpack_sum(tiny, 3, resolution=1e-5).eval_metrics == {}
    # the upper bounds and metric bounds of what honest parties send
    honest = HonestBounds.of("uniform", 10.0, {"loss": 2.0})
    for index, value, message in [
        (layout.weight_index, 4.0, "outside 3 × \\[1, 1\\]"),
        (layout.train_metrics_slice.start, 3 * 2.5, "'loss' lies beyond its declared bound"),
    ]:
        bad = ok.copy()
        bad[index] = value
        with pytest.raises(UpdateError, match=message):
            layout.unpack_sum(bad, 3, honest)


@pytest.mark.parametrize("secure", [False, True])
def test_fixed_point_rounding_never_refuses_honest_weights(secure):
    """Found by an independent attacker of an earlier draft: with Quantize(16) and weight_bound 300
    one step of the weight is 0.009, so stochastic rounding took honest sums below a 0.1% slack
    and refused 7 rounds in 10. The checks allow one step per contributor."""
    clients = {f"p{i}": fixed_delta_client(np.full(DIM, 0.01 * (i + 1)), 7) for i in range(4)}
    layer = SecAgg() if secure else securefl.Plain()
    fed = securefl.Federation(
        {"w": np.zeros(DIM)},
        clients,
        [securefl.Clip(1.0), securefl.Quantize(16), layer],
        weighting="uniform",
        weight_bound=300,
    )
    for _ in range(10):
        report = fed.run_round()
        assert report.ok and not report.dropouts, report


def test_a_weight_no_honest_party_has_is_refused_in_and_out_of_a_secure_sum():
    """Plain (uniform weighting: every honest weight is 1) drops a party claiming 1e9; under secagg a
    negative weight hidden in the sum makes its update too long for its weight: refused."""

    def huge(vector):
        vector[DIM] = 1e9
        vector[:DIM] = -0.5e9

    fed = securefl.Federation(
        {"w": np.zeros(DIM)},
        {f"p{i}": fixed_delta_client(np.full(DIM, 0.1), 1) for i in range(4)},
        [securefl.Clip(1.0), securefl.Plain()],
        weighting="uniform",
        faults=Faults().add("replace", "p3", replace=_vector_reply(huge)),
    )
    report = fed.run_round()
    assert report.ok and set(report.dropouts) == {"p3"} and "outside 1 × [1, 1]" in report.dropouts["p3"]

    fed = securefl.Federation(
        {"w": np.zeros(DIM)},
        {f"p{i}": fixed_delta_client(np.full(DIM, 0.45), 35) for i in range(4)},
        [securefl.Clip(1.0), securefl.Quantize(24), SecAgg()],
        weight_bound=100,
    )
    bad = fed.nodes["p3"]
    honest_update = bad._local_update

    def negative_weight(global_vector, info):
        vector = honest_update(global_vector, info)
        vector[fed.layout.weight_index] = -100.0
        return vector

    bad._local_update = negative_weight
    report = fed.run_round()
    assert not report.ok and "L2 norm beyond clip norm" in report.error, report
