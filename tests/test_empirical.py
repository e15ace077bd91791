"""The empirical audit: canaries through the real stack give an ε lower bound that stays below the
accounted ε of an honest mechanism at every placement, and rises above it when the noise layer adds
less noise than it claims. The bound's arithmetic is checked on its own, including its validity
(a worst-case mechanism of known ε rarely gets a bound above it)."""

import io
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from scipy import special, stats

from securefl.errors import ConfigError, SeedRefused
from securefl.federation import Federation
from securefl.layers import Clip, DPNoise, Plain
from securefl.privacy.accountants import create
from securefl.privacy.audit import audit
from securefl.privacy.empirical import (
    Segment,
    empirical_audit,
    epsilon_lower_bound,
    gaussian_epsilon,
    p_value,
    rich_progress,
    run_for_ledger,
    segments_from_records,
)
from securefl.privacy.guard import Budget, PrivacyGuard
from securefl.privacy.ledger import Ledger

PLACEMENTS = ["central", "distributed", "local"]


class UnderNoised(DPNoise):
    """Test only: claims noise multiplier z (its mechanism, hence the accounted ε) but adds z/10 —
    the real layer with its noise cut after calibration, at every placement."""

    def start_round(self, ctx):
        super().start_round(ctx)
        # Skellam shares are variances (integer units), Gaussian shares standard deviations.
        self._share = self._share / 100 if self.mechanism.variance is not None else self._share / 10

    def decode_sum(self, total):
        if self.noise_on_party:
            return total
        out = np.asarray(total, dtype=np.float64).copy()
        size = self._update.stop - self._update.start
        out[self._update] += self._rng.gaussian(size, self.mechanism.noise_std / 10)
        return out


# -- through the stack ---------------------------------------------------------------------------


def _assert_mean_near(scores: np.ndarray, expected: float) -> None:
    """The scores' mean is ``expected`` to within 5 standard errors of this very run. The noise is
    the layer's own CSPRNG (a test seed picks only canaries and directions), so the mean moves
    between runs: a fixed ±0.15 was 3σ (std 0.05 over 20 runs), and with six such checks a run
    failed about once in 60. The scores are independent (orthonormal directions, isotropic noise),
    so their sample standard error is the mean's; a missing or doubled signal is 20σ out."""
    standard_error = scores.std(ddof=1) / math.sqrt(len(scores))
    assert abs(scores.mean() - expected) <= 5 * standard_error, (scores.mean(), expected, standard_error)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_lower_bound_is_below_the_accounted_epsilon_at_every_placement(placement):
    """z = 1, one round, 1000 canaries: the accounted ε is about 4.4 (4.8 by RDP for Skellam); the
    bound is positive (the attacker does find the inserted canaries) and below it."""
    seen = []
    result = empirical_audit(placement, 1.0, seed=11, progress=lambda done, total: seen.append((done, total)))
    assert result.epsilon_accounted == pytest.approx(4.39 if placement != "distributed" else 4.76, abs=0.05)
    assert 0.5 < result.epsilon_lower < result.epsilon_accounted
    assert not result.violated and result.problems == []
    assert result.confidence == 0.95 and result.rounds_failed == 0
    stack = result.segments[0].stack(DPNoise).names
    expected = {
        "central": ["clip", "dp", "plain"],
        "distributed": ["clip", "quantize", "dp", "secagg"],
        "local": ["clip", "dp", "plain"],
    }
    assert stack == expected[placement]
    groups = math.ceil(1000 / result.group)
    assert seen[-1] == (groups, groups) and len(seen) == groups
    # Inserted canaries score about one clip along their direction, withheld ones about zero.
    _assert_mean_near(result.scores[result.inserted], 1.0)
    _assert_mean_near(result.scores[~result.inserted], 0.0)
    low, high = result.estimate_interval
    assert low < result.epsilon_estimate < high


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_mechanism_that_adds_a_tenth_of_the_noise_it_claims_is_caught(placement):
    """Claimed z = 3 (accounted ε ≈ 1.3), actual z = 0.3: the bound rises above the claim."""
    result = empirical_audit(placement, 3.0, noise_layer=UnderNoised, seed=12)
    honest_claim = empirical_audit(placement, 3.0, canaries=20, seed=12).epsilon_accounted
    assert result.epsilon_accounted == pytest.approx(honest_claim)  # it claims what DPNoise(3) claims
    assert result.epsilon_accounted < 1.5
    assert result.epsilon_lower > result.epsilon_accounted
    assert result.violated
    assert "leaks more than it accounts" in result.problems[0]
    assert "violation" in result.html_section()


