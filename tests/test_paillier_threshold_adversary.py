"""paillier-threshold against an active aggregator and its colluding parties: each test attempts the
attack — decrypting one party's update — and checks it fails (protocols/paillier-threshold.md,
"Attestations"), and that honest rounds survive contributors that cannot or do not attest."""

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import fixed_delta_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_paillier_threshold import _parties, federation, fresh_copy, keys, mean  # noqa: F401 - keys is a fixture

import securefl
from securefl.crypto import attestation, paillier, signing
from securefl.crypto import threshold_paillier as tp
from securefl.errors import ConfigError, ProtocolError
from securefl.faults import Faults
from securefl.layers import paillier_threshold as layer_module
from securefl.layers.base import SealedModel
from securefl.layers.paillier_threshold import PaillierThreshold
from securefl.wire import decode_record, encode_record

BITS = 512  # tests only
_HONEST_ATTEST = layer_module._ThresholdParty._attest
SESSION, ROUND, DIGEST = "ab" * 16, 3, "cd" * 32


@pytest.fixture(scope="module")
def key():
    return paillier.generate_keypair(BITS)


def _contribution(public, count, rng):
    """An honest contribution: plaintexts, DJN exponents and the ciphertexts they make."""
    enc = paillier.PublicEncryptor(public)
    plaintexts = [int(rng.integers(0, 2**62)) for _ in range(count)]
    exponents = [int(rng.integers(0, 2**62)) for _ in range(count)]
    return plaintexts, exponents, [enc.encrypt_with(m, x) for m, x in zip(plaintexts, exponents, strict=True)]


def _product(nsq, *vectors):
    out = [1] * len(vectors[0])
    for vector in vectors:
        out = [a * b % nsq for a, b in zip(out, vector, strict=True)]
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parties=st.integers(3, 5),
    count=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    strategy=st.sampled_from(["own-opening", "unit", "forged-proof", "honest-replay"]),
)
def test_a_cancelling_contribution_cannot_be_attested(key, parties, count, seed, strategy):
    """The colluder sends Enc(a)·∏ c_p⁻¹ over every honest party but the victim, so that the sum is
    the victim's update plus a. Whatever it attests, the sum's attestations do not multiply right —
    and the sum it would have the holders decrypt is indeed the victim's (the attack is real)."""
    public, nsq = key.public, key.public.nsquare
    rng = np.random.default_rng(seed)
    names = _parties(parties)
    victim, colluder, others = names[0], names[-1], names[1:-1]
    honest = {p: _contribution(public, count, rng) for p in names[:-1]}
    adjust_m, adjust_x, adjust_c = _contribution(public, count, rng)
    inverse = (
        [pow(v, -1, nsq) for v in _product(nsq, *(honest[p][2] for p in others))] if others else [1] * count
    )
    crafted = _product(nsq, adjust_c, inverse)
    total = _product(nsq, *(honest[p][2] for p in names[:-1]), crafted)
    assert [key.decrypt(c) for c in total] == [
        (m + a) % public.n for m, a in zip(honest[victim][0], adjust_m, strict=True)
    ]  # without attestations the holders would decrypt the victim's update (plus a known offset)
    digest = "ef" * 32
    gammas = attestation.coefficients(SESSION, ROUND, digest, count)

    def ctx(party):
        return attestation.context(SESSION, ROUND, party, names, digest)

    values = [
        attestation.check(public, attestation.attest(public, *honest[p][:2], gammas, ctx(p)), ctx(p), count)
        for p in names[:-1]
    ]
    if strategy == "own-opening":  # the one opening the colluder has: Enc(a)
        blob = attestation.attest(public, adjust_m, adjust_x, gammas, ctx(colluder))
    elif strategy == "unit":  # D = 1, plaintext 0: what cancels in a two-party sum
        blob = attestation.attest(public, [0] * count, [0] * count, gammas, ctx(colluder))
    elif strategy == "forged-proof":  # the D the product needs, with a proof it cannot make
        needed = tp.multi_power(crafted, gammas, nsq)
        honest_blob = attestation.attest(public, adjust_m, adjust_x, gammas, ctx(colluder))
        width = 2 * ((public.bits + 7) // 8)
        blob = needed.to_bytes(width, "big") + honest_blob[width:]
    else:  # another party's valid attestation, replayed under the colluder's name
        blob = attestation.attest(public, *honest[victim][:2], gammas, ctx(victim))
    try:
        value = attestation.check(public, blob, ctx(colluder), count)
    except ProtocolError:
        return  # refused outright: no sum the holders would share for
    assert not attestation.matches_sum(public, total, gammas, [*values, value])


def test_attestations_are_bound_to_their_sum_party_and_round(key):
    public = key.public
    rng = np.random.default_rng(1)
    plaintexts, exponents, ciphertexts = _contribution(public, 4, rng)
    names = ["a", "b", "c"]
    gammas = attestation.coefficients(SESSION, ROUND, DIGEST, 4)
    ctx = attestation.context(SESSION, ROUND, "a", names, DIGEST)
    blob = attestation.attest(public, plaintexts, exponents, gammas, ctx)
    value = attestation.check(public, blob, ctx, 4)
    assert value == tp.multi_power(ciphertexts, gammas, public.nsquare)
    for other in (
        attestation.context(SESSION, ROUND + 1, "a", names, DIGEST),
        attestation.context(SESSION, ROUND, "b", names, DIGEST),
        attestation.context(SESSION, ROUND, "a", ["a", "b"], DIGEST),
        attestation.context(SESSION, ROUND, "a", names, "00" * 32),
        attestation.context("00" * 16, ROUND, "a", names, DIGEST),
    ):
        with pytest.raises(ProtocolError):
            attestation.check(public, blob, other, 4)
    assert gammas != attestation.coefficients(SESSION, ROUND, "00" * 32, 4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=900))
def test_attestation_decoder_fails_cleanly(key, blob):
    ctx = attestation.context(SESSION, ROUND, "a", ["a"], DIGEST)
    try:
        attestation.check(key.public, blob, ctx, 2)
    except ProtocolError:
        pass
    except Exception as exc:  # pragma: no cover - the property under test
        assert type(exc).__name__ == "WireError", exc


# --- the layer, with a lying aggregator ------------------------------------------------------------


class _VictimSum(layer_module._Aggregator):
    """An active aggregator: after the honest attestations, it sends the holders the victim's own
    ciphertexts as "the sum" (attack B2), forwarding the honest attestations."""

    victim = "p00"

    def request(self, phase, party):
        if phase == layer_module.SHARE and party in self.asked:
            self._sum = b"".join(
                c.to_bytes(self.public.paillier.ciphertext_bytes, "big")
                for c in self._ciphertexts(self.victim)
            )
        return super().request(phase, party)


class _CancellingColluder(layer_module._Aggregator):
    """An active aggregator colluding with p03: p03's contribution is replaced by Enc(0)·∏ c_p⁻¹ over
    p01 and p02 (the sum becomes p00's update); the aggregator forwards p03's attestation of what it
    really encrypted and skips every check of its own."""

    def close_phase(self, phase, survivors):
        if phase == layer_module.ENCRYPT:
            nsq = self.public.paillier.nsquare
            width = self.public.paillier.ciphertext_bytes
            crafted = [1] * self.count
            for other in ("p01", "p02"):
                crafted = [
                    a * pow(c, -1, nsq) % nsq for a, c in zip(crafted, self._ciphertexts(other), strict=True)
                ]
            blob = b"".join(c.to_bytes(width, "big") for c in crafted)
            self.payloads["p03"] = encode_record(b"PENr", {"count": self.count}, {"ciphertexts": blob})
            self.combined = None  # re-formed from the payloads, crafted one included
        super().close_phase(phase, survivors)

    def _close_attestations(self, survivors):
        pass  # a lying aggregator checks nothing


