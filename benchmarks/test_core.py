"""Core primitives and the plain path, at the design's reference size (1,000,000 parameters).

    pytest benchmarks/ --benchmark-json out.json     # or: make bench

Each benchmark is a fair side-by-side: the same vector through each step.
"""

import numpy as np
import pytest

import securefl
from securefl.codec import ArraySpec, VectorLayout
from securefl.crypto import fixedpoint
from securefl.randomness import SecureRandom
from securefl.wire import REPLY, Envelope, pack_array, unpack_array

PARAMS = 1_000_000
SESSION = "ab" * 16


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    return {
        "w1": rng.normal(size=(1000, 900)).astype(np.float32),
        "b1": rng.normal(size=100_000).astype(np.float32),
    }


def test_codec_flatten(benchmark, model):
    spec = ArraySpec.of(model)
    benchmark(spec.flatten, model)


def test_codec_unflatten(benchmark, model):
    spec = ArraySpec.of(model)
    vector = spec.flatten(model)
    benchmark(spec.unflatten, vector)


def test_fixedpoint_encode_with_csprng_rounding(benchmark):
    values = np.random.default_rng(0).uniform(-1, 1, PARAMS)
    rng = SecureRandom()
    benchmark(fixedpoint.encode, values, 8_388_607.0, 64, rng)


def test_envelope_encode_decode_float32(benchmark):
    payload = pack_array(np.zeros(PARAMS, dtype="<f4"))

    def round_trip():
        data = Envelope(REPLY, SESSION, 1, "input", "p1", {"layer": payload}).encode()
        return unpack_array(Envelope.decode(data).parts["layer"], "<f4", (PARAMS,))

    benchmark(round_trip)


@pytest.mark.parametrize("stack", ["plain", "clip+quantize+plain"])
def test_plain_round_10_parties(benchmark, stack):
    """One full round (train is a no-op) for 10 parties × 1M parameters, in process."""
    delta = np.full(PARAMS, 1e-3)

    def train(weights, info):
        return {"w": weights["w"] + delta}, 10, {}

    privacy = "plain" if stack == "plain" else [securefl.Clip(10.0), securefl.Quantize(24), securefl.Plain()]
    fed = securefl.Federation(
        {"w": np.zeros(PARAMS)}, {f"p{i}": train for i in range(10)}, privacy, weight_bound=10
    )
    benchmark.pedantic(fed.run_round, rounds=3, iterations=1)
    assert fed.history.rounds[-1].ok


def test_layout_pack(benchmark):
    layout = VectorLayout(PARAMS, ("loss",), ("accuracy",))
    delta = np.zeros(PARAMS)
    benchmark(layout.pack, delta, 10, {"loss": 0.1}, 5, {"accuracy": 0.9})
