"""Layers that fuse on the parties: the aggregator stores only a sealed model it cannot open."""

import numpy as np
import pytest
from conftest import fixed_delta_client, weighted_mean
from phase_layers import SharedKeySum

import securefl
from securefl.errors import ConfigError, ProtocolError
from securefl.faults import Faults
from securefl.randomness import SecureRandom
from securefl.selection import FixedCount

DIM = 5


def make(n=4, faults=None, layer=None, **kw):
    deltas = {f"p{i}": np.linspace(-1, 1, DIM) * (i + 1) / 10 for i in range(n)}
    examples = {p: 5 * (i + 1) for i, p in enumerate(deltas)}
    clients = {
        p: fixed_delta_client(deltas[p], examples[p], {"loss": 0.1 * (i + 1)}) for i, p in enumerate(deltas)
    }
    stack = [securefl.Clip(10.0), securefl.Quantize(40), layer or SharedKeySum()]
    fed = securefl.Federation(
        {"w": np.zeros(DIM)},
        clients,
        stack,
        train_metrics=["loss"],
        metric_bounds={"loss": 1.0},
        weight_bound=100,
        faults=faults,
        **kw,
    )
    return fed, deltas, examples


def test_parties_fuse_and_the_aggregator_holds_only_the_sealed_model():
    fed, deltas, examples = make()
    for _ in range(3):
        report = fed.run_round()
        assert report.ok and report.sealed
        assert report.train_metrics == {} and report.total_weight == 0
    expected = 3 * weighted_mean(deltas, examples, deltas)
    np.testing.assert_allclose(fed.global_weights["w"], expected, atol=1e-9)
    # the aggregator kept the public initial weights only, and refuses to pretend otherwise
    np.testing.assert_array_equal(fed.aggregator.weights, np.zeros(DIM))
    with pytest.raises(ProtocolError, match="only key-holding parties can open it"):
        fed.aggregator.global_weights()
    sealed = fed.aggregator.sealed.data
    assert np.asarray(expected, "<f8").tobytes() not in sealed
    # the parties, who fused, saw the metrics
    node = fed.nodes["p0"]
    assert node.last_fused.train_metrics["loss"] == pytest.approx(
        sum(examples[p] * 0.1 * (i + 1) for i, p in enumerate(deltas)) / sum(examples.values()), abs=1e-9
    )


@pytest.mark.parametrize(
    ("action", "phase"), [("offline", "input"), ("lose_reply", "input"), ("offline", "open")]
)
def test_dropouts_in_both_phases(action, phase):
    fed, deltas, examples = make(faults=Faults().add(action, "p2", phase=phase))
    report = fed.run_round()
    assert report.ok and "p2" in report.dropouts
    # dropping before the sum loses p2's input; dropping after it only loses p2's copy of the seal
    contributors = [p for p in deltas if p != "p2"] if phase == "input" else list(deltas)
    np.testing.assert_allclose(
        fed.global_weights["w"], weighted_mean(deltas, examples, contributors), atol=1e-9
    )


def test_party_absent_from_a_round_opens_the_next_sealed_model():
    fed, deltas, examples = make(n=5, selection=FixedCount(2, SecureRandom(seed=7)))
    expected = np.zeros(DIM)
    for _ in range(6):
        report = fed.run_round()
        assert report.ok
        expected += weighted_mean(deltas, examples, report.survivors)
        np.testing.assert_allclose(fed.global_weights["w"], expected, atol=1e-9)
    assert len({p for r in fed.history.rounds for p in r.selected}) > 2


def test_inconsistent_sealed_model_drops_its_sender():
    fed, deltas, examples = make(faults=Faults().add("flip", "p3", phase="open"))
    report = fed.run_round()
    assert report.ok and "differs from the others" in report.dropouts["p3"]
    np.testing.assert_allclose(fed.global_weights["w"], weighted_mean(deltas, examples, deltas), atol=1e-9)


def test_server_optimizers_are_refused_when_parties_fuse():
    with pytest.raises(ConfigError, match="use strategy 'fedavg'"):
        make(strategy="fedadam")
