"""secagg / secagg+: exact sums under dropouts in every phase, the aggregator's view, attacks."""

import hashlib
import math

import numpy as np
import pytest
from conftest import fixed_delta_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import securefl
from securefl.crypto import shamir, signing
from securefl.errors import ConfigError, ProtocolError, WireError
from securefl.faults import Faults
from securefl.layers import Identities, SecAgg, SecAggPlus, secagg
from securefl.layers.secagg import _accusation, _share_width
from securefl.transcript import Transcript
from securefl.wire import Envelope, decode_record, encode_record, unpack_array

BOUND = 2**23 - 1  # quantize(bits=24) with this bound has scale exactly 1: integers encode exactly
DIM = 6
PASSIVE = ("advertise", "share", "masked", "unmask")
ACTIVE = ("advertise", "share", "masked", "consistency", "unmask")
UNMASK_REPLY = {"self": list, "secret": list, "disputed": list}


def integer_federation(layer, n, faults=None, transcript=None, dim=DIM, seed=0):
    """Parties with integer deltas and weights, so the revealed integer sum is known exactly."""
    rng = np.random.default_rng(seed)
    parties = [f"p{i:02d}" for i in range(n)]
    deltas = {p: rng.integers(-50, 50, dim).astype(float) for p in parties}
    weights = {p: int(rng.integers(1, 9)) for p in parties}
    clients = {p: fixed_delta_client(deltas[p], weights[p]) for p in parties}
    fed = securefl.Federation(
        {"w": np.zeros(dim)},
        clients,
        [securefl.Quantize(bits=24, update_bound=float(BOUND)), layer],
        weight_bound=float(BOUND),
        faults=faults,
        transcript=transcript,
    )
    return fed, deltas, weights


def expected_sum(deltas, weights, parties, dim=DIM):
    """The plaintext sum of the survivors' protected vectors [w·Δ, w, n_eval], modulo 2^32."""
    total = np.zeros(dim + 2, dtype=np.int64)
    for p in parties:
        total[:dim] += (weights[p] * deltas[p]).astype(np.int64)
        total[dim] += weights[p]
    return total.astype(np.uint64) & np.uint64(2**32 - 1)


def revealed(fed):
    return fed.aggregator.secure_sum.result()


def complete_graph_outcome(n, drops, phases):
    """Whether a complete-graph round must succeed, and whose inputs it sums (see the spec)."""
    t = max(2, math.ceil(2 * (n - 1) / 3 - 1e-9))
    parties = {f"p{i:02d}" for i in range(n)}

    def alive_after(phase):
        return {p for p in parties if p not in drops or phases.index(drops[p]) > phases.index(phase)}

    u1 = alive_after("advertise")
    if len(u1) - 1 < t:
        return False, None
    u2, u3 = alive_after("share"), alive_after("masked")
    if len(u3) < t:
        return False, None
    if "consistency" in phases and len(alive_after("consistency")) < t + 1:  # s = t + 1 signers
        return False, None
    u5 = alive_after("unmask")
    for owner in u2:
        if len(u5 - {owner}) < t:
            return False, None
    return True, u3


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 10), active=st.booleans(), data=st.data())
def test_complete_graph_exact_sum_under_random_dropouts(n, active, data):
    parties = [f"p{i:02d}" for i in range(n)]
    phases = ACTIVE if active else PASSIVE
    drops = data.draw(st.dictionaries(st.sampled_from(parties), st.sampled_from(phases), max_size=n))
    faults = Faults()
    for party, phase in drops.items():
        faults.add(data.draw(st.sampled_from(["offline", "lose_reply"])), party, phase=phase)
    layer = SecAgg(identities=Identities.generate(parties) if active else None)
    fed, deltas, weights = integer_federation(layer, n, faults)
    report = fed.run_round()
    should_succeed, survivors = complete_graph_outcome(n, drops, phases)
    assert report.ok == should_succeed, (report.error, drops)
    if report.ok:
        assert report.survivors == sorted(survivors)
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, survivors))
    else:
        np.testing.assert_array_equal(fed.global_vector, np.zeros(DIM))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(6, 16), degree=st.sampled_from([2, 4]), data=st.data())
def test_secagg_plus_exact_sum_or_clean_failure(n, degree, data):
    parties = [f"p{i:02d}" for i in range(n)]
    drops = data.draw(
        st.dictionaries(st.sampled_from(parties), st.sampled_from(PASSIVE), max_size=max(1, n // 4))
    )
    faults = Faults()
    for party, phase in drops.items():
        faults.add("offline", party, phase=phase)
    fed, deltas, weights = integer_federation(SecAggPlus(degree=degree), n, faults)
    report = fed.run_round()
    if report.ok:
        # On a random sparse graph a party that kept its connection can still lose too many
        # neighbours and withdraw (with a reason): the sum must be exactly the contributors'.
        could_contribute = [p for p in parties if drops.get(p) not in ("advertise", "share", "masked")]
        assert set(report.survivors) <= set(could_contribute)
        for party in set(could_contribute) - set(report.survivors):
            assert party in report.dropouts or party in report.sidelined, (party, report.dropouts)
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, report.survivors))
    else:
        assert "nothing is revealed" in report.error or "parties left" in report.error, report.error
        np.testing.assert_array_equal(fed.global_vector, np.zeros(DIM))


@pytest.mark.parametrize("phase", PASSIVE)
@pytest.mark.parametrize("layer", ["secagg", "secagg+"])
def test_one_dropout_in_each_phase_is_survived(layer, phase):
    sa = SecAgg() if layer == "secagg" else SecAggPlus(degree=4)
    fed, deltas, weights = integer_federation(sa, 12, Faults().add("offline", "p03", phase=phase))
    report = fed.run_round()
    assert report.ok, report.error
    survivors = [p for p in deltas if p != "p03" or phase == "unmask"]
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, survivors))


def test_thirty_percent_dropouts_after_masked_input():
    """Parties that vanish after sending masked input are summed; those just before are not."""
    faults = Faults()
    for p in ("p01", "p04", "p07"):
        faults.add("lose_reply", p, phase="masked")
    fed, deltas, weights = integer_federation(SecAgg(), 10, faults)
    report = fed.run_round()
    survivors = [p for p in deltas if p not in ("p01", "p04", "p07")]
    assert report.ok and report.survivors == survivors
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, survivors))


def test_below_threshold_fails_cleanly_and_next_round_works():
    faults = Faults()
    for p in ("p00", "p01", "p02"):
        faults.add("offline", p, phase="unmask", round=0)
    fed, _deltas, _weights = integer_federation(SecAgg(), 5, faults)
    report = fed.run_round()
    assert not report.ok and "the threshold is 3, nothing is revealed" in report.error
    np.testing.assert_array_equal(fed.global_vector, np.zeros(DIM))
    assert fed.run_round().ok


# --- the aggregator's view ------------------------------------------------------------------------


def test_masked_inputs_look_uniform():
    transcript = Transcript()
    fed, *_ = integer_federation(SecAgg(), 4, transcript=transcript, dim=200_000)
    assert fed.run_round().ok
    for entry in transcript.received(phase="masked"):
        _, parts = decode_record(
            Envelope.decode(entry.data).parts["layer"], b"SAMr", {"unopened": list}, ("masked", "accusations")
        )
        words = unpack_array(parts["masked"])
        assert words.dtype == np.uint32
        counts = np.bincount((words >> np.uint32(24)).astype(np.int64), minlength=256)
        expected = words.size / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 400, chi2  # 255 degrees of freedom: p < 1e-7 beyond this
        # unmasked, most coordinates would be tiny: here the top byte is spread evenly
        assert counts.max() < 2 * expected


