"""paillier-threshold against protocols/vectors/paillier_threshold.json (an independent computation:
plain ints and pow, tests/paillier_threshold_kat.py), and phe on the same key."""

import dataclasses
import json
from pathlib import Path

import paillier_threshold_kat
from phe import paillier as phe

from securefl.crypto import threshold_paillier as tp

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "protocols/vectors/paillier_threshold.json").read_text()
)
K = VECTORS["key"]


def _public() -> tp.ThresholdPublicKey:
    return tp.ThresholdPublicKey(
        int(K["n"], 16),
        int(K["hs"], 16),
        K["threshold"],
        tuple(K["holders"]),
        int(K["v"], 16),
        tuple(int(x, 16) for x in K["verification"]),
    )


def _shares() -> dict[str, tp.KeyShare]:
    public = _public()
    return {
        name: tp.KeyShare(public, name, int(s, 16), bytes(32))
        for name, s in zip(K["holders"], K["shares"], strict=True)
    }


def _ciphertexts() -> list[int]:
    return [int(c["c"], 16) for c in VECTORS["ciphertexts"]]


def test_vectors_reproduce():
    assert paillier_threshold_kat.vectors() == VECTORS


def test_the_dealer_reproduces_the_vectors_key():
    """deal() with the vectors' primes and their draws (coefficients, then v and h) gives the
    vectors' shares, v, verification keys and h_s."""
    n = int(K["n"], 16)
    draws = iter(
        [int(a, 16) for a in K["coefficients"][1:]]
        + [paillier_threshold_kat.derive("v", n) - 2, paillier_threshold_kat.derive("h", n) - 2]
    )
    dealt = tp.deal(
        256,
        K["holders"],
        K["threshold"],
        primes=(int(K["p"], 16), int(K["q"], 16)),
        randbelow=lambda _: next(draws),
    )
    assert dataclasses.replace(dealt.public, signing=()) == _public()  # signing keys: the OS CSPRNG
    assert [hex(dealt.shares[h].share) for h in K["holders"]] == K["shares"]


def test_decryption_shares_and_every_combination():
    shares, cs = _shares(), _ciphertexts()
    for row, name in zip(VECTORS["decryption_shares"], K["holders"], strict=True):
        assert [hex(tp.decryption_share(shares[name], c)) for c in cs] == row
    public = _public()
    for combo in VECTORS["combinations"]:
        chosen = {i: [int(y, 16) for y in VECTORS["decryption_shares"][i - 1]] for i in combo["holders"]}
        mu = tp.lagrange(combo["holders"], public.delta)
        assert [mu[i] for i in combo["holders"]] == combo["mu"]
        roots = tp.combine_roots(public, chosen)
        assert [hex(w) for w in roots] == combo["roots"]
        assert [hex(m) for m in tp.decrypt(public, cs, chosen)] == combo["plaintexts"]
        assert combo["plaintexts"] == [c["m"] for c in VECTORS["ciphertexts"]]


def test_proof_vector():
    v = VECTORS["proof"]
    share = _shares()[v["holder"]]
    ctx = tp.context(v["session"], v["round"], v["holder"], v["sum_digest"])
    ys = [int(y, 16) for y in VECTORS["decryption_shares"][0]]
    proof = tp.prove(share, _ciphertexts(), ys, ctx, r=int(v["r"], 16))
    assert proof.hex() == v["proof"]
    assert tp.verify(_public(), 1, _ciphertexts(), ys, proof, ctx)


def test_phe_adds_our_ciphertexts_and_decrypts_only_with_the_factors():
    """The public key is phe's (g = n + 1): phe's EncryptedNumber adds our ciphertexts, and the
    threshold decryption of phe's sum is the sum; phe itself decrypts only with p and q, which no
    holder has (here, from the vectors' dealer)."""
    n = int(K["n"], 16)
    public = phe.PaillierPublicKey(n)
    a, b = (phe.EncryptedNumber(public, c, 0) for c in _ciphertexts()[:2])
    total = (a + b + public.encrypt(5)).ciphertext(be_secure=False)
    shares = _shares()
    chosen = {shares[h].index: [tp.decryption_share(shares[h], total)] for h in K["holders"][1:]}
    expected = (42 + n - 1 + 5) % n
    assert tp.decrypt(_public(), [total], chosen) == [expected]
    private = phe.PaillierPrivateKey(public, int(K["p"], 16), int(K["q"], 16))
    assert private.raw_decrypt(total) == expected


def test_attestation_vector():
    """The contribution attestation (spec, "Attestations") from fixed y and u, independently
    computed; it checks, and its D is the γ-combination of the contribution's ciphertexts."""
    from securefl.crypto import attestation, paillier

    v = VECTORS["attestation"]
    public = paillier.PublicKey(int(K["n"], 16), int(K["hs"], 16))
    plaintexts = [int(x, 16) for x in v["plaintexts"]]
    exponents = [int(x, 16) for x in v["exponents"]]
    encryptor = paillier.PublicEncryptor(public)
    ciphertexts = [encryptor.encrypt_with(m, x) for m, x in zip(plaintexts, exponents, strict=True)]
    assert [hex(c) for c in ciphertexts] == v["ciphertexts"]
    gammas = attestation.coefficients(
        VECTORS["proof"]["session"],
        VECTORS["proof"]["round"],
        VECTORS["proof"]["sum_digest"],
        len(plaintexts),
    )
    assert [hex(g) for g in gammas] == v["coefficients"]
    ctx = attestation.context(
        VECTORS["proof"]["session"],
        VECTORS["proof"]["round"],
        v["party"],
        v["contributors"],
        VECTORS["proof"]["sum_digest"],
    )
    draws = iter([int(v["y"], 16), int(v["u"], 16)])
    blob = attestation.attest(public, plaintexts, exponents, gammas, ctx, randbelow=lambda _: next(draws))
    assert blob.hex() == v["attestation"]
    assert hex(attestation.check(public, blob, ctx, len(plaintexts))) == v["D"]
    assert attestation.matches_sum(public, ciphertexts, gammas, [int(v["D"], 16)])