def test_poisson_sampled_central_rounds_and_several_rounds():
    result = empirical_audit("central", 1.0, rounds=3, sample_rate=0.5, canaries=400, seed=13)
    assert result.rounds == 3
    # Each inserted canary is in about half of the three sums. The mean over ~200 inserted canaries
    # carries the (unseeded, CSPRNG) noise: std √3 per canary, ~0.14 for the mean (and ~0.06 from
    # the selection) — ±0.3 was 2σ, a test that failed once in ~30 runs (it did in CI); ±0.6 is 4σ.
    assert result.scores[result.inserted].mean() == pytest.approx(1.5, abs=0.6)
    assert 0 < result.epsilon_lower < result.epsilon_accounted
    assert any("Poisson selection" in a for a in result.assumptions)


# -- the bound's arithmetic -----------------------------------------------------------------------


def test_p_value_is_the_binomial_tail_without_delta_and_grows_with_it():
    m, r, v, eps = 1000, 100, 80, 1.0
    p = special.expit(eps)
    assert p_value(m, r, v, eps, 0.0) == pytest.approx(stats.binom.sf(v - 1, r, p), rel=1e-12)
    assert p_value(m, r, v, eps, 1e-5) > p_value(m, r, v, eps, 0.0)
    assert p_value(m, r, v, 2.0, 1e-5) > p_value(m, r, v, 1.0, 1e-5)


def test_all_guesses_right_without_delta_has_a_closed_form():
    """With v = r and δ = 0 the tail is p^r, so the bound is logit(α^(1/r))."""
    for r, alpha in ((50, 0.05), (200, 0.01)):
        expected = special.logit(alpha ** (1 / r))
        assert epsilon_lower_bound(1000, r, r, alpha, 0.0) == pytest.approx(expected, abs=1e-5)
    assert epsilon_lower_bound(1000, 100, 50, 0.05, 1e-5) == 0.0  # chance accuracy proves nothing
    with pytest.raises(ConfigError):
        p_value(10, 20, 5, 1.0, 0.0)


def test_the_bound_is_valid_for_randomized_response_of_known_epsilon():
    """ε-randomized response is the worst case of the theorem: each of m guesses right with
    probability e^ε/(1 + e^ε). The bound exceeds the true ε in at most 1 − confidence of runs."""
    rng = np.random.default_rng(5)
    true_eps, m, trials = 1.0, 500, 300
    correct = rng.binomial(m, special.expit(true_eps), size=trials)
    bounds = np.array([epsilon_lower_bound(m, m, int(v), 0.05, 1e-6) for v in correct])
    assert (bounds > true_eps).mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert np.median(bounds) > 0.7  # and it is not vacuous


def test_gaussian_epsilon_matches_the_accountant_for_one_gaussian_release():
    for z in (0.8, 1.0, 2.0):
        accountant = create("prv")
        accountant.step(z, 1.0, 1)
        assert gaussian_epsilon(1 / z, 1e-5) == pytest.approx(accountant.epsilon(1e-5), rel=0.01)
    assert gaussian_epsilon(0.0, 1e-5) == 0.0


# -- from a ledger ---------------------------------------------------------------------------------


def _ledger(tmp_path, rounds=3, z=1.0):
    def train(weights, info):
        return {"w": weights["w"] + 0.01}, 1

    guard = PrivacyGuard(Budget(math.inf), Ledger(tmp_path / "l.jsonl", Ed25519PrivateKey.generate()))
    fed = Federation(
        {"w": np.zeros(20)},
        {f"p{i}": train for i in range(4)},
        [Clip(2.0), DPNoise(z, "central"), Plain()],
        weighting="uniform",
        guard=guard,
    )
    fed.run(rounds)
    return tmp_path / "l.jsonl"