def revealed_shares(transcript, round=None):
    """For each owner: how many self-mask shares and key shares the aggregator received."""
    self_counts, key_counts = {}, {}
    for entry in transcript.received(round=round, phase="unmask"):
        envelope = Envelope.decode(entry.data)
        if envelope.kind != "reply":
            continue
        header, _ = decode_record(envelope.parts["layer"], b"SAUr", UNMASK_REPLY, ("shares", "one_time"))
        for owner in header["self"]:
            self_counts[owner] = self_counts.get(owner, 0) + 1
        for owner in header["secret"]:
            key_counts[owner] = key_counts.get(owner, 0) + 1
    return self_counts, key_counts


@pytest.mark.parametrize("layer", [SecAgg(), SecAggPlus(degree=6)])
def test_no_party_has_both_secrets_revealed(layer):
    transcript = Transcript()
    faults = Faults().add("lose_reply", "p02", phase="masked").add("offline", "p05", phase="share")
    fed, *_ = integer_federation(layer, 10, faults, transcript)
    assert fed.run_round().ok
    self_counts, key_counts = revealed_shares(transcript)
    assert set(self_counts).isdisjoint(key_counts)
    assert "p02" in key_counts and "p02" not in self_counts  # dropped after sharing: key revealed
    assert "p05" not in key_counts and "p05" not in self_counts  # dropped before sharing: nothing
    t = layer.shares_needed(layer.degree(10))
    for owner, count in self_counts.items():
        assert count >= t and key_counts.get(owner, 0) < t


def test_shares_travel_sealed():
    transcript = Transcript()
    fed, *_ = integer_federation(SecAgg(), 4, transcript=transcript)
    assert fed.run_round().ok
    share_replies = b"".join(e.data for e in transcript.received(phase="share"))
    unmask_replies = b"".join(e.data for e in transcript.received(phase="unmask"))
    # every share revealed in the clear at unmask time was only ever seen sealed before
    header_shares = []
    for entry in transcript.received(phase="unmask"):
        _, parts = decode_record(
            Envelope.decode(entry.data).parts["layer"], b"SAUr", UNMASK_REPLY, ("shares", "one_time")
        )
        header_shares += [
            parts["shares"][i : i + shamir.SHARE_BYTES]
            for i in range(0, len(parts["shares"]), shamir.SHARE_BYTES)
        ]
    assert header_shares and unmask_replies
    for share in header_shares:
        assert share not in share_replies


# --- bad messages and a dishonest aggregator -------------------------------------------------------


@pytest.mark.parametrize("action", ["truncate", "duplicate"])
@pytest.mark.parametrize("phase", PASSIVE)
def test_truncated_or_duplicated_messages_drop_the_sender(action, phase):
    fed, deltas, weights = integer_federation(SecAgg(), 8, Faults().add(action, "p06", phase=phase))
    report = fed.run_round()
    assert report.ok and "p06" in report.dropouts, report.dropouts
    survivors = [p for p in deltas if p != "p06" or phase == "unmask"]
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, survivors))


@pytest.mark.parametrize("active", [False, True])
def test_a_garbled_sealed_share_costs_its_sender_not_its_recipient(active):
    """p00's share reply arrives with its last sealed share (for p07) altered: p07 cannot open it,
    names p00 and goes on; p00 does not recognise the ciphertext as its own and discloses nothing.
    Active mode judges p00 (its signed share does not open); passive mode judges nobody. The sum
    is exact (p00's masked input was sound) and p07 is never dropped."""
    parties = [f"p{i:02d}" for i in range(8)]
    layer = SecAgg(identities=Identities.generate(parties) if active else None)
    fed, deltas, weights = integer_federation(layer, 8, Faults().add("flip", "p00", phase="share"))
    report = fed.run_round()
    assert report.ok, report.error
    assert set(report.dropouts) == ({"p00"} if active else set()), report.dropouts
    if active:
        assert "sent p07 a sealed share that does not open" in report.dropouts["p00"]
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, parties))


def test_replayed_advertisement_from_an_earlier_round_is_refused():
    captured = {}

    def replay(party, request, deliver):
        reply = deliver(request)
        env = Envelope.decode(request)
        if party == "p01" and env.phase == "advertise":
            captured.setdefault(env.round, reply)
            if env.round == 1:
                return [(captured[0], 0.0)]
        return [(reply, 0.0)]

    fed, *_ = integer_federation(SecAgg(), 5, replay)
    assert fed.run_round().ok
    report = fed.run_round()
    assert "round 1, the current round is 2" in report.dropouts["p01"]


def _tamper_keys(target):
    """A dishonest aggregator: swap `target`'s advertised keys for its own in a share request."""

    def tamper(request):
        env = Envelope.decode(request)
        header, parts = decode_record(env.parts["layer"], b"SASq", {"peers": list}, ("keys",))
        width = len(parts["keys"]) // len(header["peers"])
        i = header["peers"].index(target)
        blob = bytearray(parts["keys"])
        blob[i * width : i * width + 64] = bytes(range(64))
        layer = encode_record(b"SASq", header, {"keys": bytes(blob)})
        return Envelope(
            env.kind, env.session, env.round, env.phase, env.party, {**env.parts, "layer": layer}
        ).encode()

    return tamper


def test_active_mode_detects_substituted_keys():
    parties = [f"p{i:02d}" for i in range(6)]
    faults = Faults().add("tamper_request", "p02", phase="share", replace=_tamper_keys("p04"))
    fed, _deltas, _weights = integer_federation(SecAgg(identities=Identities.generate(parties)), 6, faults)
    report = fed.run_round()
    assert "p02" in report.dropouts
    assert "signature of p04 does not verify: forged or substituted" in fed.nodes["p02"].last_error


def test_active_mode_detects_a_lie_about_who_dropped():
    parties = [f"p{i:02d}" for i in range(6)]

    def lie(request):
        env = Envelope.decode(request)
        header, parts = decode_record(
            env.parts["layer"],
            b"SAUq",
            {"disputes": list},
            ("survivors", "signers", "signatures", "accusations"),
        )
        # A bitmap over the sorted roster p00..p05: clear p05's bit (the sixth) to claim it dropped.
        parts["survivors"] = bytes([parts["survivors"][0] & ~(0x80 >> 5)])
        layer = encode_record(b"SAUq", header, parts)
        return Envelope(env.kind, env.session, env.round, env.phase, env.party, {"layer": layer}).encode()

    faults = Faults().add("tamper_request", "p01", phase="unmask", replace=lie)
    transcript = Transcript()
    fed, *_ = integer_federation(SecAgg(identities=Identities.generate(parties)), 6, faults, transcript)
    report = fed.run_round()
    assert "p01" in report.dropouts
    assert "changed the survivor list after it was signed" in fed.nodes["p01"].last_error
    # p01 revealed nothing; in particular no key share of p05, which is alive
    _, key_counts = revealed_shares(transcript)
    assert "p05" not in key_counts


