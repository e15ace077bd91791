"""pytest-benchmark suites for paillier-threshold at 2048 bits: one ciphertext's decryption share,
lift and single-key CRT decryption side by side; a batched proof and its check over 64 ciphertexts."""

import secrets

import pytest

from securefl.crypto import paillier
from securefl.crypto import threshold_paillier as tp

BATCH = 64


@pytest.fixture(scope="module")
def keys():
    key = paillier.generate_keypair(2048)
    dealt = tp.deal(2048, ["a", "b", "c"], 2, primes=(key.p, key.q))
    encryptor = paillier.PublicEncryptor(dealt.public.paillier)
    ciphertexts = [encryptor.encrypt(secrets.randbelow(key.public.n)) for _ in range(BATCH)]
    return key, dealt, ciphertexts


def test_single_key_crt_decrypt(benchmark, keys):
    key, _dealt, cs = keys
    benchmark(key.decrypt, cs[0])


def test_threshold_decryption_share(benchmark, keys):
    _key, dealt, cs = keys
    benchmark(tp.decryption_share, dealt.shares["a"], cs[0])


def test_threshold_combine_and_lift(benchmark, keys):
    _key, dealt, cs = keys
    shares = {s.index: [tp.decryption_share(s, cs[0])] for s in list(dealt.shares.values())[:2]}
    benchmark(tp.decrypt, dealt.public, cs[:1], shares)


def test_batched_proof(benchmark, keys):
    _key, dealt, cs = keys
    share = dealt.shares["a"]
    ys = [tp.decryption_share(share, c) for c in cs]
    ctx = tp.context("00" * 16, 0, "a", "11" * 32)
    benchmark(tp.prove, share, cs, ys, ctx)


def test_batched_proof_check(benchmark, keys):
    _key, dealt, cs = keys
    share = dealt.shares["a"]
    ys = [tp.decryption_share(share, c) for c in cs]
    ctx = tp.context("00" * 16, 0, "a", "11" * 32)
    proof = tp.prove(share, cs, ys, ctx)
    assert benchmark(tp.verify, dealt.public, share.index, cs, ys, proof, ctx)
