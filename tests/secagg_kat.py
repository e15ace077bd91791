"""Known-answer vectors for protocols/secagg.md: fixed seeds in, exact bytes and sums out.

    SECUREFL_ALLOW_TEST_SEEDS=1 python tests/secagg_kat.py > protocols/vectors/secagg.json

The protocol runs directly on the layer's two sides (no transport) with a fixed session id and each
party's randomness drawn from SecureRandom(seed=...), which only tests may do.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from securefl.crypto import channel, prg, shamir
from securefl.layers.base import RoundContext
from securefl.layers.secagg import SecAgg
from securefl.randomness import SecureRandom

SESSION = "000102030405060708090a0b0c0d0e0f"
PARTY_SEEDS = {"alice": 1, "bob": 2, "carol": 3, "dave": 4}
INPUTS = {"alice": [1, 2, 3, 4], "bob": [10, 20, 30, 40], "carol": [2**32 - 1, 0, 7, 0], "dave": [5, 5, 5, 5]}


def run(parties: list[str], drop_after_share: tuple[str, ...] = ()) -> dict:
    """One round; parties in ``drop_after_share`` vanish before sending their masked input."""
    layer = SecAgg(rng_for=lambda party, round: SecureRandom(seed=PARTY_SEEDS[party] + 1000 * round))
    ctx = RoundContext(SESSION, 0, tuple(sorted(parties)), 4, True, 2)
    agg = layer.aggregator()
    agg.start_round(ctx)
    agg.graph_seed = bytes(32)  # the complete graph ignores it; fixed for the record
    sides = {p: layer.party(p) for p in ctx.parties}
    for p, side in sides.items():
        side.start_round(ctx, lambda p=p: np.array(INPUTS[p], dtype=np.uint64))
    live = list(ctx.parties)
    record: dict = {"parties": list(ctx.parties), "dropped_after_share": list(drop_after_share), "phases": {}}
    for phase in agg.phases(ctx):
        if phase == "masked":
            live = [p for p in live if p not in drop_after_share]
        replies = {p: sides[p].respond(phase, agg.request(phase, p)) for p in live}
        for p, payload in replies.items():
            agg.receive(phase, p, payload)
        agg.close_phase(phase, frozenset(live))
        if phase in ("advertise", "masked"):
            record["phases"][phase] = {p: payload.hex() for p, payload in replies.items()}
    record["sum"] = [int(v) for v in agg.result()]
    record["contributors"] = sorted(agg.contributors())
    return record


def primitives() -> dict:
    seed = bytes(range(32))
    a_private = bytes(range(32, 64))
    b_private = bytes(range(64, 96))
    context = b"securefl/kat"
    return {
        "prg": {"seed": seed.hex(), "words_u32": [int(w) for w in prg.expand(seed, 8)]},
        "agree": {
            "private_a": a_private.hex(),
            "public_b": channel.public_of(b_private).hex(),
            "context": context.hex(),
            "key": channel.agree(a_private, channel.public_of(b_private), context).hex(),
            "symmetric": channel.agree(b_private, channel.public_of(a_private), context).hex(),
        },
    }


def reconstruction() -> dict:
    """Seven shares of a 32-byte secret at threshold 3, two of them wrong: the decoder corrects
    both (⌊(7 − 3)/2⌋ = 2) and names their coordinates."""
    secret = bytes(range(100, 132))
    shares = shamir.split(secret, list(range(1, 8)), 3, SecureRandom(seed=7))
    shares[2] = (int.from_bytes(shares[2], "big") ^ 1).to_bytes(shamir.SHARE_BYTES, "big")
    shares[6] = bytes(shamir.SHARE_BYTES)
    outcome = shamir.reconstruct(shares, 3, 32)
    return {
        "threshold": 3,
        "shares": {str(x): v.hex() for x, v in sorted(shares.items())},
        "secret": outcome.secret.hex(),
        "wrong": list(outcome.wrong),
    }


def vectors() -> dict:
    return {
        "description": "Known-answer vectors for protocols/secagg.md (regenerate: tests/secagg_kat.py)",
        "session": SESSION,
        "round": 0,
        "party_seeds": PARTY_SEEDS,
        "inputs": INPUTS,
        "primitives": primitives(),
        "reconstruction": reconstruction(),
        "rounds": [run(["alice", "bob", "carol"]), run(["alice", "bob", "carol", "dave"], ("dave",))],
    }


if __name__ == "__main__":
    json.dump(vectors(), sys.stdout, indent=1)
    sys.stdout.write("\n")
