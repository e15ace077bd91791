"""pytest-benchmark suites for CKKS: one party's 100k-value encryption under each preset."""

import numpy as np
import pytest

from securefl.crypto import ckks

VALUES = np.random.default_rng(0).normal(size=100_000)


@pytest.fixture(scope="module", params=list(ckks.PRESETS))
def setup(request):
    params = ckks.PRESETS[request.param]
    secret = ckks.new_context(params)
    public = ckks.load_context(ckks.serialize(secret, secret=False), params, secret=False)
    return params, secret, public


def test_encrypt_and_serialize_100k(benchmark, setup):
    params, secret, _ = setup
    benchmark(ckks.encrypt, secret, VALUES, params)


def test_combine_one_party_100k(benchmark, setup):
    params, secret, public = setup
    blobs = ckks.encrypt(secret, VALUES, params)
    total = ckks.CiphertextSum(public, params, VALUES.size)
    total.add(blobs)
    benchmark(total.add, blobs)


def test_decrypt_100k(benchmark, setup):
    params, secret, _ = setup
    blobs = ckks.encrypt(secret, VALUES, params)
    out = benchmark(ckks.decrypt, secret, blobs, VALUES.size, params)
    assert np.abs(out - VALUES).max() < 1e-3
