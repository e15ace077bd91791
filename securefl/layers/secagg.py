"""``secagg`` and ``secagg+``: pairwise-mask secure aggregation that survives dropouts.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017),
with every party paired with every other (``secagg``), or with the neighbours of a random k-regular
graph as in Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS
2020) (``secagg+``). The full specification, threat model and known-answer vectors are in
``protocols/secagg.md``; this module follows it phase by phase:

``advertise``   each party sends two fresh X25519 public keys (channel, mask), signed with its
                Ed25519 identity key in active mode;
``share``       each party Shamir-shares its mask private key and a fresh self-mask seed among its
                neighbours, each share sealed with AES-GCM under the pair's channel key;
``masked``      each party sends ``x + PRG(b) + Σ ±PRG(s_ij)`` modulo 2^k;
``consistency`` (active mode) each party signs the list of parties whose masked input arrived;
``unmask``      for each neighbour, a party reveals the share of its self-mask seed if it survived,
                or of its mask private key if it dropped — never both for the same party.

The aggregator side holds only public keys, sealed shares it cannot open, masked vectors and the
shares parties choose to reveal; it removes exactly the masks it must and returns the sum of the
surviving parties' quantized vectors.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from securefl.crypto import channel, prg, shamir, signing
from securefl.crypto.signing import Identities
from securefl.errors import ConfigError, ProtocolError, RoundFailed, WireError
from securefl.layers.base import (
    Provider,
    RoundContext,
    SecureSum,
    StackContext,
    SumAggregator,
    SumParty,
    Transform,
)
from securefl.randomness import SecureRandom, require_test_seed_permission
from securefl.wire import decode_record, encode_record, pack_array, unpack_array

ADVERTISE, SHARE, MASKED, CONSISTENCY, UNMASK = "advertise", "share", "masked", "consistency", "unmask"
_SHARE_PLAINTEXT = 2 * shamir.SHARE_BYTES  # self-mask seed share ‖ mask private key share
_SEALED_SHARE = channel.sealed_size(_SHARE_PLAINTEXT)
_KEYS = 2 * channel.KEY_BYTES


# --- configuration ----------------------------------------------------------------------------


class SecAgg(SecureSum):
    """Secure aggregation over the complete graph: every party masks with every other.

    ``threshold``: how many of a party's neighbours must reveal shares to unmask it — a fraction of
    its neighbours (default 2/3, rounded up) or an absolute count. ``modulus_bits``: 32 (upload is
    the size of float32) or 64. ``identities`` turns on active-adversary mode: signed key
    advertisements and the consistency round.
    """

    name = "secagg"
    accepts_floats = False

    def __init__(
        self,
        threshold: float | int = 2 / 3,
        modulus_bits: int = 32,
        identities: Identities | None = None,
        rng_for: Callable[[str, int], SecureRandom] | None = None,
    ) -> None:
        if modulus_bits not in (32, 64):
            raise ConfigError(f"secagg modulus_bits must be 32 or 64, got {modulus_bits!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 0:
            raise ConfigError(
                f"secagg threshold must be a fraction in (0, 1] or a count >= 2, got {threshold!r}"
            )
        if isinstance(threshold, float) and threshold > 1:
            raise ConfigError(f"a fractional secagg threshold must be at most 1, got {threshold}")
        if isinstance(threshold, int) and threshold < 2:
            raise ConfigError("a secagg threshold of one share would let any single party unmask another")
        if rng_for is not None:
            require_test_seed_permission("secagg randomness")
        self.threshold = threshold
        self.modulus_bits = modulus_bits
        self.identities = identities
        self._rng_for = rng_for

    @property
    def active(self) -> bool:
        return self.identities is not None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u4" if self.modulus_bits == 32 else "<u8")

    def phases(self) -> tuple[str, ...]:
        if self.active:
            return (ADVERTISE, SHARE, MASKED, CONSISTENCY, UNMASK)
        return (ADVERTISE, SHARE, MASKED, UNMASK)

    def degree(self, n: int) -> int:
        """How many neighbours each of ``n`` parties has."""
        return n - 1

    def shares_needed(self, degree: int) -> int:
        if isinstance(self.threshold, float):
            return max(2, math.ceil(self.threshold * degree - 1e-9))
        return self.threshold

    def min_contributors(self, selected: int, min_parties: int) -> int:
        """Unmasking needs t shares of every summed party's self-mask seed from surviving neighbours,
        who sent masked inputs themselves: a successful round sums at least t parties (t + 1 when the
        party's own share is not counted; t is the conservative figure)."""
        return max(min_parties, self.shares_needed(self.degree(selected)))

    def failure_bound(self, parties: int, dropout: float) -> float:
        """An upper bound on the probability that a round of ``parties`` fails when each party
        drops independently with probability ``dropout`` after sharing keys. On the complete graph
        every neighbourhood is everyone else: the round fails when more than n − 1 − t drop."""
        k = self.degree(parties)
        return _binomial_tail(parties, dropout, parties - 1 - self.shares_needed(k))

    def validate(self, ctx: StackContext, transforms: Sequence[Transform]) -> None:
        if ctx.max_parties < 3:
            raise ConfigError(
                f"{self.name} needs at least 3 parties per round (a round here has at most "
                f"{ctx.max_parties}); with 2, the sum reveals each input to the other party anyway"
            )
        degree = self.degree(ctx.max_parties)
        if self.shares_needed(degree) > degree:
            raise ConfigError(
                f"{self.name} threshold {self.threshold} needs {self.shares_needed(degree)} shares, but a "
                f"party has only {degree} neighbours with {ctx.max_parties} parties"
            )

    def neighbours(self, parties: Sequence[str], graph_seed: bytes) -> dict[str, frozenset[str]]:
        """Each party's neighbours in this round's graph (complete here)."""
        everyone = frozenset(parties)
        return {p: everyone - {p} for p in parties}

    def rng(self, party: str, round: int) -> SecureRandom:
        """The party's randomness for a round: the OS CSPRNG (seeded only in known-answer tests)."""
        return self._rng_for(party, round) if self._rng_for else SecureRandom()

    def aggregator(self) -> SumAggregator:
        public = self.identities.public_only() if self.identities else None
        return _Aggregator(self, public)

    def party(self, party_id: str) -> SumParty:
        if self.active and party_id not in self.identities.private:
            raise ConfigError(f"{self.name} in active mode needs the identity key of {party_id!r}")
        return _Party(self, party_id)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(threshold={self.threshold}, modulus_bits={self.modulus_bits}, active={self.active})"


class SecAggPlus(SecAgg):
    """SecAgg over a random k-regular (Harary) graph: cost grows with log n instead of n.

    ``degree`` (even) defaults to ``2·⌈1.5·log2 n⌉``, capped at n − 1 (then the graph is complete).
    The graph is the Harary graph H(k, n) on the parties in an order drawn from a fresh 256-bit seed
    the aggregator picks each round. ``threshold`` defaults to half the neighbours: a random
    neighbourhood's losses fluctuate, and t = k/2 balances dropout tolerance (k − t lost) against
    collusion (t colluding neighbours); see :meth:`failure_bound`.
    """

    name = "secagg+"

    def __init__(self, degree: int | None = None, threshold: float | int = 0.5, **kwargs) -> None:
        super().__init__(threshold=threshold, **kwargs)
        if degree is not None and (not isinstance(degree, int) or degree < 2 or degree % 2):
            raise ConfigError(f"secagg+ degree must be an even integer >= 2, got {degree!r}")
        self.k = degree

    def degree(self, n: int) -> int:
        k = self.k if self.k is not None else 2 * math.ceil(1.5 * math.log2(max(n, 2)))
        return min(n - 1, k)

    def failure_bound(self, parties: int, dropout: float) -> float:
        """Union bound over parties: some party keeps fewer than t of its k neighbours."""
        k = self.degree(parties)
        if k >= parties - 1:
            return super().failure_bound(parties, dropout)
        return min(1.0, parties * _binomial_tail(k, dropout, k - self.shares_needed(k)))

    def neighbours(self, parties: Sequence[str], graph_seed: bytes) -> dict[str, frozenset[str]]:
        n = len(parties)
        k = self.degree(n)
        if k >= n - 1:
            return super().neighbours(parties, graph_seed)
        order = _permutation(sorted(parties), graph_seed)
        half = k // 2
        return {
            order[i]: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d) for i in range(n)
        }


