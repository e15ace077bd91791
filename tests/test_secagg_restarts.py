"""Active-mode SecAgg against an aggregator that makes parties run a round again.

Found by an independent attacker: a party's promise to sign one survivor list per round lived in
the memory of one PartyNode. The network client built a fresh node whenever a welcome named
another session, so an aggregator that welcomed a party elsewhere and back ran round r with it
again — fresh keys, a second signed list — and with the signatures of three runs it showed
different holders different lists, each with s valid signatures: one colluder (within the bound
2t − k − 1 = 1 of secagg at n = 7) and the aggregator recovered an honest party's exact input.

The harness below is that attack, on real PartyNodes behind the real client's ``_Answerer``; a
*restart* is pluggable: the welcome detour, a restarted party process with its round log on
disk, and — to show the harness finds the break when the defence is missing — a restarted
process without one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np
import pytest

import securefl
from securefl.codec import HonestBounds
from securefl.crypto import channel, prg, shamir
from securefl.errors import ProtocolError
from securefl.federation import Federation
from securefl.layers import Identities, SecAgg
from securefl.layers import secagg as S
from securefl.layers.base import RoundContext
from securefl.network.client import _Answerer
from securefl.network.frames import Welcome
from securefl.network.round_log import RoundLog
from securefl.party import Client, PartyNode
from securefl.roundinfo import RoundInfo
from securefl.wire import REQUEST, Envelope, decode_record, encode_record, pack_array, unpack_array

DIM = 8
PARTIES = [f"p{i}" for i in range(7)]
TARGET, COLLUDER = "p0", "p1"
J1, J2, J3, H1, H2 = "p2", "p3", "p4", "p5", "p6"  # J: the target's maskers the attack unmasks


class World:
    """Seven parties behind real network-client answerers, driven by the attacking aggregator."""

    def __init__(self, round_logs: dict[str, RoundLog] | None) -> None:
        self.identities = Identities.generate(PARTIES)
        self.layer = SecAgg(identities=self.identities)
        self.truth = {}
        clients = {}
        for p in PARTIES:
            rng = np.random.default_rng(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))
            delta = rng.normal(0, 0.5, DIM).astype(np.float32)
            self.truth[p] = delta
            clients[p] = Client(train=lambda weights, info, d=delta: ({"w": weights["w"] + d}, 10))
        self.model = np.zeros(DIM, dtype=np.float32)
        stack = [securefl.Clip(10.0), securefl.Quantize(16), self.layer]
        fed = Federation({"w": self.model}, clients, stack, min_parties=3, weight_bound=10.0)
        self.session, self.spec, self.stack = fed.session, fed.spec, fed.stack
        options = dict(
            spec=fed.spec,
            layout=fed.layout,
            stack=fed.stack,
            weighting="examples",
            weight_bound=10.0,
            min_parties=3,
            honest=HonestBounds.of("examples", 10.0),
        )
        logs = round_logs or {}
        self.factories = {
            p: lambda session, spec, p=p: PartyNode(
                p, clients[p], session=session, round_log=logs.get(p), **options
            )
            for p in PARTIES
        }
        self.answerers = {p: self.fresh_answerer(p) for p in PARTIES}
        self.ctx = S._bind(
            self.layer, RoundContext(self.session, 0, tuple(PARTIES), fed.layout.size, True, 3)
        )

    def fresh_answerer(self, party: str) -> _Answerer:
        answerer = _Answerer(self.factories[party])
        answerer.welcome(Welcome(self.session, self.spec.to_json(), "x"))
        return answerer

    def send(self, party: str, phase: str, layer: bytes, first: bool = False) -> bytes:
        parts = {"layer": layer}
        if first:
            info = RoundInfo(0, tuple(PARTIES), 3, {})
            parts = {"model": pack_array(self.model), "round": info.encode(), **parts}
        envelope = Envelope(REQUEST, self.session, 0, phase, party, parts)
        reply = Envelope.decode(self.answerers[party].answer(envelope.encode()))
        if reply.kind != "reply":
            raise ProtocolError(reply.parts.get("reason", b"").decode())
        return reply.parts["layer"]


def welcome_detour(world: World, party: str) -> None:
    """End the stream, welcome the party to another session, end it again, welcome it back."""
    answerer = world.answerers[party]
    answerer.welcome(Welcome(os.urandom(16).hex(), world.spec.to_json(), "x"))
    answerer.welcome(Welcome(world.session, world.spec.to_json(), "x"))


def process_restart(world: World, party: str) -> None:
    """The party process starts again: a new answerer and nodes; only what is on disk remains."""
    world.answerers[party] = world.fresh_answerer(party)


def run_the_attack(world: World, restart: Callable[[World, str], None]) -> np.ndarray:
    """Three runs of round 0 (the first two only to collect signatures on the lists used in the
    third), then unmask requests showing different holders different lists. Returns the target's
    masked input with every mask the attacker could rebuild removed."""
    n, k = len(PARTIES), len(PARTIES) - 1
    t, s = world.layer.shares_needed(k), world.layer.signatures_needed(n)
    lists = {
        "A": sorted(set(PARTIES) - {J1, J2}),
        "B": sorted(set(PARTIES) - {J1, J3}),
        "C": sorted(set(PARTIES) - {J2, J3}),
    }
    signed: dict[str, dict[str, bytes]] = {name: {} for name in lists}
    graph_seed = os.urandom(32)

    def run(sign: dict[str, str], senders_of: dict[str, list[str]]):
        keys, sealed, masked = {}, {}, {}
        for p in PARTIES:
            reply = world.send(p, "advertise", encode_record(b"SAAq", {}, {"graph_seed": graph_seed}), True)
            keys[p] = decode_record(reply, b"SAAr", {}, ("keys", "signature"))[1]
        for p in PARTIES:
            peers = [q for q in PARTIES if q != p]
            blob = b"".join(keys[q]["keys"] + keys[q]["signature"] for q in peers)
            reply = world.send(p, "share", encode_record(b"SASq", {"peers": peers}, {"keys": blob}))
            header, parts = decode_record(reply, b"SASr", {"recipients": list}, ("shares",))
            width = S._sealed_size(True) + 64
            sealed[p] = {
                r: parts["shares"][i * width : (i + 1) * width] for i, r in enumerate(header["recipients"])
            }
        for p in PARTIES:
            senders = senders_of.get(p, [q for q in PARTIES if q != p])
            blob = b"".join(sealed[q][p] for q in senders)
            reply = world.send(p, "masked", encode_record(b"SAMq", {"senders": senders}, {"shares": blob}))
            masked[p] = unpack_array(
                decode_record(reply, b"SAMr", {"unopened": list}, ("masked", "accusations"))[1]["masked"]
            )
        for p, name in sign.items():
            survivors = S.encode_members(world.ctx, lists[name])
            reply = world.send(p, "consistency", encode_record(b"SACq", {}, {"survivors": survivors}))
            signed[name][p] = decode_record(reply, b"SACr", {}, ("signature",))[1]["signature"]
        return keys, masked

    run({TARGET: "B", H1: "A", H2: "A"}, {})
    for p in PARTIES:
        restart(world, p)
    run({TARGET: "C", H1: "C", H2: "B"}, {})
    for p in PARTIES:
        restart(world, p)
    shown = {TARGET: "A", J3: "A", H1: "B", J2: "B", H2: "C", J1: "C"}
    maskers = [COLLUDER, J1, J2, J3]  # t = 4 senders, as the target requires
    keys, masked = run(shown, {TARGET: maskers})
    colluder_key = world.identities.private[COLLUDER]
    for name, members in lists.items():  # the colluder signs every list
        signed[name][COLLUDER] = S.signing.sign(colluder_key, S._survivor_statement(world.ctx, members))
    graph = world.layer.neighbours(world.ctx.parties, graph_seed)

    def at(owner: str, holder: str) -> int:  # where owner dealt its share to holder
        return S.share_coordinate(graph, owner, holder)

    seed_shares: dict[int, bytes] = {}
    key_shares: dict[str, dict[int, bytes]] = {j: {} for j in (J1, J2, J3)}
    for p, name in shown.items():
        signers = sorted(signed[name])
        assert len(signers) >= s
        request = encode_record(
            b"SAUq",
            {"disputes": []},
            {
                "survivors": S.encode_members(world.ctx, lists[name]),
                "signers": S.encode_members(world.ctx, signers),
                "signatures": b"".join(signed[name][q] for q in signers),
                "accusations": b"",
            },
        )
        reply = world.send(p, "unmask", request)
        header, parts = decode_record(
            reply, b"SAUr", {"self": list, "secret": list, "disputed": list}, ("shares", "one_time")
        )
        width = S._share_width(True)
        owners = [("self", o) for o in header["self"]] + [("secret", o) for o in header["secret"]]
        for i, (kind, owner) in enumerate(owners):
            share = parts["shares"][i * width : i * width + shamir.SHARE_BYTES]
            if kind == "self" and owner == TARGET:
                seed_shares[at(TARGET, p)] = share
            if kind == "secret" and owner in key_shares:
                key_shares[owner][at(owner, p)] = share
    colluder = world.answerers[COLLUDER].node.secure_sum
    seed_shares[at(TARGET, COLLUDER)] = colluder.held[TARGET][0][: shamir.SHARE_BYTES]
    for j in key_shares:
        key_shares[j][at(j, COLLUDER)] = colluder.held[j][1][: shamir.SHARE_BYTES]
    masks = prg.MaskAccumulator(world.ctx.vector_size, world.layer.dtype)
    masks.add(shamir.combine(seed_shares, t, 32))
    for j in maskers:
        secret = colluder.s_sk if j == COLLUDER else shamir.combine(key_shares[j], t, 32)
        seed = channel.agree(
            secret, S._mask_public(keys[TARGET]["keys"]), S._mask_context(world.ctx, TARGET, j)
        )
        (masks.add if j > TARGET else masks.subtract)(seed)
    recovered = masked[TARGET].copy()
    masks.apply_to(recovered, sign=-1)
    return recovered


def test_a_party_welcomed_elsewhere_and_back_resumes_its_node_and_the_attack_fails():
    world = World(round_logs=None)
    with pytest.raises(ProtocolError, match="round 1 was already started"):
        run_the_attack(world, welcome_detour)


def test_a_restarted_party_refuses_a_round_its_round_log_holds_and_the_attack_fails(tmp_path):
    logs = {p: RoundLog(tmp_path / f"{p}.rounds") for p in PARTIES}
    world = World(round_logs=logs)

    def restart_with_log(world: World, party: str) -> None:
        logs[party] = RoundLog(tmp_path / f"{party}.rounds")  # read back from disk, as a new process would
        process_restart(world, party)

    with pytest.raises(ProtocolError, match="already took part in round 1 of session"):
        run_the_attack(world, restart_with_log)


def test_the_harness_finds_the_break_when_a_restarted_party_has_no_round_log():
    """The control: the same attack against parties that forget their rounds when restarted (as
    a deployed party did before it kept a round log) recovers the target's input exactly."""
    world = World(round_logs=None)
    recovered = run_the_attack(world, process_restart)
    decoded = world.stack.decode_sum(recovered.astype(np.uint64), 1, 1)[:DIM]
    # weight 10 × the update, to within the stochastic rounding of 16-bit quantisation
    np.testing.assert_allclose(decoded, 10 * world.truth[TARGET], atol=5e-3)