class _ForgedUnits(layer_module._Aggregator):
    """Attacker C1: the holders are sent the victim's ciphertexts as the sum, with attestations of
    D = 1 (plaintext 0: anyone can prove it) in every other contributor's name. The aggregator has
    no signing key of theirs."""

    victim = "p00"

    def request(self, phase, party):
        if phase == layer_module.SHARE and party in self.asked:
            width = self.public.paillier.ciphertext_bytes
            self._sum = b"".join(c.to_bytes(width, "big") for c in self._ciphertexts(self.victim))
            digest = layer_module.sum_digest(self._sum)
            gammas = attestation.coefficients(self.ctx.session, self.ctx.round, digest, self.count)
            for other in self._named:
                if other != self.victim:
                    ctx = attestation.context(self.ctx.session, self.ctx.round, other, self._named, digest)
                    unit = attestation.attest(
                        self.public.paillier, [0] * self.count, [0] * self.count, gammas, ctx
                    )
                    self.attestations[other] = unit + bytes(signing.SIGNATURE_BYTES)
        return super().request(phase, party)


@pytest.mark.parametrize("aggregator", [_VictimSum, _CancellingColluder, _ForgedUnits])
def test_holders_share_only_for_an_attested_sum(keys, monkeypatch, aggregator):  # noqa: F811
    monkeypatch.setattr(layer_module, "_Aggregator", aggregator)
    fed, _deltas, _weights = federation(keys[(4, 2)], 4)
    shares_made = []
    real = layer_module.compute_shares
    monkeypatch.setattr(
        layer_module, "compute_shares", lambda *a: shares_made.append(a[0].holder) or real(*a)
    )
    report = fed.run_round()
    assert not report.ok
    assert shares_made == []  # no honest holder computed a decryption share of the forged sum
    reasons = " ".join(report.dropouts.values())  # a forged sum breaks the proofs bound to its digest,
    assert "attest" in reasons  # a crafted contribution the product of the attested D's


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_contributors_dropping_or_lying_in_attest_fail_the_round_then_sit_out(keys, monkeypatch, data):  # noqa: F811
    """A contributor that drops or sends an invalid (validly signed) attestation fails the round
    before anything is decrypted — the sum is never re-formed and attested again (attacker 3-1) —
    and sits out: the next round completes with the exact sum of the others; a dropout comes back
    after one round, a liar never."""
    n, t = 5, 3
    parties = _parties(n)
    dropped = data.draw(st.sets(st.sampled_from(parties), max_size=2))
    liars = data.draw(st.sets(st.sampled_from([p for p in parties if p not in dropped]), max_size=1))
    faults = Faults()
    for p in dropped:
        faults.add("offline", p, phase="attest", round=0)

    def attest(self, request):
        reply = _HONEST_ATTEST(self, request)
        if self.me in liars:  # a wrong proof, validly signed by its own sender
            header, parts = decode_record(reply, b"TATr", {}, ("attestation",))
            if parts["attestation"]:
                asked, _ = decode_record(request, b"TATq", {"contributors": list, "sum": str}, ())
                ctx = attestation.context(
                    self.ctx.session, self.ctx.round, self.me, asked["contributors"], asked["sum"]
                )
                blob = bytearray(parts["attestation"][: -signing.SIGNATURE_BYTES])
                blob[-1] ^= 1
                signed = layer_module.sign_attestation(self.material, ctx, bytes(blob))
                reply = encode_record(b"TATr", header, {"attestation": signed})
        return reply

    monkeypatch.setattr(layer_module._ThresholdParty, "_attest", attest)
    fed, deltas, weights = federation(keys[(n, t)], n, faults, seed=data.draw(st.integers(0, 50)))
    report = fed.run_round()
    if not dropped and not liars:
        assert report.ok, report.error
        return
    assert not report.ok and "nothing was decrypted" in report.error
    for liar in liars:
        assert "attestation" in report.dropouts[liar]
    kept = [p for p in parties if p not in dropped and p not in liars]
    enough = max(t, layer_module.quorum(n, t))  # a sum needs more than (invited + t − 1)/2 contributors
    report = fed.run_round()  # the dropouts sit this one out, the liar is refused
    if len(kept) >= enough:
        assert report.ok, report.error
        np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, kept), atol=1e-9)
    back = [p for p in parties if p not in liars]
    report = fed.run_round()
    if len(back) >= enough and len(kept) >= enough:
        assert report.ok, report.error
        expected = mean(deltas, weights, kept) + mean(deltas, weights, back)
        np.testing.assert_allclose(fed.global_vector, expected, atol=1e-9)


# --- lying and dropping combiners: each costs only itself ----------------------------------------


def _lie_short_as(monkeypatch, liars):
    """Combiners in ``liars`` answer 'short' naming nobody bad, whatever the shares (attacker B3)."""
    real = layer_module._ThresholdParty._combine

    def combine(self, request):
        reply = real(self, request)
        if self.me in liars and decode_record(
            reply, b"TCBr", {"status": str, "bad": list}, ("model", "claim", "signature")
        )[0]["status"] in ("sealed", "disputed"):
            return encode_record(
                b"TCBr", {"status": "short", "bad": []}, {"model": b"", "claim": b"", "signature": b""}
            )
        return reply

    monkeypatch.setattr(layer_module._ThresholdParty, "_combine", combine)


def test_a_decryptor_lying_short_is_barred_and_the_round_completes(keys, monkeypatch):  # noqa: F811
    _lie_short_as(monkeypatch, {"p00", "p01"})
    fed, deltas, weights = federation(keys[(4, 2)], 4)
    for _ in range(4):  # every share sender takes the first role in turn
        report = fed.run_round()
        assert report.ok, report.error
    np.testing.assert_allclose(fed.global_vector, 4 * mean(deltas, weights, _parties(4)), atol=1e-9)
    aggregator = fed.aggregator.secure_sum
    assert {"p00", "p01"} <= aggregator.barred


def test_wrong_shares_under_least_work_are_found_by_two_combiners(keys, monkeypatch):  # noqa: F811
    """share_holders = t: a holder sending wrong shares leaves fewer than t valid ones; two combiners
    name it, it is distrusted, and the next rounds complete without it (attacker B4)."""
    _corrupt_shares_of(monkeypatch, "p02")
    fed, _deltas, _weights = federation(keys[(3, 2)], 3, share_holders=2)
    reports = [fed.run_round() for _ in range(5)]
    aggregator = fed.aggregator.secure_sum
    assert "p02" in aggregator.distrusted
    failed = [r for r in reports if not r.ok]
    assert len(failed) <= 1 and all("nothing was revealed" in r.error for r in failed)
    assert reports[-1].ok and "p02" not in aggregator.asked


def test_a_single_share_sender_decrypts_alone(tmp_path):
    """t = 1 with one holder asked: no verifier exists, the decryptor's record is kept (B5)."""
    layer_module.key_ceremony(tmp_path, _parties(3), 1, bits=BITS)
    fed, deltas, weights = federation(tmp_path, 3, share_holders=1)
    report = fed.run_round()
    assert report.ok, report.error
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(3)), atol=1e-9)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_combiners_dropping_in_any_attempt(keys, data):  # noqa: F811
    """Any set of share senders dropping in any decryption phase: while t + 1 attempts find two
    live combiners the round completes with the exact sum; otherwise it fails saying who decrypted."""
    n, t = 4, 2
    parties = _parties(n)
    faults = Faults()
    dropped = data.draw(
        st.dictionaries(
            st.sampled_from(parties),
            st.sampled_from(["combine", "verify", "combine-2", "verify-2"]),
            max_size=3,
        )
    )
    for party, phase in dropped.items():
        faults.add("offline", party, phase=phase)
    fed, deltas, weights = federation(keys[(n, t)], n, faults, seed=data.draw(st.integers(0, 50)))
    report = fed.run_round()
    if report.ok:
        np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, parties), atol=1e-9)
    else:
        assert "no decryption was confirmed" in report.error or "abandoned" in report.error
        assert (
            "nothing was revealed" in report.error
            or "decrypted by" in report.error
            or "abandoned" in report.error
        )
    if len(dropped) == 1:  # one dropped combiner never fails the round
        assert report.ok, report.error


