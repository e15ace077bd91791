"""Federated analytics: exact answers through every secure layer, bounds, DP accounting across queries."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer

from securefl.analytics import Analytics
from securefl.errors import BudgetExhausted, ConfigError
from securefl.federation import Federation
from securefl.layers import Clip, DPNoise, Plain, Quantize, SecAgg
from securefl.privacy.audit import audit
from securefl.privacy.guard import Budget, PrivacyGuard
from securefl.privacy.ledger import Ledger

DATA = load_breast_cancer()
EDGES = [5, 10, 15, 20, 25, 30]


def _hospitals(n=4):
    """The breast-cancer records dealt to ``n`` hospitals: (features, labels) each."""
    return {f"h{i}": (DATA.data[p], DATA.target[p]) for i, p in enumerate(np.array_split(np.arange(569), n))}


def _malignant(records):
    return int((records[1] == 0).sum())


def _radius(records):
    return records[0][:, 0]


@pytest.mark.parametrize("privacy", ["plain", "secagg", "secagg+", "ckks"])
def test_every_query_matches_the_pooled_data(privacy):
    analytics = Analytics(_hospitals(), privacy)
    count = analytics.count(_malignant, max_per_party=500)
    assert count.value == int((DATA.target == 0).sum()) and count.complete and count.parties == 4
    mean = analytics.mean(_radius, lower=5, upper=30, max_records=500)
    assert mean.value == pytest.approx(DATA.data[:, 0].mean(), rel=1e-4)  # CKKS: ~3e-5
    histogram = analytics.histogram(_radius, edges=EDGES, max_records=500)
    assert histogram.value.tolist() == np.histogram(DATA.data[:, 0], EDGES)[0].tolist()
    total = analytics.sum(lambda r: r[0][:, :2].sum(0), bound=20_000, dim=2)
    assert total.value == pytest.approx(DATA.data[:, :2].sum(0), rel=1e-4)
    assert count.epsilon is None and count.noise_std is None


def test_a_count_through_paillier():
    assert Analytics(_hospitals(3), "paillier").count(_malignant, max_per_party=500).value == 212


@given(st.lists(st.lists(st.integers(0, 40), min_size=3, max_size=3), min_size=3, max_size=6))
def test_secagg_histograms_are_exact(per_party):
    """Any small per-party histogram, summed by SecAgg: exactly the pooled histogram."""
    parties = {f"p{i}": np.repeat(np.arange(3) + 0.5, counts) for i, counts in enumerate(per_party)}
    result = Analytics(parties, "secagg").histogram(lambda x: x, edges=[0, 1, 2, 3], max_records=120)
    assert result.value.tolist() == np.sum(per_party, axis=0).tolist()


def test_values_outside_the_histogram_are_clamped_into_the_end_bins():
    parties = {"a": np.array([-5.0, 0.5]), "b": np.array([2.5, 99.0])}
    result = Analytics(parties, "plain").histogram(lambda x: x, edges=[0, 1, 2, 3], max_records=10)
    assert result.value.tolist() == [2, 0, 2]


def test_a_contribution_over_its_bound_is_withheld_without_dp_and_clipped_with_it():
    parties = {"small": 3, "mid": 4, "more": 5, "large": 700}
    plain = Analytics(parties, "secagg").count(lambda n: n, max_per_party=500)
    assert plain.value == 12 and not plain.complete and list(plain.dropouts) == ["large"]
    noised = Analytics(parties, "plain", noise_multiplier=1e-6).count(lambda n: n, max_per_party=500)
    assert noised.complete and noised.value == pytest.approx(512, abs=0.01)
    assert noised.epsilon > 1e6  # PRV cannot grid noise this small: RDP took over, an upper bound


def test_malformed_contributions_drop_their_party():
    parties = {"ok": np.ones(2), "short": np.ones(3), "nan": np.array([1.0, np.nan])}
    result = Analytics(parties, "plain").sum(lambda v: v, bound=10, dim=2)
    assert result.value == pytest.approx([1.0, 1.0]) and set(result.dropouts) == {"short", "nan"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.count(len, max_per_party=0), "max_per_party must be a positive"),
        (lambda a: a.sum(len, bound=1, dim=0), "dim must be a positive integer"),
        (lambda a: a.mean(len, lower=3, upper=1, max_records=5), "lower < upper"),
        (lambda a: a.histogram(len, edges=[0, 2, 1], max_records=5), "strictly increasing"),
        (lambda a: a.histogram(len, edges=[0, 1], max_records=math.inf), "max_records must be"),
    ],
)
def test_impossible_queries_are_refused(call, message):
    with pytest.raises(ConfigError, match=message):
        call(Analytics({"a": [1]}, "plain"))


def test_impossible_settings_are_refused():
    with pytest.raises(ConfigError, match="set noise_multiplier too"):
        Analytics({"a": 1}, "secagg", budget=Budget(1.0))
    with pytest.raises(ConfigError, match="noise_multiplier must be a positive"):
        Analytics({"a": 1}, "secagg", noise_multiplier=-1)
    with pytest.raises(ConfigError, match="unknown privacy preset"):
        Analytics({"a": 1}, "sekagg")
    with pytest.raises(ConfigError, match="at least one party"):
        Analytics({}, "plain")


def test_dp_queries_share_one_budget_and_one_ledger(tmp_path):
    ledger = Ledger(tmp_path / "queries.jsonl", Ed25519PrivateKey.generate())
    analytics = Analytics(
        _hospitals(), "secagg", noise_multiplier=2.0, budget=Budget(8.0, 1e-5), ledger=ledger
    )
    first = analytics.count(_malignant, max_per_party=500)
    second = analytics.histogram(_radius, edges=EDGES, max_records=500)
    assert 0 < first.epsilon < second.epsilon == pytest.approx(analytics.epsilon)
    # SecAgg of 4 parties unmasks with t = 2 survivors: each share is sized for 2, all 4 add theirs.
    assert first.noise_std[0] == pytest.approx(2.0 * 500 * math.sqrt(4 / 2))
    assert first.value != 212  # noised (a Skellam draw of std ~1150 is never exactly 0 here)
    with pytest.raises(BudgetExhausted, match="remaining"):
        for _ in range(20):
            analytics.mean(_radius, lower=5, upper=30, max_records=500)
    spent = analytics.epsilon
    assert spent <= 8.0
    result = audit(tmp_path / "queries.jsonl", ledger.signer, budget_epsilon=8.0)
    assert result.valid, result.problems
    assert [r["round"] for r in result.rows] == list(range(1, len(result.rows) + 1))  # from 1, as printed
    assert result.refusals == 1 and result.epsilon["rdp"] == pytest.approx(spent)
    records = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert [r["query"] for r in records[:3]] == ["count #1", "histogram #2", "mean #3"]
    assert records[-1]["decision"] == "refused" and records[-1]["query"].startswith("mean #")


def test_a_guard_moves_from_gaussian_to_skellam_without_forgetting(tmp_path):
    guard = PrivacyGuard(Budget(math.inf), Ledger(tmp_path / "l.jsonl", Ed25519PrivateKey.generate()))
    clients = {f"p{i}": (lambda w, info: ({"w": w["w"] + 0.1}, 1)) for i in range(3)}
    model = {"w": np.zeros(4)}
    gaussian = [Clip(1.0), DPNoise(1.0), Plain()]
    Federation(model, clients, gaussian, weighting="uniform", guard=guard).run_round()
    after_one = guard.spent
    skellam = [Clip(1.0), Quantize(16), DPNoise(1.0), SecAgg()]
    Federation(model, clients, skellam, weighting="uniform", guard=guard).run_round()
    assert {entry[0] for entry in guard.accountant.history} == {"gaussian", "skellam"}
    assert guard.spent > after_one and guard.next_round == 2
    assert audit(tmp_path / "l.jsonl", guard.ledger.signer).valid


def test_the_example_answers_as_the_pooled_data_would():
    example = Path(__file__).parent.parent / "examples" / "analytics.py"
    result = subprocess.run(
        [sys.executable, str(example), "--privacy", "secagg"], capture_output=True, text=True, check=True
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    pooled = summary["pooled"]
    assert summary["malignant"] == pooled["malignant"]
    assert summary["radius_histogram"] == pooled["radius_histogram"]
    assert summary["mean_radius"] == pytest.approx(pooled["mean_radius"], rel=1e-6)


def test_noised_answers_are_clamped_into_their_valid_range():
    """Issue 20, item 16: under DP a small count came out negative and a mean outside its bounds;
    the released value is moved into its valid range (post-processing) and says so."""
    from securefl.analytics import QueryResult

    result = QueryResult("count", -3.5, np.array([-3.5]), 5, {})
    result._clamp(0.0, 500.0)
    assert result.value == 0.0 and result.clamped
    mean = QueryResult("mean", 41.0, np.array([410.0, 10.0]), 5, {})
    mean._clamp(5.0, 30.0)
    assert mean.value == 30.0 and mean.clamped
    inside = QueryResult("mean", 12.5, np.array([125.0, 10.0]), 5, {})
    inside._clamp(5.0, 30.0)
    assert inside.value == 12.5 and not inside.clamped
    bins = QueryResult("histogram", np.array([3.0, -1.0]), np.array([3.0, -1.0]), 5, {})
    bins._clamp(0.0, np.inf)
    assert list(bins.value) == [3.0, 0.0] and bins.clamped
