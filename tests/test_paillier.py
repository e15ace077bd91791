"""paillier: phe compatibility, exact packed sums, the aggregator's view, keys and files."""

import json
import os
import stat

import gmpy2
import numpy as np
import pytest
from conftest import assert_moved_by_ulps, fixed_delta_client, reachable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phe import paillier as phe

import securefl
from securefl.crypto import paillier
from securefl.crypto.packing import Packing
from securefl.crypto.signing import Identities
from securefl.errors import ConfigError, ProtocolError
from securefl.faults import Faults
from securefl.layers import Paillier
from securefl.layers.paillier import KeyMaterial, load_public, save_public
from securefl.transcript import Transcript
from securefl.wire import Envelope, decode_record, encode_record

BITS = 512  # tests only: the suite allows small keys; 2048 is the floor elsewhere


@pytest.fixture(scope="module")
def key():
    return paillier.generate_keypair(BITS)


# --- the cryptosystem ----------------------------------------------------------------------------


@pytest.mark.parametrize("encryptor", ["crt", "public", "textbook"])
def test_phe_decrypts_our_ciphertexts(key, encryptor):
    enc = {
        "crt": paillier.CrtEncryptor(key).encrypt,
        "public": paillier.PublicEncryptor(key.public).encrypt,
        "textbook": key.public.encrypt,
    }[encryptor]
    phe_key = paillier.to_phe(key)
    for m in (0, 1, 12345, key.public.n - 1, int(gmpy2.mpz(key.public.n) // 3)):
        c = enc(m)
        assert phe_key.raw_decrypt(c) == m
        assert key.decrypt(c) == m


def test_keys_convert_to_and_from_phe(key):
    phe_private = paillier.to_phe(key)
    assert phe_private.public_key.n == key.public.n and phe_private.p * phe_private.q == key.public.n
    public, private = phe.generate_paillier_keypair(n_length=BITS)
    ours = paillier.from_phe(private)
    c = paillier.PublicEncryptor(ours.public).encrypt(987654321)
    assert private.raw_decrypt(c) == 987654321
    theirs = public.raw_encrypt(42)
    assert ours.decrypt(theirs) == 42
    with pytest.raises(ConfigError, match="no known generators"):
        paillier.CrtEncryptor(ours)


def test_homomorphic_addition(key):
    enc = paillier.CrtEncryptor(key)
    a, b = 10**20, 7 * 10**19
    assert key.decrypt(key.public.add(enc.encrypt(a), enc.encrypt(b))) == a + b


def test_crt_randomizers_are_n_th_residues_of_full_order_subgroup(key):
    """ρ = c / (1 + m n) must be an n-th residue: ρ^(λ) ≡ 1 (mod n²) with λ = lcm(p−1, q−1)."""
    enc = paillier.CrtEncryptor(key)
    n, nsq = gmpy2.mpz(key.public.n), gmpy2.mpz(key.public.n) ** 2
    lam = gmpy2.lcm(key.p - 1, key.q - 1)
    for m in (0, 5, 99):
        rho = enc.encrypt(m) * gmpy2.invert(1 + m * n, nsq) % nsq
        assert gmpy2.powmod(rho, lam, nsq) == 1
    # generators really generate Z_p^* (safe prime: order is p − 1)
    assert gmpy2.powmod(key.gp, (key.p - 1) // 2, key.p) != 1 and gmpy2.powmod(key.gp, 2, key.p) != 1


@given(st.integers(0, 2**64), st.integers(1, 8))
def test_fixed_base_matches_powmod(x, window):
    table = paillier.FixedBase(7, 2**127 - 1, 65, window)
    assert table.power(x) == gmpy2.powmod(7, x, 2**127 - 1)


def test_small_keys_are_refused_outside_tests(monkeypatch):
    monkeypatch.delenv("SECUREFL_ALLOW_TEST_SEEDS")
    with pytest.raises(ConfigError, match="1024-bit Paillier key is too weak"):
        paillier.generate_keypair(1024)
    with pytest.raises(ConfigError, match="too weak"):
        Paillier(key_bits=1024)


def test_out_of_range_ciphertexts_are_refused(key):
    for bad in (0, key.public.nsquare, key.public.n):  # n shares a factor with n
        with pytest.raises(ProtocolError, match="not a valid ciphertext"):
            key.decrypt(int(bad))


# --- packing ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 24), parties=st.integers(1, 200), data=st.data())
def test_packed_sums_are_exact(bits, parties, data):
    packing = Packing(bits, parties, 511)
    count = data.draw(st.integers(1, 300))
    summands = data.draw(st.integers(1, min(parties, 6)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    extreme = data.draw(st.booleans())
    vectors = [
        np.full(count, data.draw(st.sampled_from([-1, 1])) * packing.offset)
        if extreme
        else rng.integers(-packing.offset, packing.offset + 1, count)
        for _ in range(summands)
    ]
    plaintexts = [sum(col) for col in zip(*(packing.pack(v) for v in vectors), strict=True)]
    np.testing.assert_array_equal(packing.unpack(plaintexts, count, summands), sum(vectors))


def test_packing_layout_of_the_design():
    packing = Packing(16, 100, 2047)
    assert (packing.slot_bits, packing.slots) == (23, 89)
    with pytest.raises(ConfigError, match="does not fit"):
        Packing(40, 2**20, 59)  # 2^20 · (2^40 − 2) needs a 60-bit slot
    with pytest.raises(ValueError, match="exceeds the 8-bit range"):
        Packing(8, 4, 511).pack(np.array([128]))


# --- the layer ----------------------------------------------------------------------------------


def integer_federation(n, faults=None, transcript=None, layer=None, dim=7, seed=0, **kw):
    """Integer deltas and weights with quantize scale 1 (bits 16 → bound 32767): exact sums."""
    rng = np.random.default_rng(seed)
    parties = [f"p{i:02d}" for i in range(n)]
    deltas = {p: rng.integers(-200, 200, dim).astype(float) for p in parties}
    weights = {p: int(rng.integers(1, 9)) for p in parties}
    fed = securefl.Federation(
        {"w": np.zeros(dim)},
        {p: fixed_delta_client(deltas[p], weights[p]) for p in parties},
        [securefl.Quantize(bits=16, update_bound=32767.0), layer or Paillier(key_bits=BITS, workers=1)],
        weight_bound=32767.0,
        faults=faults,
        transcript=transcript,
        **kw,
    )
    return fed, deltas, weights


def exact_mean(deltas, weights, parties):
    total = sum(weights[p] for p in parties)
    return sum(weights[p] * deltas[p] for p in parties) / total


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 7), data=st.data())
def test_sum_exact_for_random_inputs_parties_and_dropouts(n, data):
    parties = [f"p{i:02d}" for i in range(n)]
    dropped = data.draw(st.sets(st.sampled_from(parties[1:]), max_size=n - 1))  # p00 generates the keys
    faults = Faults()
    for p in dropped:
        faults.add(data.draw(st.sampled_from(["offline", "lose_reply"])), p, phase="encrypt", round=1)
    fed, deltas, weights = integer_federation(n, faults, seed=data.draw(st.integers(0, 1000)))
    assert fed.run_round().ok  # round 0: key distribution, everyone contributes
    before = fed.global_vector
    report = fed.run_round()
    survivors = [p for p in parties if p not in dropped]
    assert report.ok and report.sealed and report.survivors == survivors
    np.testing.assert_allclose(fed.global_vector - before, exact_mean(deltas, weights, survivors), atol=1e-9)


def test_the_aggregator_sees_only_ciphertexts_and_the_public_key():
    transcript = Transcript()
    fed, _deltas, _weights = integer_federation(4, transcript=transcript)
    fed.run(2)
    aggregator = fed.aggregator.secure_sum
    # nothing secret anywhere in what the aggregator's side can reach
    secrets_found = [o for o in reachable(aggregator) if isinstance(o, (paillier.PrivateKey, KeyMaterial))]
    assert not secrets_found
    public = aggregator.public
    material = fed.nodes["p00"].secure_sum.material
    assert public == material.public
    # every encrypt-phase payload is a list of values in Z_{n²}, none equal to a packed plaintext
    for entry in transcript.received(phase="encrypt"):
        _header, parts = decode_record(
            Envelope.decode(entry.data).parts["layer"], b"PENr", {"count": int}, ("ciphertexts",)
        )
        width = public.ciphertext_bytes
        values = [
            int.from_bytes(parts["ciphertexts"][i : i + width], "big")
            for i in range(0, len(parts["ciphertexts"]), width)
        ]
        assert all(0 < c < public.nsquare for c in values)
        assert all(c.bit_length() > public.bits for c in values)  # plaintexts are < n; these are not
    # key material crossed the aggregator only sealed: p never appears in what it received
    p_bytes = material.private.p.to_bytes((material.private.p.bit_length() + 7) // 8, "big")
    assert all(p_bytes not in e.data for e in transcript.entries)
    assert all(material.model_key not in e.data for e in transcript.entries)


def test_a_paillier_key_file_others_can_read_or_behind_a_symlink_is_refused(tmp_path):
    """Found by an attacker: full key files (p, q, the model key) were read with a plain read, so a
    0644 copy or a symlink was used without a word. Every way in now holds them to a secret file's
    rules; a public key file stays readable by anyone."""
    path = tmp_path / "paillier.keys.json"
    material = KeyMaterial.generate(BITS)
    material.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    for load in (KeyMaterial.load, load_public, lambda p: Paillier(key_bits=BITS, key_file=str(p))):
        with pytest.raises(ConfigError, match=r"Paillier key file .* is readable by others .*chmod 600"):
            load(path)
    path.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    for load in (KeyMaterial.load, load_public):
        with pytest.raises(ConfigError, match="is a symlink"):
            load(link)
    public = tmp_path / "paillier.pub.json"
    save_public(material.public, public)
    public.chmod(0o644)
    assert load_public(public).n == material.public.n


def test_key_file_mode_has_no_key_phases(tmp_path):
    material = KeyMaterial.generate(BITS)
    material.save(tmp_path / "keys.json")
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600
    transcript = Transcript()
    fed, deltas, weights = integer_federation(
        3, transcript=transcript, layer=Paillier(key_file=str(tmp_path / "keys.json"), workers=1)
    )
    assert fed.run_round().ok
    assert {e.phase for e in transcript.received()} == {"encrypt", "decrypt", "arbitrate"}
    np.testing.assert_allclose(fed.global_vector, exact_mean(deltas, weights, deltas), atol=1e-9)
    save_public(material.public, tmp_path / "public.json")
    assert load_public(tmp_path / "public.json") == material.public
    assert "p" not in json.loads((tmp_path / "public.json").read_text())
    with pytest.raises(ConfigError, match="parties need the full key"):
        Paillier(key_file=str(tmp_path / "public.json")).party("p0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "not a version-1"),
        ("[1]", "invalid Paillier key material"),
        ('{"kind": "securefl-paillier-keys", "version": 1}', "invalid"),
    ],
)
def test_invalid_key_files(tmp_path, text, message):
    path = tmp_path / "k.json"
    path.write_text(text)
    path.chmod(0o600)  # (a readable one is refused before its content is looked at)
    with pytest.raises(ConfigError, match=message):
        KeyMaterial.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        KeyMaterial.load(tmp_path / "missing.json")


def test_truncated_ciphertexts_drop_the_sender():
    fed, deltas, weights = integer_federation(4, Faults().add("truncate", "p02", phase="encrypt"))
    report = fed.run_round()
    assert report.ok and "truncated" in report.dropouts["p02"]
    np.testing.assert_allclose(
        fed.global_vector, exact_mean(deltas, weights, ["p00", "p01", "p03"]), atol=1e-9
    )


def _tamper_ciphertext(to_value):
    def tamper(reply):
        env = Envelope.decode(reply)
        header, parts = decode_record(env.parts["layer"], b"PENr", {"count": int}, ("ciphertexts",))
        width = len(parts["ciphertexts"]) // header["count"]
        first = to_value(int.from_bytes(parts["ciphertexts"][:width], "big"))
        blob = first.to_bytes(width, "big") + parts["ciphertexts"][width:]
        from securefl.wire import encode_record

        layer = encode_record(b"PENr", header, {"ciphertexts": blob})
        return Envelope(env.kind, env.session, env.round, env.phase, env.party, {"layer": layer}).encode()

    return tamper


def test_out_of_range_ciphertext_is_rejected_by_the_aggregator():
    n_bytes = 2 * BITS // 8
    fed, _deltas, _weights = integer_federation(
        4,
        Faults().add(
            "replace", "p03", phase="encrypt", replace=_tamper_ciphertext(lambda c: 2 ** (8 * n_bytes) - 1)
        ),
    )
    report = fed.run_round()
    assert report.ok and "out of range for the public key" in report.dropouts["p03"]


def test_a_sum_beyond_the_packing_is_caught_at_decryption_and_the_model_stays():
    """Paillier is malleable: an in-range tampered ciphertext decrypts to some other value, which no
    check can tell from a real one (integrity in transit is the transport's job). What the decryptor
    does guarantee: a plaintext beyond the packed slots is refused, never decoded — with a sealed
    refusal marker the aggregator cannot tell from a model (F1), which the parties open next round
    and keep the previous model."""
    holder = {}

    def shift(c):
        public = holder["fed"].aggregator.secure_sum.public
        # multiply by Enc(2^(|n|-2), r = 1): adds 2^(|n|-2) to the plaintext, above every slot
        return int(c * (1 + (1 << (public.bits - 2)) * public.n) % public.nsquare)

    fed, *_ = integer_federation(
        4, Faults().add("replace", "p03", phase="encrypt", round=0, replace=_tamper_ciphertext(shift))
    )
    holder["fed"] = fed
    report = fed.run_round()
    # To the aggregator this is a round like any other: nobody is blamed, nothing is said.
    assert report.ok and not report.dropouts and fed.aggregator.sealed is not None
    refusing = [p for p in fed.nodes if fed.nodes[p].secure_sum.refusals]
    assert len(refusing) == 2  # the decryptor and the verifier, locally
    assert all("does not fit the packing" in fed.nodes[p].secure_sum.refusals[0][1] for p in refusing)
    opened = fed.nodes["p00"].open_global(fed.aggregator.sealed.data)
    assert_moved_by_ulps(opened, np.zeros(7))  # the marker keeps the previous model, a few ulps on
    assert fed.run_round().ok  # the parties open the marker, say so, and train from the old model
    assert all(
        any("refusal marker" in why for _r, why in fed.nodes[p].secure_sum.refusals) for p in fed.nodes
    )


def test_overflowing_configuration_is_refused():
    clients = {f"p{i}": fixed_delta_client(np.zeros(2), 1) for i in range(3)}
    with pytest.raises(ConfigError, match="packed values must have 2 to 48 bits"):
        securefl.Federation(
            {"w": np.zeros(2)},
            clients,
            [securefl.Clip(1.0), securefl.Quantize(60), Paillier(key_bits=256)],
            weight_bound=1,
        )


def test_newcomers_without_a_key_holder_fail_cleanly():
    from securefl.randomness import SecureRandom
    from securefl.selection import FixedCount

    fed, *_ = integer_federation(6, selection=FixedCount(2, SecureRandom(seed=3)))
    outcomes = [fed.run_round() for _ in range(8)]
    failures = [r.error for r in outcomes if not r.ok]
    assert outcomes[0].ok
    assert all("no key holder was" in e for e in failures)


def test_generator_dropping_before_granting_fails_the_round():
    fed, *_ = integer_federation(3, Faults().add("offline", "p00", phase="key_grant"))
    report = fed.run_round()
    assert not report.ok and "key holder p00 dropped before granting keys" in report.error


def test_server_optimizer_refused():
    with pytest.raises(ConfigError, match="use strategy 'fedavg'"):
        integer_federation(3, strategy="fedadam")


def test_process_pool_path_gives_the_exact_sum():
    """Enough ciphertexts that encryption and decryption run in worker processes."""
    fed, deltas, weights = integer_federation(3, layer=Paillier(key_bits=BITS, workers=2), dim=3000)
    assert fed.stack.secure_sum.packing(BITS - 1).plaintexts_for(3002) >= 64
    assert fed.run_round().ok
    np.testing.assert_allclose(fed.global_vector, exact_mean(deltas, weights, deltas), atol=1e-9)


# -- signed key distribution (identities bound to the parties' certificates in deployment) -------


def _substitute(magic, header_keys, **replacements):
    """A dishonest aggregator's edit of one request's layer record."""

    def tamper(request: bytes) -> bytes:
        envelope = Envelope.decode(request)
        header, parts = decode_record(envelope.parts["layer"], magic, header_keys)
        parts.update(replacements)
        layer = encode_record(magic, header, parts)
        return Envelope(
            envelope.kind,
            envelope.session,
            envelope.round,
            envelope.phase,
            envelope.party,
            {**envelope.parts, "layer": layer},
        ).encode()

    return tamper


def _signed(n=3):
    return Paillier(key_bits=BITS, workers=1, identities=Identities.generate([f"p{i:02d}" for i in range(n)]))


def test_signed_key_distribution_runs_like_the_unsigned_one():
    fed, deltas, weights = integer_federation(3, layer=_signed())
    fed.run(2)
    assert all(r.ok for r in fed.history.rounds)
    np.testing.assert_allclose(
        fed.global_weights["w"], 2 * exact_mean(deltas, weights, list(deltas)), atol=1e-9
    )


@pytest.mark.parametrize("signed", [True, False])
def test_a_substituted_requester_key_is_refused_by_the_key_holder_only_when_signed(signed):
    attacker = bytes(range(32)) * 2  # two requesters' X25519 keys, chosen by the aggregator
    faults = Faults().add(
        "tamper_request",
        "p00",
        phase="key_grant",
        replace=_substitute(b"SKGq", {"requesters": list, "generate": bool}, channels=attacker),
    )
    fed, *_ = integer_federation(3, faults, layer=_signed() if signed else None)
    report = fed.run_round()
    if signed:
        # The key holder seals to neither substituted key: it skips both requesters and names them
        # (not a withdrawal). This aggregator's own copies of the keys verify, so it concludes the
        # granter lied; with a tampering relay the round is lost, but no key reaches the attacker.
        assert not report.ok
        assert all(fed.nodes[p].secure_sum.material is None for p in ("p01", "p02"))
    else:
        assert fed.nodes["p00"].last_error is None  # sealed to the aggregator's keys: the attack works


def test_keys_from_an_unsigned_channel_are_refused_by_the_requester():
    faults = Faults().add(
        "tamper_request",
        "p01",
        phase="key_install",
        replace=_substitute(b"SKIq", {"granter": str, "fingerprint": str}, granter_channel=bytes(32)),
    )
    fed, _deltas, _weights = integer_federation(3, faults, layer=_signed())
    report = fed.run_round()
    # p01 refuses the keys and says why; one complaint cannot tell a lying requester from a lying
    # granter, so the round fails naming both and nobody is dropped.
    assert fed.nodes["p01"].secure_sum.material is None
    assert not report.ok and not report.dropouts
    assert "granted by p00" in report.error and "p01: ProtocolError: signature of p00 does not verify" in (
        report.error
    )


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(64, 1100),
    parties=st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=6, unique=True),
    count=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_the_summed_pads_equal_the_sum_of_each_partys_pads(bits, parties, count, seed):
    """The decryptor's pad total (keystreams added as 32-bit limbs, one reduction per index) is
    exactly Σ of each party's pads mod n, for any modulus size (pad widths not a multiple of 4
    bytes included)."""
    import random

    from securefl.layers.base import RoundContext
    from securefl.layers.paillier import PaillierScheme

    n = random.Random(seed).getrandbits(bits) | (1 << (bits - 1)) | 1
    material = KeyMaterial(paillier.PublicKey(n, 1), bytes(range(32)))
    ctx = RoundContext("ab" * 16, 3, tuple(sorted(parties)), 10, True, 1)
    expected = [0] * count
    for party in parties:
        expected = [
            a + b for a, b in zip(expected, PaillierScheme.pads(material, ctx, party, count), strict=True)
        ]
    assert PaillierScheme.pad_total(material, ctx, tuple(parties), count) == [e % n for e in expected]
