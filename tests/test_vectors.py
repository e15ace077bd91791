"""The implementation against the known-answer vectors in protocols/vectors/."""

import json
from pathlib import Path

import numpy as np
import pytest

from securefl.crypto import fixedpoint
from securefl.errors import WireError
from securefl.randomness import SecureRandom
from securefl.roundinfo import RoundInfo
from securefl.wire import Envelope, pack_array, unpack_array

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors"
WIRE = json.loads((VECTORS / "wire.json").read_text())
FIXED = json.loads((VECTORS / "fixedpoint.json").read_text())


@pytest.mark.parametrize("vector", WIRE["arrays"], ids=lambda v: v["dtype"])
def test_array_vectors(vector):
    data = bytes.fromhex(vector["hex"])
    expected = np.array(vector["values"], dtype=vector["dtype"]).reshape(vector["shape"])
    np.testing.assert_array_equal(unpack_array(data, vector["dtype"], tuple(vector["shape"])), expected)
    assert pack_array(expected) == data


@pytest.mark.parametrize("vector", WIRE["envelopes"], ids=lambda v: v["kind"])
def test_envelope_vectors(vector):
    data = bytes.fromhex(vector["hex"])
    envelope = Envelope.decode(data)
    assert (envelope.kind, envelope.session, envelope.round, envelope.phase, envelope.party) == (
        vector["kind"],
        vector["session"],
        vector["round"],
        vector["phase"],
        vector["party"],
    )
    assert {k: v.hex() for k, v in envelope.parts.items()} == vector["parts"]
    rebuilt = Envelope(
        vector["kind"],
        vector["session"],
        vector["round"],
        vector["phase"],
        vector["party"],
        {k: bytes.fromhex(v) for k, v in vector["parts"].items()},
    )
    assert rebuilt.encode() == data


def test_round_info_vectors():
    for vector in WIRE["round_info"]:
        info = RoundInfo.decode(bytes.fromhex(vector["hex"]))
        assert info == RoundInfo(
            vector["round"], tuple(vector["parties"]), vector["min_parties"], vector["config"]
        )
        assert info.encode().hex() == vector["hex"]


@pytest.mark.parametrize("vector", WIRE["invalid"], ids=lambda v: v["why"])
def test_invalid_vectors_are_refused(vector):
    with pytest.raises(WireError):
        Envelope.decode(bytes.fromhex(vector["hex"]))


def test_fixedpoint_vectors():
    scale, k = FIXED["scale"], FIXED["modulus_bits"]
    assert scale == fixedpoint.max_level(FIXED["bits"]) / FIXED["bound"]
    encoded = []
    for party in FIXED["parties"]:
        enc = fixedpoint.encode(np.array(party["values"]), scale, k, SecureRandom())
        assert enc.tolist() == party["encoded"]
        encoded.append(enc)
    total = fixedpoint.reduce(sum(encoded), k)
    assert total.tolist() == FIXED["sum_encoded"]
    assert fixedpoint.decode(total, scale, k).tolist() == FIXED["sum_decoded"]
