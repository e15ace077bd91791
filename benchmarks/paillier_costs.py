"""What the paillier layer costs at the reference size, with phe measured in the same run.

    python benchmarks/paillier_costs.py                 # 1M parameters, 2048-bit key, 100 parties
    python benchmarks/paillier_costs.py --params 100000 --repeat 1

It drives the layer's real party and aggregator objects: a party's ``encrypt`` reply (packing, its
contribution pads, and encryption on all cores), the aggregator's combine of one party's
ciphertexts, and the decryptor's ``decrypt`` of a valid sum of all parties (CRT decryption on all
cores, removing every contributor's pads, unpacking, sealing the model); the pads are also timed
alone. phe's per-value
``encrypt`` is timed on a sample and extrapolated (marked as such).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
from phe import paillier as phe

from securefl.codec import VectorLayout
from securefl.crypto import paillier
from securefl.layers import Quantize
from securefl.layers.base import RoundContext, StackContext
from securefl.layers.paillier import KeyMaterial, Paillier
from securefl.layers.shared_key import DECRYPT, ENCRYPT
from securefl.wire import encode_record


def measure(params: int, parties: int, bits: int, key_bits: int, repeat: int, workers: int) -> dict:
    material = KeyMaterial.generate(key_bits)
    with tempfile.TemporaryDirectory() as tmp:
        path = material.save(os.path.join(tmp, "keys.json"))
        layer = Paillier(key_file=str(path), workers=workers)
    quantize = Quantize(bits, update_bound=1.0)
    layout = VectorLayout(params - 2)
    context = StackContext(layout, parties, 1, 1.0, {})
    quantize.validate(context, [], layer)
    layer.validate(context, [quantize])
    ids = tuple(f"p{i:03d}" for i in range(parties))
    ctx = RoundContext("ab" * 16, 0, ids, params, True, 1)
    rng = np.random.default_rng(0)
    level = (1 << (bits - 1)) - 1
    vector = rng.integers(-level, level + 1, params).astype(np.int64).view(np.uint64)

    party = layer.party(ids[0])
    encrypt_times, payload = [], b""
    for attempt in range(repeat + 1):  # the first call also starts the worker processes
        party.start_round(ctx, lambda: vector)
        start = time.perf_counter()
        payload = party.respond(ENCRYPT, b"")
        if attempt:
            encrypt_times.append(time.perf_counter() - start)

    aggregator = layer.aggregator()
    aggregator.start_round(ctx)
    combine_times = []
    for pid in ids[: min(parties, 10)]:
        start = time.perf_counter()
        aggregator.receive(ENCRYPT, pid, payload)
        combine_times.append(time.perf_counter() - start)

    # The decryptor removes the contribution pads of every named contributor: measured apart, for
    # one party's own pads and for the whole round's.
    scheme, count = layer.scheme, layer.packing(material.public.plaintext_bits).plaintexts_for(params + 1)
    start = time.perf_counter()
    own = scheme.pads(material, ctx, ids[0], count)
    pad_one_s = time.perf_counter() - start
    start = time.perf_counter()
    padding = [0] * count
    for pid in ids:
        padding = [a + b for a, b in zip(padding, scheme.pads(material, ctx, pid, count), strict=True)]
    unpad_all_s = time.perf_counter() - start

    # A valid encrypted sum of `parties` contributions (the same vector, each with its own pads):
    # the decryptor's full path, pad removal, unpacking, the counter check, fusing and sealing.
    n = material.public.n
    packed = layer.packing(material.public.plaintext_bits).pack(np.append(vector.view(np.int64), np.int64(1)))
    enc = paillier.CrtEncryptor(material.private)
    width = material.public.ciphertext_bytes
    summed = b"".join(
        enc.encrypt((m * parties + r) % n).to_bytes(width, "big")
        for m, r in zip(packed, padding, strict=True)
    )
    del own
    party.attach_fuser(lambda total, contributors=None: np.zeros(params))
    request = encode_record(b"SKDq", {"contributors": list(ids)}, {"sum": summed})
    decrypt_times = []
    for _ in range(max(1, repeat - 1)):
        party.start_round(ctx, lambda: vector)
        party.respond(ENCRYPT, b"")  # a decryptor decrypts only a sum it contributed to
        start = time.perf_counter()
        reply = party.respond(DECRYPT, request)
        decrypt_times.append(time.perf_counter() - start)
        assert b'"sealed":true' in reply.replace(b" ", b""), "the benchmark's sum was refused"

    phe_key = phe.PaillierPublicKey(material.public.n)
    sample = 40
    start = time.perf_counter()
    for value in range(sample):
        phe_key.encrypt(value)
    phe_per_value = (time.perf_counter() - start) / sample

    encrypt_s = statistics.median(encrypt_times)
    packing = layer.packing(material.public.plaintext_bits)
    return {
        "privacy": "paillier",
        "params": params,
        "parties": parties,
        "key_bits": key_bits,
        "value_bits": bits,
        "workers": workers,
        "slots_per_ciphertext": packing.slots,
        "ciphertexts": packing.plaintexts_for(params),
        "encrypt_seconds_per_party": round(encrypt_s, 3),
        "encrypt_microseconds_per_value": round(encrypt_s / params * 1e6, 3),
        "phe_encrypt_ms_per_value_sampled": round(phe_per_value * 1e3, 3),
        "phe_whole_vector_seconds_extrapolated": round(phe_per_value * params, 1),
        "speedup_vs_phe_per_value": round(phe_per_value / (encrypt_s / params)),
        "bytes_up_per_party": len(payload),
        "expansion_vs_float32": round(len(payload) / (4 * params), 3),
        "combine_seconds_per_party": round(statistics.median(combine_times), 4),
        "decrypt_seconds": round(statistics.median(decrypt_times), 2),
        "pad_seconds_per_party": round(pad_one_s, 3),
        "unpad_seconds_all_parties": round(unpad_all_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--parties", type=int, default=100)
    parser.add_argument("--bits", type=int, default=16, help="quantization bits")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(json.dumps(measure(args.params, args.parties, args.bits, args.key_bits, args.repeat, args.workers)))


if __name__ == "__main__":
    main()
