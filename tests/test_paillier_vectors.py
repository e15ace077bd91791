"""paillier against protocols/vectors/paillier.json, checked also with plain pow() and phe."""

import json
from pathlib import Path

import numpy as np
import paillier_kat
from phe import paillier as phe

from securefl.crypto import paillier
from securefl.crypto.packing import Packing

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "protocols/vectors/paillier.json").read_text())


def _key():
    k = {name: int(value, 16) for name, value in VECTORS["key"].items()}
    public = paillier.PublicKey(k["n"], k["hs"])
    return paillier.PrivateKey(public, k["p"], k["q"], k["g_p"], k["g_q"]), k


def test_vectors_reproduce():
    assert paillier_kat.vectors() == VECTORS


def test_crt_encryption_equals_textbook_paillier():
    key, k = _key()
    n, nsq, p, q = k["n"], k["n"] ** 2, k["p"], k["q"]
    phe_key = phe.PaillierPrivateKey(phe.PaillierPublicKey(n), p, q)
    encryptor = paillier.CrtEncryptor(key)
    for case in VECTORS["encryptions"]:
        m, x_p, x_q, c = (int(case[f], 16) for f in ("m", "x_p", "x_q", "c"))
        assert encryptor.encrypt_with(m, x_p, x_q) == c
        # independently: r = CRT(g_p^x_p mod p, g_q^x_q mod q); c = (1 + m n) r^n mod n²
        rp, rq = pow(k["g_p"], x_p, p), pow(k["g_q"], x_q, q)
        r = rp + p * ((rq - rp) * pow(p, -1, q) % q)
        assert (1 + m * n) * pow(r, n, nsq) % nsq == c
        assert phe_key.raw_decrypt(c) == m == key.decrypt(c)


def test_packing_vectors():
    v = VECTORS["packing"]
    packing = Packing(v["value_bits"], v["max_summands"], v["plaintext_bits"])
    assert (packing.slot_bits, packing.slots) == (v["slot_bits"], v["slots"])
    for values, expected in zip(v["parties"], v["plaintexts"], strict=True):
        assert [hex(x) for x in packing.pack(np.array(values))] == expected
    summed = [sum(int(p[i], 16) for p in v["plaintexts"]) for i in range(len(v["plaintexts"][0]))]
    assert packing.unpack(summed, len(v["sum"]), len(v["parties"])).tolist() == v["sum"]
