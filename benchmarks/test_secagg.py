"""pytest-benchmark suites for secure aggregation: primitives and whole rounds.

Sizes here are small enough for `make bench`; `python benchmarks/secagg_costs.py` measures the
reference configurations (100 parties × 1M parameters) with per-side timings.
"""

import os

import numpy as np
import pytest
from secagg_costs import measure

from securefl.crypto import channel, prg, shamir
from securefl.randomness import SecureRandom

PARAMS = 1_000_000


def test_mask_expansion_1m_words(benchmark):
    masks = prg.MaskAccumulator(PARAMS)
    masks.add(os.urandom(32))
    benchmark(masks.apply_to, np.zeros(PARAMS, dtype=np.uint32))


def test_x25519_agree_and_hkdf(benchmark):
    rng = SecureRandom()
    a, _ = channel.generate_keypair(rng)
    _, b = channel.generate_keypair(rng)
    benchmark(channel.agree, a, b, b"context")


def test_shamir_share_seed_to_100(benchmark):
    benchmark(shamir.split, os.urandom(32), list(range(1, 101)), 67, SecureRandom())


def test_shamir_reconstruct_from_67(benchmark):
    shares = shamir.split(os.urandom(32), list(range(1, 101)), 67, SecureRandom())
    benchmark(shamir.combine, shares, 67, 32)


@pytest.mark.parametrize("layer", ["plain", "secagg", "secagg+"])
def test_round_20_parties_100k(benchmark, layer):
    result = benchmark.pedantic(measure, args=(layer, 20, 100_000, 0.1), rounds=1, iterations=1)
    assert result["expansion_vs_float32"] < (1.1 if layer != "plain" else 1.01)
    np.testing.assert_array_less(0, result["round_seconds"])
