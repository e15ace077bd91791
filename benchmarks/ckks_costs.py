"""What the ckks layer costs for 1M parameters, beside TenSEAL with NVIDIA FLARE's parameters.

    python benchmarks/ckks_costs.py                  # 1,000,000 parameters, 10 parties
    python benchmarks/ckks_costs.py --params 100000

For each parameter set, in one process: a party's encryption plus serialization, the bytes it
uploads (and the ratio to float32), the aggregator's deserialize-and-add per party under a context
without a secret key, the key holder's decryption of the sum, and the largest error of the
decrypted sum against the plaintext sum.
"""

from __future__ import annotations

import argparse
import json
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
    encrypt_times, payloads = [], []
    for i in range(parties):
        start = time.perf_counter()
        blobs = ckks.encrypt(secret, vectors[i], p)
        if i < repeat:
            encrypt_times.append(time.perf_counter() - start)
        payloads.append(blobs)
    total = ckks.CiphertextSum(public, p, params)
    combine_times = []
    for blobs in payloads:
        start = time.perf_counter()
        total.add(blobs)
        combine_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    out = ckks.decrypt(secret, total.blobs(), params, p)
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