def test_impostor_advertisement_refused_in_active_mode():
    parties = [f"p{i:02d}" for i in range(5)]
    ids = Identities.generate(parties)
    stolen = Identities.generate(["p03"])  # p03's messages signed with a key not registered for it
    forged = Identities({**ids.public}, {**ids.private, "p03": stolen.private["p03"]})
    fed, *_ = integer_federation(SecAgg(identities=forged), 5)
    fed.aggregator.secure_sum.identities = ids.public_only()
    report = fed.run_round()
    assert "signature of p03 does not verify" in report.dropouts["p03"]


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SecAgg(modulus_bits=16), "modulus_bits must be 32 or 64"),
        (lambda: SecAgg(threshold=1), "one share"),
        (lambda: SecAgg(threshold=1.5), "at most 1"),
        (lambda: SecAgg(threshold=0.5), "needs more than half"),
        (lambda: SecAggPlus(threshold=0.4), "needs more than half"),
        (lambda: SecAggPlus(degree=3), "even integer"),
    ],
)
def test_bad_parameters(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_stack_checks_quantize_against_the_32_bit_modulus():
    clients = {f"p{i}": fixed_delta_client(np.zeros(2), 1) for i in range(300)}
    with pytest.raises(ConfigError, match=r"summed over 300 parties needs a 33-bit modulus.*2\^32"):
        securefl.Federation(
            {"w": np.zeros(2)}, clients, [securefl.Clip(1.0), securefl.Quantize(24), SecAgg()], weight_bound=1
        )
    securefl.Federation(
        {"w": np.zeros(2)},
        clients,
        [securefl.Clip(1.0), securefl.Quantize(24), SecAgg(modulus_bits=64)],
        weight_bound=1,
    )


def test_too_few_parties_and_missing_quantize():
    two = {f"p{i}": fixed_delta_client(np.zeros(2), 1) for i in range(2)}
    with pytest.raises(ConfigError, match="at least 3 parties"):
        securefl.Federation(
            {"w": np.zeros(2)}, two, [securefl.Clip(1.0), securefl.Quantize(16), SecAgg()], weight_bound=1
        )
    three = {f"p{i}": fixed_delta_client(np.zeros(2), 1) for i in range(3)}
    with pytest.raises(ConfigError, match="put a 'quantize' transform before it"):
        securefl.Federation({"w": np.zeros(2)}, three, SecAgg())


def test_harary_graph_is_k_regular_and_seeded():
    layer = SecAggPlus(degree=4)
    parties = [f"p{i}" for i in range(11)]
    graph = layer.neighbours(parties, bytes(32))
    assert all(len(v) == 4 for v in graph.values())
    assert all(a in graph[b] for a in graph for b in graph[a])  # symmetric
    assert graph == layer.neighbours(parties, bytes(32))
    assert graph != layer.neighbours(parties, bytes(31) + b"\x01")
    assert SecAggPlus().degree(100) == 28 and SecAggPlus().degree(8) == 7


@pytest.mark.parametrize("n", [5, 11, 40, 129])
def test_lazy_neighbourhoods_equal_the_full_harary_graph(n):
    """Each party derives only the neighbourhoods it asks for; they are the graph built whole."""
    from securefl.layers.secagg import _permutation

    layer, seed = SecAggPlus(degree=4 if n < 40 else 10), bytes(range(32))
    parties = [f"p{i:03d}" for i in range(n)]
    order, half = _permutation(sorted(parties), seed), layer.degree(n) // 2
    full = {order[i]: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d) for i in range(n)}
    lazy = layer.neighbours(list(reversed(parties)), seed)
    assert lazy["p002"] == full["p002"] and len(lazy) == n and set(lazy) == set(parties)
    assert dict(lazy) == full and lazy == full
    with pytest.raises(KeyError):
        lazy["nobody"]
    complete = SecAgg().neighbours(parties, seed)
    assert dict(complete) == {p: frozenset(parties) - {p} for p in parties}


def test_survivor_bitmaps_are_strict():
    from securefl.layers.base import RoundContext
    from securefl.layers.secagg import decode_members, encode_members

    ctx = RoundContext("00" * 16, 1, tuple(f"p{i:02d}" for i in range(11)), 4, True, 3)
    data = encode_members(ctx, ["p10", "p00", "p03"])
    assert len(data) == 2 and decode_members(ctx, data, "survivors") == ["p00", "p03", "p10"]
    with pytest.raises(WireError, match="11 parties need 2"):
        decode_members(ctx, data + b"\0", "survivors")
    with pytest.raises(WireError, match="beyond the 11 parties"):
        decode_members(ctx, bytes([data[0], data[1] | 1]), "survivors")
    big = RoundContext("00" * 16, 1, tuple(f"party{i:05d}" for i in range(10_000)), 4, True, 3)
    assert len(encode_members(big, big.parties)) == 1250  # n bits, never n names in a header


def test_a_party_reveals_shares_only_once_per_round():
    """A dishonest aggregator asking twice (say, with a different survivor list) gets a refusal."""
    requests = {}

    def keep(party, request, deliver):
        if Envelope.decode(request).phase == "unmask":
            requests[party] = request
        return [(deliver(request), 0.0)]

    fed, *_ = integer_federation(SecAgg(), 5, keep)
    assert fed.run_round().ok
    again = Envelope.decode(fed.nodes["p00"].handle(requests["p00"]))
    assert again.kind == "withdraw" and b"out of order" in again.parts["reason"]


def test_failure_bounds_by_hand():
    # complete graph, n = 3, t = 2: any dropout leaves a survivor with one neighbour: 1 − 0.9³
    assert SecAgg().failure_bound(3, 0.1) == pytest.approx(1 - 0.9**3)
    # k = 4, t = 3: a party is short when it loses 2, 3 or 4 neighbours; union over 10 parties
    short = 6 * 0.05**2 * 0.95**2 + 4 * 0.05**3 * 0.95 + 0.05**4
    assert SecAggPlus(degree=4).failure_bound(10, 0.05) == pytest.approx(10 * short)
    # active mode adds P(fewer than s = ⌈(n + 2t − k)/2⌉ = 6 parties left to sign)
    active = SecAggPlus(degree=4, identities=Identities.generate(["a"]))
    signers_short = sum(math.comb(10, i) * 0.05**i * 0.95 ** (10 - i) for i in range(5, 11))
    assert active.failure_bound(10, 0.05) == pytest.approx(10 * short + signers_short)
    # the defaults at n = 100, 10% dropouts: both comfortably reliable
    assert SecAgg().failure_bound(100, 0.1) < 1e-6 and SecAggPlus().failure_bound(100, 0.1) < 1e-3


# --- one bad party: wrong shares, false accusations, garbage keys (issue 13 §3–5) -----------------


def _rewrite_layer(magic, schema, part_names, change):
    """A Faults `replace` that edits the layer record inside a party's reply envelope."""

    def replace(reply):
        env = Envelope.decode(reply)
        header, parts = decode_record(env.parts["layer"], magic, schema, part_names)
        header, parts = change(dict(header), dict(parts))
        layer = encode_record(magic, header, parts)
        return Envelope(env.kind, env.session, env.round, env.phase, env.party, {"layer": layer}).encode()

    return replace


def _corrupt_revealed_share(index, value, active=False):
    """Replace the `index`-th share a party reveals in `unmask` by `value` (SHARE_BYTES; in active mode
    each revealed share is followed by its dealer's signature)."""
    width = _share_width(active)

    def change(header, parts):
        shares = bytearray(parts["shares"])
        shares[index * width : index * width + shamir.SHARE_BYTES] = value
        return header, {**parts, "shares": bytes(shares)}

    return _rewrite_layer(b"SAUr", UNMASK_REPLY, ("shares", "one_time"), change)