def _binomial_tail(trials: int, p: float, at_most: int) -> float:
    """P(Binomial(trials, p) > at_most)."""
    return sum(
        math.comb(trials, i) * p**i * (1 - p) ** (trials - i) for i in range(max(at_most + 1, 0), trials + 1)
    )


def _permutation(items: list[str], seed: bytes) -> list[str]:
    """A uniformly random order of ``items`` from ``seed`` (Fisher–Yates on an AES-CTR stream)."""
    words = prg.expand(seed, 2 * len(items), np.uint64)
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = int(((int(words[2 * i]) << 64) | int(words[2 * i + 1])) % (i + 1))  # 128 bits: bias < 2^-100
        out[i], out[j] = out[j], out[i]
    return out


# --- shared by both sides ----------------------------------------------------------------------


def _context(label: str, ctx: RoundContext, *names: str) -> bytes:
    """Domain-separated, length-prefixed context for KDFs, AAD and signatures."""
    fields = [b"securefl/secagg/v1", label.encode(), bytes.fromhex(ctx.session), struct.pack(">I", ctx.round)]
    fields += [n.encode() for n in names]
    return b"".join(struct.pack(">H", len(f)) + f for f in fields)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _x(ctx: RoundContext, party: str) -> int:
    """A party's Shamir coordinate: its position in the round's sorted party list, plus one."""
    return ctx.parties.index(party) + 1