def test_share_files_readable_by_others_or_symlinked_are_refused(tmp_path):
    """A share others could read must be treated as leaked: refused with the fix named; a symlink is
    refused (O_NOFOLLOW); the ceremony tightens an existing loose directory before any secret."""
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    layer_module.key_ceremony(directory, _parties(3), 2, bits=BITS)
    assert directory.stat().st_mode & 0o777 == 0o700
    share = directory / "share-p00.json"
    layer_module.load_share(share)
    share.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        layer_module.load_share(share)
    share.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(share)
    with pytest.raises(ConfigError, match="symlink"):
        layer_module.load_share(link)
    nested = tmp_path / "deep.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    nested.chmod(0o600)
    with pytest.raises(ConfigError, match="not readable JSON"):
        layer_module.load_share(nested)


def _answer_as(monkeypatch, liar, rewrite):
    """``liar``'s combine/verify answers go through ``rewrite(party, request, header, parts)``."""
    real = layer_module._ThresholdParty._combine

    def combine(self, request):
        reply = real(self, request)
        if self.me != liar:
            return reply
        header, parts = decode_record(
            reply, b"TCBr", {"status": str, "bad": list}, ("model", "claim", "signature")
        )
        return rewrite(self, request, header, parts) or reply

    monkeypatch.setattr(layer_module._ThresholdParty, "_combine", combine)


def _is_verification(request):
    return bool(
        decode_record(
            request,
            b"TCBq",
            {"contributors": list, "holders": list, "of_round": int, "ackers": list, "base": str},
            ("sum", "shares", "claim", "acks"),
        )[1]["claim"]
    )


def _wrong_claim(party, request, header, parts):
    """As decryptor: the right record beside a claim with its last bit flipped."""
    if not _is_verification(request) and header["status"] == "sealed":
        claim = bytearray(parts["claim"])
        claim[-1] ^= 1
        return encode_record(
            b"TCBr", header, {"model": parts["model"], "claim": bytes(claim), "signature": parts["signature"]}
        )
    return None


def _corrupt_shares_of(monkeypatch, holder):
    """``holder``'s first decryption share is multiplied by 3 (its proof then fails)."""
    real = layer_module.compute_shares

    def corrupt(key, ciphertexts, workers):
        ys = real(key, ciphertexts, workers)
        if key.holder == holder:
            ys[0] = ys[0] * 3 % key.public.n
        return ys

    monkeypatch.setattr(layer_module, "compute_shares", corrupt)


@pytest.mark.parametrize("liar", ["p00", "p01", "p02"])
def test_a_lone_disputer_costs_only_itself(keys, monkeypatch, liar):  # noqa: F811
    """3 holders, t = 2: a verifier disputing a right claim (attacker C2) — another verifier checks
    the same claim, the round completes, and the disputer alone is named and barred."""

    def dispute(party, request, header, parts):
        if _is_verification(request) and header["status"] == "sealed":
            return encode_record(
                b"TCBr", {"status": "disputed", "bad": []}, {"model": b"", "claim": b"", "signature": b""}
            )
        return None

    _answer_as(monkeypatch, liar, dispute)
    fed, deltas, weights = federation(keys[(3, 2)], 3)
    for rounds in range(1, 4):
        report = fed.run_round()
        assert report.ok, report.error
        np.testing.assert_allclose(fed.global_vector, rounds * mean(deltas, weights, _parties(3)), atol=1e-9)
    aggregator = fed.aggregator.secure_sum
    assert aggregator.barred <= {liar}
    honest = set(_parties(3)) - {liar}
    assert not honest & aggregator.barred and not honest & set(aggregator.culprits())


def test_a_decryptor_with_a_wrong_claim_is_the_one_barred(keys, monkeypatch):  # noqa: F811
    """The decryptor seals the right record beside a wrong claim (attacker C3): the honest verifier
    disputes; the next attempt's claim is byte-identical to no wrong one, so the decryptor is barred
    and the verifier is not."""
    liar = "p01"

    _answer_as(monkeypatch, liar, _wrong_claim)
    fed, deltas, weights = federation(keys[(4, 2)], 4)
    for _ in range(4):
        report = fed.run_round()
        assert report.ok, report.error
    aggregator = fed.aggregator.secure_sum
    assert aggregator.barred == {liar}
    np.testing.assert_allclose(fed.global_vector, 4 * mean(deltas, weights, _parties(4)), atol=1e-9)


def test_a_confirmed_round_is_not_undone_by_later_phases(keys):  # noqa: F811
    """Attacker C4: once a decryption is confirmed the remaining attempt phases are skipped, so a
    party missing them (min_parties = every party) cannot fail a round whose model is out."""
    faults = Faults().add("offline", "p02", phase="combine-2")
    fed, deltas, weights = federation(keys[(3, 2)], 3, faults)
    fed.aggregator.min_parties = 3
    report = fed.run_round()
    assert report.ok, report.error
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(3)), atol=1e-9)


def test_a_bad_share_sender_blaming_the_other_is_found(keys, monkeypatch):  # noqa: F811
    """Attacker C6: with share_holders = t, a holder sends wrong shares and, as decryptor, names the
    honest sender bad. Other contributors combine too; two of them name the liar, who is distrusted."""
    liar = "p02"
    real = layer_module.compute_shares

    def corrupt(key, ciphertexts, workers):
        ys = real(key, ciphertexts, workers)
        if key.holder == liar:
            ys[0] = ys[0] * 3 % key.public.n
        return ys

    def blame_other(party, request, header, parts):
        asked = decode_record(
            request,
            b"TCBq",
            {"contributors": list, "holders": list, "of_round": int, "ackers": list, "base": str},
            ("sum", "shares", "claim", "acks"),
        )
        others = [h for h in asked[0]["holders"] if h != liar]
        return encode_record(
            b"TCBr", {"status": "short", "bad": others}, {"model": b"", "claim": b"", "signature": b""}
        )

    monkeypatch.setattr(layer_module, "compute_shares", corrupt)
    _answer_as(monkeypatch, liar, blame_other)
    fed, _deltas, _weights = federation(keys[(3, 2)], 3, share_holders=2)
    reports = [fed.run_round() for _ in range(6)]
    aggregator = fed.aggregator.secure_sum
    assert liar in aggregator.distrusted and not set(_parties(3)) - {liar} & aggregator.distrusted
    assert all(r.ok for r in reports[-3:])
    assert all("nothing was revealed" in r.error for r in reports if not r.ok)


def _encrypted_party(keys, n, t):  # noqa: F811
    """p00's party object of an n-party, t-threshold key, having encrypted in round 0."""
    from securefl.layers.base import RoundContext

    fed, _deltas, _weights = federation(keys[(n, t)], n)
    party = fed.nodes["p00"].secure_sum
    party.start_round(
        RoundContext("ab" * 16, 0, tuple(_parties(n)), 7, True, 1), lambda: np.zeros(7, np.uint64)
    )
    party.attach_fuser(lambda total, contributors=None: np.zeros(7), base=lambda: np.zeros(7))
    party.respond(layer_module.ENCRYPT, b"")
    return party


