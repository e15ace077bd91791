import numpy as np
import pytest
from conftest import fixed_delta_client, weighted_mean
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phase_layers import CommitOpen

import securefl
from securefl.errors import ConfigError
from securefl.faults import Faults
from securefl.randomness import SecureRandom
from securefl.selection import FixedCount, Poisson
from securefl.transcript import Transcript


def test_fedavg_by_hand(three_parties):
    model, clients, _deltas, _examples = three_parties
    fed = securefl.Federation(model, clients, "plain", train_metrics=["loss"])
    report = fed.run_round()
    assert report.ok and report.survivors == ["p0", "p1", "p2"]
    # (10*1 + 20*2 + 30*3) / 60 = 140/60
    np.testing.assert_allclose(fed.global_weights["w"], np.full(4, 140 / 60), rtol=1e-6)
    assert report.total_weight == 60
    assert report.train_metrics["loss"] == pytest.approx((10 * 0.1 + 20 * 0.2 + 30 * 0.3) / 60)
    fed.run_round()
    np.testing.assert_allclose(fed.global_weights["w"], np.full(4, 280 / 60), rtol=1e-6)


def test_uniform_weighting(three_parties):
    model, clients, *_ = three_parties
    fed = securefl.Federation(model, clients, "plain", train_metrics=["loss"], weighting="uniform")
    fed.run_round()
    np.testing.assert_allclose(fed.global_weights["w"], np.full(4, 2.0), rtol=1e-6)


def test_federated_evaluation_fused_by_count():
    clients = {
        "a": fixed_delta_client(np.zeros(2), 10, eval_metrics={"accuracy": 1.0}),
        "b": fixed_delta_client(np.zeros(2), 30, eval_metrics={"accuracy": 0.5}),
    }
    fed = securefl.Federation({"w": np.zeros(2)}, clients, "plain", eval_metrics=["accuracy"])
    report = fed.run_round()
    assert report.eval_count == 40
    assert report.eval_metrics["accuracy"] == pytest.approx((10 * 1.0 + 30 * 0.5) / 40)


def test_quantized_path_matches_float_path(three_parties):
    model, clients, deltas, examples = three_parties
    fed = securefl.Federation(
        model,
        clients,
        [securefl.Clip(10.0), securefl.Quantize(bits=32), securefl.Plain()],
        train_metrics=["loss"],
        metric_bounds={"loss": 1.0},
        weight_bound=30,
    )
    report = fed.run_round()
    assert report.ok
    np.testing.assert_allclose(fed.global_weights["w"], weighted_mean(deltas, examples, deltas), atol=1e-6)
    assert report.train_metrics["loss"] == pytest.approx(140 / 600, abs=1e-6)


def test_integer_payloads_are_uint64_on_the_wire(three_parties):
    model, clients, *_ = three_parties
    transcript = Transcript()
    fed = securefl.Federation(
        model,
        clients,
        [securefl.Clip(10.0), securefl.Quantize(bits=24), securefl.Plain()],
        train_metrics=["loss"],
        metric_bounds={"loss": 1.0},
        weight_bound=30,
        transcript=transcript,
    )
    fed.run_round()
    from securefl.wire import Envelope, unpack_array

    for entry in transcript.received():
        array = unpack_array(Envelope.decode(entry.data).parts["layer"])
        assert array.dtype == np.uint64


def test_transcript_records_everything_received(three_parties):
    model, clients, *_ = three_parties
    transcript = Transcript()
    fed = securefl.Federation(model, clients, CommitOpen(), train_metrics=["loss"], transcript=transcript)
    fed.run(2)
    received = transcript.received()
    assert len(received) == 2 * 2 * 3  # rounds x phases x parties
    assert {(e.round, e.phase) for e in received} == {(r, p) for r in (0, 1) for p in ("commit", "open")}
    assert fed.transport.traffic.bytes_up == sum(len(e.data) for e in received)


def test_fixed_count_selection_invites_k():
    clients = {f"p{i}": fixed_delta_client(np.ones(1), 1) for i in range(6)}
    fed = securefl.Federation(
        {"w": np.zeros(1)}, clients, "plain", selection=FixedCount(2, SecureRandom(seed=1))
    )
    for _ in range(5):
        report = fed.run_round()
        assert len(report.selected) == 2 and report.ok


