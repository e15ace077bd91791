"""What paillier-threshold's decryption costs, beside paillier's single-key decryption, same run.

    python benchmarks/paillier_threshold_costs.py                  # 1M parameters, 2048 bits, t = 2 of 3
    python benchmarks/paillier_threshold_costs.py --params 100000 --threshold 3 --holders 5

One key (two safe primes) serves both layers: the threshold dealer shares it, and the same n, p, q
and model key make a ``paillier`` key, so that both decrypt the SAME encrypted sum of ``parties``
contributions (with every contributor's pads). Timed on the layers' real party objects:

* single key: a ``paillier`` key holder's ``decrypt`` reply (CRT decryption on all cores, pads,
  unpacking, sealing); today's protocol has two of them (decryptor and verifier);
* threshold: each contributor's ``attest`` reply (its proof of plaintext knowledge), each of t
  holders' ``share`` reply (every contributor's attestation checked, decryption shares on all cores
  and the batched proof), the decryptor's ``combine`` (t proofs checked, Lagrange, the lift, pads, unpacking,
  sealing) and the verifier's ``verify`` (t proofs checked, the batch check of the decryptor's
  plaintexts, pads, unpacking, sealing).

The encrypted sum is the product of the ``holders``' real contributions (3 by default: encrypting
100 would take minutes and adds nothing the per-contributor figures do not give); the packing is the
one for ``parties``. Per-contributor costs (an attestation made, an attestation checked) are
reported so that the check at 100 contributors can be read off. The primitives are also timed per
ciphertext, with Damgård–Jurik's share c^(2Δs_i) mod n² (s_i over
Z_{nm}) for comparison. Key generation: the safe primes, then the dealer's sharing, at key_bits.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

import gmpy2
import numpy as np

from securefl.codec import VectorLayout
from securefl.crypto import attestation, paillier
from securefl.crypto import threshold_paillier as tp
from securefl.crypto.keyfiles import write_private
from securefl.layers import Quantize
from securefl.layers.base import RoundContext, StackContext
from securefl.layers.paillier import KeyMaterial, Paillier
from securefl.layers.paillier_threshold import (
    ACK,
    ATTEST,
    COMBINE,
    PUBLIC_FILE,
    SHARE,
    VERIFY,
    PaillierThreshold,
    check_attestation,
    share_file_name,
)
from securefl.layers.shared_key import DECRYPT, ENCRYPT, sum_digest
from securefl.wire import decode_record, encode_record


def _per_ciphertext(key: paillier.PrivateKey, share: tp.KeyShare, samples: int = 30) -> dict:
    n = gmpy2.mpz(key.public.n)
    nsq = n * n
    cs = [paillier.PublicEncryptor(key.public).encrypt(secrets.randbelow(int(n))) for _ in range(samples)]

    def timed(fn) -> float:
        start = time.perf_counter()
        for c in cs:
            fn(c)
        return (time.perf_counter() - start) / samples * 1e3

    dj_exponent = gmpy2.mpz(secrets.randbits(2 * key.public.bits + share.public.delta.bit_length() + 1))
    return {
        "single_key_crt_decrypt_ms": round(timed(key.decrypt), 3),
        "threshold_share_ms": round(timed(lambda c: tp.decryption_share(share, c)), 3),
        "threshold_lift_ms": round(timed(lambda c: gmpy2.powmod(c % n, n, nsq)), 3),
        "damgard_jurik_share_ms": round(timed(lambda c: gmpy2.powmod(c, dj_exponent, nsq)), 3),
    }


def measure(
    params: int,
    parties: int,
    bits: int,
    key_bits: int,
    holders: int,
    threshold: int,
    workers: int,
) -> dict:
    start = time.perf_counter()
    key = paillier.generate_keypair(key_bits)
    primes_s = time.perf_counter() - start
    names = [f"p{i:03d}" for i in range(parties)]
    start = time.perf_counter()
    dealt = tp.deal(key_bits, names[:holders], threshold, primes=(key.p, key.q))
    deal_s = time.perf_counter() - start
    model_key = dealt.shares[names[0]].model_key
    public = paillier.PublicKey(key.public.n, dealt.public.hs)
    material = KeyMaterial(public, model_key, paillier.PrivateKey(public, key.p, key.q, key.gp, key.gq))

    quantize = Quantize(bits, update_bound=1.0)
    context = StackContext(VectorLayout(params - 2), parties, 1, 1.0, {})
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / PUBLIC_FILE).write_text(json.dumps(dealt.public.to_json()))
        for name, share in dealt.shares.items():
            write_private(directory / share_file_name(name), json.dumps(share.to_json()).encode())
        write_private(directory / "single.json", json.dumps(material.to_json()).encode())
        single = Paillier(key_file=str(directory / "single.json"), workers=workers)
        threshold_layer = PaillierThreshold(key_dir=str(directory), workers=workers)
        layers = (single, threshold_layer)
        for layer in layers:
            quantize.validate(context, [], layer)
            layer.validate(context, [quantize])
        single_party = single.party(names[0])
        holder_parties = [threshold_layer.party(name) for name in names[:holders]]

    ids = tuple(names)
    if not threshold <= holders <= parties:
        raise SystemExit("need threshold <= holders <= parties")
    contributors = holders  # every contributor of this layer holds a share
    # Invited: the contributors (the packing is still the one for `parties`, set at validation).
    ctx = RoundContext("ab" * 16, 0, ids[:contributors], params, True, 1)
    rng = np.random.default_rng(0)
    level = (1 << (bits - 1)) - 1
    vector = rng.integers(-level, level + 1, params).astype(np.int64).view(np.uint64)

    # The encrypted sum: `contributors` real contributions of `vector` (threshold parties' encrypt
    # replies, pads and all), multiplied as the aggregator does.
    names_in = list(ids[:contributors])
    everyone = holder_parties
    model = np.zeros(params)  # the global model every contributor trained from (their base)
    for party in everyone:
        party.attach_fuser(lambda total, contributors=None: np.zeros(params), base=lambda: model)
        party.start_round(ctx, lambda: vector)
    start = time.perf_counter()
    replies = [party.respond(ENCRYPT, b"") for party in everyone[:contributors]]
    encrypt_s = (time.perf_counter() - start) / contributors
    width = public.ciphertext_bytes
    nsq = public.nsquare
    product = None
    for reply in replies:
        blob = decode_record(reply, b"PENr", {"count": int}, ("ciphertexts",))[1]["ciphertexts"]
        values = [int.from_bytes(blob[k : k + width], "big") for k in range(0, len(blob), width)]
        product = values if product is None else [a * b % nsq for a, b in zip(product, values, strict=True)]
    summed = b"".join(c.to_bytes(width, "big") for c in product)
    count = len(product)
    digest = sum_digest(summed)
    attest_request = encode_record(b"TATq", {"contributors": sorted(names_in), "sum": digest}, {})
    attest_times, attestations = [], {}
    for party in everyone[:contributors]:
        start = time.perf_counter()
        answer = party.respond(ATTEST, attest_request)
        attest_times.append(time.perf_counter() - start)
        attestations[party.me] = decode_record(answer, b"TATr", {}, ("attestation",))[1]["attestation"]
    start = time.perf_counter()
    check_attestation(
        threshold_layer.public,
        names_in[0],
        attestations[names_in[0]],
        attestation.context(ctx.session, ctx.round, names_in[0], sorted(names_in), digest),
        count,
    )
    check_one_s = time.perf_counter() - start
    # Every contributor acknowledges the attested sum (binding itself to it, naming its base).
    ack_request = encode_record(
        b"TAKq", {"contributors": sorted(names_in), "sum": digest, "of_round": ctx.round}, {}
    )
    acks, bases = {}, set()
    for party in everyone[:contributors]:
        header, parts = decode_record(party.respond(ACK, ack_request), b"TAKr", {"base": str}, ("ack",))
        acks[party.me] = parts["ack"]
        bases.add(header["base"])
    (base,) = bases
    ackers = sorted(acks)
    ack_blob = b"".join(acks[p] for p in ackers)

    def fuser(total, contributors=None):
        return np.zeros(params)

    # Start the worker processes before timing anything (both layers keep them for later rounds).
    if workers > 1:
        from securefl.layers import paillier_threshold
        from securefl.layers.paillier import _POOLS, _decrypt_chunk

        list(_POOLS.get(material, "decrypt", workers).map(_decrypt_chunk, [b""] * workers))
        list(
            paillier_threshold._pool(workers).map(
                tp.share_exponentiation, [3] * workers, [1] * workers, [[]] * workers
            )
        )

    # Single key: one key holder's decrypt reply of the same sum (today two holders make it).
    single_party.attach_fuser(fuser)
    single_party.start_round(ctx, lambda: vector)
    single_party.respond(ENCRYPT, b"")
    start = time.perf_counter()
    reply = single_party.respond(
        DECRYPT, encode_record(b"SKDq", {"contributors": sorted(names_in)}, {"sum": summed})
    )
    single_s = time.perf_counter() - start
    assert b'"sealed":true' in reply

    # Threshold: t holders check the attestations and share; the first combines, the second verifies.
    share_request = encode_record(
        b"TSHq",
        {"contributors": sorted(names_in), "of_round": ctx.round, "ackers": ackers, "base": base},
        {
            "sum": summed,
            "attestations": b"".join(attestations[p] for p in sorted(names_in)),
            "acks": ack_blob,
        },
    )
    share_times, sealed = [], {}
    for party in holder_parties[:threshold]:
        start = time.perf_counter()
        answer = party.respond(SHARE, share_request)
        share_times.append(time.perf_counter() - start)
        sealed[party.me] = decode_record(answer, b"TSHr", {}, ("sealed",))[1]["sealed"]
    chosen = sorted(sealed)
    request = encode_record(
        b"TCBq",
        {
            "contributors": sorted(names_in),
            "holders": chosen,
            "of_round": ctx.round,
            "ackers": ackers,
            "base": base,
        },
        {"sum": summed, "shares": b"".join(sealed[h] for h in chosen), "claim": b"", "acks": ack_blob},
    )
    decryptor, verifier = holder_parties[0], holder_parties[1 % holders]
    start = time.perf_counter()
    answer = decryptor.respond(COMBINE, request)
    combine_s = time.perf_counter() - start
    reply_parts = ("model", "claim", "signature")
    header, parts = decode_record(answer, b"TCBr", {"status": str, "bad": list}, reply_parts)
    assert header["status"] == "sealed" and not header["bad"], header
    verify_s = 0.0
    if verifier is not decryptor:
        request = encode_record(
            b"TCBq",
            {
                "contributors": sorted(names_in),
                "holders": chosen,
                "of_round": ctx.round,
                "ackers": ackers,
                "base": base,
            },
            {
                "sum": summed,
                "shares": b"".join(sealed[h] for h in chosen),
                "claim": parts["claim"],
                "acks": ack_blob,
            },
        )
        start = time.perf_counter()
        checked = verifier.respond(VERIFY, request)
        verify_s = time.perf_counter() - start
        second = decode_record(checked, b"TCBr", {"status": str, "bad": list}, reply_parts)
        assert second[0]["status"] == "sealed" and second[1]["model"] == parts["model"], second[0]

    # Every contributor attests (counted in the holders' work only for the holders among them; the
    # figure per contributor is reported); the holders' checks are inside their share times.
    threshold_total = sum(share_times) + combine_s + verify_s
    return {
        "privacy": "paillier-threshold",
        "params": params,
        "parties": parties,
        "key_bits": key_bits,
        "holders": holders,
        "threshold": threshold,
        "workers": workers,
        "ciphertexts": count,
        "contributors": contributors,
        "encrypt_seconds_per_contributor": round(encrypt_s, 2),
        "attest_seconds_per_contributor": round(float(np.median(attest_times)), 3),
        "attestation_check_seconds_per_contributor": round(check_one_s, 4),
        "keygen_safe_primes_seconds": round(primes_s, 1),
        "keygen_dealer_seconds": round(deal_s, 2),
        "single_key_decrypt_seconds": round(single_s, 2),
        "single_key_protocol_seconds": round(2 * single_s, 2),
        "share_seconds_per_holder": [round(s, 2) for s in share_times],
        "combine_seconds": round(combine_s, 2),
        "verify_seconds": round(verify_s, 2),
        "threshold_total_seconds": round(threshold_total, 2),
        "ratio_vs_one_single_key_decryption": round(threshold_total / single_s, 2),
        "ratio_vs_single_key_protocol": round(threshold_total / (2 * single_s), 2),
        "sealed_share_bytes_per_holder": len(next(iter(sealed.values()))),
        "per_ciphertext": _per_ciphertext(material.private, dealt.shares[names[0]]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--parties", type=int, default=100)
    parser.add_argument("--bits", type=int, default=16, help="quantization bits")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--holders", type=int, default=3)
    parser.add_argument("--threshold", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    result = measure(
        args.params,
        args.parties,
        args.bits,
        args.key_bits,
        args.holders,
        args.threshold,
        args.workers,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