def test_a_party_attests_one_sum_a_round(keys):  # noqa: F811
    """Attacker 3-1: with a second attestation in a round, an aggregator left a victim on one sum
    while the others attested another, and the two sums differed by the victim's update."""
    party = _encrypted_party(keys, 3, 2)
    request = encode_record(b"TATq", {"contributors": _parties(3), "sum": "ab" * 32}, {})
    party._attest(request)
    other = encode_record(b"TATq", {"contributors": _parties(3), "sum": "cd" * 32}, {})
    with pytest.raises(ProtocolError, match="one sum a round"):
        party._attest(other)


def test_lying_decryptor_among_three_is_barred_wherever_it_stands(keys, monkeypatch):  # noqa: F811
    """Attacker 3-2: 3 parties, t = 2; a decryptor seals a wrong claim. Its claim goes to a second
    verifier, then to a new decryption by someone else; the round completes and only it is barred."""
    for liar in _parties(3):
        _answer_as(monkeypatch, liar, _wrong_claim)
        fed, deltas, weights = federation(keys[(3, 2)], 3)
        for rounds in range(1, 4):
            report = fed.run_round()
            assert report.ok, (liar, report.error)
        np.testing.assert_allclose(fed.global_vector, 3 * mean(deltas, weights, _parties(3)), atol=1e-9)
        assert fed.aggregator.secure_sum.barred == {liar}
        monkeypatch.undo()


def test_t_minus_1_colluders_cannot_distrust_honest_holders(keys, monkeypatch):  # noqa: F811
    """Attacker 3-3: t = 3; two colluders both answer 'short' naming the honest share senders bad.
    Two agreeing combiners are not t: nobody honest is distrusted and the federation goes on."""
    colluders = {"p00", "p01"}
    real = layer_module._ThresholdParty._combine

    def combine(self, request):
        if self.me not in colluders:
            return real(self, request)
        header, _ = decode_record(
            request,
            b"TCBq",
            {"contributors": list, "holders": list, "of_round": int, "ackers": list, "base": str},
            ("sum", "shares", "claim", "acks"),
        )
        honest = [h for h in header["holders"] if h not in colluders]
        return encode_record(
            b"TCBr", {"status": "short", "bad": honest}, {"model": b"", "claim": b"", "signature": b""}
        )

    monkeypatch.setattr(layer_module._ThresholdParty, "_combine", combine)
    fed, _deltas, _weights = federation(keys[(5, 3)], 5)
    reports = [fed.run_round() for _ in range(3)]
    aggregator = fed.aggregator.secure_sum
    assert not aggregator.distrusted - colluders
    assert any(r.ok for r in reports), [r.error for r in reports]


def test_t_minus_1_colluding_combiners_cannot_confirm_a_forged_model(keys, monkeypatch):  # noqa: F811
    """Attacker 3-4: t = 3; two colluders seal the same forged model (SIV makes them byte-identical).
    A claim needs t − 1 = 2 verifiers beside its decryptor, so an honest one is always among the t:
    the forged model is never accepted."""
    colluders = {"p00", "p01"}
    real = layer_module._ThresholdParty._combine

    def combine(self, request):
        if self.me in colluders:
            honest_fuse = self.fuse
            self.fuse = lambda total, contributors=None: np.full(7, 1000.0)
            try:
                return real(self, request)
            finally:
                self.fuse = honest_fuse
        return real(self, request)

    monkeypatch.setattr(layer_module._ThresholdParty, "_combine", combine)
    fed, deltas, weights = federation(keys[(5, 3)], 5)
    report = fed.run_round()
    assert report.ok, report.error
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(5)), atol=1e-9)
    assert fed.aggregator.secure_sum.barred == colluders  # their record contradicted the confirmed one
    for _ in range(2):  # (holding a forged record for round 0, they withdraw from later rounds)
        fed.run_round()
        assert not np.any(fed.global_vector >= 999.0)


def test_t_minus_1_lying_verifiers_cannot_fail_a_round_after_decryption(keys, monkeypatch):  # noqa: F811
    """Fourth attacker, 2: t = 3, two colluders dispute every claim they verify. A claim is refuted
    only by t verifiers and confirmed by t − 1: the honest claims are confirmed, the liars barred."""
    colluders = {"p03", "p04"}
    real = layer_module._ThresholdParty._combine

    def combine(self, request):
        reply = real(self, request)
        if self.me in colluders and _is_verification(request):
            return encode_record(
                b"TCBr", {"status": "disputed", "bad": []}, {"model": b"", "claim": b"", "signature": b""}
            )
        return reply

    monkeypatch.setattr(layer_module._ThresholdParty, "_combine", combine)
    fed, deltas, weights = federation(keys[(5, 3)], 5)
    report = fed.run_round()
    assert report.ok, report.error
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(5)), atol=1e-9)
    for _ in range(2):
        assert fed.run_round().ok
    assert fed.aggregator.secure_sum.barred <= colluders


def test_a_root_times_minus_one_is_no_lie(key):
    """Fourth attacker, 3: a claim whose root is negated has the right plaintexts; the verifier's
    check (squares) accepts it every time, so no honest verifier disputes it and is judged a liar."""
    rng = np.random.default_rng(3)
    dealt = tp.deal(BITS, ["a", "b", "c"], 2)
    public = dealt.public
    plaintexts = [int(rng.integers(0, 2**60)) for _ in range(4)]
    enc = paillier.PublicEncryptor(public.paillier)
    ciphertexts = [enc.encrypt(m) for m in plaintexts]
    shares = {
        dealt.shares[h].index: [tp.decryption_share(dealt.shares[h], c) for c in ciphertexts] for h in "ab"
    }
    roots = tp.combine_roots(public, shares)
    negated = [public.n - roots[0], *roots[1:]]
    assert all(
        tp.check_decryption(public.n, public.delta, ciphertexts, negated, plaintexts) for _ in range(20)
    )
    wrong = [plaintexts[0] + 1, *plaintexts[1:]]
    assert not tp.check_decryption(public.n, public.delta, ciphertexts, roots, wrong)


def test_a_sum_below_the_quorum_is_not_attested(keys):  # noqa: F811
    """Fourth attacker, 4: two sums of one round over disjoint halves of the invited parties. A party
    attests only a sum of more than (invited + t − 1)/2 contributors: two such sums share an honest
    contributor, which attests one sum a round."""
    party = _encrypted_party(keys, 5, 3)
    assert layer_module.quorum(5, 3) == 4
    half = encode_record(b"TATq", {"contributors": _parties(5)[:3], "sum": "ab" * 32}, {})
    with pytest.raises(ProtocolError, match="quorum"):
        party._attest(half)


def test_an_exposed_sum_is_completed_before_any_new_sum(keys):  # noqa: F811
    """A round whose shares went out but released no model (every combiner dropped) left its sum
    exposed: the next round decrypts THAT sum — by any t live holders, even with a contributor of it
    gone — so its model is released and no second sum of the same updates over another set exists."""
    faults = Faults()
    for party in _parties(4):
        faults.add("offline", party, phase="combine", round=0)
    faults.add("offline", "p03", round=1)
    fed, deltas, weights = federation(keys[(4, 2)], 4, faults)
    report = fed.run_round()
    assert not report.ok
    aggregator = fed.aggregator.secure_sum
    assert aggregator.shares_out
    report = fed.run_round()
    assert report.ok, report.error
    assert aggregator.completing and aggregator.of_round == 0 and aggregator._named == _parties(4)
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(4)), atol=1e-9)
    report = fed.run_round()  # back to new sums
    assert report.ok and not aggregator.completing


# --- acknowledgements: one decryptable sum per unchanged update (spec, "Acknowledgements") ----------