@pytest.mark.parametrize(
    "value",
    [b"\xff" * shamir.SHARE_BYTES, (12345).to_bytes(shamir.SHARE_BYTES, "big")],
    ids=["not-a-field-element", "wrong-field-element"],
)
@pytest.mark.parametrize("active", [False, True])
def test_a_wrong_unmask_share_is_corrected_and_its_sender_named(value, active):
    """Issue 13 §3–4: p04 reveals a bad share of p00's seed; the aggregator checks every share,
    corrects it, and the sum is exact (p04's own input, sent honestly, is in it). Active mode names
    p04 (p00's signature on the share proves it); passive mode cannot tell p04's alteration from
    p00's dealing, so one such share names nobody (test below: two of them name their common party)."""
    parties = [f"p{i:02d}" for i in range(8)]
    layer = SecAgg(identities=Identities.generate(parties) if active else None)
    faults = Faults().add("replace", "p04", phase="unmask", replace=_corrupt_revealed_share(0, value, active))
    fed, deltas, weights = integer_federation(layer, 8, faults)
    report = fed.run_round()
    assert report.ok, report.error
    if active:  # the owner's signature decides (it no longer matches the altered share)
        assert set(report.dropouts) == {"p04"} and "did not deal" in report.dropouts["p04"]
    else:  # nothing signed: p04 altered it, or p00 dealt it so; one such share names nobody
        assert report.dropouts == {}, report.dropouts
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, parties))
    assert fed.run_round().ok  # and the federation goes on


def test_with_one_spare_share_the_wrong_one_is_found_by_the_seed_commitment():
    """n = 4, t = 2 (k = 3): three holders per seed, so one wrong share cannot be corrected by
    decoding (⌊(3 − 2)/2⌋ = 0); the advertised commitment to the seed picks the right pair. One
    wrong share names nobody in passive mode (its dealer or its holder altered it); two, of two
    owners, name the holder common to both."""
    zero = bytes(shamir.SHARE_BYTES)
    first, both = _corrupt_revealed_share(0, zero), _corrupt_revealed_share(1, zero)
    for replace, named in ((first, set()), (lambda reply: both(first(reply)), {"p01"})):
        faults = Faults().add("replace", "p01", phase="unmask", replace=replace)
        fed, deltas, weights = integer_federation(SecAgg(), 4, faults)
        report = fed.run_round()
        assert report.ok, report.error
        assert set(report.dropouts) == named, report.dropouts
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, list(deltas)))


def test_with_no_spare_share_a_wrong_share_fails_the_round_never_the_sum():
    """n = 3, t = 2: each seed has exactly two holders, so a wrong share cannot be told from the
    right one — but the seed commitment refuses the wrong seed: the round fails cleanly, naming
    the owner and its holders, instead of reporting a wrong sum."""
    faults = Faults().add(
        "replace", "p01", phase="unmask", replace=_corrupt_revealed_share(0, bytes(shamir.SHARE_BYTES))
    )
    fed, *_ = integer_federation(SecAgg(), 3, faults)
    report = fed.run_round()
    assert not report.ok
    assert "or its holders revealed altered ones" in report.error and "p01" in report.error, report.error
    assert not report.dropouts  # exactly t shares: nobody can be named
    np.testing.assert_array_equal(fed.global_vector, np.zeros(DIM))


@pytest.mark.parametrize("active", [False, True])
def test_a_false_accusation_costs_the_accuser(active):
    """Issue 13 §5: p05 claims p02's sealed share did not open. Active mode: p02 reveals the
    one-time key of that one ciphertext, it opens, and p05 is judged the liar. Passive mode signs
    nothing, so nobody is judged (p02 must not disclose keys on an unsigned claim). Either way
    p02 is not dropped, p05's unmask reply (revealing the share it said it lacked) is refused, and
    the sum is exact."""
    parties = [f"p{i:02d}" for i in range(8)]
    ids = Identities.generate(parties) if active else None
    layer = SecAgg(identities=ids)

    def accuse(header, parts):
        if active:  # a lying party can sign its lie; the statement binds the ciphertext it got
            party = fed.nodes["p05"].secure_sum
            sealed = party_sealed_from["p02"]
            digest = hashlib.sha256(sealed).digest()
            parts["accusations"] = signing.sign(
                ids.private["p05"], _accusation(party.ctx, "p05", "p02", digest)
            )
        header["unopened"] = ["p02"]
        return header, parts

    party_sealed_from = {}

    def capture(party, request, deliver):
        env = Envelope.decode(request)
        if party == "p05" and env.phase == "masked":
            header, parts = decode_record(env.parts["layer"], b"SAMq", {"senders": list}, ("shares",))
            width = len(parts["shares"]) // len(header["senders"])
            i = header["senders"].index("p02")
            party_sealed_from["p02"] = parts["shares"][i * width : (i + 1) * width]
            reply = deliver(request)
            return [
                (_rewrite_layer(b"SAMr", {"unopened": list}, ("masked", "accusations"), accuse)(reply), 0.0)
            ]
        return [(deliver(request), 0.0)]

    fed, deltas, weights = integer_federation(layer, 8, capture)
    report = fed.run_round()
    assert report.ok, report.error
    assert set(report.dropouts) == {"p05"}, report.dropouts
    # (its unmask reply, revealing the share it said it lacked, is refused too)
    judged = fed.aggregator.secure_sum.culprits()
    if active:
        assert set(judged) == {"p05"} and "claimed that p02's sealed share did not open" in judged["p05"]
    else:
        assert judged == {}
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, parties))


def test_an_unusable_advertised_key_drops_its_sender_at_once():
    """A low-order X25519 point would make every neighbour's key agreement fail: the aggregator
    refuses it on arrival, so only the sender is dropped."""
    low_order = bytes(32)  # the identity point: X25519 gives an all-zero secret

    def change(header, parts):
        return header, {**parts, "keys": low_order + parts["keys"][32:]}

    faults = Faults().add(
        "replace", "p02", phase="advertise", replace=_rewrite_layer(b"SAAr", {}, ("keys",), change)
    )
    fed, deltas, weights = integer_federation(SecAgg(), 6, faults)
    report = fed.run_round()
    assert report.ok and set(report.dropouts) == {"p02"}, report.dropouts
    assert "not a usable X25519 public key" in report.dropouts["p02"]
    np.testing.assert_array_equal(
        revealed(fed), expected_sum(deltas, weights, [p for p in deltas if p != "p02"])
    )


@pytest.mark.parametrize("phase", ACTIVE)
def test_requests_replayed_from_an_earlier_round_reveal_nothing_extra(phase):
    """A malicious aggregator replays, in round 1, the layer part of round 0's requests of one
    phase to every party (round-0 keys, signatures, sealed shares, survivor lists). Round-bound
    signatures, AEAD contexts and one-time keys make them useless: no party's seed and key are
    both revealed, and a round that completes is exact."""
    parties = [f"p{i:02d}" for i in range(7)]
    captured = {}

    def replay(party, request, deliver):
        env = Envelope.decode(request)
        if env.phase == phase and env.round == 0:
            captured[party] = env.parts["layer"]
        if env.phase == phase and env.round == 1:
            parts = {**env.parts, "layer": captured[party]}
            request = Envelope(env.kind, env.session, env.round, env.phase, env.party, parts).encode()
        return [(deliver(request), 0.0)]

    transcript = Transcript()
    layer = SecAgg(identities=Identities.generate(parties))
    fed, deltas, weights = integer_federation(layer, 7, replay, transcript)
    assert fed.run_round().ok
    report = fed.run_round()
    self_counts, key_counts = revealed_shares(transcript, round=1)
    t = layer.shares_needed(layer.degree(7))
    for owner in parties:
        assert not (self_counts.get(owner, 0) >= t and key_counts.get(owner, 0) >= t), owner
    if report.ok:
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, report.survivors))
    else:
        assert report.error  # a clean failure: nothing summed, the global model unchanged