def _ids(value: object, what: str, allowed: Iterable[str]) -> list[str]:
    allowed = set(allowed)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WireError(f"{what} must be a list of party ids")
    if len(set(value)) != len(value):
        raise WireError(f"{what} lists a party twice")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ProtocolError(f"{what} names parties outside this round or not neighbours: {unknown}")
    return list(value)


def _chunks(data: bytes, size: int, count: int, what: str) -> list[bytes]:
    if len(data) != size * count:
        raise WireError(f"{what}: expected {count} × {size} bytes, got {len(data)}")
    return [data[i * size : (i + 1) * size] for i in range(count)]


def _advertised(ctx: RoundContext, party: str, keys: bytes) -> bytes:
    return _context("advertise", ctx, party) + keys


def _survivor_statement(ctx: RoundContext, survivors: Sequence[str]) -> bytes:
    return _context("consistency", ctx, *sorted(survivors))


# --- the aggregator's side ---------------------------------------------------------------------


class _Aggregator(SumAggregator):
    def __init__(self, layer: SecAgg, identities: Identities | None) -> None:
        self.layer = layer
        self.identities = identities  # public keys only

    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        return self.layer.phases()

    def start_round(self, ctx: RoundContext) -> None:
        if len(ctx.parties) < 3:
            raise RoundFailed(
                f"{self.layer.name} needs at least 3 parties in a round, {len(ctx.parties)} selected"
            )
        self.ctx = ctx
        self.graph_seed = os.urandom(prg.SEED_BYTES)
        self.graph = self.layer.neighbours(ctx.parties, self.graph_seed)
        self.t = self.layer.shares_needed(self.layer.degree(len(ctx.parties)))
        self.keys: dict[str, bytes] = {}  # party -> c_pk ‖ s_pk
        self.signatures: dict[str, bytes] = {}
        self.sealed: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> sealed shares
        self.total = np.zeros(ctx.vector_size, dtype=self.layer.dtype)
        self.u1 = self.u2 = self.u3 = frozenset()
        self.statements: dict[str, bytes] = {}
        self.self_shares: dict[str, dict[int, bytes]] = {}
        self.key_shares: dict[str, dict[int, bytes]] = {}

    def max_reply_bytes(self, phase: str) -> int:
        n = len(self.ctx.parties)
        if phase == MASKED:
            return self.ctx.vector_size * self.layer.dtype.itemsize + 64
        per_party = {SHARE: _SEALED_SHARE, UNMASK: shamir.SHARE_BYTES}.get(phase, 0)
        return 4096 + n * (per_party + 70) + _KEYS + signing.SIGNATURE_BYTES

    def request(self, phase: str, party: str) -> bytes:
        if phase == ADVERTISE:
            return encode_record(b"SAAq", {}, {"graph_seed": self.graph_seed})
        if phase == SHARE:
            peers = sorted(self.u1 & self.graph[party])
            blob = b"".join(self.keys[p] + self.signatures.get(p, b"") for p in peers)
            return encode_record(b"SASq", {"peers": peers}, {"keys": blob})
        if phase == MASKED:
            senders = sorted(s for s in self.u2 if party in self.sealed[s])
            blob = b"".join(self.sealed[s][party] for s in senders)
            return encode_record(b"SAMq", {"senders": senders}, {"shares": blob})
        if phase == CONSISTENCY:
            return encode_record(b"SACq", {"survivors": sorted(self.u3)}, {})
        signers = sorted(self.statements)
        blob = b"".join(self.statements[s] for s in signers)
        return encode_record(
            b"SAUq", {"survivors": sorted(self.u3), "signers": signers}, {"signatures": blob}
        )

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        getattr(self, f"_receive_{phase}")(party, payload)

    def _receive_advertise(self, party: str, payload: bytes) -> None:
        parts_expected = ("keys", "signature") if self.identities else ("keys",)
        _, parts = decode_record(payload, b"SAAr", {}, parts_expected)
        keys = parts["keys"]
        if len(keys) != _KEYS:
            raise WireError(f"advertised keys are {len(keys)} bytes, expected {_KEYS}")
        if self.identities:
            # Checked here to drop impostors early; every party checks again itself.
            self.identities.verify(party, parts["signature"], _advertised(self.ctx, party, keys))
            self.signatures[party] = parts["signature"]
        self.keys[party] = keys

    def _receive_share(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(payload, b"SASr", {"recipients": list}, ("shares",))
        expected = self.u1 & self.graph[party]
        recipients = _ids(header["recipients"], "share recipients", expected)
        if set(recipients) != expected:
            raise ProtocolError(f"{party} shared with {sorted(recipients)}, not with all its live neighbours")
        sealed = _chunks(parts["shares"], _SEALED_SHARE, len(recipients), "sealed shares")
        self.sealed[party] = dict(zip(recipients, sealed, strict=True))

    def _receive_masked(self, party: str, payload: bytes) -> None:
        masked = unpack_array(payload, self.layer.dtype, (self.ctx.vector_size,))
        self.total += masked  # wraps modulo 2^k; summed on arrival so memory stays flat

    def _receive_consistency(self, party: str, payload: bytes) -> None:
        _, parts = decode_record(payload, b"SACr", {}, ("signature",))
        statement = _survivor_statement(self.ctx, sorted(self.u3))
        self.identities.verify(party, parts["signature"], statement)
        self.statements[party] = parts["signature"]

    def _receive_unmask(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(payload, b"SAUr", {"self": list, "secret": list}, ("shares",))
        holders_of = {s for s in self.u2 if party in self.sealed.get(s, {})}
        want_self, want_secret = holders_of & self.u3, holders_of - self.u3
        got_self = _ids(header["self"], "self-mask shares", want_self)
        got_secret = _ids(header["secret"], "key shares", want_secret)
        if set(got_self) != want_self or set(got_secret) != want_secret:
            raise ProtocolError(f"{party} did not reveal exactly the shares the survivor list calls for")
        shares = _chunks(
            parts["shares"], shamir.SHARE_BYTES, len(got_self) + len(got_secret), "revealed shares"
        )
        x = _x(self.ctx, party)
        for owner, share in zip(got_self + got_secret, shares, strict=True):
            target = self.self_shares if owner in want_self else self.key_shares
            target.setdefault(owner, {})[x] = share

    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        if phase == ADVERTISE:
            self.u1 = survivors
        elif phase == SHARE:
            self.u2 = survivors
            # A party's shares are useless if a recipient dropped before seeing them: keep only
            # shares addressed to parties still live.
            for sender in self.sealed:
                self.sealed[sender] = {r: c for r, c in self.sealed[sender].items() if r in survivors}
        elif phase == MASKED:
            self.u3 = survivors
            self._require(len(survivors) >= self.t, f"only {len(survivors)} masked inputs arrived")
        elif phase == CONSISTENCY:
            self._require(
                len(survivors) >= self.t,
                f"only {len(survivors)} parties confirmed the survivor list, {self.t} needed",
            )
        else:
            self._unmask()

    def _require(self, condition: bool, message: str) -> None:
        if not condition:
            raise RoundFailed(f"{self.layer.name}: {message}; the threshold is {self.t}, nothing is revealed")

    def _unmask(self) -> None:
        ctx, layer = self.ctx, self.layer
        masks = prg.MaskAccumulator(ctx.vector_size, layer.dtype)
        for owner in sorted(self.u3):
            shares = self.self_shares.get(owner, {})
            self._require(len(shares) >= self.t, f"{len(shares)} shares of {owner}'s self mask arrived")
            masks.add(shamir.combine(shares, self.t, prg.SEED_BYTES))
        for dropped in sorted(self.u2 - self.u3):
            shares = self.key_shares.get(dropped, {})
            self._require(len(shares) >= self.t, f"{len(shares)} shares of dropped {dropped}'s key arrived")
            secret = shamir.combine(shares, self.t, channel.KEY_BYTES)
            if channel.public_of(secret) != self.keys[dropped][channel.KEY_BYTES :]:
                raise RoundFailed(
                    f"{layer.name}: the shares of {dropped}'s key are inconsistent; round aborted"
                )
            for survivor in sorted(self.u3 & self.graph[dropped]):
                if dropped not in self.sealed or survivor not in self.sealed[dropped]:
                    continue  # the survivor never received the dropped party's shares: no mask between them
                seed = channel.agree(
                    secret, self.keys[survivor][channel.KEY_BYTES :], _mask_context(ctx, survivor, dropped)
                )
                # The survivor added +mask if its id sorts first, −mask otherwise: undo exactly that.
                (masks.add if survivor < dropped else masks.subtract)(seed)
        self.total -= masks.total

    def contributors(self) -> frozenset[str]:
        return self.u3

    def result(self) -> np.ndarray:
        return self.total.astype(np.uint64)


def _mask_context(ctx: RoundContext, a: str, b: str) -> bytes:
    return _context("pairwise-mask", ctx, *_pair(a, b))


# --- a party's side ----------------------------------------------------------------------------


class _Party(SumParty):
    def __init__(self, layer: SecAgg, party_id: str) -> None:
        self.layer = layer
        self.me = party_id
        self.identity = layer.identities.private[party_id] if layer.active else None
        self.identities = layer.identities.public_only() if layer.active else None

    def start_round(self, ctx: RoundContext, provide: Provider) -> None:
        self.ctx = ctx
        self.rng = self.layer.rng(self.me, ctx.round)
        self.provide = provide
        self.t = self.layer.shares_needed(self.layer.degree(len(ctx.parties)))
        self.expected = self.layer.phases()
        self.step = 0
        self.peers: dict[str, bytes] = {}
        self.held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (self-mask share, key share)
        self.signed_survivors: list[str] | None = None

    def respond(self, phase: str, request: bytes) -> bytes:
        if self.step >= len(self.expected) or phase != self.expected[self.step]:
            raise ProtocolError(
                f"phase {phase!r} out of order (expected {self.expected[self.step : self.step + 1]})"
            )
        self.step += 1
        return getattr(self, f"_{phase}")(request)

    def _advertise(self, request: bytes) -> bytes:
        _, parts = decode_record(request, b"SAAq", {}, ("graph_seed",))
        if len(parts["graph_seed"]) != prg.SEED_BYTES:
            raise WireError("graph seed must be 32 bytes")
        self.graph = self.layer.neighbours(self.ctx.parties, parts["graph_seed"])
        self.c_sk, c_pk = channel.generate_keypair(self.rng)
        self.s_sk, s_pk = channel.generate_keypair(self.rng)
        self.self_seed = self.rng.bytes(prg.SEED_BYTES)
        keys = c_pk + s_pk
        parts_out = {"keys": keys}
        if self.identity is not None:
            parts_out["signature"] = signing.sign(self.identity, _advertised(self.ctx, self.me, keys))
        return encode_record(b"SAAr", {}, parts_out)

    def _share(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SASq", {"peers": list}, ("keys",))
        peers = _ids(header["peers"], "advertised peers", self.graph[self.me])
        width = _KEYS + (signing.SIGNATURE_BYTES if self.identity else 0)
        for peer, blob in zip(
            peers, _chunks(parts["keys"], width, len(peers), "advertised keys"), strict=True
        ):
            keys = blob[:_KEYS]
            if self.identities is not None:
                self.identities.verify(peer, blob[_KEYS:], _advertised(self.ctx, peer, keys))
            self.peers[peer] = keys
        if len(peers) < self.t:
            raise ProtocolError(f"only {len(peers)} neighbours advertised keys; {self.t} are needed to share")
        xs = [_x(self.ctx, p) for p in peers]
        seed_shares = shamir.split(self.self_seed, xs, self.t, self.rng)
        key_shares = shamir.split(self.s_sk, xs, self.t, self.rng)
        sealed = []
        for peer in peers:
            x = _x(self.ctx, peer)
            key = self._share_key(peer)
            sealed.append(
                channel.seal(
                    key, seed_shares[x] + key_shares[x], _context("share", self.ctx, self.me, peer), self.rng
                )
            )
        return encode_record(b"SASr", {"recipients": peers}, {"shares": b"".join(sealed)})

    def _masked(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SAMq", {"senders": list}, ("shares",))
        senders = _ids(header["senders"], "share senders", self.peers)
        for sender, blob in zip(
            senders, _chunks(parts["shares"], _SEALED_SHARE, len(senders), "sealed shares"), strict=True
        ):
            key = self._share_key(sender)
            plain = channel.open_sealed(key, blob, _context("share", self.ctx, sender, self.me))
            self.held[sender] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        masks = prg.MaskAccumulator(self.ctx.vector_size, self.layer.dtype)
        masks.add(self.self_seed)
        for peer in senders:
            seed = channel.agree(
                self.s_sk, self.peers[peer][channel.KEY_BYTES :], _mask_context(self.ctx, self.me, peer)
            )
            (masks.add if self.me < peer else masks.subtract)(seed)
        vector = np.asarray(self.provide(), dtype=np.uint64).astype(self.layer.dtype)
        return pack_array(vector + masks.total)

    def _consistency(self, request: bytes) -> bytes:
        header, _ = decode_record(request, b"SACq", {"survivors": list}, ())
        survivors = self._check_survivors(header["survivors"])
        self.signed_survivors = survivors
        return encode_record(
            b"SACr", {}, {"signature": signing.sign(self.identity, _survivor_statement(self.ctx, survivors))}
        )

    def _unmask(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SAUq", {"survivors": list, "signers": list}, ("signatures",))
        survivors = self._check_survivors(header["survivors"])
        if self.identity is not None:
            if survivors != self.signed_survivors:
                raise ProtocolError(
                    "the aggregator changed the survivor list after it was signed; round aborted"
                )
            signers = _ids(header["signers"], "signers", survivors)
            if len(signers) < self.t:
                raise ProtocolError(
                    f"only {len(signers)} parties confirmed the survivor list; {self.t} needed"
                )
            statement = _survivor_statement(self.ctx, survivors)
            for signer, sig in zip(
                signers,
                _chunks(parts["signatures"], signing.SIGNATURE_BYTES, len(signers), "signatures"),
                strict=True,
            ):
                self.identities.verify(signer, sig, statement)
        alive = set(survivors)
        # The security-critical rule: for each party, reveal either its self-mask share (it
        # survived) or its key share (it dropped), never both, and only once per round.
        owners_self = sorted(o for o in self.held if o in alive)
        owners_secret = sorted(o for o in self.held if o not in alive)
        shares = [self.held[o][0] for o in owners_self] + [self.held[o][1] for o in owners_secret]
        self.held = {}
        return encode_record(
            b"SAUr", {"self": owners_self, "secret": owners_secret}, {"shares": b"".join(shares)}
        )

    def _share_key(self, peer: str) -> bytes:
        """The AES-GCM key this party and ``peer`` seal their shares with (symmetric in the pair)."""
        peer_channel_key = self.peers[peer][: channel.KEY_BYTES]
        return channel.agree(
            self.c_sk, peer_channel_key, _context("share-key", self.ctx, *_pair(self.me, peer))
        )

    def _check_survivors(self, value: object) -> list[str]:
        survivors = sorted(_ids(value, "survivors", self.ctx.parties))
        if self.me not in survivors:
            raise ProtocolError("this party is not on the survivor list it was sent")
        if len(survivors) < self.t:
            raise ProtocolError(
                f"the survivor list has {len(survivors)} parties; at least {self.t} are required"
            )
        return survivors