class _SkipsCompletion(layer_module._Aggregator):
    """Attacker C5: an active aggregator that never completes an exposed sum and keeps every sealed
    share it was sent, so that its colluder (any party: it holds the share-sealing key) can decrypt
    every sum for which t shares went out."""

    shares_seen: ClassVar[dict] = {}

    def start_round(self, ctx):
        super().start_round(ctx)
        self.exposed, self.completing, self.of_round = None, False, ctx.round
        self.waiting = set()

    def close_phase(self, phase, survivors):
        if phase == layer_module.SHARE:
            type(self).shares_seen[self.ctx.round] = {p: self._named for p in self.sealed_shares}
        super().close_phase(phase, survivors)


def _sums_decryptable(shares_seen, t):
    """Each round's contributor set whose sum t sealed shares let the colluder decrypt."""
    return {r: next(iter(s.values())) for r, s in shares_seen.items() if len(s) >= t}


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(victim=st.sampled_from(_parties(4)), stop=st.sampled_from(["share", "combine"]))
def test_an_exposed_sum_cannot_be_differenced_with_a_new_sum_of_the_same_updates(
    keys,  # noqa: F811
    monkeypatch,
    victim,
    stop,
):
    """Attacker C5, attempted: round 0's sum over all four is acknowledged and its shares go out
    (or its holders drop: it may have been decrypted all the same) but no model is released; the
    aggregator skips the completion and asks for a sum over the other three in round 1, on the same
    (unchanged) model. Had it got t shares of both, its colluder would read the victim's update as
    the difference. Every party that acknowledged round 0's sum refuses to attest another sum of
    the same update, so round 1 gets no share at all."""
    monkeypatch.setattr(layer_module, "_Aggregator", _SkipsCompletion)
    _SkipsCompletion.shares_seen = {}
    faults = Faults()
    for party in _parties(4):
        faults.add("offline", party, phase=stop, round=0)
    faults.add("offline", victim, round=1)
    fed, _deltas, _weights = federation(keys[(4, 2)], 4, faults)
    assert not fed.run_round().ok
    report = fed.run_round()
    assert not report.ok
    decryptable = _sums_decryptable(_SkipsCompletion.shares_seen, 2)
    assert 1 not in decryptable, "a second sum of the same updates was decrypted"
    assert all(named == _parties(4) for named in decryptable.values())
    assert "acknowledged a sum of its update computed on this same model" in " ".join(
        report.dropouts.values()
    )


def test_a_refusal_marker_does_not_free_the_same_update_for_another_sum(keys, monkeypatch):  # noqa: F811
    """Fourth attacker, 1 (its privacy half): a sum that decrypts to a refusal marker leaves every
    model where it was; a second sum of the same updates over another set (one natural dropout)
    would reveal the dropped party's update. The acknowledgers attest no other sum until a record
    with a model arrives; the stall that remains is stated in the spec."""
    real = layer_module.ThresholdScheme.unpad_and_unpack

    def impossible_in_round_0(self, key, plaintexts, contributors, sum_ctx):
        if sum_ctx.round == 0:
            raise layer_module.ImpossibleSum("a slot left the packing bound")
        return real(self, key, plaintexts, contributors, sum_ctx)

    monkeypatch.setattr(layer_module.ThresholdScheme, "unpad_and_unpack", impossible_in_round_0)
    shares = []
    compute = layer_module.compute_shares
    monkeypatch.setattr(
        layer_module,
        "compute_shares",
        lambda key, *a: shares.append((key.holder, len(a[0]))) or compute(key, *a),
    )
    faults = Faults()
    faults.add("offline", "p02", round=1)
    fed, _deltas, _weights = federation(keys[(4, 2)], 4, faults)
    before = fed.global_vector.copy()
    assert fed.run_round().ok  # a marker is sealed and released: the aggregator cannot tell
    shares.clear()
    report = fed.run_round()
    assert not report.ok and shares == []
    np.testing.assert_array_equal(fed.global_vector, before)


@pytest.mark.parametrize("dropped", [["p03"], ["p02", "p03"]])
def test_contributors_dropping_at_acknowledge(keys, dropped):  # noqa: F811
    """One of four dropping at acknowledge leaves the quorum of three: the round completes. Two
    dropping leave two: nothing is shared; the next round asks them to acknowledge the same sum late
    and completes it (the model is the mean over all four), then new sums resume."""
    faults = Faults()
    for party in dropped:
        faults.add("offline", party, phase="acknowledge", round=0)
    fed, deltas, weights = federation(keys[(4, 2)], 4, faults)
    report = fed.run_round()
    aggregator = fed.aggregator.secure_sum
    if len(dropped) == 1:
        assert report.ok, report.error
    else:
        assert not report.ok and "acknowledged it, 3 are needed" in report.error
        report = fed.run_round()
        assert report.ok, report.error
        assert aggregator.completing and aggregator.of_round == 0
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(4)), atol=1e-9)
    before = fed.global_vector.copy()
    report = fed.run_round()
    assert report.ok and not aggregator.completing
    np.testing.assert_allclose(fed.global_vector - before, mean(deltas, weights, _parties(4)), atol=1e-9)


def test_a_sum_short_of_acknowledgements_is_given_up_and_its_acknowledgers_wait(keys):  # noqa: F811
    """Two of five never come back after attesting: round 0's sum has 3 of the 4 acknowledgements
    its 5 contributors need (t = 3), so no holder shares for it. The aggregator asks for late
    acknowledgements for LATE_ACK_ROUNDS rounds, then gives the sum up; its three acknowledgers
    refuse other sums of the same update, so they are not summed, and with two live parties no
    quorum forms: nothing is ever decrypted (liveness lost, privacy kept)."""
    faults = Faults()
    for party in ("p03", "p04"):
        faults.add("offline", party, phase="acknowledge", round=0)
        for r in range(1, layer_module.LATE_ACK_ROUNDS + 3):
            faults.add("offline", party, round=r)
    shares = []
    fed, _deltas, _weights = federation(keys[(5, 3)], 5, faults)
    for _ in range(layer_module.LATE_ACK_ROUNDS + 3):
        report = fed.run_round()
        assert not report.ok
        shares.append(fed.aggregator.secure_sum.sealed_shares)
    aggregator = fed.aggregator.secure_sum
    assert aggregator.exposed is None and aggregator.waiting == {"p00", "p01", "p02"}
    assert not any(shares)


def test_acknowledgements_are_bound_to_their_sum_and_counted(keys):  # noqa: F811
    """A holder shares only with more than (contributors + t − 1)/2 acknowledgements, each its
    sender's signature on exactly this session, round, contributor list, sum and base model."""
    share = layer_module.load_share(keys[(4, 2)] / layer_module.share_file_name("p01"))
    public = share.public
    named = tuple(_parties(4))
    base = "0f" * 32
    acks = {
        p: layer_module.sign_ack(
            layer_module.load_share(keys[(4, 2)] / layer_module.share_file_name(p)),
            SESSION,
            ROUND,
            named,
            DIGEST,
            base,
        )
        for p in named
    }
    three = sorted(named)[:3]
    blob = b"".join(acks[p] for p in three)
    check = layer_module.check_acks
    assert check(public, SESSION, ROUND, named, DIGEST, three, base, blob) == tuple(three)
    with pytest.raises(ProtocolError, match="3 are needed"):
        check(public, SESSION, ROUND, named, DIGEST, three[:2], base, blob[: 2 * 64])
    for session, round_, digest, model in (
        (SESSION, ROUND + 1, DIGEST, base),
        ("ef" * 16, ROUND, DIGEST, base),
        (SESSION, ROUND, "ee" * 32, base),
        (SESSION, ROUND, DIGEST, "1e" * 32),  # another base model
    ):
        with pytest.raises(ProtocolError, match="does not verify"):
            check(public, session, round_, named, digest, three, model, blob)
    with pytest.raises(ProtocolError, match="does not verify"):  # another contributor list
        check(public, SESSION, ROUND, named[:3], DIGEST, three, base, blob)
    swapped = acks[three[1]] + acks[three[0]] + acks[three[2]]
    with pytest.raises(ProtocolError, match="does not verify"):
        check(public, SESSION, ROUND, named, DIGEST, three, base, swapped)
    with pytest.raises(ProtocolError, match="SHA-256"):
        check(public, SESSION, ROUND, named, DIGEST, three, "nope", blob)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ackers=st.one_of(st.lists(st.sampled_from([*_parties(5), "x", ""]), max_size=6), st.just("p00")),
    blob=st.binary(max_size=400),
)
def test_acknowledgement_decoder_fails_cleanly(keys, ackers, blob):  # noqa: F811
    public = layer_module.load_public(keys[(4, 2)] / "public.json")
    try:
        layer_module.check_acks(public, SESSION, ROUND, tuple(_parties(4)), DIGEST, ackers, "0f" * 32, blob)
    except (ProtocolError, layer_module.WireError):
        pass
    else:
        raise AssertionError("random acknowledgements were accepted")