def test_a_key_share_shifted_into_the_clamped_bits_still_names_its_sender():
    """Found by an independent attacker: p04 drops before its masked input, so its mask key is
    rebuilt from exactly t + 1 = 4 shares. p03 shifts its share so that leaving p00 out yields
    s_sk + 128 — a key differing only in a bit X25519 clamps away, so the public-key check alone
    would accept it and name honest p00. The commitment to s_sk refuses it: p03's share is the
    one left out (and, one share in passive mode, names nobody)."""
    lam = shamir.lagrange_at_zero((2, 3, 4))[2]  # p03's coefficient (x = 4) in the set {x2, x3, x4}
    shift = 128 * pow(lam, -1, shamir.PRIME) % shamir.PRIME

    def change(header, parts):
        i = (header["self"] + header["secret"]).index("p04")
        shares = bytearray(parts["shares"])
        old = int.from_bytes(shares[i * shamir.SHARE_BYTES : (i + 1) * shamir.SHARE_BYTES], "big")
        shares[i * shamir.SHARE_BYTES : (i + 1) * shamir.SHARE_BYTES] = (
            (old + shift) % shamir.PRIME
        ).to_bytes(shamir.SHARE_BYTES, "big")
        return header, {**parts, "shares": bytes(shares)}

    for _ in range(4):  # the shifted key is accepted by a bare public-key check half of the time
        faults = Faults().add("offline", "p04", phase="masked")
        faults.add(
            "replace",
            "p03",
            phase="unmask",
            replace=_rewrite_layer(b"SAUr", UNMASK_REPLY, ("shares", "one_time"), change),
        )
        fed, deltas, weights = integer_federation(SecAgg(), 5, faults)
        report = fed.run_round()
        assert report.ok, report.error
        # p04 dropped; p03's one altered share is corrected, and (passive: p03 or the dealer p04 may
        # have altered it) names nobody — above all not honest p00, as the clamped key would have
        assert set(report.dropouts) == {"p04"}, report.dropouts
        np.testing.assert_array_equal(
            revealed(fed), expected_sum(deltas, weights, ["p00", "p01", "p02", "p03"])
        )


def test_a_survivor_short_of_neighbours_fails_the_round_before_unmasking():
    """5 parties (k = 4, t = 3), two lose their masked reply: each survivor keeps 2 neighbours,
    fewer than t, so honest parties would refuse to reveal its seed. The aggregator says so and
    stops before asking anyone to unmask."""
    faults = Faults().add("lose_reply", "p03", phase="masked").add("lose_reply", "p04", phase="masked")
    transcript = Transcript()
    fed, *_ = integer_federation(SecAgg(), 5, faults, transcript)
    report = fed.run_round()
    assert not report.ok and "sent its masked input but only 2 of its neighbours did" in report.error
    assert not transcript.received(phase="unmask")


@pytest.mark.parametrize("phase", ["advertise", "share"])
def test_parties_left_short_by_a_bad_party_are_sidelined_not_named(phase):
    """Found by an independent attacker: one party's garbage in `advertise` (or `share`) left its
    neighbours with fewer than t peers, so they withdrew and were named as dropouts. Now the
    aggregator sidelines them — reported apart, not as dropouts — and only the culprit is named."""

    def garbage(reply):
        env = Envelope.decode(reply)
        return Envelope(
            env.kind, env.session, env.round, env.phase, env.party, {"layer": b"garbage"}
        ).encode()

    fed, *_ = integer_federation(SecAgg(), 3, Faults().add("replace", "p02", phase=phase, replace=garbage))
    report = fed.run_round()
    assert set(report.dropouts) == {"p02"}, report.dropouts
    assert not report.ok and report.error
    if phase == "advertise":
        assert set(report.sidelined) == {"p00", "p01"}, report.sidelined
        assert "neighbours are left to share with" in report.sidelined["p00"]


@pytest.mark.parametrize("n", [6, 7])
def test_a_dealer_signing_a_wrong_share_is_named_not_its_holder(n):
    """Found by an independent attacker: a party that deals p03 a wrong (but sealed and signed)
    share of its own seed used to get p03 named when p03 revealed it. In active mode every dealt
    share carries the dealer's signature, so the wrong share convicts the dealer."""
    parties = [f"p{i:02d}" for i in range(n)]
    fed, deltas, weights = integer_federation(SecAgg(identities=Identities.generate(parties)), n)
    dealer = fed.nodes["p00"].secure_sum
    honest_dealt = dealer._dealt

    def lying_dealt(kind, holder, share):
        if kind == "seed" and holder == "p03":
            share = ((int.from_bytes(share, "big") + 1) % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
        return honest_dealt(kind, holder, share)

    dealer._dealt = lying_dealt
    report = fed.run_round()
    assert report.ok, report.error
    assert set(report.dropouts) == {"p00"}, report.dropouts
    assert "dealt signed shares of p00's self mask" in report.dropouts["p00"]
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, parties))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_shamir_weights_of_round_positions_equal_their_definition_and_name_wrong_shares(data):
    """A set holding most of the positions 1..N takes the path without inversion (the precomputed
    full products times the missing positions): each weight is exactly 1 / Π_{m≠k} (x_k − x_m), and
    reconstruction through it still returns the secret and names the wrong shares it corrects."""
    import math

    from securefl.randomness import SecureRandom

    top = data.draw(st.integers(3, 60))
    xs = tuple(sorted(data.draw(st.sets(st.integers(1, top), min_size=3, max_size=top))))
    for xk, v in zip(xs, shamir._barycentric_weights(xs), strict=True):
        assert v * math.prod(xk - xm for xm in xs if xm != xk) % shamir.PRIME == 1
    threshold = data.draw(st.integers(2, len(xs)))
    secret = data.draw(st.binary(min_size=1, max_size=32))
    shares = shamir.split(secret, xs, threshold, SecureRandom())
    wrong = data.draw(st.sets(st.sampled_from(xs), max_size=(len(xs) - threshold) // 2))
    for x in wrong:
        wrong_value = (int.from_bytes(shares[x], "big") + 1) % shamir.PRIME
        shares[x] = wrong_value.to_bytes(shamir.SHARE_BYTES, "big")
    outcome = shamir.reconstruct(shares, threshold, len(secret))
    assert outcome.secret == secret and set(outcome.wrong) == wrong


@settings(max_examples=40, deadline=None)
@given(
    xs=st.lists(st.integers(1, 2**40), min_size=3, max_size=12, unique=True),
    secret=st.binary(min_size=1, max_size=32),
    data=st.data(),
)
def test_shamir_reconstruction_matches_the_textbook_and_refuses_colliding_coordinates(xs, secret, data):
    """The barycentric weights shared by the consistency check and the interpolation, with lazy
    reduction for small coordinates, give the secret back for any coordinates (small or large) and
    any threshold; coordinates equal modulo the prime are refused, never silently misused."""
    from securefl.randomness import SecureRandom

    threshold = data.draw(st.integers(2, len(xs)))
    shares = shamir.split(secret, xs, threshold, SecureRandom())
    outcome = shamir.reconstruct(shares, threshold, len(secret))
    assert outcome.secret == secret and outcome.wrong == ()
    colliding = {**{x: shares[x] for x in xs[:threshold]}, xs[0] + shamir.PRIME: shares[xs[0]]}
    with pytest.raises(ProtocolError, match="distinct and non-zero modulo the prime"):
        shamir.reconstruct(colliding, threshold, len(secret))


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.integers(1, 2**40), min_size=2, max_size=40, unique=True),
    secrets=st.lists(st.binary(min_size=1, max_size=32), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_shamir_shares_split_together_are_each_secrets_textbook_shares(xs, secrets, seed, data):
    """Several secrets' polynomials evaluated in one packed pass give, slot for slot, Σ c_j x^j mod p
    with each secret's own coefficients (drawn in turn from the same randomness): small or large
    coordinates and thresholds never let one slot spill into the next."""
    from securefl.randomness import SecureRandom

    threshold = data.draw(st.integers(2, len(xs)))
    together = shamir.split_together(secrets, xs, threshold, SecureRandom(seed=seed))
    draws = SecureRandom(seed=seed)
    for secret, shares in zip(secrets, together, strict=True):
        coefficients = [int.from_bytes(secret, "big")]
        coefficients += [shamir._random_element(draws) for _ in range(threshold - 1)]
        for x in xs:
            expected = sum(c * pow(x, j, shamir.PRIME) for j, c in enumerate(coefficients)) % shamir.PRIME
            assert shares[x] == expected.to_bytes(shamir.SHARE_BYTES, "big")
        assert shamir.reconstruct(shares, threshold, len(secret)).secret == secret


def _during(node, method: str, attribute: str, value) -> None:
    """Make ``node.<method>`` run with ``node.<attribute>`` set to ``value``, restored after it."""
    honest = getattr(node, method)

    def run(request):
        real = getattr(node, attribute)
        setattr(node, attribute, value)
        try:
            return honest(request)
        finally:
            setattr(node, attribute, real)

    setattr(node, method, run)


def _layer(kind: str, active: bool, n: int):
    parties = [f"p{i:02d}" for i in range(n)]
    identities = Identities.generate(parties) if active else None
    return SecAgg(identities=identities) if kind == "secagg" else SecAggPlus(identities=identities)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["secagg", "secagg+"]),
    active=st.booleans(),
    secret=st.sampled_from(["seed", "key"]),
    dealer=st.integers(0, 6),
    fake=st.binary(min_size=32, max_size=32),
)
def test_a_dealer_sharing_another_secret_than_it_committed_to_is_named(kind, active, secret, dealer, fake):
    """Found by an attacker: a party that deals its neighbours consistent shares of another secret
    than the one it committed to (its self-mask seed, or its mask key, then dropping so that the key
    is rebuilt) made the round fail with honest holders listed as "inconsistent" and nobody named.
    In active mode its signatures on the shares prove it dealt them: it is named. In passive mode
    (here 6 holders, t = 4) three holders altering theirs together could produce the same picture,
    so the error says exactly that and names nobody. Either way the round fails, nothing revealed."""
    n = 7
    name = f"p{dealer:02d}"
    faults = Faults().add("offline", name, phase="masked") if secret == "key" else None
    fed, *_ = integer_federation(_layer(kind, active, n), n, faults=faults)
    node = fed.nodes[name].secure_sum
    honest_share = node._share

    def share_another_secret(request):
        attribute = "self_seed" if secret == "seed" else "s_sk"
        real = getattr(node, attribute)
        setattr(node, attribute, fake if fake != real else bytes(32))
        try:
            return honest_share(request)
        finally:
            setattr(node, attribute, real)

    node._share = share_another_secret
    report = fed.run_round()
    assert not report.ok
    if active:  # its signatures on the shares convict it
        assert f"that {name} signed do not rebuild the secret it committed to" in report.error
    else:
        assert f"{name} dealt shares of another secret" in report.error
    if not active:
        # Passive mode signs nothing: with 6 holders and t = 4, three colluding holders could have
        # altered their shares into another codeword, so nobody is named (the error names both).
        assert set(report.dropouts) <= {name} and "or its holders revealed altered ones" in report.error
        return
    assert set(report.dropouts) == {name}, report.dropouts  # no honest holder named
    if secret == "seed":  # (a dropped dealer is listed first for its dropout)
        assert "committed to" in report.dropouts[name], report.dropouts


