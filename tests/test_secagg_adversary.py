"""A malicious aggregator driving real secagg / secagg+ parties, trying to unmask one of them.

The harness plays the aggregator itself: it sends every party whatever requests a strategy picks
(any sender set, including empty or below the threshold; one survivor list for everyone or
different lists for different parties; a list changed after it was signed; phases skipped or asked
twice; substituted keys), with up to ``collusion_bound`` parties colluding (they hand over every
secret and share they hold). After the round it does what an attacker would: rebuild every secret
for which it holds enough shares, strip every mask it can compute from each honest party's masked
input, and compare with that party's true input. The property, for every strategy: no honest
party's input is ever recovered.

Passive mode promises this against an aggregator that shows every party the same survivor list
(it cannot check signatures, so split lists and substituted keys are outside its threat model);
active mode against every strategy here. ``test_the_oracle_finds_a_real_break`` shows the check
is not vacuous: with t ≤ k/2 (which the layer now refuses) the same harness recovers an update.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from securefl.crypto import channel, prg, shamir, signing
from securefl.errors import ProtocolError, RoundFailed, SecureFLError
from securefl.layers import Identities, SecAgg, SecAggPlus, secagg
from securefl.layers.base import RoundContext
from securefl.layers.secagg import _context, _mask_context, _mask_public, encode_members
from securefl.wire import decode_record, encode_record, unpack_array

SESSION = "00112233445566778899aabbccddeeff"
DIM = 5


class Attack:
    """One round against real party objects, with everything the aggregator and colluders learn."""

    def __init__(self, layer: SecAgg, n: int, colluders: set[str], graph_seed: bytes | None = None) -> None:
        self.layer = layer
        self.parties = [f"p{i:02d}" for i in range(n)]
        # The aggregator computes every context the way the parties do (roster and parameters bound).
        self.ctx = secagg._bind(layer, RoundContext(SESSION, 0, tuple(self.parties), DIM, True, 2))
        rng = np.random.default_rng(n)
        self.inputs = {p: rng.integers(0, 2**32, DIM, dtype=np.uint64) for p in self.parties}
        self.sides = {p: layer.party(p) for p in self.parties}
        for p, side in self.sides.items():
            side.start_round(self.ctx, lambda p=p: self.inputs[p])
        self.t = layer.shares_needed(layer.degree(n))
        self.colluders = colluders
        self.graph_seed = graph_seed or os.urandom(prg.SEED_BYTES)
        self.graph = layer.neighbours(self.parties, self.graph_seed)
        self.keys: dict[str, bytes] = {}
        self.key_signatures: dict[str, bytes] = {}
        self.sealed: dict[str, dict[str, bytes]] = {}
        self.senders: dict[str, list[str]] = {}
        self.masked: dict[str, np.ndarray] = {}
        self.list_signatures: dict[tuple[str, ...], dict[str, bytes]] = {}
        self.self_shares: dict[str, dict[int, bytes]] = {}
        self.key_shares: dict[str, dict[int, bytes]] = {}
        self.refusals: dict[str, str] = {}

    def ask(self, party: str, phase: str, request: bytes) -> bytes | None:
        """A party's reply, or None if it refused (a withdrawing party reveals nothing)."""
        try:
            return self.sides[party].respond(phase, request)
        except SecureFLError as exc:
            self.refusals[party] = f"{phase}: {exc}"
            return None

    # --- the phases, each with the adversary's choices --------------------------------------------

    def advertise(self) -> None:
        for p in self.parties:
            reply = self.ask(p, "advertise", encode_record(b"SAAq", {}, {"graph_seed": self.graph_seed}))
            names = ("keys", "signature") if self.layer.active else ("keys",)
            _, parts = decode_record(reply, b"SAAr", {}, names)
            self.keys[p] = parts["keys"]
            self.key_signatures[p] = parts.get("signature", b"")

    def share(self, substitute: dict[str, str] | None = None) -> None:
        """Relay keys; ``substitute`` maps a party to a peer whose keys it gets replaced by the
        aggregator's own (a man in the middle)."""
        self.fake = {p: channel.generate_keypair(_Rng()) for p in self.parties}
        for p in self.parties:
            peers = sorted(self.graph[p])
            blob = b""
            for q in peers:
                keys = self.keys[q]
                if substitute and substitute.get(p) == q:
                    keys = self.fake[q][1] + self.keys[q][channel.KEY_BYTES :]
                blob += keys + self.key_signatures[q]
            reply = self.ask(p, "share", encode_record(b"SASq", {"peers": peers}, {"keys": blob}))
            if reply is None:
                continue
            header, parts = decode_record(reply, b"SASr", {"recipients": list}, ("shares",))
            width = len(parts["shares"]) // len(header["recipients"])
            self.sealed[p] = {
                r: parts["shares"][i * width : (i + 1) * width] for i, r in enumerate(header["recipients"])
            }

    def forwarded(self, sender: str, recipient: str) -> bytes:
        """The sealed share as the aggregator forwards it: altered in its last byte (the signature in
        active mode, the GCM tag otherwise) for senders in ``self.garble``."""
        blob = self.sealed[sender][recipient]
        return blob[:-1] + bytes([blob[-1] ^ 1]) if sender in self.garble else blob

    def mask(self, senders: dict[str, list[str]], garble: set[str] = frozenset()) -> None:
        """Send each party the sealed shares of the senders chosen for it; shares from ``garble`` are
        altered on the way, so their honest recipients cannot open them and accuse the sender."""
        self.garble = set(garble)
        self.accusations: dict[str, dict[str, bytes]] = {}  # accused -> accuser -> signature
        for p in self.parties:
            if p in self.refusals:
                continue
            chosen = [s for s in senders[p] if p in self.sealed.get(s, {})]
            blob = b"".join(self.forwarded(s, p) for s in chosen)
            reply = self.ask(p, "masked", encode_record(b"SAMq", {"senders": chosen}, {"shares": blob}))
            if reply is None:
                continue
            header, parts = decode_record(reply, b"SAMr", {"unopened": list}, ("masked", "accusations"))
            width = len(parts["accusations"]) // max(1, len(header["unopened"]))
            for i, accused in enumerate(header["unopened"]):
                self.accusations.setdefault(accused, {})[p] = parts["accusations"][
                    i * width : (i + 1) * width
                ]
            self.senders[p] = chosen
            self.masked[p] = unpack_array(parts["masked"]).astype(np.uint64)
        for c in self.colluders:  # colluders hand over every share they opened
            for owner, (seed_share, key_share) in self.sides[c].held.items():
                x = secagg.share_coordinate(self.graph, owner, c)
                self.self_shares.setdefault(owner, {})[x] = seed_share[: shamir.SHARE_BYTES]
                self.key_shares.setdefault(owner, {})[x] = key_share[: shamir.SHARE_BYTES]

    def consistency(self, shown: dict[str, tuple[str, ...]]) -> None:
        for p, survivors in shown.items():
            if p in self.refusals:
                continue
            reply = self.ask(
                p,
                "consistency",
                encode_record(b"SACq", {}, {"survivors": encode_members(self.ctx, survivors)}),
            )
            if reply is not None:
                _, parts = decode_record(reply, b"SACr", {}, ("signature",))
                self.list_signatures.setdefault(tuple(sorted(survivors)), {})[p] = parts["signature"]
        for survivors in list(self.list_signatures):  # colluders sign whatever the aggregator likes
            statement = _context("consistency", self.ctx, *survivors)
            for c in self.colluders:
                identity = self.layer.identities.private[c]
                self.list_signatures[survivors][c] = signing.sign(identity, statement)

    def disputes(self, party: str, how: str) -> tuple[list[list[str]], bytes]:
        """The disputes the aggregator puts to ``party``: none; the accusations it received, relayed
        with the digest of the bytes it forwarded (honest) or of the bytes the party sent (to make a
        garbled share look like the party's own); or a claim that every recipient accused it."""
        if how == "none":
            return [], b""
        if how == "all":
            accusers = sorted(self.sealed.get(party, {}))
        else:
            accusers = sorted(self.accusations.get(party, {}))
        width = signing.SIGNATURE_BYTES if self.layer.active else 0
        disputes, sigs = [], b""
        for a in accusers:
            blob = self.forwarded(party, a) if how == "relay" else self.sealed[party][a]
            disputes.append([a, hashlib.sha256(blob).hexdigest()])
            sigs += self.accusations.get(party, {}).get(a, bytes(width))
        return disputes, sigs

    def unmask(self, shown: dict[str, tuple[str, ...]], disputes: str = "relay") -> None:
        for p, survivors in shown.items():
            if p in self.refusals:
                continue
            survivors = tuple(sorted(survivors))
            sigs = self.list_signatures.get(survivors, {})
            signers = sorted(s for s in sigs if s in survivors)
            claimed, accusations = self.disputes(p, disputes)
            reply = self.ask(
                p,
                "unmask",
                encode_record(
                    b"SAUq",
                    {"disputes": claimed},
                    {
                        "survivors": encode_members(self.ctx, survivors),
                        "signers": encode_members(self.ctx, signers),
                        "signatures": b"".join(sigs[s] for s in signers),
                        "accusations": accusations,
                    },
                ),
            )
            if reply is None:
                continue
            header, parts = decode_record(
                reply, b"SAUr", {"self": list, "secret": list, "disputed": list}, ("shares", "one_time")
            )
            owners = header["self"] + header["secret"]
            width = secagg._share_width(self.layer.active)  # a share (‖ its dealer's signature)
            for i, owner in enumerate(owners):
                share = parts["shares"][i * width : i * width + shamir.SHARE_BYTES]
                target = self.self_shares if owner in header["self"] else self.key_shares
                target.setdefault(owner, {})[secagg.share_coordinate(self.graph, owner, p)] = share
            for i, recipient in enumerate(header["disputed"]):  # one-time keys: open those shares too
                one_time = parts["one_time"][i * channel.KEY_BYTES : (i + 1) * channel.KEY_BYTES]
                self.open_with(p, recipient, one_time)

    def open_with(self, sender: str, recipient: str, one_time: bytes) -> None:
        """Use a disclosed one-time key as an attacker would: open the sender's original share."""
        sealed = self.sealed[sender][recipient][: secagg._sealed_size(self.layer.active)]
        key = secagg._share_key(
            self.ctx, one_time, secagg._channel_public(self.keys[recipient]), sender, recipient
        )
        try:
            plain = secagg._open_share(self.ctx, key, sealed, sender, recipient, self.layer.active)
        except SecureFLError:
            return
        x = secagg.share_coordinate(self.graph, sender, recipient)
        half = secagg._share_width(self.layer.active)
        self.self_shares.setdefault(sender, {})[x] = plain[: shamir.SHARE_BYTES]
        self.key_shares.setdefault(sender, {})[x] = plain[half : half + shamir.SHARE_BYTES]

    # --- what the adversary does with it all -------------------------------------------------------

    def mask_key(self, party: str) -> bytes | None:
        """The party's mask private key, if the adversary has it (colluder, or t key shares)."""
        if party in self.colluders:
            return self.sides[party].s_sk
        shares = self.key_shares.get(party, {})
        if len(shares) < self.t:
            return None
        public = _mask_public(self.keys[party])
        outcome = shamir.reconstruct(
            shares, self.t, channel.KEY_BYTES, lambda s: channel.public_of(s) == public
        )
        return outcome.secret

    def recovered(self) -> list[str]:
        """The honest parties whose input the adversary can compute on its own."""
        exposed = []
        for o, y in self.masked.items():
            if o in self.colluders or len(self.self_shares.get(o, {})) < self.t:
                continue
            seed = shamir.reconstruct(self.self_shares[o], self.t, prg.SEED_BYTES).secret
            if seed is None:
                continue
            masks = prg.MaskAccumulator(DIM, np.dtype("<u4"))
            masks.add(seed)
            own_key = self.mask_key(o)
            complete = True
            for j in self.senders[o]:
                other_key = self.mask_key(j)
                if own_key is not None:
                    secret = channel.agree(own_key, _mask_public(self.keys[j]), _mask_context(self.ctx, o, j))
                elif other_key is not None:
                    secret = channel.agree(
                        other_key, _mask_public(self.keys[o]), _mask_context(self.ctx, o, j)
                    )
                else:
                    complete = False
                    break
                (masks.add if o < j else masks.subtract)(secret)
            if not complete:
                continue
            guess = (y.astype(np.uint32) - masks.total).astype(np.uint64)
            if np.array_equal(guess, self.inputs[o] & np.uint64(2**32 - 1)):
                exposed.append(o)
        return exposed