def test_a_party_acknowledges_only_the_sum_it_attested_last(keys):  # noqa: F811
    party = _encrypted_party(keys, 3, 2)
    attest = encode_record(b"TATq", {"contributors": _parties(3), "sum": "ab" * 32}, {})
    party._attest(attest)
    for names, digest, of_round in (
        (_parties(3), "cd" * 32, 0),
        (_parties(3), "ab" * 32, 1),
        (_parties(3)[:2], "ab" * 32, 0),
    ):
        other = encode_record(b"TAKq", {"contributors": names, "sum": digest, "of_round": of_round}, {})
        with pytest.raises(ProtocolError, match="last one this party attested"):
            party._acknowledge(other)
    request = encode_record(b"TAKq", {"contributors": _parties(3), "sum": "ab" * 32, "of_round": 0}, {})
    party._acknowledge(request)
    base = layer_module.hashlib.sha256(np.zeros(7, "<f8").tobytes()).hexdigest()
    assert party.acknowledged == (0, "ab" * 32, base) and party.acknowledged_bases == {base}


def _forged_release(fed, colluders, label, vector):
    """A record of ``vector`` labelled ``label``, sealed by a colluder (it holds the model key) and
    countersigned by every colluder: what t − 1 parties can release without an honest combiner."""
    from securefl.layers import shared_key

    shares = {p: layer_module.load_share(fed._key_dir / layer_module.share_file_name(p)) for p in colluders}
    key = next(iter(shares.values()))
    names = _parties(4)
    vector = np.asarray(vector, float)  # fused on itself: the model unchanged
    plain = shared_key._record_plaintext(shared_key._MODEL, vector, fed.layout.size, vector)
    aad = shared_key._model_aad("paillier-threshold", fed.session, label, names, "ab" * 32)
    record = encode_record(
        b"SKMD",
        {"round": label, "session": fed.session, "contributors": names, "sum": "ab" * 32},
        {"sealed": shared_key._seal_model(key.model_key, plain, aad)},
    )
    return record, layer_module.countersigned_record(
        record, {p: layer_module.sign_record(s, record) for p, s in shares.items()}
    )


@pytest.mark.parametrize("signers", [None, ["p03"], ["p02", "p03"]])
def test_a_new_label_on_the_old_model_does_not_free_an_acknowledgement(keys, monkeypatch, signers):  # noqa: F811
    """Fifth attacker, 1 and 2: after round 0's sum went out unconfirmed, round 1 is served a record
    of the UNCHANGED model under a new label — sealed by a colluder (bare, or countersigned by the
    t − 1 colluders: refused), or a genuine t-signed release an honest combiner kept on the old model
    re-fused (accepted: it is one). Had the new label freed the acknowledgements, round 1's sum over
    the others (the victim left out) would have been decrypted too. A party is bound by the model's
    content: round 1 yields no share."""
    monkeypatch.setattr(layer_module, "_Aggregator", _SkipsCompletion)
    _SkipsCompletion.shares_seen = {}
    faults = Faults()
    for party in _parties(4):
        faults.add("offline", party, phase="combine", round=0)
    faults.add("offline", "p00", round=1)
    fed, _deltas, _weights = federation(keys[(4, 2)], 4, faults)
    fed._key_dir = keys[(4, 2)]
    assert not fed.run_round().ok
    record, released = _forged_release(fed, signers or ["p03"], 0, np.zeros(7))
    fed.aggregator.sealed = SealedModel(released if signers else record)
    report = fed.run_round()
    assert not report.ok
    assert 1 not in _sums_decryptable(_SkipsCompletion.shares_seen, 2)
    reasons = " ".join(report.dropouts.values())
    if signers == ["p02", "p03"]:
        assert "acknowledged a sum of its update computed on this same model" in reasons
    else:
        assert "combiners" in reasons or "TSGM" in reasons


def test_a_released_model_needs_t_distinct_valid_countersignatures(keys):  # noqa: F811
    fed, _deltas, _weights = federation(keys[(5, 3)], 5)
    fed._key_dir = keys[(5, 3)]
    public = layer_module.load_public(keys[(5, 3)] / "public.json")
    record, two = _forged_release(fed, ["p01", "p02"], 0, np.zeros(7))
    with pytest.raises(ProtocolError, match="2 combiners, 3 are needed"):
        layer_module.open_countersigned(public, two)
    _, three = _forged_release(fed, ["p01", "p02", "p03"], 0, np.zeros(7))
    assert layer_module.open_countersigned(public, three) == record  # t signers: accepted
    header, parts = decode_record(three, b"TSGM", {"signers": list}, ("record", "signatures"))
    other = record[:-1] + bytes([record[-1] ^ 1])
    with pytest.raises(ProtocolError, match="does not verify"):  # signatures on another record
        layer_module.open_countersigned(
            public, encode_record(b"TSGM", header, {"record": other, "signatures": parts["signatures"]})
        )
    doubled = encode_record(
        b"TSGM",
        {"signers": ["p01", "p01", "p02"]},
        {"record": record, "signatures": parts["signatures"]},
    )
    with pytest.raises(layer_module.WireError, match="distinct"):
        layer_module.open_countersigned(public, doubled)
    with pytest.raises(layer_module.WireError):
        layer_module.open_countersigned(public, record)  # a bare record is not a release


def _serve_in_clear(fed, round_, model, parties=None):
    """Rewrite every request of ``round_`` that carries the global model to carry ``model`` in the
    clear instead (an active aggregator choosing what the parties train on)."""
    from securefl.wire import Envelope, pack_array

    for party, handler in list(fed.transport.handlers.items()):
        if parties is not None and party not in parties:
            continue

        def rewritten(data, _handler=handler):
            env = Envelope.decode(data)
            if env.round == round_ and ("model" in env.parts or "sealed_model" in env.parts):
                parts = {k: v for k, v in env.parts.items() if k != "sealed_model"}
                parts["model"] = pack_array(np.asarray(model, dtype=fed.aggregator.spec.wire_dtype))
                data = Envelope(env.kind, env.session, env.round, env.phase, env.party, parts).encode()
            return _handler(data)

        fed.transport.handlers[party] = rewritten


