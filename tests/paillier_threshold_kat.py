"""Known-answer vectors for protocols/paillier-threshold.md, computed INDEPENDENTLY of securefl:
plain Python integers, pow() and hashlib only (no gmpy2, no securefl import), from the spec's
formulas.

    python tests/paillier_threshold_kat.py > protocols/vectors/paillier_threshold.json

The primes are the 128-bit safe primes of protocols/vectors/paillier.json (far too small for real
use); the polynomial, v, h, randomizers and the prover's r are derived from SHA-256 of fixed labels.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
import sys

P = 0xC9E1B9B3A0C5A2B8AF3D6D7E2F5AA567
Q = 0xE2C8F0B5D5C9A6F4C3B3B0E8AE7F1DFF
HOLDERS = ["alice", "bob", "carol", "dave"]
THRESHOLD = 3
SESSION = "0123456789abcdef0123456789abcdef"
ROUND = 7
SUM_DIGEST = "ab" * 32
DOMAIN = b"securefl/paillier-threshold/v1"


def derive(label: str, modulus: int) -> int:
    """A fixed value below ``modulus``: SHA-256 of the label, stretched by counter, reduced."""
    stream = b"".join(hashlib.sha256(f"{label}/{i}".encode()).digest() for i in range(4))
    return int.from_bytes(stream, "big") % modulus


def field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def context(session: str, round_: int, holder: str, digest: str) -> bytes:
    return (
        field(bytes.fromhex(session))
        + field(struct.pack(">I", round_))
        + field(holder.encode())
        + field(bytes.fromhex(digest))
    )


def vectors() -> dict:
    n = P * Q
    nsq = n * n
    m = (P - 1) // 2 * ((Q - 1) // 2)
    n_bytes = (n.bit_length() + 7) // 8
    delta = math.factorial(len(HOLDERS))
    d = pow(n, -1, m)
    coefficients = [d] + [derive(f"coefficient/{k}", m) for k in range(1, THRESHOLD)]
    shares = [sum(a * i**k for k, a in enumerate(coefficients)) % m for i in range(1, len(HOLDERS) + 1)]
    v = pow(derive("v", n), 2, n)
    verification = [pow(v, delta * s, n) for s in shares]
    hs = pow(derive("h", n), n, nsq)

    messages = [42, n - 1, 2**200 + 7]
    randomizers = [derive(f"randomizer/{j}", n) for j in range(len(messages))]
    ciphertexts = [(1 + mj * n) * pow(r, n, nsq) % nsq for mj, r in zip(messages, randomizers, strict=True)]
    xs = [c % n for c in ciphertexts]
    decryption_shares = [[pow(x, 2 * delta * s, n) for x in xs] for s in shares]

    combinations = []
    for subset in itertools.combinations(range(1, len(HOLDERS) + 1), THRESHOLD):
        mu = {}
        for i in subset:
            num, den = delta, 1
            for j in subset:
                if j != i:
                    num *= j
                    den *= j - i
            mu[i] = num // den
        roots, plain = [], []
        for index, c in enumerate(ciphertexts):
            w = 1
            for i in subset:
                w = w * pow(decryption_shares[i - 1][index], 2 * mu[i], n) % n
            u = pow(c, 4 * delta * delta, nsq) * pow(pow(w, n, nsq), -1, nsq) % nsq
            plain.append((u - 1) // n * pow(4 * delta * delta, -1, n) % n)
            roots.append(w)
        combinations.append(
            {
                "holders": list(subset),
                "mu": [mu[i] for i in subset],
                "roots": [hex(w) for w in roots],
                "plaintexts": [hex(x) for x in plain],
            }
        )

    # A batched proof by holder 1 (alice), with a fixed r.
    holder, index = HOLDERS[0], 1
    ctx = context(SESSION, ROUND, holder, SUM_DIGEST)
    ys = decryption_shares[0]
    seed = hashlib.sha256(
        DOMAIN
        + b"/batch"
        + field(ctx)
        + field(struct.pack(">I", index))
        + field(struct.pack(">I", len(xs)))
        + b"".join(x.to_bytes(n_bytes, "big") for x in xs)
        + b"".join(y.to_bytes(n_bytes, "big") for y in ys)
    ).digest()
    stream = hashlib.shake_256(seed).digest(16 * len(xs))
    rho = [int.from_bytes(stream[16 * j : 16 * j + 16], "big") for j in range(len(xs))]
    big_x, big_y = 1, 1
    for x, y, coefficient in zip(xs, ys, rho, strict=True):
        big_x = big_x * pow(x, coefficient, n) % n
        big_y = big_y * pow(y, coefficient, n) % n
    big_x, big_y = pow(big_x, 4, n), pow(big_y, 2, n)
    r_bits = n.bit_length() + delta.bit_length() + 256 + 256
    r = derive("prover-r", 2**r_bits)
    a, b = pow(big_x, r, n), pow(v, r, n)
    challenge = hashlib.sha256(DOMAIN + b"/proof" + field(ctx) + field(struct.pack(">I", index)))
    for value in (v, big_x, verification[0], big_y, a, b):
        challenge.update(field(value.to_bytes(n_bytes, "big")))
    e = int.from_bytes(challenge.digest(), "big")
    z = r + e * delta * shares[0]
    z_bytes = (r_bits + 1 + 7) // 8
    proof = e.to_bytes(32, "big") + z.to_bytes(z_bytes, "big")

    attest = attestation_vector(n, hs)
    return {
        "description": "Known-answer vectors for protocols/paillier-threshold.md "
        "(regenerate: tests/paillier_threshold_kat.py)",
        "key": {
            "p": hex(P),
            "q": hex(Q),
            "n": hex(n),
            "hs": hex(hs),
            "m": hex(m),
            "delta": delta,
            "d": hex(d),
            "threshold": THRESHOLD,
            "holders": HOLDERS,
            "coefficients": [hex(a) for a in coefficients],
            "shares": [hex(s) for s in shares],
            "v": hex(v),
            "verification": [hex(x) for x in verification],
        },
        "ciphertexts": [
            {"m": hex(mj), "r": hex(r_), "c": hex(c)}
            for mj, r_, c in zip(messages, randomizers, ciphertexts, strict=True)
        ],
        "decryption_shares": [[hex(y) for y in row] for row in decryption_shares],
        "combinations": combinations,
        "proof": {
            "holder": holder,
            "session": SESSION,
            "round": ROUND,
            "sum_digest": SUM_DIGEST,
            "batch_coefficients": [hex(x) for x in rho],
            "r": hex(r),
            "proof": proof.hex(),
        },
        "attestation": attest,
    }


ATTEST_DOMAIN = b"securefl/paillier/attest/v1"


def attest_context(session: str, round_: int, party: str, contributors: list[str], digest: str) -> bytes:
    names = b"".join(field(name.encode()) for name in contributors)
    return (
        field(bytes.fromhex(session))
        + field(struct.pack(">I", round_))
        + field(party.encode())
        + field(struct.pack(">I", len(contributors)) + names)
        + field(bytes.fromhex(digest))
    )


def attestation_vector(n: int, hs: int) -> dict:
    """Alice's attestation of a 3-ciphertext contribution (spec, "Attestations"), fixed y and u."""
    nsq, bits = n * n, n.bit_length()
    n_bytes = (bits + 7) // 8
    count = 3
    plaintexts = [derive(f"attest/m/{j}", n) for j in range(count)]
    x_bits = (bits + 1) // 2
    exponents = [derive(f"attest/x/{j}", 2**x_bits) for j in range(count)]
    ciphertexts = [(1 + m * n) * pow(hs, x, nsq) % nsq for m, x in zip(plaintexts, exponents, strict=True)]
    seed = ATTEST_DOMAIN + b"/coefficients" + attest_context(SESSION, ROUND, "", [], SUM_DIGEST)
    stream = hashlib.shake_256(seed).digest(16 * count)
    gammas = [int.from_bytes(stream[i : i + 16], "big") for i in range(0, len(stream), 16)]
    big_d = 1
    for c, g in zip(ciphertexts, gammas, strict=True):
        big_d = big_d * pow(c, g, nsq) % nsq
    m = sum(g * mj for g, mj in zip(gammas, plaintexts, strict=True)) % n
    x = sum(g * xj for g, xj in zip(gammas, exponents, strict=True))
    assert big_d == (1 + m * n) * pow(hs, x, nsq) % nsq
    exponent_bits = x_bits + 128 + count.bit_length()
    u_bits = exponent_bits + 256
    y, u = derive("attest/y", n), derive("attest/u", 2**u_bits)
    a = (1 + y * n) * pow(hs, u, nsq) % nsq
    ctx = attest_context(SESSION, ROUND, "alice", HOLDERS, SUM_DIGEST)
    challenge = hashlib.sha256(ATTEST_DOMAIN + b"/challenge" + field(ctx))
    for value in (n, hs, big_d, a):
        challenge.update(field(value.to_bytes(2 * n_bytes, "big")))
    e = int.from_bytes(challenge.digest()[:16], "big")
    z1, z2 = (y + e * m) % n, u + e * x
    z2_bytes = (exponent_bits + 256 + 1 + 7) // 8
    blob = big_d.to_bytes(2 * n_bytes, "big") + e.to_bytes(16, "big") + z1.to_bytes(n_bytes, "big")
    blob += z2.to_bytes(z2_bytes, "big")
    return {
        "party": "alice",
        "contributors": HOLDERS,
        "plaintexts": [hex(v) for v in plaintexts],
        "exponents": [hex(v) for v in exponents],
        "ciphertexts": [hex(v) for v in ciphertexts],
        "coefficients": [hex(v) for v in gammas],
        "D": hex(big_d),
        "y": hex(y),
        "u": hex(u),
        "attestation": blob.hex(),
    }


if __name__ == "__main__":
    json.dump(vectors(), sys.stdout, indent=1)
    sys.stdout.write("\n")