@pytest.mark.parametrize("which", ["channel", "mask"])
@pytest.mark.parametrize("encoding", ["top_bit", "u_plus_p"])
@pytest.mark.parametrize("active", [False, True])
def test_a_non_canonical_key_encoding_is_dropped_on_arrival_and_the_round_survives(which, encoding, active):
    """Found by an attacker: a mask key advertised with bit 255 set (which X25519 ignores) passed the
    low-order check, masked correctly, and when its owner then dropped, its rebuilt key no longer
    matched the advertised bytes: an ordinary dropout failed the round. Only canonical encodings
    (u < 2^255 − 19) are accepted now; the party advertising another is dropped at once."""
    from securefl.crypto import channel

    n = 6
    fed, deltas, weights = integer_federation(_layer("secagg", active, n), n)
    node = fed.nodes["p02"].secure_sum
    honest_advertise = node._advertise

    def advertise(request):
        reply = honest_advertise(request)
        _, parts = decode_record(reply, b"SAAr", {}, ("keys", "signature") if active else ("keys",))
        keys = bytearray(parts["keys"])
        start = 0 if which == "channel" else channel.KEY_BYTES
        u = int.from_bytes(keys[start : start + 32], "little")
        other = u | (1 << 255) if encoding == "top_bit" else u + 2**255 - 19
        if other >= 1 << 256 or (encoding == "u_plus_p" and other >= 1 << 255):
            other = u | (1 << 255)  # u + p fits 255 bits only for u < 19
        keys[start : start + 32] = other.to_bytes(32, "little")
        parts["keys"] = bytes(keys)
        if active:
            statement = securefl.layers.secagg._advertised(node.ctx, "p02", node.graph_seed, parts["keys"])
            parts["signature"] = signing.sign(node.identity, statement)
        return encode_record(b"SAAr", {}, parts)

    node._advertise = advertise
    report = fed.run_round()
    assert report.ok, report.error
    assert set(report.dropouts) == {"p02"} and "canonically encoded" in report.dropouts["p02"]
    survivors = [p for p in fed.nodes if p != "p02"]
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, survivors))
    assert not channel.usable_public((2**255 - 19).to_bytes(32, "little"))  # p itself: u = 0