def test_poisson_selection_and_empty_round_fails_cleanly():
    clients = {f"p{i}": fixed_delta_client(np.ones(1), 1) for i in range(20)}
    selection = Poisson(0.3, SecureRandom(seed=2))
    assert selection.sample_rate(20) == 0.3
    fed = securefl.Federation({"w": np.zeros(1)}, clients, "plain", selection=selection, min_parties=3)
    sizes = [len(fed.run_round().selected) for _ in range(40)]
    assert 2 < np.mean(sizes) < 10
    empty = securefl.Federation(
        {"w": np.zeros(1)}, clients, "plain", selection=Poisson(1e-9, SecureRandom(seed=0))
    )
    report = empty.run_round()
    assert not report.ok and "only 0 of 0 parties left after selection" in report.error
    np.testing.assert_array_equal(empty.global_weights["w"], [0.0])


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_strategies_run_end_to_end(three_parties, strategy):
    model, clients, *_ = three_parties
    fed = securefl.Federation(
        model, clients, "plain", train_metrics=["loss"], strategy={"name": strategy, "lr": 0.5}
    )
    fed.run(3)
    assert np.all(fed.global_weights["w"] > 0)


def test_configuration_errors_are_clear(three_parties):
    model, clients, *_ = three_parties
    with pytest.raises(ConfigError, match="at least one party"):
        securefl.Federation(model, {}, "plain")
    with pytest.raises(ConfigError, match="min_parties=5 but at most 3"):
        securefl.Federation(model, clients, "plain", train_metrics=["loss"], min_parties=5)
    with pytest.raises(ConfigError, match="weighting must be"):
        securefl.Federation(model, clients, "plain", weighting="by-size")
    with pytest.raises(ConfigError, match="metric names must be unique"):
        securefl.Federation(model, clients, "plain", train_metrics=["loss", "loss"])
    with pytest.raises(securefl.WireError, match="not a valid name"):
        securefl.Federation(model, {"bad id": clients["p0"]}, "plain")
    with pytest.raises(ConfigError, match="unknown strategy"):
        securefl.Federation(model, clients, "plain", train_metrics=["loss"], strategy="sgd")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(2, 8),
    data=st.data(),
)
def test_revealed_sum_equals_plaintext_sum_of_survivors(n, data):
    """Random dropouts in random phases: the result is exactly the survivors' weighted mean."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    deltas = {f"p{i}": rng.normal(size=3) for i in range(n)}
    examples = {p: int(rng.integers(1, 50)) for p in deltas}
    clients = {p: fixed_delta_client(deltas[p], examples[p]) for p in deltas}
    dropped = data.draw(st.sets(st.sampled_from(sorted(deltas)), max_size=n - 1))
    faults = Faults()
    for p in dropped:
        faults.add(
            data.draw(st.sampled_from(["offline", "lose_reply"])),
            p,
            phase=data.draw(st.sampled_from(["commit", "open"])),
        )
    fed = securefl.Federation({"w": np.zeros(3)}, clients, CommitOpen(), faults=faults)
    report = fed.run_round()
    survivors = sorted(set(deltas) - dropped)
    assert report.ok and report.survivors == survivors
    assert set(report.dropouts) == dropped
    np.testing.assert_allclose(fed.global_weights["w"], weighted_mean(deltas, examples, survivors), rtol=1e-9)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "roulette"}, "unknown selection 'roulette'; available: all, fixed, poisson"),
        ({"kind": "fixed", "counts": 3}, "selection 'fixed'.*counts"),
        ({"kind": "poisson", "rate": 1.5}, "0 < rate <= 1"),
        ("some", "unknown selection 'some'"),
    ],
)
def test_bad_selection_specs(three_parties, spec, message):
    model, clients, *_ = three_parties
    with pytest.raises(ConfigError, match=message):
        securefl.Federation(model, clients, "plain", train_metrics=["loss"], selection=spec)


def test_the_driver_never_reads_a_party_still_inside_an_abandoned_call():
    """Found by an attacker: ``global_vector`` opened the sealed model with the first party that
    could, a party still inside a call abandoned at its deadline included, whose objects were in use
    on another thread. It now asks only parties that are not busy."""
    import threading

    release, trained = threading.Event(), {"p0": 0}

    def client(party, delta):
        def train(weights, info):
            if party == "p0":
                trained["p0"] += 1
                if trained["p0"] == 2:  # p0 hangs in its second round, after the keys are set up
                    release.wait(60)
            return {"w": weights["w"] + delta}, 1, {}

        return train

    deltas = {f"p{i}": np.full(3, float(i + 1)) for i in range(4)}
    stack = [securefl.Quantize(16, 10.0), securefl.Paillier(key_bits=512, workers=1)]
    fed = securefl.Federation(
        {"w": np.zeros(3)},
        {p: client(p, d) for p, d in deltas.items()},
        stack,
        weighting="uniform",
        weight_bound=32767,
        min_parties=2,
        phase_timeout=3.0,
    )
    try:
        assert fed.run_round().ok
        first = fed.global_vector
        fed.run_round()
        assert fed.transport.busy("p0")
        opened = []
        honest_open = fed.nodes["p0"].open_global
        fed.nodes["p0"].open_global = lambda data: opened.append("p0") or honest_open(data)
        np.testing.assert_array_equal(fed.global_vector.shape, first.shape)
        assert opened == []  # read through another party
    finally:
        release.set()