class _Rng:
    def bytes(self, n: int) -> bytes:
        return os.urandom(n)


def _layer(kind: str, n: int, active: bool, **kw) -> SecAgg:
    ids = Identities.generate([f"p{i:02d}" for i in range(n)]) if active else None
    if kind == "secagg":
        return SecAgg(identities=ids, **kw)
    return SecAggPlus(identities=ids, **kw)


def _subset(data, pool, what, min_size=0):
    return (
        sorted(data.draw(st.sets(st.sampled_from(sorted(pool)), min_size=min_size), label=what))
        if pool
        else []
    )


def _senders(data, attack: Attack, party: str) -> list[str]:
    """All neighbours (honest), exactly t or t − 1 of them (the edge of the rule), or any subset."""
    peers = sorted(attack.graph[party])
    how = data.draw(st.sampled_from(["all", "t", "t-1", "any"]), label=f"senders of {party}")
    if how == "all":
        return peers
    if how == "any":
        return _subset(data, peers, f"senders of {party}")
    size = max(0, min(len(peers), attack.t - (how == "t-1")))
    return sorted(data.draw(st.permutations(peers), label=f"order for {party}")[:size])


def _survivor_list(data, attack: Attack, arrived: list[str]) -> tuple[str, ...]:
    """Everyone whose input arrived, all but a few of them, or any set of parties."""
    how = data.draw(st.sampled_from(["arrived", "minus", "any"]), label="list")
    if how == "arrived":
        return tuple(arrived)
    if how == "minus":
        return tuple(p for p in arrived if p not in _subset(data, arrived, "declared dropped"))
    return tuple(_subset(data, attack.parties, "a survivor list"))


