"""What the ckks layer costs for 1M parameters, beside TenSEAL with NVIDIA FLARE's parameters.

    python benchmarks/ckks_costs.py                  # 1,000,000 parameters, 10 parties
    python benchmarks/ckks_costs.py --params 100000

For each parameter set, in one process: a party's encryption plus serialization and contribution
pads (also timed alone), the bytes it uploads (and the ratio to float32), the aggregator's
deserialize-and-add per party under a context without a secret key, the key holder's removal of
every party's pads and decryption of the sum, and the largest error of the decrypted sum against
the plaintext sum.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time

import numpy as np

from securefl.crypto import ckks


def measure(preset: str, params: int, parties: int, repeat: int) -> dict:
    p = ckks.PRESETS[preset]
    secret = ckks.new_context(p)
    public = ckks.load_context(ckks.serialize(secret, secret=False), p, secret=False)
    rng = np.random.default_rng(0)
    vectors = [rng.normal(0, 1, params) for _ in range(parties)]
    primes = ckks.data_primes(secret)
    seeds = [secrets.token_bytes(32) for _ in range(parties)]  # stand-ins for shared_key.pad_seed
    encrypt_times, pad_times, payloads = [], [], []
    for i in range(parties):
        start = time.perf_counter()
        blobs = ckks.encrypt(secret, vectors[i], p)
        middle = time.perf_counter()
        blobs = [
            ckks.add_pad(secret, b, ckks.pad_words(seeds[i], j, primes, p.poly_modulus_degree))
            for j, b in enumerate(blobs)
        ]
        if i < repeat:
            encrypt_times.append(time.perf_counter() - start)
            pad_times.append(time.perf_counter() - middle)
        payloads.append(blobs)
    total = ckks.CiphertextSum(public, p, params)
    combine_times = []
    for blobs in payloads:
        start = time.perf_counter()
        total.add(blobs)
        combine_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    unpadded = []
    for j, blob in enumerate(total.blobs()):
        pads = [ckks.pad_words(seed, j, primes, p.poly_modulus_degree) for seed in seeds]
        unpadded.append(ckks.add_pad(secret, blob, ckks.pad_sum(pads, primes), subtract=True))
    unpad_s = time.perf_counter() - start
    out = ckks.decrypt(secret, unpadded, params, p)
    decrypt_s = time.perf_counter() - start
    bytes_up = sum(len(b) for b in payloads[0])
    return {
        "preset": preset,
        "poly_modulus_degree": p.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
        "scale_bits": p.scale_bits,
        "encryption": "symmetric" if p.symmetric else "public-key",
        "params": params,
        "parties": parties,
        "ciphertexts": len(payloads[0]),
        "encrypt_serialize_seconds_per_party": round(statistics.median(encrypt_times), 3),
        "bytes_up_per_party": bytes_up,
        "expansion_vs_float32": round(bytes_up / (4 * params), 2),
        "combine_seconds_per_party": round(statistics.median(combine_times), 4),
        "decrypt_seconds": round(decrypt_s, 3),
        "pad_seconds_per_party": round(statistics.median(pad_times), 3),
        "unpad_seconds_all_parties": round(unpad_s, 3),
        "max_error_of_sum": float(np.abs(out - sum(vectors)).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--parties", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = [
        measure(preset, args.params, args.parties, args.repeat) for preset in ("add-only", "wide", "flare")
    ]
    flare = rows[-1]
    for row in rows:
        row["speedup_vs_flare"] = round(
            flare["encrypt_serialize_seconds_per_party"] / row["encrypt_serialize_seconds_per_party"], 2
        )
        row["bytes_vs_flare"] = round(row["bytes_up_per_party"] / flare["bytes_up_per_party"], 2)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
