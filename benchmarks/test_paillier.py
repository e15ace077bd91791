"""pytest-benchmark suites for Paillier: one 2048-bit ciphertext by each path, phe beside them."""

import secrets

import numpy as np
import pytest
from phe import paillier as phe

from securefl.crypto import paillier
from securefl.crypto.packing import Packing


@pytest.fixture(scope="module")
def key():
    return paillier.generate_keypair(2048)


def test_encrypt_crt_fixed_base(benchmark, key):
    encryptor = paillier.CrtEncryptor(key)
    benchmark(encryptor.encrypt, secrets.randbelow(key.public.n))


def test_encrypt_public_key_djn(benchmark, key):
    encryptor = paillier.PublicEncryptor(key.public)
    benchmark(encryptor.encrypt, secrets.randbelow(key.public.n))


def test_encrypt_textbook(benchmark, key):
    benchmark(key.public.encrypt, secrets.randbelow(key.public.n))


def test_encrypt_phe_one_value(benchmark, key):
    public = phe.PaillierPublicKey(key.public.n)
    benchmark(public.encrypt, 12345)


def test_decrypt_crt(benchmark, key):
    c = paillier.CrtEncryptor(key).encrypt(777)
    benchmark(key.decrypt, c)


def test_combine_two_ciphertexts(benchmark, key):
    encryptor = paillier.CrtEncryptor(key)
    a, b = encryptor.encrypt(1), encryptor.encrypt(2)
    benchmark(key.public.add, a, b)


def test_pack_100k_values(benchmark):
    packing = Packing(16, 100, 2047)
    values = np.random.default_rng(0).integers(-packing.offset, packing.offset + 1, 100_000)
    benchmark(packing.pack, values)