def test_run_for_ledger_audits_the_recorded_mechanism(tmp_path):
    path = _ledger(tmp_path)
    checked = audit(path)
    assert checked.valid
    # 1,200 canaries: the noise is the layer's own CSPRNG (the seed picks canaries and directions only),
    # so the mean score below varies between runs — its std is 0.053 here (100 runs), putting the
    # ±0.4 bound 7.5 standard deviations out (at 300 canaries it was 3.6 and failed a CI run).
    result = run_for_ledger(checked, max_rounds=2, canaries=1200, seed=21)
    assert [(s.placement, s.noise_multiplier, s.clip, s.rounds, s.integer) for s in result.segments] == [
        ("central", 1.0, 2.0, 2, False)
    ]
    assert result.ledger_releases == 3
    assert result.epsilon_ledger == pytest.approx(checked.reported)
    accountant = create("prv")
    accountant.step(1.0, 1.0, 2)
    assert result.epsilon_accounted == pytest.approx(accountant.epsilon(1e-5))
    assert result.epsilon_accounted < result.epsilon_ledger
    assert 0 < result.epsilon_lower < result.epsilon_accounted
    assert any("first 2 of the ledger's 3" in n for n in result.notes)
    assert any("read from the ledger" in a for a in result.assumptions)
    assert result.scores[result.inserted].mean() == pytest.approx(2.0, abs=0.4)  # two rounds in each score
    again = run_for_ledger(path, max_rounds=None, canaries=100, seed=21)
    assert again.rounds == 3


def test_segments_merge_identical_releases_and_refuse_record_level_ledgers():
    base = {
        "decision": "released",
        "unit": "party",
        "mechanism": "gaussian",
        "placement": "central",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "sample_rate": 0.2,
        "epsilon": 1.0,
    }
    records = [base, {**base, "decision": "refused"}, base, {**base, "noise_multiplier": 2.0}]
    segments = segments_from_records(records)
    assert [(s.noise_multiplier, s.rounds, s.sample_rate) for s in segments] == [(1.0, 2, 0.2), (2.0, 1, 0.2)]
    assert [s.rounds for s in segments_from_records(records, max_rounds=1)] == [1]
    skellam = {**base, "mechanism": "skellam", "placement": "distributed", "sample_rate": 1.0}
    assert segments_from_records([skellam])[0].sum_name == "secagg"
    with pytest.raises(ConfigError, match="party-level"):
        segments_from_records([{**base, "unit": "record"}])
    with pytest.raises(ConfigError, match="no release"):
        segments_from_records([{**base, "decision": "refused"}])


# -- outputs and refusals --------------------------------------------------------------------------


def test_json_and_html_outputs():
    result = empirical_audit("central", 1.0, canaries=100, seed=31)
    result.assumptions.append("<script>alert(1)</script>")
    data = json.loads(json.dumps(result.to_json()))
    assert data["epsilon_lower"] == result.epsilon_lower and data["confidence"] == 0.95
    assert data["epsilon_accounted"] == result.epsilon_accounted
    assert len(data["scores"]) == 100 and data["inserted"] == int(result.inserted.sum())
    assert data["mechanism"][0]["placement"] == "central" and data["mechanism"][0]["secure_sum"] == "plain"
    assert data["assumptions"][-1] == "<script>alert(1)</script>"
    assert result.to_json(scores=False)["scores"] is None
    page = result.html_section()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert f"{result.epsilon_lower:.3f}" in page and f"{result.epsilon_accounted:.3f}" in page
    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    root = ET.fromstring(svg)  # well-formed
    assert root.tag.endswith("svg") and len(root.findall("{http://www.w3.org/2000/svg}rect")) > 5


def test_rich_progress_draws_a_bar():
    out = io.StringIO()
    with rich_progress(Console(file=out, force_terminal=False, width=100)) as update:
        empirical_audit("local", 1.0, canaries=40, seed=32, progress=update)
    assert "40/40" in out.getvalue()


def test_refusals(monkeypatch):
    with pytest.raises(ConfigError, match="only for central"):
        Segment("distributed", 1.0, sample_rate=0.5)
    with pytest.raises(ConfigError, match="central noise is Gaussian"):
        Segment("central", 1.0, integer=True)
    with pytest.raises(ConfigError, match="sums integers"):
        Segment("local", 1.0, secure_sum="secagg")
    with pytest.raises(ConfigError, match="at least 20"):
        empirical_audit("central", 1.0, canaries=5)
    with pytest.raises(ConfigError, match="no sum"):
        empirical_audit("distributed", 1.0, canaries=20, group=1)
    monkeypatch.setenv("SECUREFL_ALLOW_TEST_SEEDS", "0")
    with pytest.raises(SeedRefused):
        empirical_audit("central", 1.0, canaries=20, seed=1)
