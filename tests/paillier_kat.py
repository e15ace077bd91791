"""Known-answer vectors for protocols/paillier.md.

    SECUREFL_ALLOW_TEST_SEEDS=1 python tests/paillier_kat.py > protocols/vectors/paillier.json

The key is a fixed 256-bit test key (safe primes of 128 bits, far too small for real use).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from securefl.crypto import paillier
from securefl.crypto.packing import Packing

P = 0xC9E1B9B3A0C5A2B8AF3D6D7E2F5A7C63
Q = 0xE2C8F0B5D5C9A6F4C3B3B0E8AE7F1D9B


def _find_key() -> paillier.PrivateKey:
    """Deterministic: the first safe primes at or above P and Q, and their smallest generators."""
    import gmpy2

    def next_safe(x: int) -> int:
        x |= 1
        while not (gmpy2.is_prime(x, 40) and gmpy2.is_prime((x - 1) // 2, 40)):
            x += 2
        return x

    def smallest_generator(p: int) -> int:
        g = 2
        while pow(g, 2, p) == 1 or pow(g, (p - 1) // 2, p) == 1:
            g += 1
        return g

    p, q = next_safe(P), next_safe(Q)
    n = p * q
    public = paillier.PublicKey(n, pow(3, n, n * n))
    return paillier.PrivateKey(public, p, q, smallest_generator(p), smallest_generator(q))


KEY = _find_key()


def vectors() -> dict:
    key = KEY
    n = key.public.n
    enc = paillier.CrtEncryptor(key)
    cases = []
    for m, x_p, x_q in ((0, 1, 1), (42, 123456789, 987654321), (n - 1, key.p - 2, key.q - 2)):
        cases.append({"m": hex(m), "x_p": hex(x_p), "x_q": hex(x_q), "c": hex(enc.encrypt_with(m, x_p, x_q))})
    packing = Packing(8, 4, key.public.plaintext_bits)
    parties = [[-127, 0, 127, 5, -5], [1, 2, 3, 4, 5], [127, 127, -127, -127, 0]]
    packed = [[hex(x) for x in packing.pack(np.array(v))] for v in parties]
    return {
        "description": "Known-answer vectors for protocols/paillier.md (regenerate: tests/paillier_kat.py)",
        "key": {
            "n": hex(n),
            "p": hex(key.p),
            "q": hex(key.q),
            "g_p": hex(key.gp),
            "g_q": hex(key.gq),
            "hs": hex(key.public.hs),
        },
        "encryptions": cases,
        "packing": {
            "value_bits": 8,
            "max_summands": 4,
            "plaintext_bits": packing.plaintext_bits,
            "slot_bits": packing.slot_bits,
            "slots": packing.slots,
            "parties": parties,
            "plaintexts": packed,
            "sum": [int(x) for x in np.sum(parties, axis=0)],
        },
    }


if __name__ == "__main__":
    json.dump(vectors(), sys.stdout, indent=1)
    sys.stdout.write("\n")