@pytest.mark.parametrize("released", [False, True])
def test_a_model_in_the_clear_cannot_follow_the_initial_one(keys, monkeypatch, released):  # noqa: F811
    """Third attacker, C1/C2: round-1's sum of everyone went out unreleased; in round 2 the
    aggregator serves the others, in the clear, the model they acknowledged it on nudged by one ulp
    (a new content digest, the same update), so that a sum without the victim would be decrypted
    too. A party of a sealed federation takes no clear model once it opened a sealed one, nor a
    clear model other than the first it saw."""
    monkeypatch.setattr(layer_module, "_Aggregator", _SkipsCompletion)
    _SkipsCompletion.shares_seen = {}
    faults = Faults()
    exposed = 1 if released else 0
    for party in _parties(4):
        faults.add("offline", party, phase="combine", round=exposed)
    faults.add("offline", "p00", round=exposed + 1)
    fed, _deltas, _weights = federation(keys[(4, 2)], 4, faults)
    if released:
        assert fed.run_round().ok  # round 0 releases a sealed model everyone opens
    acknowledged_on = fed.global_vector.copy()
    assert not fed.run_round().ok
    nudged = acknowledged_on.copy()
    nudged[0] = np.nextafter(nudged[0], np.inf)
    _serve_in_clear(fed, exposed + 1, nudged)
    report = fed.run_round()
    assert not report.ok
    assert exposed + 1 not in _sums_decryptable(_SkipsCompletion.shares_seen, 2)
    assert "in the clear" in " ".join(report.dropouts.values())


class _ChosenDecryptor(layer_module._Aggregator):
    """An aggregator that makes p03 the first decryptor whenever it can (and invites it even while
    an honest aggregator would let it sit out: an active one chooses every roster)."""

    def resting(self, round):
        return {}

    def _next_decryptor(self):
        if "p03" in self.pool and "p03" not in self.used:
            self.used.add("p03")
            return "p03"
        return super()._next_decryptor()


def test_a_combiner_fuses_a_sum_only_onto_its_contributors_model(keys, monkeypatch):  # noqa: F811
    """Fourth attacker, D1: round 0's sum (p03 absent) went out unreleased; in round 1 the aggregator
    serves p03 — which has seen no model yet — a first model of its choosing (M0 minus the sum's mean,
    one ulp off) and makes it the decryptor of the completion: its honest fusion would have been M0
    again under a new label, freeing every update acknowledged on M0. p03 refuses to fuse onto a
    model the contributors did not train from; another decryptor completes the sum honestly."""
    monkeypatch.setattr(layer_module, "_Aggregator", _ChosenDecryptor)
    faults = Faults()
    faults.add("offline", "p03", round=0)
    for party in _parties(3):
        faults.add("offline", party, phase="combine", round=0)
    fed, deltas, weights = federation(keys[(4, 2)], 4, faults)
    assert not fed.run_round().ok
    chosen = fed.global_vector - mean(deltas, weights, _parties(3))
    chosen[0] = np.nextafter(chosen[0], np.inf)
    _serve_in_clear(fed, 1, chosen, parties={"p03"})
    report = fed.run_round()
    assert report.ok, report.error
    aggregator = fed.aggregator.secure_sum
    assert aggregator.completing and aggregator.decrypted_by[0] != "p03"
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(3)), atol=1e-9)
    assert "fuses the sum onto no other model" in " ".join(report.dropouts.values())


# --- across sessions: the acknowledgements belong to the key share, not to one party object -------


def _second_session(directory, deltas, weights, parties, model=None):
    """A federation (a session, new party objects) over the same key files, from ``model`` (default:
    zeros): what a hostile server does by simply starting a new run with fewer nodes."""
    dim = len(next(iter(deltas.values())))
    return securefl.Federation(
        model if model is not None else {"w": np.zeros(dim)},
        {p: fixed_delta_client(deltas[p], weights[p]) for p in parties},
        [securefl.Quantize(bits=16, update_bound=32767.0), PaillierThreshold(key_dir=directory, workers=1)],
        weight_bound=32767.0,
    )


@pytest.mark.parametrize(
    ("variant", "forget"),
    [("same", False), ("same", True), ("negative zeros", False), ("one ulp", False)],
)
def test_a_second_session_from_the_same_model_cannot_difference_a_party_out(
    keys,  # noqa: F811
    variant,
    forget,
):
    """Attackers of the Flower integration, attempted in-process: session A sums all four parties'
    updates on M0, session B — new party objects over the same shares — the other three's on M0
    again, or on a copy with other bytes that trains to the same update (zeros sent as −0.0, one
    ulp off); the two releases would give p00's update as their weighted difference (with t − 1 = 1
    colluder to open them). A key share that acknowledged a sum trains on no clear model again, so
    session B gets no contribution. With the logs removed (``forget``: the code before the fix, or
    an operator deleting them) the same two sessions do recover p00's update: the harness finds
    the break."""
    directory = fresh_copy(keys[(4, 2)])
    _, deltas, weights = federation(keys[(4, 2)], 4)  # the parties' updates and example counts
    first = _second_session(directory, deltas, weights, _parties(4))  # session A
    assert first.run_round().ok
    release_a = first.global_vector.copy()
    assert list(Path(directory).glob("*.acks"))
    if forget:
        for log in Path(directory).glob("*.acks"):
            log.unlink()
    dim = len(release_a)
    start = {
        "same": np.zeros(dim),
        "negative zeros": -np.zeros(dim),
        "one ulp": np.full(dim, np.nextafter(0.0, 1.0)),
    }[variant]
    others = _parties(4)[1:]
    second = _second_session(directory, deltas, weights, others, {"w": start})
    report = second.run_round()
    if forget:
        assert report.ok
        total_a, total_b = sum(weights.values()), sum(weights[p] for p in others)
        recovered = (total_a * release_a - total_b * second.global_vector) / weights["p00"]
        np.testing.assert_allclose(recovered, deltas["p00"], atol=1e-6)
        return
    assert not report.ok
    np.testing.assert_array_equal(second.global_vector, start)
    reasons = " ".join(report.dropouts.values())
    assert "so it trains on no other model in the clear" in reasons
    assert "a new federation with this key needs a new key ceremony" in reasons


def test_two_sessions_interleaved_before_either_acknowledges_cannot_difference_a_party_out(keys):  # noqa: F811
    """Third attacker: session X trains all four on M0; before X's attest phase the aggregator runs
    a whole round of session Y over the other three from M0 with its zeros sent as −0.0 (other
    bytes, the same update). No log held an acknowledgement when either trained, and the two bases
    differ, so both sums were acknowledged, both released, and one colluder read p00's update as
    4·mean_X − 3·mean_Y. A share now acknowledges sums in one session only: whichever session
    acknowledges second is refused, and at most one of the two sums is ever decryptable."""
    from securefl.wire import Envelope

    directory = fresh_copy(keys[(4, 2)])
    _, deltas, weights = federation(keys[(4, 2)], 4)
    dim = len(next(iter(deltas.values())))
    x = _second_session(directory, deltas, weights, _parties(4), {"w": np.zeros(dim)})
    y = _second_session(directory, deltas, weights, _parties(4)[1:], {"w": -np.zeros(dim)})
    ran, original = [], x.transport.exchange

    def exchange(requests, timeout):
        phases = {Envelope.decode(data).phase for data in requests.values()}
        if "attest" in phases and not ran:
            ran.append(y.run_round())  # session Y's whole round, between X's encrypt and X's attest
        return original(requests, timeout)

    x.transport.exchange = exchange
    report_x = x.run_round()
    (report_y,) = ran
    assert not (report_x.ok and report_y.ok), "both sums of the same updates were released"
    assert report_y.ok and not report_x.ok  # Y acknowledged first; X is refused
    assert "acknowledges sums in one session only" in " ".join(report_x.dropouts.values())


def _restart(fed, pid):
    """``pid``'s process restarts: a new node over the same session and files, as Federation builds it."""
    from securefl.fusion import FedAvg
    from securefl.party import PartyNode

    old = fed.nodes[pid]
    node = PartyNode(
        pid, old.client, old.spec, old.layout, old.stack, old.session, old.weighting,
        old.weight_bound, strategy=FedAvg(), min_parties=old.min_parties, honest=old.honest,
    )  # fmt: skip
    fed.nodes[pid] = node
    fed.transport.handlers[pid] = node.handle
    return node


