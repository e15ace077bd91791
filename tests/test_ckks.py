"""ckks: sums within the stated precision, dropouts, the aggregator's context, parameters, tampering."""

import numpy as np
import pytest
from conftest import fixed_delta_client, reachable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import securefl
from securefl.crypto import ckks
from securefl.errors import ConfigError, ProtocolError
from securefl.faults import Faults
from securefl.layers import CKKS
from securefl.transcript import Transcript
from securefl.wire import Envelope, decode_record, encode_record

TOLERANCE = 1e-4  # per coordinate of the fused mean, for the default parameters (spec: ~1e-6 per sum)


def federation(n, dim=300, faults=None, transcript=None, layer=None, seed=0, **kw):
    rng = np.random.default_rng(seed)
    parties = [f"p{i:02d}" for i in range(n)]
    deltas = {p: rng.normal(0, 0.1, dim) for p in parties}
    weights = {p: int(rng.integers(1, 20)) for p in parties}
    fed = securefl.Federation(
        {"w": np.zeros(dim)},
        {p: fixed_delta_client(deltas[p], weights[p]) for p in parties},
        [layer or CKKS(update_bound=100.0)],
        weight_bound=20,
        faults=faults,
        transcript=transcript,
        **kw,
    )
    return fed, deltas, weights


def mean(deltas, weights, parties):
    return sum(weights[p] * deltas[p] for p in parties) / sum(weights[p] for p in parties)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 8), dim=st.sampled_from([5, 2046, 2047, 5000]), seed=st.integers(0, 1000), data=st.data()
)
def test_sum_within_precision_for_random_inputs_parties_and_dropouts(n, dim, seed, data):
    parties = [f"p{i:02d}" for i in range(n)]
    dropped = data.draw(st.sets(st.sampled_from(parties[1:]), max_size=max(0, n - 1))) if n > 1 else set()
    faults = Faults()
    for p in dropped:
        faults.add(data.draw(st.sampled_from(["offline", "lose_reply"])), p, phase="encrypt", round=1)
    fed, deltas, weights = federation(n, dim, faults, seed=seed)
    assert fed.run_round().ok
    before = fed.global_vector
    report = fed.run_round()
    survivors = [p for p in parties if p not in dropped]
    assert report.ok and report.sealed and report.survivors == survivors
    np.testing.assert_allclose(fed.global_vector - before, mean(deltas, weights, survivors), atol=TOLERANCE)


def test_the_aggregator_holds_no_secret_key_and_cannot_decrypt():
    transcript = Transcript()
    fed, *_ = federation(3, transcript=transcript)
    fed.run(2)
    objects = reachable(fed.aggregator.secure_sum)  # the aggregator side of the layer: all its state
    contexts = [o for o in objects if isinstance(o, ckks.ts.Context)]
    found_secret = [o for o in objects if type(o).__name__ == "CkksKeys"]
    assert contexts and all(not c.is_private() for c in contexts)
    assert not found_secret
    # a ciphertext from the transcript does not open under the aggregator's context
    entry = transcript.received(phase="encrypt")[0]
    header, parts = decode_record(
        Envelope.decode(entry.data).parts["layer"], b"CENr", {"sizes": list}, ("ciphertexts",)
    )
    blob = parts["ciphertexts"][: header["sizes"][0]]
    vector = ckks.ts.ckks_vector_from(contexts[0], blob)
    with pytest.raises(ValueError, match="secret_key"):
        vector.decrypt()


def test_public_context_reaches_the_aggregator_once_per_session():
    transcript = Transcript()
    fed, *_ = federation(3, transcript=transcript)
    fed.run(3)
    grants = [e for e in transcript.received(phase="key_grant")]
    assert {e.round for e in grants} == {0}
    assert {e.phase for e in transcript.received(round=2)} == {"encrypt", "decrypt", "arbitrate"}


def test_a_context_with_a_secret_key_is_refused_by_the_aggregator():
    params = ckks.PRESETS["add-only"]
    context = ckks.new_context(params)
    with pytest.raises(ProtocolError, match="holds a secret key: refusing to keep it"):
        ckks.load_context(ckks.serialize(context, secret=True), params, secret=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 60]}, "below 128-bit security"),
        ({"poly_modulus_degree": 3000}, "must be one of"),
        ({"scale_bits": 44}, "leaves no room"),
        ({"preset": "tiny"}, "unknown CKKS preset"),
    ],
)
def test_insecure_or_impossible_parameters_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CKKS(**kwargs)


def test_overflowing_sum_is_refused_at_configuration():
    with pytest.raises(ConfigError, match=r"could reach 12000 .* decode sums only up to 8192"):
        federation(12, layer=CKKS(update_bound=1000.0))
    federation(12, layer=CKKS(preset="wide", update_bound=1000.0))  # the wide preset has room


def test_quantize_before_ckks_is_refused():
    clients = {"a": fixed_delta_client(np.zeros(2), 1)}
    with pytest.raises(ConfigError, match="remove 'quantize'"):
        securefl.Federation(
            {"w": np.zeros(2)}, clients, [securefl.Clip(1.0), securefl.Quantize(16), CKKS()], weight_bound=1
        )


def _corrupt(reply: bytes) -> bytes:
    env = Envelope.decode(reply)
    header, parts = decode_record(env.parts["layer"], b"CENr", {"sizes": list}, ("ciphertexts",))
    data = bytearray(parts["ciphertexts"])
    data[40:200] = bytes(160)
    layer = encode_record(b"CENr", header, {"ciphertexts": bytes(data)})
    return Envelope(env.kind, env.session, env.round, env.phase, env.party, {"layer": layer}).encode()


def test_corrupted_ciphertexts_are_rejected():
    fed, deltas, weights = federation(
        4, faults=Faults().add("replace", "p02", phase="encrypt", replace=_corrupt)
    )
    report = fed.run_round()
    assert report.ok and "corrupted CKKS ciphertext" in report.dropouts["p02"]
    np.testing.assert_allclose(
        fed.global_vector, mean(deltas, weights, ["p00", "p01", "p03"]), atol=TOLERANCE
    )


def test_truncated_ciphertexts_are_rejected():
    fed, _deltas, _weights = federation(4, faults=Faults().add("truncate", "p01", phase="encrypt"))
    report = fed.run_round()
    assert report.ok and "truncated" in report.dropouts["p01"]


def test_value_outside_the_bound_makes_the_party_withdraw():
    fed, *_ = federation(3, layer=CKKS(update_bound=0.001))
    report = fed.run_round()
    assert not report.ok or report.dropouts
    assert "outside the ckks bound" in fed.nodes["p01"].last_error