def _play(attack: Attack, data, active: bool) -> None:
    """Let hypothesis pick every choice of a malicious aggregator."""
    parties = attack.parties
    attack.advertise()
    substitute = {}
    if active and data.draw(st.booleans(), label="substitute a key"):
        victim = data.draw(st.sampled_from(parties), label="victim")
        substitute[victim] = data.draw(
            st.sampled_from(sorted(attack.graph[victim])), label="substituted peer"
        )
    attack.share(substitute)
    garble = set(_subset(data, parties, "senders whose shares are garbled on the way"))
    attack.mask({p: _senders(data, attack, p) for p in parties}, garble)
    arrived = sorted(attack.masked)
    if active:
        lists = [_survivor_list(data, attack, arrived) for _ in range(data.draw(st.integers(1, 3)))]
        signed = {p: data.draw(st.sampled_from(lists), label=f"list signed by {p}") for p in arrived}
        attack.consistency(signed)
        shown = {p: data.draw(st.sampled_from(lists), label=f"list shown to {p}") for p in arrived}
    else:
        shown = dict.fromkeys(arrived, _survivor_list(data, attack, arrived))
    attack.unmask(shown, data.draw(st.sampled_from(["none", "relay", "original", "all"]), label="disputes"))
    revealed = sum(len(v) for v in attack.self_shares.values()) + sum(
        len(v) for v in attack.key_shares.values()
    )
    event("shares revealed" if revealed else "nothing revealed")
    event("some key rebuilt" if any(attack.mask_key(p) for p in attack.key_shares) else "no key rebuilt")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    kind=st.sampled_from(["secagg", "secagg+"]),
    n=st.integers(5, 12),
    active=st.booleans(),
    data=st.data(),
)
def test_a_malicious_aggregator_never_recovers_an_update(kind, n, active, data):
    layer = _layer(kind, n, active, **({"degree": 4} if kind == "secagg+" else {}))
    bound = layer.collusion_bound(n)
    parties = [f"p{i:02d}" for i in range(n)]
    colluders = set(data.draw(st.sets(st.sampled_from(parties), max_size=bound), label="colluders"))
    # The graph seed is the aggregator's choice too (drawn here so that examples replay exactly).
    graph_seed = data.draw(st.binary(min_size=prg.SEED_BYTES, max_size=prg.SEED_BYTES), label="graph seed")
    attack = Attack(layer, n, colluders, graph_seed)
    _play(attack, data, active)
    assert attack.recovered() == [], (attack.refusals, attack.senders)