def test_passive_mode_names_a_dealer_of_another_secret_only_when_holders_could_not_have_done_it():
    """With k = 3 holders and t = 2 (n = 4), altering the shares into another codeword would take t
    holders (as many as could rebuild any secret): consistent shares of a wrong secret are the
    dealer's."""
    n, dealer = 4, "p02"
    fed, *_ = integer_federation(SecAgg(), n)
    _during(fed.nodes[dealer].secure_sum, "_share", "self_seed", bytes(32))  # shares another seed
    report = fed.run_round()
    assert not report.ok and set(report.dropouts) == {dealer}
    assert "rebuild another secret than the one it committed to" in report.dropouts[dealer]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["secagg", "secagg+"]),
    secret=st.sampled_from(["seed", "key"]),
    dealer=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_an_owner_dealing_signed_shares_that_fit_no_polynomial_is_named(kind, secret, dealer, seed):
    """Found by an independent attacker: in active mode an owner that deals (and signs) shares of
    its seed or key that lie on no polynomial of degree < t failed every round with nobody named —
    decoding cannot tell a lying dealer from lying holders, but the owner's signatures can: every
    such share is its own word, so it is named, and no honest holder is."""
    import random

    n = 7 if kind == "secagg" else 12
    name = f"p{dealer:02d}"
    faults = Faults().add("offline", name, phase="masked") if secret == "key" else None
    fed, *_ = integer_federation(_layer(kind, True, n), n, faults=faults)
    node = fed.nodes[name].secure_sum
    honest_dealt = node._dealt
    draws = random.Random(seed)

    def dealt_off_any_polynomial(kind_, holder, share):
        if kind_ == secret:
            share = draws.randrange(shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
        return honest_dealt(kind_, holder, share)

    node._dealt = dealt_off_any_polynomial
    report = fed.run_round()
    assert not report.ok and f"that {name} signed do not rebuild" in report.error, report.error
    assert set(report.dropouts) == {name}, report.dropouts


@pytest.mark.parametrize("active", [False, True])
def test_colluding_holders_shifting_shares_along_a_polynomial_frame_nobody_in_active_mode(active):
    """Found by an independent attacker: two colluding holders of p00's seed reveal f + g, with
    g(0) = 0 and g vanishing at every honest revealing holder but p01 (degree t − 1). The rebuilt
    seed is still p00's, so leaving p01 out "explains" the shares: p01 was named — and in active
    mode p00, who had signed p01's share, was convicted. Active mode now decides by the owner's
    signatures: the colluders' shifted shares are unsigned, so they are named and nobody else;
    with them out too few signed shares remain, and the round fails (nothing revealed). Passive
    mode signs nothing: the sum stays exact, and the spec's Limitations say that colluders can
    have an honest holder named there."""
    n, colluders = 7, ("p05", "p06")
    parties = [f"p{i:02d}" for i in range(n)]
    layer = SecAgg(threshold=0.8, identities=Identities.generate(parties) if active else None)
    fed, deltas, weights = integer_federation(layer, n)

    def shift_share(node):
        honest_unmask = node._unmask

        def unmask(request):
            _, parts = decode_record(
                request, b"SAUq", {"disputes": list}, ("survivors", "signers", "signatures", "accusations")
            )
            bitmap = parts["signers"] if active else parts["survivors"]
            revealing = secagg.decode_members(node.ctx, bitmap, "revealing")
            own = int.from_bytes(node.held["p00"][0][: shamir.SHARE_BYTES], "big")
            holders = sorted(set(revealing) - {"p00"})
            at = lambda h: secagg.share_coordinate(node.graph, "p00", h)  # noqa: E731
            zeros = [at(h) for h in holders if h not in colluders and h != "p01"]
            assert len(zeros) == node.t - 2
            x = at(node.me)
            g = x * math.prod(x - z for z in zeros)
            reply = honest_unmask(request)
            header, out = decode_record(
                reply, b"SAUr", {"self": list, "secret": list, "disputed": list}, ("shares", "one_time")
            )
            width, i = _share_width(active), header["self"].index("p00")
            shares = bytearray(out["shares"])
            shares[i * width : i * width + shamir.SHARE_BYTES] = ((own + g) % shamir.PRIME).to_bytes(
                shamir.SHARE_BYTES, "big"
            )
            return encode_record(b"SAUr", header, {**out, "shares": bytes(shares)})

        node._unmask = unmask

    for name in colluders:
        shift_share(fed.nodes[name].secure_sum)
    report = fed.run_round()
    if active:
        assert not report.ok and set(report.dropouts) == set(colluders), (report.error, report.dropouts)
        assert all("did not deal" in report.dropouts[c] for c in colluders)
    else:
        assert report.ok, report.error
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, parties))


def test_a_silent_owner_whose_garbage_leaves_its_secret_short_is_named():
    """Found by an independent attacker: in active mode p0 sealed shares that would not open to
    k − t + 1 = 2 neighbours (validly re-signed), sent its masked input, then never answered
    ``unmask``: its seed was left with t − 1 shares, the round failed, and p0 was only a dropout —
    every round, anonymously. The signed accusations stand when the accused does not answer them,
    and they are what leaves its secret short: p0 is named."""
    from securefl.layers.secagg import _sealed_size, _sealed_statement

    parties = [f"p{i:02d}" for i in range(5)]
    layer = SecAgg(identities=Identities.generate(parties))
    fed, *_ = integer_federation(layer, 5, Faults().add("offline", "p00", phase="unmask"))
    evil = fed.nodes["p00"].secure_sum
    honest_share = evil._share

    def garbage_to_two(request):
        header, parts = decode_record(honest_share(request), b"SASr", {"recipients": list}, ("shares",))
        size = _sealed_size(True)
        width = size + signing.SIGNATURE_BYTES
        blobs = [parts["shares"][i * width : (i + 1) * width] for i in range(len(header["recipients"]))]
        for i, peer in enumerate(header["recipients"]):
            if peer in ("p01", "p02"):
                sealed = bytearray(blobs[i][:size])
                sealed[60] ^= 1
                signature = signing.sign(
                    evil.identity, _sealed_statement(evil.ctx, evil.me, peer, bytes(sealed))
                )
                blobs[i] = bytes(sealed) + signature
        return encode_record(b"SASr", header, {"shares": b"".join(blobs)})

    evil._share = garbage_to_two
    report = fed.run_round()
    assert not report.ok and "could not open p00's sealed share" in report.error, report.error
    assert set(report.dropouts) == {"p00"} and "did not answer them" in report.error, report.error


def test_one_lying_accuser_cannot_get_a_silent_honest_owner_named():
    """Found by an independent attacker of the rule above: p04 signs a lying "p00's share did not
    open" and p00's and k − t other holders' unmask replies are lost by chance, leaving p00 short
    of t shares — the silent-owner rule named honest p00. It takes two accusers now (one malicious
    party is not both): the round fails, and no honest party is named."""
    parties = [f"p{i:02d}" for i in range(5)]
    layer = SecAgg(identities=Identities.generate(parties))
    k = layer.degree(5)
    t = layer.shares_needed(k)
    faults = Faults().add("lose_reply", "p00", phase="unmask")
    for party in parties[1 : 1 + k - t]:
        faults.add("lose_reply", party, phase="unmask")
    fed, *_ = integer_federation(layer, 5, faults)
    liar = fed.nodes["p04"].secure_sum
    honest_identities = liar.identities

    class Lying:  # p04's view of the identities in masked: p00's sealed share "does not verify"
        def verify(self, party, signature, statement):
            if party == "p00":
                raise ProtocolError("pretends p00's sealed share does not open")
            return honest_identities.verify(party, signature, statement)

    _during(liar, "_masked", "identities", Lying())
    report = fed.run_round()
    assert not report.ok and "p04 said they could not open p00's sealed share" in report.error, report.error
    named = {p for p, why in report.dropouts.items() if "no reply" not in why and "lost" not in why}
    assert "p00" not in named and "did not answer them" not in report.error, report.dropouts


def _bump(share: bytes) -> bytes:
    return ((int.from_bytes(share, "big") + 1) % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_one_passive_party_altering_shares_as_dealer_or_holder_never_gets_an_honest_party_named(data):
    """Found by an attacker (2026-12-01): passive mode named the holder of a revealed share that did
    not fit, but nothing signed tells a holder's alteration from its dealer's — p00 dealt p03 one
    wrong seed share and honest p03 was dropped; carried to later owners, that verdict also let
    p00 fail every round (its own altered reveal of p05's seed then had no spare share to be caught
    by) with p03 blamed. Now: only the party common to every share that did not fit is named, and
    only when it is one party. One malicious party, any shares dealt or revealed wrong."""
    n, parties = 7, [f"p{i:02d}" for i in range(7)]  # k = 6, t = 4: one wrong share is corrected
    bad = data.draw(st.sampled_from(parties), label="malicious party")
    others = [p for p in parties if p != bad]
    framed = data.draw(st.sets(st.sampled_from(others), max_size=2), label="holders dealt a wrong share")
    altered = data.draw(st.sets(st.sampled_from(others), max_size=3), label="owners it reveals wrong")

    def change(header, parts):
        shares = bytearray(parts["shares"])
        for i, owner in enumerate(header["self"]):
            if owner in altered:
                cut = slice(i * shamir.SHARE_BYTES, (i + 1) * shamir.SHARE_BYTES)
                shares[cut] = _bump(bytes(shares[cut]))
        return header, {**parts, "shares": bytes(shares)}

    rewrite = _rewrite_layer(b"SAUr", UNMASK_REPLY, ("shares", "one_time"), change)
    faults = Faults().add("replace", bad, phase="unmask", replace=rewrite)
    fed, deltas, weights = integer_federation(SecAgg(), n, faults)
    node = fed.nodes[bad].secure_sum
    honest_dealt = node._dealt
    node._dealt = lambda kind, holder, share: (
        _bump(share) if kind == "seed" and holder in framed else honest_dealt(kind, holder, share)
    )
    report = fed.run_round()
    assert set(report.dropouts) <= {bad}, report.dropouts  # never an honest party
    if len(framed) <= 1:  # every owner has at most one wrong share: corrected
        assert report.ok, report.error
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, parties))
        pairs = {(bad, h) for h in framed} | {(o, bad) for o in altered}
        ambiguous = len(pairs) == 2 and framed == altered  # (bad, x) and (x, bad): x or bad
        assert (bad in report.dropouts) == (len(pairs) >= 2 and not ambiguous), report.dropouts
    else:  # two wrong shares of its own seed: beyond correction, the round fails, naming its dealer
        assert not report.ok and report.error
        assert bad in report.dropouts, report.dropouts  # > t well-formed shares that fit no polynomial
    named = bad in report.dropouts
    # The next round: a named party sits out (so it cannot fail round after round); the others' sum
    # is exact. Unnamed, it takes part again and nobody honest is named.
    report = fed.run_round()
    assert set(report.dropouts) <= {bad}, report.dropouts
    if named:
        assert set(report.sidelined) == {bad} and "sits out" in report.sidelined[bad], report.sidelined
        assert report.ok, report.error
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, others))
    else:
        assert report.ok and not report.sidelined, (report.error, report.sidelined)
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, parties))


