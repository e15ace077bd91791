"""Accountants against independently computed reference values, and grouping against opacus."""

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from securefl.codec import VectorLayout
from securefl.errors import ConfigError
from securefl.layers import Clip, DPNoise, Plain, PrivacyStack, StackContext
from securefl.privacy.accountants import PRV, RDP, create
from securefl.privacy.accountants.base import BeyondAccountant
from securefl.privacy.guard import Budget, PrivacyGuard
from securefl.selection import build_selection

# Reference values from the issue (computed independently of this code).
CASES = [
    (256 / 60000, 1.1, 14063, 1e-5, 2.5967, 2.39),
    (0.01, 4.0, 10000, 1e-5, 1.0355, 0.957),
]


@pytest.mark.parametrize(("q", "sigma", "steps", "delta", "rdp", "prv"), CASES)
def test_reference_values(q, sigma, steps, delta, rdp, prv):
    a, b = RDP(), PRV()
    a.step(sigma, q, steps)
    b.step(sigma, q, steps)
    assert a.epsilon(delta) == pytest.approx(rdp, abs=5e-5)
    assert b.epsilon(delta) == pytest.approx(prv, abs=0.01)
    assert b.epsilon(delta) < a.epsilon(delta)  # RDP over-reports


def _alternating(n):
    return [(1.1 if i % 2 else 1.5, 0.01 if i % 3 else 0.02, 1) for i in range(n)]


def test_grouped_rdp_equals_opacus_ungrouped():
    ours, theirs = RDP(), RDPAccountant()
    for sigma, q, steps in _alternating(60):
        ours.step(sigma, q, steps)
    theirs.history = _alternating(60)
    assert len(ours.history) == 4
    assert ours.epsilon(1e-5) == pytest.approx(theirs.get_epsilon(1e-5), rel=1e-12)


def test_grouped_prv_equals_opacus_ungrouped_within_its_error():
    ours, theirs = PRV(), PRVAccountant()
    for sigma, q, steps in _alternating(24):
        ours.step(sigma, q, steps)
    theirs.history = _alternating(24)
    assert ours.epsilon(1e-5) == pytest.approx(theirs.get_epsilon(1e-5), abs=0.02)


def test_order_does_not_matter_and_history_stays_small():
    a, b = create("rdp"), create("rdp")
    for i in range(10_000):
        a.step(1.1 if i % 2 else 1.3, 0.01)
    b.step(1.3, 0.01, 5000)
    b.step(1.1, 0.01, 5000)
    assert len(a.history) == 2
    assert a.epsilon(1e-5) == b.epsilon(1e-5)


def test_would_spend_does_not_record():
    a = RDP()
    a.step(1.0, 0.1, 10)
    before = a.epsilon(1e-5)
    projected = a.would_spend(1.0, 0.1, 5, 1e-5)
    assert a.epsilon(1e-5) == before and projected > before
    a.step(1.0, 0.1, 5)
    assert a.epsilon(1e-5) == projected


def test_state_dict_round_trip():
    a = PRV()
    a.step(1.2, 0.05, 7)
    a.step(0.9, 0.05, 3)
    b = PRV()
    b.load_state_dict(a.state_dict())
    assert b.history == a.history and b.epsilon(1e-5) == a.epsilon(1e-5)
    with pytest.raises(ConfigError, match="cannot load into 'rdp'"):
        RDP().load_state_dict(a.state_dict())


def test_no_release_spends_nothing():
    assert PRV().epsilon(1e-5) == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 0.1, 1), "noise multiplier"),
        ((1.0, 0, 1), "sampling rate"),
        ((1.0, 1.5, 1), "sampling rate"),
        ((1.0, 0.1, 0), "steps"),
        ((float("nan"), 0.1, 1), "noise multiplier"),
    ],
)
def test_bad_steps_are_refused(args, message):
    with pytest.raises(ConfigError, match=message):
        RDP().step(*args)


def test_bad_delta_and_unknown_accountant():
    with pytest.raises(ConfigError, match="delta must be in"):
        RDP().epsilon(0)
    with pytest.raises(ConfigError, match="Gaussian"):
        create("gaussian")


def test_prv_refuses_a_history_too_small_in_noise_to_compute_and_rdp_still_bounds_it():
    """σ = 0.1 for 100 full releases: opacus would build a 4e7-point grid (minutes) and give inf."""
    prv, rdp = PRV(), RDP()
    prv.step(0.1, 1.0, 100)
    rdp.step(0.1, 1.0, 100)
    with pytest.raises(BeyondAccountant, match="account it with 'pld'"):
        prv.epsilon(1e-5)
    assert 100 < rdp.epsilon(1e-5) < float("inf")


def test_a_guard_hands_over_to_rdp_when_prv_cannot_compute():
    guard = PrivacyGuard(Budget(1e9))
    stack = PrivacyStack.of([Clip(1.0), DPNoise(0.1, "central"), Plain()])
    stack.validate(StackContext(VectorLayout(4), 3, 1, 1.0, {}))
    guard.bind(stack, build_selection("all"), 3)
    assert guard.accounts.worst_accountant == "prv"  # the parties' figure, enforced by default
    for round in range(100):
        guard.admit(round)
        guard.record_release(round, 3)
    # PLD refuses too (its RDP bound is far over 100): RDP, an upper bound, took over.
    assert guard.accounts.worst_accountant == "rdp" and sum(guard.accountant.history.values()) == 100
