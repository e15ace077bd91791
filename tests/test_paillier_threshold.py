"""paillier-threshold: exact sums under dropouts, t − 1 colluders, wrong shares, proofs bound to
their transcript, key files, the aggregator's view, and fuzzed decoders."""

import contextlib
import itertools
import json
import os
import shutil
import stat
import tempfile

import numpy as np
import pytest
from conftest import fixed_delta_client, reachable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import securefl
from securefl.crypto import paillier
from securefl.crypto import threshold_paillier as tp
from securefl.errors import ConfigError, ProtocolError, WireError
from securefl.faults import Faults
from securefl.layers import paillier_threshold as layer_module
from securefl.layers.paillier_threshold import PaillierThreshold, key_ceremony, load_public, load_share
from securefl.transcript import Transcript

BITS = 512  # tests only


def _parties(n):
    return [f"p{i:02d}" for i in range(n)]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Ceremony outputs: (parties, threshold) -> directory."""
    made = {}
    for n, t in ((3, 2), (4, 2), (5, 3)):
        directory = tmp_path_factory.mktemp(f"keys{n}{t}")
        key_ceremony(directory, _parties(n), t, bits=BITS)
        made[(n, t)] = directory
    return made


def fresh_copy(directory):
    """The ceremony's files without any acknowledgement log: each federation of the tests starts
    from the same initial model, which a share that acknowledged a sum on it refuses ever after."""
    copy = tempfile.mkdtemp(prefix="keys-", dir=directory.parent)
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("*.acks"), dirs_exist_ok=True)
    return copy


def federation(directory, n, faults=None, transcript=None, dim=7, seed=0, **layer_kw):
    rng = np.random.default_rng(seed)
    parties = _parties(n)
    deltas = {p: rng.integers(-200, 200, dim).astype(float) for p in parties}
    weights = {p: int(rng.integers(1, 9)) for p in parties}
    fed = securefl.Federation(
        {"w": np.zeros(dim)},
        {p: fixed_delta_client(deltas[p], weights[p]) for p in parties},
        [
            securefl.Quantize(bits=16, update_bound=32767.0),
            PaillierThreshold(key_dir=fresh_copy(directory), workers=1, **layer_kw),
        ],
        weight_bound=32767.0,
        faults=faults,
        transcript=transcript,
    )
    return fed, deltas, weights


def mean(deltas, weights, parties):
    total = sum(weights[p] for p in parties)
    return sum(weights[p] * deltas[p] for p in parties) / total


# --- the cryptosystem ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dealt():
    return tp.deal(BITS, ["a", "b", "c", "d", "e"], 3)


def _encrypt(public, values):
    enc = paillier.PublicEncryptor(public.paillier)
    return [enc.encrypt(v) for v in values]


def test_every_t_subset_decrypts_and_phe_adds(dealt):
    from phe import paillier as phe

    public = dealt.public
    values = [0, 1, 10**30, public.n - 1]
    cs = _encrypt(public, values)
    phe_public = phe.PaillierPublicKey(public.n)
    total = phe.EncryptedNumber(phe_public, cs[1], 0) + phe.EncryptedNumber(phe_public, cs[2], 0) + 7
    cs.append(total.ciphertext(be_secure=False))
    values.append(1 + 10**30 + 7)
    shares = {s.index: [tp.decryption_share(s, c) for c in cs] for s in dealt.shares.values()}
    for subset in itertools.combinations(shares, public.threshold):
        assert tp.decrypt(public, cs, {i: shares[i] for i in subset}) == values


def test_t_minus_1_colluders_cannot_decrypt(dealt):
    """t − 1 holders pool their shares, and with the aggregator's view (ciphertexts, public key,
    verification keys) try: Lagrange over their own indices (a degree t − 2 guess at f), and every
    way of using their shares with Δ. None gives the plaintext; the combiner refuses fewer than t."""
    public = dealt.public
    secret = 123456789
    (c,) = _encrypt(public, [secret])
    holders = list(dealt.shares.values())
    for colluders in itertools.combinations(holders, public.threshold - 1):
        shares = {s.index: [tp.decryption_share(s, c)] for s in colluders}
        with pytest.raises(ProtocolError, match="exactly 3 shares"):
            tp.decrypt(public, [c], shares)
        mu = tp.lagrange(sorted(shares), public.delta)
        n = public.n
        w = 1
        for i, (y,) in shares.items():
            w = w * pow(y, 2 * mu[i], n) % n
        for guess in (w, *(y for (y,) in shares.values())):
            with contextlib.suppress(ProtocolError):  # inconsistent: the usual outcome
                assert tp.lift_decrypt(n, public.delta, [c], [guess]) != [secret]
        # the shares alone say nothing about d: any secret is consistent with t − 1 points
        assert len(shares) < public.threshold


def test_a_wrong_share_fails_its_proof(dealt):
    public = dealt.public
    cs = _encrypt(public, [5, 6, 7])
    share = dealt.shares["b"]
    ys = [tp.decryption_share(share, c) for c in cs]
    ctx = tp.context("00" * 16, 1, "b", "11" * 32)
    proof = tp.prove(share, cs, ys, ctx)
    assert tp.verify(public, share.index, cs, ys, proof, ctx)
    for j in range(3):
        wrong = list(ys)
        wrong[j] = wrong[j] * 2 % public.n
        assert not tp.verify(public, share.index, cs, wrong, proof, ctx)
        assert not tp.verify(public, share.index, cs, wrong, tp.prove(share, cs, wrong, ctx), ctx)
    other = dealt.shares["c"]  # another holder's (correct) shares under b's name
    theirs = [tp.decryption_share(other, c) for c in cs]
    assert not tp.verify(public, share.index, cs, theirs, tp.prove(other, cs, theirs, ctx), ctx)
    # a decryption with the wrong share is wrong, and the batch check of the verifier says so
    roots = tp.combine_roots(
        public, {1: [tp.decryption_share(dealt.shares["a"], c) for c in cs], 2: ys, 3: theirs}
    )
    assert tp.check_decryption(
        public.n, public.delta, cs, roots, tp.lift_decrypt(public.n, public.delta, cs, roots)
    )
    assert not tp.check_decryption(public.n, public.delta, cs, roots, [5, 6, 8])


@pytest.mark.parametrize(
    "other",
    [
        ("11" * 16, 1, "b", "22" * 32),
        ("00" * 16, 2, "b", "22" * 32),
        ("00" * 16, 1, "c", "22" * 32),
        ("00" * 16, 1, "b", "33" * 32),
    ],
    ids=["session", "round", "party", "sum"],
)
def test_proofs_are_bound_to_session_round_party_and_sum(dealt, other):
    public, share = dealt.public, dealt.shares["b"]
    cs = _encrypt(public, [1, 2])
    ys = [tp.decryption_share(share, c) for c in cs]
    proof = tp.prove(share, cs, ys, tp.context("00" * 16, 1, "b", "22" * 32))
    assert tp.verify(public, share.index, cs, ys, proof, tp.context("00" * 16, 1, "b", "22" * 32))
    assert not tp.verify(public, share.index, cs, ys, proof, tp.context(*other))
    # and to the ciphertexts: the same shares presented for another ciphertext fail
    cs2 = [cs[0], _encrypt(public, [2])[0]]
    assert not tp.verify(public, share.index, cs2, ys, proof, tp.context("00" * 16, 1, "b", "22" * 32))


def test_key_files_are_private_and_checked(keys, tmp_path):
    directory = keys[(3, 2)]
    for p in _parties(3):
        path = directory / f"share-{p}.json"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert load_share(path).holder == p
    public_doc = json.loads((directory / "public.json").read_text())
    assert "share" not in json.dumps(public_doc) and public_doc["threshold"] == 2
    share_doc = json.loads((directory / "share-p00.json").read_text())
    share_doc["share"] = hex(int(share_doc["share"], 16) + 1)
    (tmp_path / "bad.json").write_text(json.dumps(share_doc))
    (tmp_path / "bad.json").chmod(0o600)
    with pytest.raises(ConfigError, match="does not match its published verification key"):
        load_share(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_share(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="belongs to 'p00', not to 'p01'"):
        PaillierThreshold(key_file=str(directory / "share-p00.json")).party("p01")
    with pytest.raises(ConfigError, match=r"key_dir .* or key_file"):
        PaillierThreshold()
    with pytest.raises(ConfigError, match="too weak"):
        os.environ.pop("SECUREFL_ALLOW_TEST_SEEDS")
        try:
            PaillierThreshold(key_dir=str(directory))
        finally:
            os.environ["SECUREFL_ALLOW_TEST_SEEDS"] = "1"


# --- the layer in a federation ---------------------------------------------------------------------


def test_rounds_are_exact_and_the_aggregator_sees_no_secret(keys):
    transcript = Transcript()
    fed, deltas, weights = federation(keys[(4, 2)], 4, transcript=transcript)
    fed.run(2)
    assert all(r.ok for r in fed.history.rounds)
    np.testing.assert_allclose(fed.global_vector, 2 * mean(deltas, weights, deltas), atol=1e-9)
    aggregator = fed.aggregator.secure_sum
    assert not [o for o in reachable(aggregator) if isinstance(o, tp.KeyShare)]
    share = fed.nodes["p00"].secure_sum.material
    model_key, secret = share.model_key, share.share
    width = (secret.bit_length() + 7) // 8
    assert all(
        model_key not in e.data and secret.to_bytes(width, "big") not in e.data for e in transcript.entries
    )
    phases = {e.phase for e in transcript.received()}
    # The first decryption attempt is confirmed: the later attempts' phases are skipped.
    assert phases == {"encrypt", "attest", "acknowledge", "share", "combine", "verify"}


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_every_dropout_pattern_down_to_t(keys, data):
    n, t = data.draw(st.sampled_from([(4, 2), (5, 3)]))
    parties = _parties(n)
    dropped = data.draw(st.sets(st.sampled_from(parties), max_size=n))
    phase = data.draw(st.sampled_from(["encrypt", "share"]))
    faults = Faults()
    for p in dropped:
        faults.add(data.draw(st.sampled_from(["offline", "lose_reply"])), p, phase=phase)
    fed, deltas, weights = federation(keys[(n, t)], n, faults, seed=data.draw(st.integers(0, 100)))
    report = fed.run_round()
    alive = [p for p in parties if p not in dropped]
    # An encrypt dropout leaves fewer contributors: a sum needs a quorum of more than (n + t − 1)/2.
    if len(alive) >= t and (phase != "encrypt" or len(alive) >= layer_module.quorum(n, t)):
        assert report.ok, report.error
        summed = alive if phase == "encrypt" else parties  # a share-phase dropout is still summed
        np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, summed), atol=1e-9)
    else:
        assert not report.ok
        assert any(why in report.error for why in ("nothing was", "no ciphertexts", "abandoned"))


def test_all_dropout_patterns_of_three_holders(keys):
    """n = 3, t = 2: every subset of holders dropping in the share phase."""
    for size in range(4):
        for dropped in itertools.combinations(_parties(3), size):
            faults = Faults()
            for p in dropped:
                faults.add("offline", p, phase="share")
            fed, deltas, weights = federation(keys[(3, 2)], 3, faults)
            report = fed.run_round()
            if 3 - size >= 2:
                assert report.ok, (dropped, report.error)
                np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(3)), atol=1e-9)
            else:
                assert not report.ok and (
                    "nothing was revealed" in report.error or "abandoned" in report.error
                )


def test_a_dropped_combiner_is_replaced_within_the_round(keys):
    """The decryptor of round 1 (p01) drops after it may have decrypted: another share sender
    decrypts and a third verifies in the same round, so the sum it saw is the round's released model
    (a failed round would let the next one difference it: attacker B1)."""
    faults = Faults().add("offline", "p01", phase="combine", round=1)
    fed, deltas, weights = federation(keys[(4, 2)], 4, faults)
    assert fed.run_round().ok
    report = fed.run_round()
    assert report.ok, report.error
    assert fed.aggregator.secure_sum.decryptor == "p01" and "p01" in report.dropouts
    np.testing.assert_allclose(fed.global_vector, 2 * mean(deltas, weights, _parties(4)), atol=1e-9)


def test_a_wrong_decryption_share_is_detected_and_its_sender_dropped(keys, monkeypatch):
    real = layer_module.compute_shares

    def corrupt(key, ciphertexts, workers):
        ys = real(key, ciphertexts, workers)
        if key.holder == "p02":
            ys[0] = ys[0] * 3 % key.public.n
        return ys

    monkeypatch.setattr(layer_module, "compute_shares", corrupt)
    fed, deltas, weights = federation(keys[(4, 2)], 4)
    report = fed.run_round()
    assert report.ok, report.error
    assert "p02" in report.dropouts and "proof failed" in report.dropouts["p02"]
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(4)), atol=1e-9)
    assert "p02" in fed.aggregator.secure_sum.distrusted
    report = fed.run_round()  # p02 is never asked for shares again; the round completes
    assert report.ok and "p02" not in fed.aggregator.secure_sum.asked


def test_below_t_valid_shares_fails_cleanly(keys, monkeypatch):
    real = layer_module.compute_shares

    def corrupt(key, ciphertexts, workers):
        ys = real(key, ciphertexts, workers)
        if key.holder in ("p01", "p02"):
            ys[0] = ys[0] * 3 % key.public.n
        return ys

    monkeypatch.setattr(layer_module, "compute_shares", corrupt)
    fed, _deltas, _weights = federation(keys[(3, 2)], 3)
    report = fed.run_round()
    assert not report.ok and "nothing was revealed" in report.error


def test_a_lying_decryptor_is_caught_by_the_verifier(keys, monkeypatch):
    real = layer_module.lift_all

    def lie(public, ciphertexts, roots, workers):
        plaintexts = real(public, ciphertexts, roots, workers)
        plaintexts[0] = (plaintexts[0] + 1) % public.n
        return plaintexts

    monkeypatch.setattr(layer_module, "lift_all", lie)
    fed, _deltas, _weights = federation(keys[(4, 2)], 4)
    report = fed.run_round()
    assert not report.ok and "contradicts the decryptor" in report.error


def test_share_holders_limits_who_is_asked(keys):
    fed, deltas, weights = federation(keys[(5, 3)], 5, share_holders=3)
    report = fed.run_round()
    assert report.ok and len(fed.aggregator.secure_sum.asked) == 3
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(5)), atol=1e-9)
    with pytest.raises(ConfigError, match="at least the threshold"):
        PaillierThreshold(key_dir=str(keys[(5, 3)]), share_holders=2)


# --- decoders under arbitrary input -----------------------------------------------------------------

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.just("0x1f"),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_JSONISH)
def test_key_documents_fail_cleanly(document):
    with pytest.raises(ConfigError):
        tp.ThresholdPublicKey.from_json(document)
    with pytest.raises(ConfigError):
        tp.KeyShare.from_json(document)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["kind", "n", "hs", "threshold", "holders", "v", "verification", "share", "holder"]),
    _JSONISH,
)
def test_mutated_share_files_fail_cleanly(keys, name, value):
    document = json.loads((keys[(3, 2)] / "share-p00.json").read_text())
    target = document if name in ("kind", "share", "holder") else document["public"]
    target[name] = value
    try:
        share = tp.KeyShare.from_json(document)
    except ConfigError:
        return
    # Only a DJN base changed to another unit mod n² parses (whether it is an n-th residue cannot be
    # checked without the factors): its public key then differs from the ceremony's, and the layer
    # refuses the share as one of another key (PaillierThreshold.party).
    assert name == "hs" and share.public != load_public(keys[(3, 2)] / "public.json")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_share_and_proof_decoders_fail_cleanly(dealt, blob):
    public = dealt.public
    cs = _encrypt(public, [1]) if not hasattr(test_share_and_proof_decoders_fail_cleanly, "cs") else None
    try:
        ys, proof = tp.parse_shares(blob, public, 1)
    except (WireError, ProtocolError):
        ys, proof = [1], blob
    ctx = tp.context("00" * 16, 0, "a", "00" * 32)
    assert tp.verify(public, 1, cs or [3], ys, proof, ctx) is False
    assert (
        tp.verify(public, 1, cs or [3], ys, blob[: public.proof_bytes].ljust(public.proof_bytes, b"\0"), ctx)
        is False
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(max_size=300),
    st.sampled_from(["share", "combine", "verify", "encrypt", "attest", "sign"]),
)
def test_party_requests_fail_cleanly(keys, blob, phase):
    party = PaillierThreshold(key_dir=str(keys[(3, 2)]), workers=1).party("p00")
    from securefl.layers.base import RoundContext

    party.start_round(
        RoundContext("ab" * 16, 0, tuple(_parties(3)), 3, True, 1), lambda: np.zeros(3, np.uint64)
    )
    party.done.add("encrypt")
    with contextlib.suppress(WireError, ProtocolError):
        party.respond(phase, blob)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_key_files_of_any_bytes_fail_cleanly(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "k.json"
    path.write_bytes(blob)
    with pytest.raises(ConfigError):
        load_share(path)
    with pytest.raises(ConfigError):
        load_public(path)


@pytest.mark.slow
def test_2048_bit_ceremony_and_round(tmp_path):
    summary = key_ceremony(tmp_path, _parties(3), 2, bits=2048)
    assert summary["threshold"] == 2
    fed, deltas, weights = federation(tmp_path, 3)
    assert fed.run_round().ok
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(3)), atol=1e-9)


def test_require_holders(keys):
    layer = PaillierThreshold(key_dir=str(keys[(3, 2)]))
    layer.require_holders(_parties(3))
    with pytest.raises(ConfigError, match="p09 hold no share"):
        layer.require_holders([*_parties(3), "p09"])


def test_the_ceremony_never_overwrites(keys):
    directory = keys[(3, 2)]
    before = (directory / "share-p00.json").read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        key_ceremony(directory, _parties(3), 2, bits=BITS)
    assert (directory / "share-p00.json").read_bytes() == before


def test_fixed_dealer_randomness_is_for_tests_only(monkeypatch):
    from securefl.errors import SeedRefused

    monkeypatch.delenv("SECUREFL_ALLOW_TEST_SEEDS")
    with pytest.raises(SeedRefused):
        tp.deal(2048, ["a", "b"], 2, primes=(23, 47), randbelow=lambda bound: 1)