def test_a_named_party_sits_out_one_then_two_rounds_and_is_invited_again_after():
    """Found by an attacker (2026-12-01): a dealer of shares that fit no polynomial failed every
    round it was in. Named, it now sits out 1, 2, 4 … rounds (up to SIT_OUT_LIMIT), the others'
    rounds succeed meanwhile, and it is invited again after each bench."""
    n, parties = 7, [f"p{i:02d}" for i in range(7)]
    bad, framed = "p02", {"p04", "p05"}  # two wrong shares of its own seed: beyond correction
    fed, deltas, weights = integer_federation(SecAgg(), n)
    node = fed.nodes[bad].secure_sum
    honest_dealt = node._dealt
    node._dealt = lambda kind, holder, share: (
        _bump(share) if kind == "seed" and holder in framed else honest_dealt(kind, holder, share)
    )
    others = [p for p in parties if p != bad]
    seen = []
    for _ in range(6):
        report = fed.run_round()
        assert set(report.dropouts) <= {bad}, report.dropouts
        if bad in report.sidelined:
            assert report.ok, report.error
            np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, others))
            seen.append("out")
        else:
            assert not report.ok and bad in report.dropouts and "fit no polynomial" in report.dropouts[bad]
            seen.append("named")
    assert seen == ["named", "out", "named", "out", "out", "named"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_passive_dealer_that_fails_its_own_reconstruction_in_any_way_is_named(data):
    """Found by an attacker (2026-12-01): a passive-mode dealer that sealed garbage to k − t holders
    (so exactly t shares arrived) and dealt the other t shares of another secret — or, with
    k = t + 1, one malformed share and shares of another secret — failed every round with nobody
    named. An honest owner's secret always rebuilds from more than t holders' word (shares and
    accusations together) when only one party misbehaves, so a failure from more names the owner.
    The dealer mixes the ways to spoil its shares; whenever the round fails it is named (never an
    honest party), and it sits out the next round, which then sums the others exactly."""
    from securefl.layers.secagg import _sealed_size

    layer, n = data.draw(
        st.sampled_from([(SecAgg(), 7), (SecAgg(), 4), (SecAggPlus(degree=4), 10)]), label="layer, parties"
    )
    fed, deltas, weights = integer_federation(layer, n)
    parties = sorted(fed.nodes)
    bad = data.draw(st.sampled_from(parties), label="malicious dealer")
    node = fed.nodes[bad].secure_sum
    plan = data.draw(st.permutations(range(n - 1)), label="order of its holders")
    garbage = data.draw(st.integers(0, 3), label="holders sealed garbage")
    malformed = data.draw(st.integers(0, 1), label="holders dealt a malformed share")
    bumped = data.draw(st.integers(0, 2), label="holders dealt a share off the polynomial")
    another = data.draw(st.booleans(), label="shares of another secret")

    def holders(start, count):  # the round's neighbours, in the drawn order
        neighbours = sorted(node.graph[node.me])
        return set([neighbours[i] for i in plan if i < len(neighbours)][start : start + count])

    honest_dealt, honest_share = node._dealt, node._share

    def dealt(kind, holder, share):
        if kind == "seed" and holder in holders(garbage, malformed):
            return b"\xff" * shamir.SHARE_BYTES
        if kind == "seed" and holder in holders(garbage + malformed, bumped):
            return _bump(share)
        return honest_dealt(kind, holder, share)

    def share(request):
        header, parts = decode_record(honest_share(request), b"SASr", {"recipients": list}, ("shares",))
        width = _sealed_size(False)
        count = len(header["recipients"])
        sealed = [bytearray(parts["shares"][i * width : (i + 1) * width]) for i in range(count)]
        for i, peer in enumerate(header["recipients"]):
            if peer in holders(0, garbage):
                sealed[i][-1] ^= 1  # does not open
        return encode_record(b"SASr", header, {"shares": b"".join(map(bytes, sealed))})

    node._dealt = dealt
    node._share = share
    if another:
        _during(node, "_share", "self_seed", bytes(32))
    report = fed.run_round()
    assert set(report.dropouts) <= {bad}, report.dropouts  # never an honest party
    if report.ok:
        np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, report.survivors))
        return
    assert bad in report.dropouts, (report.error, report.dropouts)
    report = fed.run_round()
    assert set(report.sidelined) == {bad} and not report.dropouts, (report.sidelined, report.dropouts)
    assert report.ok, report.error
    others = [p for p in parties if p != bad]
    np.testing.assert_array_equal(revealed(fed), expected_sum(deltas, weights, others))


def test_a_round_that_cannot_run_without_a_benched_party_is_refused_before_any_request_and_spends_no_budget():
    """A bench is kept even when the round cannot run without the party (min_parties = n): the
    round is refused at selection, before any party is asked anything, so a guard records no
    release. (Inviting it back instead — tried after an attacker found such rounds failing — let it
    spoil every round, each one a release that spent budget: found by the next attacker.) Once the
    bench is over and it behaves, the round completes with everyone."""
    from securefl.layers import Clip, DPNoise, Quantize
    from securefl.privacy.guard import Budget, PrivacyGuard

    n = 6
    clients = {f"p{i:02d}": fixed_delta_client(np.full(4, 0.01 * (i + 1)), 5) for i in range(n)}
    guard = PrivacyGuard(Budget(1e6))
    fed = securefl.Federation(
        {"w": np.zeros(4)},
        clients,
        [Clip(1.0), Quantize(16), DPNoise(1.0), SecAgg()],
        weighting="uniform",
        guard=guard,
        min_parties=n,
    )
    bad, misbehaving = "p02", [True]
    node = fed.nodes[bad].secure_sum
    honest_dealt = node._dealt
    node._dealt = lambda kind, holder, share: (
        _bump(share) if misbehaving[0] and kind == "seed" else honest_dealt(kind, holder, share)
    )
    report = fed.run_round()  # shares of another secret, to every holder: named
    assert not report.ok and set(report.dropouts) == {bad}, (report.error, report.dropouts)
    misbehaving[0] = False
    spent = guard.spent
    report = fed.run_round()
    assert not report.ok and set(report.sidelined) == {bad} and not report.dropouts, report
    assert "selection" in report.error and guard.spent == spent, (report.error, guard.spent, spent)
    report = fed.run_round()
    assert report.ok and not report.sidelined, (report.error, report.sidelined)
    assert guard.spent > spent
