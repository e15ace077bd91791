"""secagg against protocols/vectors/secagg.json."""

import json
from pathlib import Path

import numpy as np
import secagg_kat

from securefl.crypto import channel, prg, shamir

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "protocols/vectors/secagg.json").read_text())


def test_prg_vector():
    v = VECTORS["primitives"]["prg"]
    assert prg.expand(bytes.fromhex(v["seed"]), 8).tolist() == v["words_u32"]


def test_key_agreement_vector_is_symmetric():
    v = VECTORS["primitives"]["agree"]
    key = channel.agree(
        bytes.fromhex(v["private_a"]), bytes.fromhex(v["public_b"]), bytes.fromhex(v["context"])
    )
    assert key.hex() == v["key"] == v["symmetric"]


def test_protocol_runs_reproduce_the_vectors_byte_for_byte():
    assert secagg_kat.vectors() == VECTORS


def test_vector_sums_are_the_contributors_inputs():
    for record in VECTORS["rounds"]:
        expected = sum(np.array(VECTORS["inputs"][p], dtype=np.uint64) for p in record["contributors"])
        assert record["sum"] == (expected & np.uint64(2**32 - 1)).tolist()
        assert set(record["contributors"]) == set(record["parties"]) - set(record["dropped_after_share"])


def test_reconstruction_vector_corrects_two_wrong_shares():
    v = VECTORS["reconstruction"]
    shares = {int(x): bytes.fromhex(h) for x, h in v["shares"].items()}
    outcome = shamir.reconstruct(shares, v["threshold"], 32)
    assert outcome.secret.hex() == v["secret"] == bytes(range(100, 132)).hex()
    assert list(outcome.wrong) == v["wrong"] == [2, 6]