def test_an_exposed_sum_is_completed_by_contributors_restarted_since(keys):  # noqa: F811
    """Third attacker (liveness): a sum acknowledged by its quorum whose shares went out while every
    combiner's reply was lost must be completed however long that takes. Restarted contributors no
    longer remembered acknowledging it and refused to share for it, while their log refused any new
    sum on the base: every later round failed, for ever. The last acknowledged sum now comes from
    the share's log after a restart, and the exposed sum is completed: the model is the mean of all."""
    from securefl.wire import Envelope

    fed, deltas, weights = federation(keys[(3, 2)], 3)
    original, lose = fed.transport.exchange, [True]

    def exchange(requests, timeout):
        replies = original(requests, timeout)
        phases = {Envelope.decode(data).phase for data in requests.values()}
        if lose[0] and any(p.startswith(("combine", "verify")) for p in phases):
            return []  # the combiners' replies are lost
        return replies

    fed.transport.exchange = exchange
    assert not fed.run_round().ok
    lose[0] = False
    for pid in list(fed.nodes):  # each party process restarts: same session and files
        _restart(fed, pid)
    errors = []
    for _ in range(3):
        report = fed.run_round()
        if report.ok:
            break
        errors.append(report.error)
    assert report.ok, errors
    # The exposed sum of the first round, completed: one step of all three parties' mean.
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(3)), atol=1e-9)


def test_two_acknowledgements_at_once_bind_a_base_once(tmp_path):
    """Found by an attacker: the log's check and append were two steps, so two party objects of one
    share (two sessions hosted concurrently, two processes) both bound one base in 178 of 300 tries,
    and the second write overwrote the first. Check and append are now one step under a lock."""
    import threading

    from securefl.layers.ack_log import AckLog

    for trial in range(40):
        path = tmp_path / f"t{trial}.acks"
        gate, outcomes = threading.Barrier(2), []

        def acknowledge(session, log=AckLog(path), outcomes=outcomes, gate=gate):
            gate.wait()
            try:
                log.record("a" * 64, session, 0, DIGEST)
                outcomes.append("bound")
            except ProtocolError:
                outcomes.append("refused")

        threads = [threading.Thread(target=acknowledge, args=(s,)) for s in ("ab" * 16, "cd" * 16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["bound", "refused"]
        assert len(path.read_bytes().splitlines()) == 1


def test_the_acknowledgement_log_binds_a_base_to_one_sum_durably(tmp_path):
    """Re-acknowledging the same sum is allowed (an exposed sum completed later); another sum on the
    same base is refused, from any AckLog object of the file; a line torn by a crash was never acted
    upon and is ignored; a damaged line is refused, never rewritten; symlinks are not followed."""
    from securefl.layers.ack_log import AckLog

    path = tmp_path / "share-p00.json.acks"
    base, other = "a" * 64, "b" * 64
    log = AckLog(path)
    log.record(base, SESSION, 0, DIGEST)
    log.record(base, SESSION, 0, DIGEST)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(path.read_bytes().splitlines()) == 1
    for session, round_, digest in ((SESSION, 1, DIGEST), ("ef" * 16, 0, DIGEST), (SESSION, 0, "0" * 64)):
        with pytest.raises(ProtocolError, match=r"already acknowledged|in another session"):
            AckLog(path).record(base, session, round_, digest)
    with pytest.raises(ProtocolError, match="acknowledges sums in one session only"):
        AckLog(path).record(other, "ef" * 16, 0, DIGEST)  # another base, but another session
    assert AckLog(path).acknowledged_on(base) == (SESSION, 0)
    assert AckLog(path).acknowledged_on(other) is None
    with path.open("ab") as handle:
        handle.write(b'{"base": "' + other.encode() + b'", "ro')  # torn by a crash
    assert AckLog(path).acknowledged_on(other) is None
    AckLog(path).record(other, SESSION, 2, DIGEST)  # cuts the torn tail off, then appends
    assert AckLog(path).acknowledged_on(other) == (SESSION, 2)
    with path.open("ab") as handle:
        handle.write(b"not json\n")
    with pytest.raises(ConfigError, match="damaged at line 3"):
        AckLog(path)
    link = tmp_path / "link.acks"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        AckLog(link)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(victim=st.sampled_from(_parties(3)))
def test_a_restarted_party_whose_acknowledgement_was_lost_acknowledges_again(keys, victim):  # noqa: F811
    """Found by an attacker (liveness, nobody malicious): with three parties and t = 2 every
    contributor's acknowledgement is needed. One honest party's reply carrying it was lost and the
    party restarted: it no longer remembered attesting the sum, refused to acknowledge it late, and
    every later round failed, for ever. Its log line now names the contributors, so the restarted
    party signs the same acknowledgement again; it still acknowledges no other sum."""

    faults = Faults().add("lose_reply", victim, phase="acknowledge", round=0)
    fed, deltas, weights = federation(keys[(3, 2)], 3, faults=faults)
    assert not fed.run_round().ok
    node = _restart(fed, victim)
    report = fed.run_round()
    assert report.ok, report.error
    # The sum of round 0, completed: one step of all three parties' mean.
    np.testing.assert_allclose(fed.global_vector, mean(deltas, weights, _parties(3)), atol=1e-9)
    # The log lets the restarted share sign that one sum again, and nothing else.
    party = node.secure_sum
    (_, _, round_, digest), *_ = party.acks.entries()
    for contributors, summed in ((_parties(2), digest), (_parties(3), "0" * 64)):
        header = {"contributors": contributors, "sum": summed, "of_round": round_}
        request = encode_record(b"TAKq", header, {})
        party._attested = {}
        with pytest.raises(ProtocolError, match="not the last one"):
            party._acknowledge(request)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(victim=st.sampled_from(_parties(3)), phase=st.sampled_from([None, "attest"]))
def test_one_absent_party_of_three_costs_only_itself(keys, victim, phase):  # noqa: F811
    """Found by an attacker: with three holders and t = 2 the quorum over the invited is all three,
    so one party that is offline — or never answers ``attest`` — failed every round for ever (its
    bench still counted it as invited). Benched and absent parties are now left out of the next
    rosters (``resting``): the others' rounds complete, exactly, and the absent one is invited
    again after a bench that doubles while it stays away."""
    faults = Faults().add("offline", victim, phase=phase)
    fed, deltas, weights = federation(keys[(3, 2)], 3, faults=faults)
    others = [p for p in _parties(3) if p != victim]
    reports = [fed.run_round() for _ in range(8)]
    done = [r for r in reports if r.ok]
    assert len(done) >= 5, [r.error for r in reports]
    assert all(r.survivors == others and victim in r.sidelined for r in done)
    np.testing.assert_allclose(fed.global_vector, len(done) * mean(deltas, weights, others), atol=1e-6)
    assert sum(victim in r.selected for r in reports) >= 3  # invited again after each bench


@pytest.mark.parametrize("names", [5, [], [1], "a"])
def test_a_damaged_contributors_field_refuses_the_log_when_the_party_is_built(tmp_path, names):
    """Found by the re-attacker: a damaged "contributors" field passed the log's check at build and
    surfaced mid-round, inside an acknowledgement."""
    import json

    from securefl.layers.ack_log import AckLog

    path = tmp_path / "share.json.acks"
    entry = {"base": "0" * 64, "round": 0, "session": "s", "sum": "d", "contributors": names}
    path.write_text(json.dumps(entry) + "\n")
    with pytest.raises(ConfigError, match="damaged"):
        AckLog(path)
