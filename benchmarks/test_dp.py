"""pytest-benchmark: what DP costs — CSPRNG noise at the reference size (1,000,000 coordinates) side
by side with numpy's default (non-cryptographic) generator, one party's noised share, the guard's
per-round work, an audit, and an analytics query.

    pytest benchmarks/test_dp.py --benchmark-columns=median,iqr
"""

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.analytics import Analytics
from securefl.codec import VectorLayout
from securefl.layers import Clip, DPNoise, PrivacyStack, Quantize, RoundContext, SecAgg, StackContext
from securefl.privacy.audit import audit
from securefl.privacy.guard import Budget, PrivacyGuard
from securefl.privacy.ledger import Ledger
from securefl.randomness import SecureRandom
from securefl.selection import build_selection

PARAMS = 1_000_000
VARIANCE = 1e6


def test_noise_skellam_csprng(benchmark):
    rng = SecureRandom()
    benchmark(rng.skellam, PARAMS, VARIANCE)


def test_noise_skellam_numpy_default_reference(benchmark):
    """numpy's PCG64: fast, predictable from its output — the baseline the CSPRNG is measured against."""
    rng = np.random.default_rng()
    mu = VARIANCE / 2
    benchmark(lambda: rng.poisson(mu, PARAMS) - rng.poisson(mu, PARAMS))


def test_noise_gaussian_csprng(benchmark):
    benchmark(SecureRandom().gaussian, PARAMS, 1.0)


def test_noise_gaussian_numpy_default_reference(benchmark):
    rng = np.random.default_rng()
    benchmark(rng.normal, 0.0, 1.0, PARAMS)


def _skellam_stack(parties=100):
    noise = DPNoise(1.0)
    stack = PrivacyStack.of([Clip(1.0), Quantize(20), noise, SecAgg()])
    stack.validate(StackContext(VectorLayout(PARAMS), parties, parties // 2, 1.0, {}))
    return stack, noise


def test_party_distributed_skellam_share(benchmark):
    """One party's work in the dp layer per round: a Skellam share added to its quantized update."""
    _, noise = _skellam_stack()
    noise.start_round(RoundContext("s", 0, tuple(f"p{i}" for i in range(100)), PARAMS + 1, True, 50))
    vector = np.zeros(PARAMS + 1, dtype=np.uint64)
    benchmark(noise.encode, vector)


@pytest.fixture
def ledger_of_100_rounds(tmp_path):
    stack, _ = _skellam_stack(parties=10)
    ledger = Ledger(tmp_path / "l.jsonl", Ed25519PrivateKey.generate())
    guard = PrivacyGuard(Budget(math.inf), ledger)
    guard.bind(stack, build_selection("all"), 10)
    for round in range(100):
        guard.admit(round)
        guard.record_release(round, 10)
    return tmp_path / "l.jsonl", ledger.signer


def test_guard_round_skellam(benchmark, tmp_path):
    """The guard's work per round after 1,000 rounds: budget check, accounting, signed fsynced record."""
    stack, _ = _skellam_stack(parties=10)
    guard = PrivacyGuard(Budget(1e9), Ledger(tmp_path / "g.jsonl", Ed25519PrivateKey.generate()))
    guard.bind(stack, build_selection("all"), 10)
    guard.accountant.step_release(guard.mechanism.fields(), 1000)
    rounds = iter(range(1000, 10**6))

    def one_round():
        round = next(rounds)
        guard.admit(round)
        guard.record_release(round, 10)

    benchmark(one_round)


def test_audit_of_100_releases(benchmark, ledger_of_100_rounds):
    path, signer = ledger_of_100_rounds
    result = benchmark.pedantic(audit, args=(path, signer), rounds=3, iterations=1)
    assert result.valid


def test_analytics_count_secagg_10_parties(benchmark):
    analytics = Analytics({f"p{i}": i for i in range(10)}, "secagg", noise_multiplier=1.0)
    result = benchmark(analytics.count, lambda n: n, max_per_party=10)
    assert result.parties == 10