@pytest.mark.parametrize("kind", ["secagg", "secagg+"])
@pytest.mark.parametrize("active", [False, True])
def test_the_reported_attack_empty_senders_is_refused(kind, active):
    """Issue 13 §1: tell the target nobody sent shares, keep it on the list, collect its seed."""
    n = 8
    attack = Attack(_layer(kind, n, active, **({"degree": 4} if kind == "secagg+" else {})), n, set())
    attack.advertise()
    attack.share()
    attack.mask({p: ([] if p == "p03" else sorted(attack.graph[p])) for p in attack.parties})
    assert "p03" in attack.refusals and "at least" in attack.refusals["p03"]
    everyone = tuple(attack.parties)
    if active:
        attack.consistency(dict.fromkeys(attack.masked, everyone))
    attack.unmask(dict.fromkeys(attack.masked, everyone))
    assert attack.recovered() == []


def test_split_survivor_lists_cannot_gather_enough_signatures():
    """Issue 13 §2: n = 16, k = 12 — two groups each sign a different list; with t = 8 (> k/2) and
    s = ⌈(n + 2t − k)/2⌉ = 10 signatures required, neither list reaches the parties."""
    n = 16
    layer = _layer("secagg+", n, True, degree=12)
    attack = Attack(layer, n, set())
    attack.advertise()
    attack.share()
    attack.mask({p: sorted(attack.graph[p]) for p in attack.parties})
    target = "p00"
    with_target = tuple(attack.parties)
    without = tuple(p for p in attack.parties if p != target)
    half = attack.parties[: n // 2]
    attack.consistency({p: (with_target if p in half else without) for p in attack.masked})
    attack.unmask({p: (with_target if p in half else without) for p in attack.masked})
    assert attack.recovered() == []
    assert all("confirmed the survivor list" in reason for reason in attack.refusals.values()), (
        attack.refusals
    )


def test_the_oracle_finds_a_real_break(monkeypatch):
    """The same harness against t = k/2 (refused by validation and by both sides at run time;
    the run-time check is switched off here): the attack recovers the target's exact input. The
    check can fail."""
    monkeypatch.setattr(secagg, "_require_safe_threshold", lambda layer, ctx: None)
    n = 8
    layer = SecAggPlus(degree=4, threshold=2)
    attack = Attack(layer, n, set())
    attack.advertise()
    attack.share()
    target = "p03"
    # Mask the target with two neighbours (= t), then list it with its other two neighbours only.
    order = sorted(attack.graph[target])
    maskers, listed = order[:2], order[2:]
    attack.mask({p: (maskers if p == target else sorted(attack.graph[p])) for p in attack.parties})
    survivors = tuple(sorted({target, *listed} | (set(attack.parties) - set(maskers) - set(order))))
    attack.unmask(dict.fromkeys(attack.masked, survivors))
    assert target in attack.recovered()


def test_parties_shown_different_rosters_cannot_interoperate():
    """Found by an independent attacker: show the target and two colluders the true roster of 10
    and every other party a roster of 4 ({itself, target, colluders}), where t = 2 and s = 3 would
    let the colluders rebuild its key and co-sign its list. Every context binds the roster and
    parameters, so a party with another roster cannot verify the others' advertisements: each
    honest party shown the small roster refuses to share."""
    ids = [f"p{i:02d}" for i in range(10)]
    target, colluders = "p03", {"p08", "p09"}
    layer = SecAgg(identities=Identities.generate(ids))
    views = {p: (ids if p in colluders | {target} else sorted({p, target, *colluders})) for p in ids}
    sides = {p: layer.party(p) for p in ids}
    for p in ids:
        sides[p].start_round(RoundContext(SESSION, 0, tuple(views[p]), DIM, True, 2), lambda: np.zeros(DIM))
    seed = bytes(32)
    adverts = {}
    for p in ids:
        _, parts = decode_record(
            sides[p].respond("advertise", encode_record(b"SAAq", {}, {"graph_seed": seed})),
            b"SAAr",
            {},
            ("keys", "signature"),
        )
        adverts[p] = parts["keys"] + parts["signature"]
    for p in ids:
        if views[p] is ids:
            continue
        peers = [q for q in views[p] if q != p]
        request = encode_record(b"SASq", {"peers": peers}, {"keys": b"".join(adverts[q] for q in peers)})
        with pytest.raises(SecureFLError, match="does not verify"):
            sides[p].respond("share", request)


def test_a_round_larger_than_the_threshold_allows_is_refused_by_both_sides():
    """Found by an independent attacker: SecAgg(threshold=5) validated for 8 parties, then a round
    of 20 selected (k = 19, so t = 5 ≤ k/2). Both sides check t > k/2 at run time and refuse."""
    layer = SecAgg(threshold=5)
    ctx = RoundContext(SESSION, 0, tuple(f"p{i:02d}" for i in range(20)), DIM, True, 2)
    with pytest.raises(RoundFailed, match="at most half"):
        layer.aggregator().start_round(ctx)
    party = layer.party("p00")
    party.start_round(ctx, lambda: np.zeros(DIM))
    with pytest.raises(ProtocolError, match="at most half"):
        party.respond("advertise", encode_record(b"SAAq", {}, {"graph_seed": bytes(32)}))


@settings(max_examples=4, deadline=None)
@given(kind=st.sampled_from(["secagg", "secagg+"]), seed=st.binary(min_size=32, max_size=32))
def test_passive_mode_holds_to_2t_minus_k_minus_1_colluders_with_a_lying_aggregator(kind, seed):
    """The passive row of the threat table (protocols/secagg.md): against an aggregator that lies
    about senders and dropouts but shows everyone one survivor list, the bound is c = 2t − k − 1
    colluders, not t − 1. Attacked as an independent attacker found it: the target is told of exactly
    t senders — the colluders and honest neighbours that the one list then calls dropped although
    they sent their masked inputs — so checks 1 and 2 pass and honest holders reveal the target's
    seed shares and the "dropped" parties' key shares. With 2t − k colluders the target's input comes
    back exactly; with one fewer, it does not."""
    n = 7 if kind == "secagg" else 30
    layer = _layer(kind, n, active=False)
    k = layer.degree(n)
    t = layer.shares_needed(k)
    assert layer.collusion_bound(n) == 2 * t - k - 1
    for colluding, exposed in ((2 * t - k - 1, False), (2 * t - k, True)):
        attack = Attack(layer, n, set(), graph_seed=seed)
        neighbours = sorted(attack.graph["p00"])
        attack.colluders = set(neighbours[:colluding])
        hidden = [p for p in neighbours if p not in attack.colluders][: t - colluding]
        attack.advertise()
        attack.share()
        senders = {p: sorted(attack.graph[p]) for p in attack.parties}
        senders["p00"] = sorted(attack.colluders | set(hidden))
        attack.mask(senders)
        listed = tuple(sorted(set(attack.parties) - set(hidden)))
        attack.unmask({p: listed for p in listed if p not in attack.colluders})
        assert ("p00" in attack.recovered()) == exposed, (colluding, attack.refusals)
