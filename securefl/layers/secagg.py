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
``masked``      each party sends ``x + PRG(b) + Σ ±PRG(s_ij)`` modulo 2^k, masking with at least
                t neighbours, and names any neighbour whose sealed share did not open;
``consistency`` (active mode) each party signs the list of parties whose masked input arrived;
``unmask``      for each neighbour, a party reveals the share of its self-mask seed if it survived,
                or of its mask private key if it dropped — never both for the same party — and
                only if the list keeps at least t of that neighbour's own neighbours.

Against a lying aggregator the safety argument needs t > k/2 (enforced): a party masks with at
least t of its k neighbours and its seed is revealed only when at least t of them are listed as
survivors, so the two sets meet in a survivor whose mask stays on the party's input. In active
mode the list must carry ⌈(n + 2t − k)/2⌉ signatures, so no two lists can both gather enough
(see ``protocols/secagg.md``, "What each mode guarantees").

The aggregator side holds only public keys, sealed shares it cannot open, masked vectors and the
shares parties choose to reveal; it checks every revealed share against the others (a wrong one is
corrected and its sender named), resolves accusations about unopenable shares, removes exactly the
masks it must and returns the sum of the surviving parties' quantized vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as fields_of
from functools import lru_cache
from types import MappingProxyType

import numpy as np

from securefl.crypto import channel, prg, shamir, signing
from securefl.crypto.signing import Identities
from securefl.errors import ConfigError, ProtocolError, RoundFailed, WireError
from securefl.layers.base import (
    Provider,
    RoundContext,
    SecureSum,
    SitOuts,
    StackContext,
    SumAggregator,
    SumParty,
    Transform,
)
from securefl.randomness import SecureRandom, require_test_seed_permission
from securefl.wire import decode_record, encode_record, pack_array, unpack_array

ADVERTISE, SHARE, MASKED, CONSISTENCY, UNMASK = "advertise", "share", "masked", "consistency", "unmask"
# A sealed share: nonce ‖ AES-GCM(shares) ‖ tag, preceded in active mode by the sender's one-time
# X25519 key, which lets the sender prove what it sealed if the recipient claims it cannot open it
# (below). Passive mode answers no dispute, so it seals under the pair's channel key: one X25519
# exchange per neighbour gives the keys of both directions.
_COMMITMENT = 32
# c_pk ‖ s_pk ‖ commitment to the self-mask seed ‖ commitment to the mask private key
_KEYS = 2 * channel.KEY_BYTES + 2 * _COMMITMENT


def _share_width(active: bool) -> int:
    """A dealt share as sealed and revealed: 33 bytes, followed in active mode by the dealer's
    Ed25519 signature on it (so a wrong share the dealer signed convicts the dealer, not its holder)."""
    return shamir.SHARE_BYTES + (signing.SIGNATURE_BYTES if active else 0)


def _one_time_width(active: bool) -> int:
    """The one-time public key that starts a sealed share: active mode only."""
    return channel.KEY_BYTES if active else 0


def _sealed_size(active: bool) -> int:
    """One sealed share: (one-time key ‖) nonce ‖ AES-GCM(seed share ‖ key share) ‖ tag."""
    return _one_time_width(active) + channel.sealed_size(2 * _share_width(active))


# --- configuration ----------------------------------------------------------------------------


class SecAgg(SecureSum):
    """Secure aggregation over the complete graph: every party masks with every other.

    ``threshold``: how many of a party's neighbours must reveal shares to unmask it — a fraction of
    its neighbours (default 2/3, rounded up) or an absolute count; it must exceed half the
    neighbours, or a lying aggregator could unmask a party (more dropout tolerance comes from more
    neighbours, not a lower threshold). ``modulus_bits``: 32 (upload is the size of float32) or 64.
    ``identities`` turns on active-adversary mode: signed key advertisements, signed sealed shares
    and accusations, and the signed consistency round.
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
        if isinstance(threshold, float) and threshold <= 0.5:
            raise ConfigError(
                f"a secagg threshold of {threshold} of the neighbours lets a lying aggregator unmask a party "
                "(it needs more than half); for more dropout tolerance raise the degree instead"
            )
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
            # A fraction above 1/2 always yields more than half, whatever the rounding.
            return max(2, math.ceil(self.threshold * degree - 1e-9), degree // 2 + 1)
        return self.threshold

    def signatures_needed(self, parties: int) -> int:
        """Active mode: signatures of listed parties a survivor list needs, s = ⌈(n + 2t − k)/2⌉.
        Two lists signed by s parties each share 2s − n ≥ 2t − k signers, more than the colluding
        parties tolerated (:meth:`collusion_bound`): an honest party signed both, and it signs one
        list per round. So every honest party reveals shares for the same list."""
        k = self.degree(parties)
        return -(-(parties + 2 * self.shares_needed(k) - k) // 2)

    def collusion_bound(self, parties: int) -> int:
        """How many parties may collude with a lying (active-mode) aggregator without any honest
        party's update being exposed: 2t − k − 1. A party's input is masked with at least t of its k
        neighbours and its seed revealed only if t of them are listed, so at least 2t − k of its
        maskers are listed survivors, whose masks the aggregator cannot remove unless all of them
        collude. (Against an honest-but-curious aggregator the bound is t − 1.)"""
        k = self.degree(parties)
        return 2 * self.shares_needed(k) - k - 1

    def min_contributors(self, selected: int, min_parties: int) -> int:
        """Unmasking needs t shares of every summed party's self-mask seed from surviving neighbours,
        who sent masked inputs themselves: a successful round sums at least t parties (t + 1 when the
        party's own share is not counted; t is the conservative figure)."""
        return max(min_parties, self.shares_needed(self.degree(selected)))

    def failure_bound(self, parties: int, dropout: float) -> float:
        """An upper bound on the probability that a round of ``parties`` fails when each party
        drops independently with probability ``dropout`` after sharing keys. On the complete graph
        every neighbourhood is everyone else: the round fails when more than n − 1 − t drop (in
        active mode the list needs s = t + 1 signers: the same condition)."""
        k = self.degree(parties)
        return _binomial_tail(parties, dropout, parties - 1 - self.shares_needed(k))

    def _signers_failure(self, parties: int, dropout: float) -> float:
        """Active mode: the probability that fewer than s parties are left to sign the list."""
        if not self.active:
            return 0.0
        return _binomial_tail(parties, dropout, parties - self.signatures_needed(parties))

    def validate(self, ctx: StackContext, transforms: Sequence[Transform]) -> None:
        if ctx.max_parties < 3:
            raise ConfigError(
                f"{self.name} needs at least 3 parties per round (a round here has at most "
                f"{ctx.max_parties}); with 2, the sum reveals each input to the other party anyway"
            )
        degree = self.degree(ctx.max_parties)
        needed = self.shares_needed(degree)
        if needed > degree:
            raise ConfigError(
                f"{self.name} threshold {self.threshold} needs {needed} shares, but a "
                f"party has only {degree} neighbours with {ctx.max_parties} parties"
            )
        if 2 * needed <= degree:
            raise ConfigError(
                f"{self.name} threshold {self.threshold} is {needed} shares of {degree} neighbours (with "
                f"{ctx.max_parties} parties): at most half, so a lying aggregator could unmask a party; "
                f"use a threshold above {degree // 2}, and a larger degree for dropout tolerance"
            )

    def neighbours(self, parties: Sequence[str], graph_seed: bytes) -> Mapping[str, frozenset[str]]:
        """Each party's neighbours in this round's graph (complete here), computed when asked."""
        return _complete_graph(tuple(parties))

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

    ``degree`` (even) defaults to ``2·⌈2·log2 n⌉``, capped at n − 1 (then the graph is complete).
    The graph is the Harary graph H(k, n) on the parties in an order drawn from a fresh 256-bit seed
    the aggregator picks each round. ``threshold`` defaults to 60% of the neighbours: above half, as
    safety against a lying aggregator requires, with dropout tolerance from the degree (k = 28,
    t = 17 for n = 100: a round fails with probability < 10⁻³ at 10% dropouts, and up to 5 parties
    may collude with a lying aggregator); see :meth:`failure_bound` and :meth:`collusion_bound`.
    """

    name = "secagg+"

    def __init__(self, degree: int | None = None, threshold: float | int = 0.6, **kwargs) -> None:
        super().__init__(threshold=threshold, **kwargs)
        if degree is not None and (not isinstance(degree, int) or degree < 2 or degree % 2):
            raise ConfigError(f"secagg+ degree must be an even integer >= 2, got {degree!r}")
        self.k = degree

    def degree(self, n: int) -> int:
        k = self.k if self.k is not None else 2 * math.ceil(2 * math.log2(max(n, 2)))
        return min(n - 1, k)

    def failure_bound(self, parties: int, dropout: float) -> float:
        """Union bound over parties: some party keeps fewer than t of its k neighbours, or (active
        mode) fewer than s = ⌈(n + 2t − k)/2⌉ parties are left to sign the survivor list."""
        k = self.degree(parties)
        if k >= parties - 1:
            return super().failure_bound(parties, dropout)
        neighbourhoods = parties * _binomial_tail(k, dropout, k - self.shares_needed(k))
        return min(1.0, neighbourhoods + self._signers_failure(parties, dropout))

    def neighbours(self, parties: Sequence[str], graph_seed: bytes) -> Mapping[str, frozenset[str]]:
        """The Harary graph H(k, n) on the parties in the order drawn from ``graph_seed``: the party
        at position i of the order neighbours those at i ± 1 … i ± k/2 (mod n). A party's
        neighbourhood is derived from the order when asked (a party needs only its own and its
        neighbours'), never the n·k of the whole graph per party; the order is drawn once per
        process for a roster and seed (all the parties a Ray actor hosts share it)."""
        n = len(parties)
        k = self.degree(n)
        if k >= n - 1:
            return super().neighbours(parties, graph_seed)
        return _harary_graph(tuple(sorted(parties)), bytes(graph_seed), k // 2)


class _CompleteGraph(Mapping):
    """Every party's neighbours are all the others (computed when asked, not stored n² times)."""

    def __init__(self, parties: tuple[str, ...]) -> None:
        self._parties = parties
        self._everyone = frozenset(parties)

    def __getitem__(self, party: str) -> frozenset[str]:
        if party not in self._everyone:
            raise KeyError(party)
        return self._everyone - {party}

    def __iter__(self):
        return iter(self._parties)

    def __len__(self) -> int:
        return len(self._parties)


class _HararyGraph(Mapping):
    """H(k, n) over ``order``: a party's neighbours from its position, computed on first use."""

    def __init__(self, order: tuple[tuple[str, ...], Mapping[str, int]], half: int) -> None:
        self._order, self._position = order
        self._half = half
        self._known: dict[str, frozenset[str]] = {}

    def __getitem__(self, party: str) -> frozenset[str]:
        found = self._known.get(party)
        if found is None:
            i, n, order = self._position[party], len(self._order), self._order
            found = frozenset(order[(i + d) % n] for d in range(-self._half, self._half + 1) if d)
            self._known[party] = found
        return found

    def __iter__(self):
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


@lru_cache(maxsize=4)
def _harary_graph(parties: tuple[str, ...], graph_seed: bytes, half: int) -> _HararyGraph:
    """One graph per process for a roster and seed: the parties it hosts share its order and the
    neighbourhoods derived so far (read-only; at most n of them, never n per party)."""
    order = tuple(_permutation(list(parties), graph_seed))
    return _HararyGraph((order, MappingProxyType({p: i for i, p in enumerate(order)})), half)


@lru_cache(maxsize=4)
def _complete_graph(parties: tuple[str, ...]) -> _CompleteGraph:
    return _CompleteGraph(parties)


def _binomial_tail(trials: int, p: float, at_most: int) -> float:
    """P(Binomial(trials, p) > at_most), summed in log space (no overflow for thousands of trials)."""
    if p <= 0:
        return 0.0 if at_most >= 0 else 1.0
    if p >= 1:
        return 1.0 if at_most < trials else 0.0

    def log_term(i: int) -> float:
        log_comb = math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
        return log_comb + i * math.log(p) + (trials - i) * math.log1p(-p)

    return min(1.0, sum(math.exp(log_term(i)) for i in range(max(at_most + 1, 0), trials + 1)))


def _permutation(items: list[str], seed: bytes) -> list[str]:
    """A uniformly random order of ``items`` from ``seed`` (Fisher–Yates on an AES-CTR stream)."""
    words = prg.expand(seed, 2 * len(items), np.uint64)
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = int(((int(words[2 * i]) << 64) | int(words[2 * i + 1])) % (i + 1))  # 128 bits: bias < 2^-100
        out[i], out[j] = out[j], out[i]
    return out


# --- shared by both sides ----------------------------------------------------------------------


@dataclass(frozen=True)
class _BoundRound(RoundContext):
    """A round as one side of the layer sees it, with ``binding``: the digest of everything the
    parties must agree on — the sorted roster and (k, t, s, modulus, mode). It enters every KDF
    context, associated data and signed statement, so parties shown different rosters or
    parameters cannot open each other's shares or count each other's signatures."""

    binding: bytes = b""
    # Each party's position in the sorted roster (its Shamir coordinate minus one); not compared.
    positions: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)


def _bind(layer: SecAgg, ctx: RoundContext) -> _BoundRound:
    n = len(ctx.parties)
    k = layer.degree(n)
    params = (n, k, layer.shares_needed(k), layer.signatures_needed(n), layer.modulus_bits)
    digest, positions = _roster_binding(layer.name, layer.active, params, tuple(ctx.parties))
    return _BoundRound(
        **{f.name: getattr(ctx, f.name) for f in fields_of(RoundContext)}, binding=digest, positions=positions
    )


@lru_cache(maxsize=4)
def _roster_binding(
    name: str, active: bool, params: tuple[int, ...], parties: tuple[str, ...]
) -> tuple[bytes, Mapping[str, int]]:
    """The binding digest and the roster positions, once per process for a roster (the parties a
    Ray actor hosts share them, read-only)."""
    fields = [b"securefl/secagg/v3/round", name.encode(), str(active).encode()]
    fields += [str(v).encode() for v in params]
    fields += [p.encode() for p in parties]
    digest = hashlib.sha256(b"".join(struct.pack(">H", len(f)) + f for f in fields)).digest()
    return digest, MappingProxyType({p: i for i, p in enumerate(parties)})


def _require_safe_threshold(layer: SecAgg, ctx: RoundContext) -> None:
    """t > k/2 at this round's size, checked by both sides at run time: the configuration check
    covers the largest round the federation planned, but the aggregator picks the round's size."""
    n = len(ctx.parties)
    k = layer.degree(n)
    t = layer.shares_needed(k)
    if not k // 2 < t <= k:
        problem = "exceeds that" if t > k else "is at most half of them: the aggregator could unmask a party"
        raise ProtocolError(f"{layer.name}: {n} parties give {k} neighbours each; threshold {t} {problem}")


def _context(label: str, ctx: RoundContext, *names: str) -> bytes:
    """Domain-separated, length-prefixed context for KDFs, AAD and signatures."""
    prefix = _context_prefix(label, ctx.session, ctx.round, getattr(ctx, "binding", b""))
    return prefix + b"".join([_name_field(n) for n in names])


@lru_cache(maxsize=1 << 16)
def _name_field(name: str) -> bytes:
    """A party id as a context field (cached: a party names each neighbour in several contexts)."""
    return _field(name.encode())


@lru_cache(maxsize=64)
def _context_prefix(label: str, session: str, round: int, binding: bytes) -> bytes:
    """The fields every context of one label shares in a round (built once: a party builds a
    context per neighbour and per purpose)."""
    fields = [b"securefl/secagg/v3", label.encode(), bytes.fromhex(session), struct.pack(">I", round)]
    return b"".join(_field(f) for f in [*fields, binding])


def _field(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _x(ctx: RoundContext, party: str) -> int:
    """A party's position in the round's sorted party list, plus one: its bit in a member bitmap."""
    positions = getattr(ctx, "positions", None)
    if positions:
        return positions[party] + 1
    return ctx.parties.index(party) + 1


def _holders(graph: dict[str, frozenset[str]], owner: str) -> tuple[str, ...]:
    """The holders of ``owner``'s shares in coordinate order: holder ``h`` has coordinate
    ``_holders(graph, owner).index(h) + 1``, its rank among the owner's neighbours (the whole graph
    of the round, dropouts included, so dealer and aggregator agree). Local coordinates make every
    owner's shares sit at 1..k, so one set of reconstruction coefficients serves every owner of a
    round and every round (cached) — with global positions each owner had its own set, computed
    anew: 10 ms a round at 50 parties, a third of the aggregator's time (issue 19). Which distinct
    non-zero coordinates are used changes nothing Shamir guarantees."""
    return tuple(sorted(graph[owner]))


def share_coordinate(graph: dict[str, frozenset[str]], owner: str, holder: str) -> int:
    """The Shamir coordinate at which ``owner`` deals its shares to ``holder`` (a neighbour)."""
    return _holders(graph, owner).index(holder) + 1


def encode_members(ctx: RoundContext, members: Iterable[str]) -> bytes:
    """A set of the round's parties (survivors, signers) as a bitmap over the sorted roster: bit i
    (most significant first) of ⌈n/8⌉ bytes is the i-th party. n bits whatever the set, never a
    list of names in a header (64 KiB hold ~7,000 names at most)."""
    bits = np.zeros(len(ctx.parties), dtype=np.uint8)
    for party in members:
        bits[_x(ctx, party) - 1] = 1
    return np.packbits(bits).tobytes()


def decode_members(ctx: RoundContext, data: bytes, what: str) -> list[str]:
    """The parties a bitmap names, in roster (sorted) order; WireError unless it has exactly
    ⌈n/8⌉ bytes and its padding bits are zero."""
    n = len(ctx.parties)
    if len(data) != (n + 7) // 8:
        raise WireError(f"{what} bitmap is {len(data)} bytes; {n} parties need {(n + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[n:].any():
        raise WireError(f"{what} bitmap sets bits beyond the {n} parties of the round")
    return [ctx.parties[i] for i in np.flatnonzero(bits[:n])]


def _ids(value: object, what: str, allowed: Iterable[str]) -> list[str]:
    """``value`` as a list of distinct party ids, all in ``allowed``; WireError or ProtocolError
    naming what is wrong otherwise."""
    allowed = allowed if isinstance(allowed, (set, frozenset)) else set(allowed)
    if isinstance(value, list):
        # The common case, checked by set operations alone: ``allowed`` holds only strings, so a
        # value inside it is a string (a list inside the list makes ``set`` raise: checked below).
        try:
            named = set(value)
        except TypeError:
            named = None
        if named is not None and len(named) == len(value) and named <= allowed:
            return list(value)
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


def _advertised(ctx: RoundContext, party: str, graph_seed: bytes, keys: bytes) -> bytes:
    # The graph seed is signed too: a party and every neighbour it exchanges shares with provably
    # used the same graph, which the unmask rule's neighbourhood count relies on.
    return _context("advertise", ctx, party) + graph_seed + keys


def _sealed_statement(ctx: RoundContext, sender: str, recipient: str, sealed: bytes) -> bytes:
    return _context("sealed-share", ctx, sender, recipient) + sealed


def _accusation(ctx: RoundContext, accuser: str, accused: str, digest: bytes) -> bytes:
    """What a party signs when a sealed share addressed to it does not open: the digest of exactly
    the bytes it received, so the sender reveals its one-time key only for its own ciphertext."""
    return _context("accuse", ctx, accuser, accused) + digest


def _dealt_statement(ctx: RoundContext, kind: str, dealer: str, holder: str, share: bytes) -> bytes:
    return _context(f"dealt-{kind}", ctx, dealer, holder) + share


def _verify_dealt(identities: Identities, ctx: RoundContext, dealer: str, holder: str, plain: bytes) -> None:
    """Active mode: both shares in an opened sealed share must carry the dealer's signature."""
    half = _share_width(True)
    for kind, dealt in (("seed", plain[:half]), ("key", plain[half:])):
        share, signature = dealt[: shamir.SHARE_BYTES], dealt[shamir.SHARE_BYTES :]
        identities.verify(dealer, signature, _dealt_statement(ctx, kind, dealer, holder, share))


def _share_key(
    ctx: RoundContext, private: channel.PrivateKey, peer_channel: bytes, sender: str, recipient: str
) -> bytes:
    """The key sealing sender's shares to recipient: from the sender's one-time key (active mode)
    or either side's channel key (passive mode), with the other side's public key."""
    return channel.agree(private, peer_channel, _context("share-key", ctx, sender, recipient))


def _pair_share_keys(
    ctx: RoundContext, channel_key: channel.PrivateKey, peer_channel: bytes, me: str, peer: str
) -> tuple[bytes, bytes]:
    """Passive mode: the keys sealing me → peer and peer → me, from one exchange of channel keys
    (each equals the peer's ``_share_key`` for that direction)."""
    send, receive = channel.agree_many(
        channel_key,
        peer_channel,
        (_context("share-key", ctx, me, peer), _context("share-key", ctx, peer, me)),
    )
    return send, receive


def _open_share(
    ctx: RoundContext, key: bytes, sealed: bytes, sender: str, recipient: str, active: bool
) -> bytes:
    body = sealed[_one_time_width(active) :]
    return channel.open_sealed(key, body, _context("share", ctx, sender, recipient))


def _channel_public(keys: bytes) -> bytes:
    return keys[: channel.KEY_BYTES]


def _mask_public(keys: bytes) -> bytes:
    return keys[channel.KEY_BYTES : 2 * channel.KEY_BYTES]


def _commitments(keys: bytes) -> dict[str, bytes]:
    start = 2 * channel.KEY_BYTES
    return {"seed": keys[start : start + _COMMITMENT], "key": keys[start + _COMMITMENT :]}


def _commit(ctx: RoundContext, what: str, party: str, secret: bytes) -> bytes:
    """A hash commitment to a shared secret ("seed": the self-mask seed, "key": the mask private
    key), advertised with the keys: a secret rebuilt from shares is used only if it matches, so a
    wrong share can never yield a wrong sum or get a wrong holder named, even when exactly t
    shares leave nothing to cross-check (256-bit secrets stay hidden behind SHA-256). A public-key
    check alone is not enough for the key: X25519 ignores the clamped bits."""
    return hashlib.sha256(_context(f"{what}-commitment", ctx, party) + secret).digest()


def _require_valid_key(public: bytes, what: str) -> None:
    """Refuse an advertised X25519 public key that is a low-order point (no shared secret) or not
    canonically encoded (its bytes would not match the public key of the private key rebuilt from
    shares): checked by the aggregator on arrival, so a party advertising one is dropped before any
    neighbour uses it."""
    if not channel.usable_public(public):
        raise ProtocolError(
            f"the advertised {what} key is not a usable X25519 public key (a low-order point, or not "
            "canonically encoded)"
        )


def _survivor_statement(ctx: RoundContext, survivors: Sequence[str]) -> bytes:
    return _context("consistency", ctx, *sorted(survivors))


def _reveal_rule_holds(graph: dict[str, frozenset[str]], owner: str, alive: set[str], t: int) -> bool:
    """A survivor's seed share may be revealed only if at least t of its neighbours are listed: the
    owner masked with at least t of its k neighbours (it checks), so with t > k/2 at least 2t − k of
    its maskers are listed survivors whose masks stay on its input."""
    return len(graph[owner] & alive) >= t


# --- the aggregator's side ---------------------------------------------------------------------


class _Aggregator(SumAggregator):
    def __init__(self, layer: SecAgg, identities: Identities | None) -> None:
        self.layer = layer
        self.identities = identities  # public keys only
        # Across rounds: a party named misbehaving is not invited to the next rounds (``resting``),
        # so that one bad party cannot fail every round it is in (found by an attacker: named or
        # not, a dealer of bad shares failed every round). Naming is sound against one malicious
        # party in either mode (passive: ``_settle_suspects``), so only it sits out: 1, 2, 4 …
        # rounds, once per round it is named in, never forgiven.
        self.sit_outs = SitOuts()

    def resting(self, round: int) -> dict[str, str]:
        return {
            party: f"named misbehaving in an earlier round: it sits out until round {until + 1}"
            for party, until in self.sit_outs.resting(round).items()
        }

    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        return self.layer.phases()

    def start_round(self, ctx: RoundContext) -> None:
        if len(ctx.parties) < 3:
            raise RoundFailed(
                f"{self.layer.name} needs at least 3 parties in a round, {len(ctx.parties)} selected"
            )
        try:
            _require_safe_threshold(self.layer, ctx)
        except ProtocolError as exc:
            raise RoundFailed(str(exc)) from None
        self.ctx = ctx = _bind(self.layer, ctx)
        self.graph_seed = os.urandom(prg.SEED_BYTES)
        self.graph = self.layer.neighbours(ctx.parties, self.graph_seed)
        # requests that are the same for every party they go to: encoded once a round
        self._advertise_request: bytes | None = None
        self._undisputed_unmask_request: bytes | None = None
        self.t = self.layer.shares_needed(self.layer.degree(len(ctx.parties)))
        self.s = self.layer.signatures_needed(len(ctx.parties)) if self.identities else 0
        self.keys: dict[str, bytes] = {}  # party -> c_pk ‖ s_pk ‖ seed commitment ‖ key commitment
        self.signatures: dict[str, bytes] = {}
        self.sealed: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> sealed share (‖ signature)
        self.total = np.zeros(ctx.vector_size, dtype=self.layer.dtype)
        self.u1 = self.u2 = self.u3 = frozenset()
        self.statements: dict[str, bytes] = {}
        # owner -> holder -> revealed share (coordinates are local to the owner: ``_holders``)
        self.self_shares: dict[str, dict[str, bytes]] = {}
        self.key_shares: dict[str, dict[str, bytes]] = {}
        # accused -> accuser -> signature (b"" in passive mode): "your sealed share did not open"
        self.accusations: dict[str, dict[str, bytes]] = {}
        self.one_time: dict[str, dict[str, bytes]] = {}  # accused -> accuser -> revealed one-time key
        self.answered_unmask: set[str] = set()
        self._culprits: dict[str, str] = {}
        # passive mode: what each failed reconstruction shows — the parties one of which misbehaved
        # (a wrong share: its dealer and its holder; a failure only a bad owner explains: the owner)
        # and what they did, in words for each of them (``_settle_suspects``)
        self._suspects: list[dict[str, str]] = []
        self._sidelined: dict[str, str] = {}
        self.dealer_signatures: dict[tuple[str, str], bytes] = {}  # (owner, holder) -> signature
        self.senders_to: dict[str, frozenset[str]] = {}  # recipient -> the U2 parties whose shares it holds

    def max_reply_bytes(self, phase: str) -> int:
        n = len(self.ctx.parties)
        if phase == MASKED:
            return (
                self.ctx.vector_size * self.layer.dtype.itemsize + 4096 + n * (70 + signing.SIGNATURE_BYTES)
            )
        per_party = {
            SHARE: _sealed_size(True) + signing.SIGNATURE_BYTES,
            UNMASK: _share_width(True) + channel.KEY_BYTES,
        }.get(phase, 0)
        return 4096 + n * (per_party + 70) + _KEYS + signing.SIGNATURE_BYTES

    def request(self, phase: str, party: str) -> bytes:
        if phase == ADVERTISE:  # the same request for every party: encoded once
            if self._advertise_request is None:
                self._advertise_request = encode_record(b"SAAq", {}, {"graph_seed": self.graph_seed})
            return self._advertise_request
        if phase == SHARE:
            peers = sorted(self.u1 & self.graph[party])
            blob = b"".join(self.keys[p] + self.signatures.get(p, b"") for p in peers)
            return encode_record(b"SASq", {"peers": peers}, {"keys": blob})
        if phase == MASKED:
            senders = sorted(self._senders(party))
            blob = b"".join(self.sealed[s][party] for s in senders)
            return encode_record(b"SAMq", {"senders": senders}, {"shares": blob})
        if phase == CONSISTENCY:
            return encode_record(b"SACq", {}, {"survivors": self._survivor_bitmap})
        accusers = sorted(self.accusations.get(party, {}))
        if not accusers and self._undisputed_unmask_request is not None:  # the same for all such
            return self._undisputed_unmask_request
        signers = sorted(self.statements)
        disputes = [[a, hashlib.sha256(self.sealed[party][a]).hexdigest()] for a in accusers]
        request = encode_record(
            b"SAUq",
            {"disputes": disputes},
            {
                "survivors": self._survivor_bitmap,
                "signers": encode_members(self.ctx, signers),
                "signatures": b"".join(self.statements[s] for s in signers),
                "accusations": b"".join(self.accusations[party][a] for a in accusers),
            },
        )
        if not accusers:
            self._undisputed_unmask_request = request
        return request

    def _senders(self, party: str) -> frozenset[str]:
        """The parties of U2 whose sealed shares ``party`` holds (indexed once, when share closes)."""
        return self.senders_to.get(party, frozenset())

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        getattr(self, f"_receive_{phase}")(party, payload)

    def _receive_advertise(self, party: str, payload: bytes) -> None:
        parts_expected = ("keys", "signature") if self.identities else ("keys",)
        _, parts = decode_record(payload, b"SAAr", {}, parts_expected)
        keys = parts["keys"]
        if len(keys) != _KEYS:
            raise WireError(f"advertised keys are {len(keys)} bytes, expected {_KEYS}")
        _require_valid_key(_channel_public(keys), "channel")
        _require_valid_key(_mask_public(keys), "mask")
        if self.identities:
            # Checked here to drop impostors early; every party checks again itself.
            statement = _advertised(self.ctx, party, self.graph_seed, keys)
            self.identities.verify(party, parts["signature"], statement)
            self.signatures[party] = parts["signature"]
        self.keys[party] = keys

    def _receive_share(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(payload, b"SASr", {"recipients": list}, ("shares",))
        expected = self.u1 & self.graph[party]
        recipients = _ids(header["recipients"], "share recipients", expected)
        if set(recipients) != expected:
            raise ProtocolError(f"{party} shared with {sorted(recipients)}, not with all its live neighbours")
        active = self.identities is not None
        width = _sealed_size(active) + (signing.SIGNATURE_BYTES if active else 0)
        sealed = _chunks(parts["shares"], width, len(recipients), "sealed shares")
        self.sealed[party] = dict(zip(recipients, sealed, strict=True))

    def _receive_masked(self, party: str, payload: bytes) -> None:
        senders = self._senders(party)
        header, parts = decode_record(
            payload, b"SAMr", {"unopened": list}, ("masked", "accusations"), views=("masked",)
        )
        unopened = _ids(header["unopened"], "unopened shares", senders)
        signatures = _chunks(
            parts["accusations"],
            signing.SIGNATURE_BYTES if self.identities else 0,
            len(unopened),
            "accusations",
        )
        masked = unpack_array(parts["masked"], self.layer.dtype, (self.ctx.vector_size,))
        for accused, signature in zip(unopened, signatures, strict=True):
            if self.identities:
                digest = hashlib.sha256(self.sealed[accused][party]).digest()
                self.identities.verify(party, signature, _accusation(self.ctx, party, accused, digest))
        for accused, signature in zip(unopened, signatures, strict=True):
            self.accusations.setdefault(accused, {})[party] = signature
        self.total += masked  # wraps modulo 2^k; summed on arrival so memory stays flat

    def _receive_consistency(self, party: str, payload: bytes) -> None:
        _, parts = decode_record(payload, b"SACr", {}, ("signature",))
        if self._statement is None:
            self._statement = _survivor_statement(self.ctx, sorted(self.u3))
        statement = self._statement
        self.identities.verify(party, parts["signature"], statement)
        self.statements[party] = parts["signature"]

    def _receive_unmask(self, party: str, payload: bytes) -> None:
        header, parts = decode_record(
            payload, b"SAUr", {"self": list, "secret": list, "disputed": list}, ("shares", "one_time")
        )
        holders_of = set(self._senders(party))
        holders_of -= {accused for accused, accusers in self.accusations.items() if party in accusers}
        want_self, want_secret = holders_of & self.u3, holders_of - self.u3
        got_self = _ids(header["self"], "self-mask shares", want_self)
        got_secret = _ids(header["secret"], "key shares", want_secret)
        if set(got_self) != want_self or set(got_secret) != want_secret:
            raise ProtocolError(f"{party} did not reveal exactly the shares the survivor list calls for")
        disputed = _ids(header["disputed"], "disputed shares", self.accusations.get(party, {}))
        width = _share_width(self.identities is not None)
        shares = _chunks(parts["shares"], width, len(got_self) + len(got_secret), "revealed shares")
        keys = _chunks(parts["one_time"], channel.KEY_BYTES, len(disputed), "one-time keys")
        active = self.identities is not None
        for owners, target in ((got_self, self.self_shares), (got_secret, self.key_shares)):
            dealt_to = shares[: len(owners)]
            shares = shares[len(owners) :]
            for owner, dealt in zip(owners, dealt_to, strict=True):
                if owner not in target:
                    target[owner] = {}
                if active:  # the share, then the dealer's signature on it
                    target[owner][party] = dealt[: shamir.SHARE_BYTES]
                    self.dealer_signatures[owner, party] = dealt[shamir.SHARE_BYTES :]
                else:
                    target[owner][party] = dealt
        self.one_time[party] = dict(zip(disputed, keys, strict=True))
        self.answered_unmask.add(party)

    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        if phase == ADVERTISE:
            self.u1 = self._with_enough_neighbours(survivors)
        elif phase == SHARE:
            self.u2 = survivors
            # A party's shares are useless if a recipient dropped before seeing them: keep only
            # shares addressed to parties still live.
            if self.u1 - survivors:
                for sender in self.sealed:
                    self.sealed[sender] = {r: c for r, c in self.sealed[sender].items() if r in survivors}
            senders_to: dict[str, set[str]] = {}
            for sender in survivors:
                for recipient in self.sealed.get(sender, {}):
                    senders_to.setdefault(recipient, set()).add(sender)
            self.senders_to = {r: frozenset(s) for r, s in senders_to.items()}
            # A party told of fewer than t senders would refuse to mask: leave it out now (it is in
            # U2, so it is unmasked like a party that dropped after sharing).
            for party in sorted(survivors):
                senders = len(self._senders(party))
                if senders < self.t:
                    self._sidelined[party] = (
                        f"only {senders} of its neighbours shared keys after others dropped; {self.t} needed"
                    )
        elif phase == MASKED:
            self.u3 = survivors
            self._survivor_bitmap = encode_members(self.ctx, survivors)
            self._statement: bytes | None = None  # what each confirmation signs (built once)
            # Accusations from parties whose masked input never arrived are not acted upon.
            for accused in list(self.accusations):
                self.accusations[accused] = {
                    a: s for a, s in self.accusations[accused].items() if a in survivors
                }
            self._require(len(survivors) >= self.t, f"only {len(survivors)} masked inputs arrived")
            # Honest parties reveal a survivor's seed only if t of its neighbours survived (the
            # unmask rule): a survivor short of them cannot be unmasked, so stop before asking.
            alive = set(survivors)
            for owner in sorted(survivors):
                kept = len(self.graph[owner] & survivors)
                self._require(
                    _reveal_rule_holds(self.graph, owner, alive, self.t),
                    f"{owner} sent its masked input but only {kept} of its neighbours did",
                )
        elif phase == CONSISTENCY:
            self._require(
                len(survivors) >= self.s,
                f"only {len(survivors)} parties confirmed the survivor list, {self.s} needed",
            )
        else:
            self._unmask()

    def inputs_summed(self, phase: str, live: frozenset[str]) -> int:
        # U3, fixed when the masked inputs are in: a party that drops while confirming or unmasking
        # is unmasked from its neighbours' shares and still summed.
        return len(self.u3) if phase in (CONSISTENCY, UNMASK) else len(live)

    def exposed_by(self, phase: str, asked: frozenset[str], withdrawn: frozenset[str]) -> frozenset[str]:
        """U3 once t parties are asked to ``unmask``: their replies may rebuild every seed the sum
        needs, whether or not they arrive in time or the round completes — withdrawals included,
        which can carry a party's shares of the others' seeds as well as a reply can. Fewer than t
        replies hold fewer than t shares of any secret, which reveal nothing (Shamir)."""
        if phase == UNMASK and len(asked) >= self.t:
            return self.u3
        return frozenset()

    def culprits(self) -> dict[str, str]:
        return dict(self._culprits)

    def sidelined(self) -> dict[str, str]:
        return dict(self._sidelined)

    def _with_enough_neighbours(self, live: frozenset[str]) -> frozenset[str]:
        """The live parties that still have t live neighbours to share with, the others sidelined
        (repeatedly: leaving one out can leave its neighbours short too). Without this they would
        refuse to share and be reported as dropouts for another party's failure."""
        live = set(live)
        while short := sorted(p for p in live if len(self.graph[p] & live) < self.t):
            for party in short:
                kept = len(self.graph[party] & live)
                self._sidelined[party] = (
                    f"only {kept} of its neighbours are left to share with; {self.t} needed"
                )
            live -= set(short)
        return frozenset(live)

    def _blame(self, party: str, reason: str) -> None:
        if party not in self._culprits:  # benched once per round it is named in
            self.sit_outs.bench(party, self.ctx.round)
        self._culprits.setdefault(party, reason)

    def _require(self, condition: bool, message: str) -> None:
        if not condition:
            raise RoundFailed(f"{self.layer.name}: {message}; the threshold is {self.t}, nothing is revealed")

    def _resolve_accusations(self) -> None:
        """Active mode: decide each "your share did not open" between accuser and accused, from the
        one-time key the accused revealed for exactly that ciphertext: if the ciphertext opens under
        it and carries the sender's valid signature, the accuser lied; otherwise the sender sealed
        garbage. An accused party that did not answer at all is not judged (it may simply have
        dropped); it is still unmasked from the shares of its other neighbours. Passive mode signs
        nothing, so accusations are not judged: the accused is named only if its secrets cannot be
        rebuilt without the accusers' shares."""
        if self.identities is None:
            return
        for accused, accusers in sorted(self.accusations.items()):
            if accused not in self.answered_unmask:
                continue
            for accuser in sorted(accusers):
                key = self.one_time.get(accused, {}).get(accuser)
                if key is not None and self._opens(accused, accuser, key):
                    self._blame(accuser, f"claimed that {accused}'s sealed share did not open, but it does")
                else:
                    self._blame(accused, f"sent {accuser} a sealed share that does not open")

    def _opens(self, sender: str, recipient: str, one_time: bytes) -> bool:
        blob = self.sealed[sender][recipient]
        size = _sealed_size(self.identities is not None)
        sealed, signature = blob[:size], blob[size:]
        try:
            if self.identities:
                self.identities.verify(
                    sender, signature, _sealed_statement(self.ctx, sender, recipient, sealed)
                )
            if channel.public_of(one_time) != sealed[: channel.KEY_BYTES]:
                return False
            channel_key = _channel_public(self.keys[recipient])
            plain = _open_share(
                self.ctx,
                _share_key(self.ctx, one_time, channel_key, sender, recipient),
                sealed,
                sender,
                recipient,
                active=True,
            )
            if self.identities:
                _verify_dealt(self.identities, self.ctx, sender, recipient, plain)
        except (ProtocolError, ValueError):
            return False
        return True

    def _reconstruct(
        self, owner: str, kind: str, revealed: dict[str, bytes], length: int, what: str
    ) -> bytes:
        """The owner's ``kind`` secret ("seed" or "key") from every revealed share (holder → share),
        accepted only if it matches the owner's advertised commitment; senders of wrong shares are
        culprits."""
        by_x = dict(enumerate(_holders(self.graph, owner), 1))
        shares = {x: revealed[holder] for x, holder in by_x.items() if holder in revealed}
        unopened = sorted(self.accusations.get(owner, {}))
        if len(shares) < self.t and unopened:
            silent = owner not in self.answered_unmask
            if self.identities and silent and len(unopened) >= 2 and len(shares) + len(unopened) >= self.t:
                # Active mode: the accusations are signed over the exact bytes received, and the
                # owner, asked to answer them with its one-time keys, stayed silent while they are
                # what leaves its secret short (found by an attacker: sealing garbage to k − t + 1
                # holders, then not answering, failed every round with nobody named). Two accusers
                # at least: one malicious party is not both, and an honest one accuses only bytes
                # that do not open — so the owner sealed garbage (found by the next attacker: with
                # one lying accuser, honest holders that dropped by chance left an honest silent
                # owner short, and it was named). Framing takes two lying accusers and the owner
                # dropping by chance; a dealer of garbage to one holder only is not named.
                self._blame(
                    owner,
                    f"sent sealed shares that {', '.join(unopened)} could not open (signed accusations) "
                    "and did not answer them",
                )
            if not self.identities and len(unopened) >= 2:
                # Passive mode: an honest accuser accuses only bytes that did not open, and one
                # malicious party is not two accusers — so the owner sealed garbage, if only one
                # party misbehaves (found by an attacker: garbage sealed to k − t + 1 holders failed
                # every round with nobody named). Settled with the round's other evidence.
                self._suspects.append(
                    {owner: f"sealed shares that {', '.join(unopened)} could not open, leaving {what} short"}
                )
            raise RoundFailed(
                f"{self.layer.name}: {', '.join(unopened)} said they could not open {owner}'s sealed share, "
                f"leaving {len(shares)} shares of {what} where {self.t} are needed; round aborted, nothing "
                "is revealed"
            )
        self._require(len(shares) >= self.t, f"{len(shares)} shares of {what} arrived")
        if self.identities:
            # Active mode: a culprit is proven (signatures), so its shares of later owners are left
            # out while enough remain: one liar then costs one decoding, not one per owner. Passive
            # mode proves nothing before the round's end (``_settle_suspects``): carried over, one
            # framed holder's left-out share was the spare that would have caught the framer, and a
            # dealer failed every round with the honest holder named (found by an attacker).
            trusted = {x: v for x, v in shares.items() if by_x[x] not in self._culprits}
            if len(trusted) >= self.t:
                shares = trusted
        keys = self.keys[owner]
        commitment = _commitments(keys)[kind]

        def accept(candidate: bytes) -> bool:
            if not hmac.compare_digest(_commit(self.ctx, kind, owner, candidate), commitment):
                return False
            return kind == "seed" or channel.public_of(candidate) == _mask_public(keys)

        outcome = shamir.reconstruct(shares, self.t, length, accept)
        if self.identities and (outcome.secret is None or outcome.wrong):
            return self._reconstruct_from_signed(owner, kind, shares, by_x, length, what, accept)
        if outcome.secret is None and outcome.consistent:
            self._blame_dealer_of_another_secret(owner, shares, outcome, what)
        # Passive mode from here (active mode returned above): nothing is signed, so a share that does
        # not fit was altered by its dealer or by its holder; the round's end decides, if anything can.
        for x in outcome.wrong:
            holder = by_x[x]
            self._suspects.append(
                {
                    owner: f"dealt {holder} a share of {what} that does not fit",
                    holder: f"revealed a share of {what} that does not fit",
                }
            )
        if outcome.secret is None and len(shares) + len(unopened) > self.t:
            # With one malicious party M, an honest owner's secret always rebuilds from more than t
            # holders' word: honest holders open its shares and reveal them right, so M alone may
            # accuse it (revealing nothing for it) or reveal one wrong or malformed share — and with
            # t + 1 or more shares one wrong one is always corrected (decoding from t + 2, leaving
            # each out against the commitment from t + 1), with t right ones there is nothing to
            # correct. Failing with more than t shares and accusers together takes a bad owner
            # (found by attackers: shares dealt off the polynomial; garbage sealed to k − t holders
            # and shares of another secret dealt to the other t; one malformed share and shares of
            # another secret — each failed every round with nobody named).
            dealt = "rebuild another secret" if outcome.consistent else "fit no polynomial"
            sealed = f", with shares {', '.join(unopened)} could not open" if unopened else ""
            self._suspects.append({owner: f"dealt shares of {what} that {dealt}{sealed}"})
        if outcome.secret is None:
            holders = ", ".join(by_x[x] for x in sorted(shares))
            if outcome.consistent:
                how = "there are exactly t of them" if len(shares) == self.t else "they agree with each other"
                raise RoundFailed(
                    f"{self.layer.name}: the {len(shares)} shares of {what} (from {holders}) rebuild a "
                    f"secret other than the one {owner} committed to, and {how}: {owner} dealt shares of "
                    "another secret, or its holders revealed altered ones (without signatures, and with so "
                    "few shares, the two cannot be told apart); round aborted, nothing is revealed"
                )
            raise RoundFailed(
                f"{self.layer.name}: the {len(shares)} shares of {what} (from {holders}) are inconsistent "
                f"beyond correction (at most {(len(shares) - self.t) // 2} wrong shares can be corrected); "
                "round aborted, nothing is revealed"
            )
        return outcome.secret

    def _reconstruct_from_signed(
        self,
        owner: str,
        kind: str,
        shares: dict[int, bytes],
        by_x: dict[int, str],
        length: int,
        what: str,
        accept: Callable[[bytes], bool],
    ) -> bytes:
        """Active mode, once the shares did not simply agree on the committed secret: signatures
        decide, not decoding. A share without the owner's signature for its holder is that holder's
        lie (it is named and left out); the signed shares are the owner's own word, so if they do not
        rebuild the committed secret — inconsistent, or consistent on another secret — the owner is
        named. Decoding alone cannot tell (found by an attacker): an owner dealing shares that fit no
        polynomial failed every round with nobody named, and two colluding holders could shift their
        shares along a polynomial vanishing at the secret so that the decoder found honest holders
        "wrong" — and convicted the honest owner who had signed those shares."""
        signed = {x: v for x, v in shares.items() if self._dealer_signed(owner, kind, by_x[x], v)}
        for x in sorted(shares.keys() - signed.keys()):
            self._blame(by_x[x], f"revealed a share of {what} that {owner} did not deal")
        if len(signed) < self.t:
            raise RoundFailed(
                f"{self.layer.name}: only {len(signed)} of the {len(shares)} shares of {what} carry "
                f"{owner}'s signature, {self.t} are needed; the holders of the others are named; round "
                "aborted, nothing is revealed"
            )
        outcome = shamir.reconstruct(signed, self.t, length, accept)
        if outcome.secret is None or outcome.wrong:
            reason = f"dealt signed shares of {what} that do not rebuild the secret it committed to"
            self._blame(owner, reason)
        if outcome.secret is None:
            raise RoundFailed(
                f"{self.layer.name}: the {len(signed)} shares of {what} that {owner} signed do not rebuild "
                f"the secret it committed to: {owner} dealt them wrong; round aborted, nothing is revealed"
            )
        return outcome.secret

    def _blame_dealer_of_another_secret(
        self, owner: str, shares: dict[int, bytes], outcome: shamir.Reconstruction, what: str
    ) -> None:
        """Passive mode: the well-formed shares all lie on one polynomial, but its secret is not the
        one ``owner`` committed to. Either the owner dealt shares of another secret, or m − t + 1 of
        the m holders altered theirs together (fewer cannot move a codeword: the others pin the
        polynomial). The owner is named only when altering would take t holders (m ≥ 2t − 1) — as
        many as could rebuild any secret anyway; otherwise nobody can be (exactly t shares pin
        nothing), and the round fails saying so. (Active mode decides by the owner's signatures.)"""
        well_formed = [x for x in shares if x not in outcome.wrong]
        if len(well_formed) < 2 * self.t - 1:
            return
        self._blame(owner, f"dealt shares of {what} that rebuild another secret than the one it committed to")
        raise RoundFailed(
            f"{self.layer.name}: the {len(well_formed)} shares of {what} agree, but on a secret other than "
            f"the one {owner} committed to: {owner} dealt shares of another secret; round aborted, nothing "
            "is revealed"
        )

    def _dealer_signed(self, owner: str, kind: str, holder: str, share: bytes) -> bool:
        """Whether ``owner`` signed exactly this share for ``holder`` (then a wrong share is its own)."""
        signature = self.dealer_signatures.get((owner, holder), b"")
        try:
            self.identities.verify(owner, signature, _dealt_statement(self.ctx, kind, owner, holder, share))
        except ProtocolError:
            return False
        return True

    def _settle_suspects(self) -> None:
        """Passive mode: name whoever misbehaved in the round's reconstructions, when the round shows
        who. A share that does not fit was altered by its dealer (which knows the sealing keys, so a
        wrong share opens like a right one) or by its holder, and nothing signed tells which (found by
        an attacker: naming the holder let one dealer get an honest holder dropped). Shares that fail
        to rebuild a secret from more than t of them, or that two holders could not open, take a bad
        owner if only one party misbehaves. Each piece of evidence names the parties one of which
        misbehaved; one malicious party is in all of them, so the party common to all is named when
        there is exactly one; otherwise nobody (one wrong share alone: the sum is exact all the
        same). Colluders can still point the evidence at an honest party (protocols/secagg.md)."""
        if not self._suspects:
            return
        common = set.intersection(*(set(evidence) for evidence in self._suspects))
        if len(common) != 1:
            return
        (culprit,) = common
        deeds = list(dict.fromkeys(evidence[culprit] for evidence in self._suspects))
        shown = "; ".join(deeds[:3]) + (f"; and {len(deeds) - 3} more" if len(deeds) > 3 else "")
        self._blame(culprit, f"{shown} (it is party to every failed or corrected reconstruction)")

    def _unmask(self) -> None:
        try:
            self._unmask_all()
        finally:
            self._settle_suspects()

    def _unmask_all(self) -> None:
        ctx, layer = self.ctx, self.layer
        self._resolve_accusations()
        masks = prg.MaskAccumulator(ctx.vector_size, layer.dtype)
        for owner in sorted(self.u3):
            shares = self.self_shares.get(owner, {})
            seed = self._reconstruct(owner, "seed", shares, prg.SEED_BYTES, f"{owner}'s self mask")
            masks.add(seed)
        for dropped in sorted(self.u2 - self.u3):
            shares = self.key_shares.get(dropped, {})
            secret = self._reconstruct(dropped, "key", shares, channel.KEY_BYTES, f"dropped {dropped}'s key")
            secret = channel.load_private(secret)  # used once per surviving neighbour
            for survivor in sorted(self.u3 & self.graph[dropped]):
                if dropped not in self.sealed or survivor not in self.sealed[dropped]:
                    continue  # the survivor never received the dropped party's shares: no mask between them
                seed = channel.agree(
                    secret, _mask_public(self.keys[survivor]), _mask_context(ctx, survivor, dropped)
                )
                # The survivor added +mask if its id sorts first, −mask otherwise: undo exactly that.
                (masks.add if survivor < dropped else masks.subtract)(seed)
        masks.apply_to(self.total, sign=-1)

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
        self.unsafe_round = None
        try:
            _require_safe_threshold(self.layer, ctx)
        except ProtocolError as exc:
            self.unsafe_round = str(exc)  # refused at the first request of the round
        self.ctx = _bind(self.layer, ctx)
        self.rng = self.layer.rng(self.me, ctx.round)
        self.provide = provide
        self.t = self.layer.shares_needed(self.layer.degree(len(ctx.parties)))
        self.s = self.layer.signatures_needed(len(ctx.parties))
        self.expected = self.layer.phases()
        self.step = 0
        self.peers: dict[str, bytes] = {}
        self.held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (self-mask share, key share)
        self.sent: dict[str, tuple[bytes, bytes]] = {}  # recipient -> (one-time key, sealed share)
        self.signed_survivors: list[str] | None = None

    def respond(self, phase: str, request: bytes) -> bytes:
        if self.unsafe_round:
            raise ProtocolError(self.unsafe_round)
        if self.step >= len(self.expected) or phase != self.expected[self.step]:
            raise ProtocolError(
                f"phase {phase!r} out of order (expected {self.expected[self.step : self.step + 1]})"
            )
        self.step += 1
        try:
            return getattr(self, f"_{phase}")(request)
        except BaseException:
            # A phase that failed ends this party's round: it never answers a later phase of it (a
            # party whose masked input was not sent must not go on to reveal shares).
            self.step = len(self.expected)
            raise

    def _advertise(self, request: bytes) -> bytes:
        _, parts = decode_record(request, b"SAAq", {}, ("graph_seed",))
        if len(parts["graph_seed"]) != prg.SEED_BYTES:
            raise WireError("graph seed must be 32 bytes")
        self.graph_seed = parts["graph_seed"]
        self.graph = self.layer.neighbours(self.ctx.parties, self.graph_seed)
        self.c_key, c_pk = channel.generate_loaded(self.rng)
        self.s_key, s_pk = channel.generate_loaded(self.rng)
        self.s_sk = self.s_key.private_bytes_raw()  # shared with the neighbours, committed to
        self.self_seed = self.rng.bytes(prg.SEED_BYTES)
        commitments = _commit(self.ctx, "seed", self.me, self.self_seed) + _commit(
            self.ctx, "key", self.me, self.s_sk
        )
        keys = c_pk + s_pk + commitments
        parts_out = {"keys": keys}
        if self.identity is not None:
            statement = _advertised(self.ctx, self.me, self.graph_seed, keys)
            parts_out["signature"] = signing.sign(self.identity, statement)
        return encode_record(b"SAAr", {}, parts_out)

    def _share(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SASq", {"peers": list}, ("keys",))
        peers = _ids(header["peers"], "advertised peers", self.graph[self.me])
        width = _KEYS + (signing.SIGNATURE_BYTES if self.identity else 0)
        for peer, blob in zip(
            peers, _chunks(parts["keys"], width, len(peers), "advertised keys"), strict=True
        ):
            keys = blob[:_KEYS]
            _require_valid_key(_channel_public(keys), f"{peer}'s channel")  # as the aggregator checked
            _require_valid_key(_mask_public(keys), f"{peer}'s mask")
            if self.identities is not None:
                statement = _advertised(self.ctx, peer, self.graph_seed, keys)
                self.identities.verify(peer, blob[_KEYS:], statement)
            self.peers[peer] = keys
        if len(peers) < self.t:
            raise ProtocolError(f"only {len(peers)} neighbours advertised keys; {self.t} are needed to share")
        rank = {holder: x for x, holder in enumerate(_holders(self.graph, self.me), 1)}
        xs = [rank[p] for p in peers]
        seed_shares, key_shares = shamir.split_together((self.self_seed, self.s_sk), xs, self.t, self.rng)
        sealed = []
        self.receive_keys: dict[str, bytes] = {}  # passive mode: peer -> key of its shares to me
        for peer in peers:
            x = rank[peer]
            dealt = self._dealt("seed", peer, seed_shares[x]) + self._dealt("key", peer, key_shares[x])
            peer_channel = _channel_public(self.peers[peer])
            if self.identity is not None:
                one_time, one_time_public = channel.generate_loaded(self.rng)
                key = _share_key(self.ctx, one_time, peer_channel, self.me, peer)
            else:
                one_time, one_time_public = None, b""
                key, self.receive_keys[peer] = _pair_share_keys(
                    self.ctx, self.c_key, peer_channel, self.me, peer
                )
            blob = one_time_public + channel.seal(
                key, dealt, _context("share", self.ctx, self.me, peer), self.rng
            )
            if self.identity is not None:
                blob += signing.sign(self.identity, _sealed_statement(self.ctx, self.me, peer, blob))
                # exactly the bytes sent, signature included, and the key that opens them
                self.sent[peer] = (one_time.private_bytes_raw(), blob)
            sealed.append(blob)
        return encode_record(b"SASr", {"recipients": peers}, {"shares": b"".join(sealed)})

    def _dealt(self, kind: str, holder: str, share: bytes) -> bytes:
        """A share as dealt: in active mode followed by this party's signature on it."""
        if self.identity is None:
            return share
        return share + signing.sign(self.identity, _dealt_statement(self.ctx, kind, self.me, holder, share))

    def _masked(self, request: bytes) -> bytes:
        header, parts = decode_record(request, b"SAMq", {"senders": list}, ("shares",))
        senders = _ids(header["senders"], "share senders", self.peers)
        if len(senders) < self.t:
            # Masking with fewer than t neighbours would let the aggregator strip this party's
            # pairwise masks by declaring them all dropped while t others reveal its seed.
            raise ProtocolError(
                f"the aggregator says only {len(senders)} neighbours sent shares; at least {self.t} are "
                "needed to mask this party's input safely"
            )
        active = self.identity is not None
        size = _sealed_size(active)
        width = size + (signing.SIGNATURE_BYTES if active else 0)
        unopened, accusations = [], []
        for sender, blob in zip(
            senders, _chunks(parts["shares"], width, len(senders), "sealed shares"), strict=True
        ):
            sealed = blob[:size]
            try:
                if self.identities is not None:
                    statement = _sealed_statement(self.ctx, sender, self.me, sealed)
                    self.identities.verify(sender, blob[size:], statement)
                if active:
                    key = _share_key(self.ctx, self.c_key, sealed[: channel.KEY_BYTES], sender, self.me)
                else:
                    key = self.receive_keys[sender]
                plain = _open_share(self.ctx, key, sealed, sender, self.me, active)
                if self.identities is not None:
                    _verify_dealt(self.identities, self.ctx, sender, self.me, plain)
            except ProtocolError:
                # Not this party's fault: name the sender (signed, bound to exactly these bytes) and
                # go on. It still masks with the sender, whose mask key is valid, so the sum holds.
                unopened.append(sender)
                if self.identity is not None:
                    digest = hashlib.sha256(blob).digest()  # all it received, signature included
                    accusations.append(
                        signing.sign(self.identity, _accusation(self.ctx, self.me, sender, digest))
                    )
                continue
            half = _share_width(active)
            self.held[sender] = (plain[:half], plain[half:])  # each: share (‖ dealer's signature)
        masks = prg.MaskAccumulator(self.ctx.vector_size, self.layer.dtype)
        masks.add(self.self_seed)
        for peer in senders:
            seed = channel.agree(
                self.s_key, _mask_public(self.peers[peer]), _mask_context(self.ctx, self.me, peer)
            )
            (masks.add if self.me < peer else masks.subtract)(seed)
        vector = np.asarray(self.provide(), dtype=np.uint64).astype(self.layer.dtype)
        self.provide = None  # the update is not kept once masked (memory per hosted party)
        masks.apply_to(vector)
        return encode_record(
            b"SAMr",
            {"unopened": unopened},
            {"masked": pack_array(vector), "accusations": b"".join(accusations)},
            align_array="masked",  # added in place by the aggregator (``_receive_masked``)
        )

    def _consistency(self, request: bytes) -> bytes:
        _, parts = decode_record(request, b"SACq", {}, ("survivors",))
        survivors = self._check_survivors(parts["survivors"])
        self.signed_survivors = survivors
        return encode_record(
            b"SACr", {}, {"signature": signing.sign(self.identity, _survivor_statement(self.ctx, survivors))}
        )

    def _unmask(self, request: bytes) -> bytes:
        header, parts = decode_record(
            request, b"SAUq", {"disputes": list}, ("survivors", "signers", "signatures", "accusations")
        )
        survivors = self._check_survivors(parts["survivors"])
        signers = decode_members(self.ctx, parts["signers"], "signers")  # checked in either mode
        if self.identity is not None:
            if survivors != self.signed_survivors:
                raise ProtocolError(
                    "the aggregator changed the survivor list after it was signed; round aborted"
                )
            if not set(signers) <= set(survivors):
                raise ProtocolError("the signers of the survivor list are not all on it")
            if len(signers) < self.s:
                raise ProtocolError(
                    f"only {len(signers)} parties confirmed the survivor list; {self.s} needed"
                )
            statement = _survivor_statement(self.ctx, survivors)
            for signer, sig in zip(
                signers,
                _chunks(parts["signatures"], signing.SIGNATURE_BYTES, len(signers), "signatures"),
                strict=True,
            ):
                self.identities.verify(signer, sig, statement)
        alive = set(survivors)
        for owner in self.held:
            if owner in alive and not _reveal_rule_holds(self.graph, owner, alive, self.t):
                raise ProtocolError(
                    f"the survivor list keeps fewer than {self.t} of {owner}'s neighbours; revealing its "
                    "seed could expose its update"
                )
        disputed, one_time = self._answer_disputes(header["disputes"], parts["accusations"])
        # The security-critical rule: for each party, reveal either its self-mask share (it
        # survived) or its key share (it dropped), never both, and only once per round.
        owners_self = sorted(o for o in self.held if o in alive)
        owners_secret = sorted(o for o in self.held if o not in alive)
        shares = [self.held[o][0] for o in owners_self] + [self.held[o][1] for o in owners_secret]
        self.held = {}
        return encode_record(
            b"SAUr",
            {"self": owners_self, "secret": owners_secret, "disputed": disputed},
            {"shares": b"".join(shares), "one_time": b"".join(one_time)},
        )

    def _answer_disputes(self, disputes: object, signatures: bytes) -> tuple[list[str], list[bytes]]:
        """Reveal the one-time key of each sealed share a recipient says it could not open — only if
        the accusation names exactly the bytes this party sent (and, in active mode, the recipient
        signed it). Then the key opens nothing but that recipient's own share of this party's
        secrets, which an honest recipient would have opened (so the accuser is lying, and already
        knows it); a ciphertext the aggregator altered does not match and is not disclosed."""
        if self.identities is None:
            # Nothing is signed in passive mode: the aggregator could fabricate every accusation and
            # collect all of this party's one-time keys. Disputes go unanswered (and unjudged).
            return [], []
        if not isinstance(disputes, list) or not all(
            isinstance(d, list) and len(d) == 2 and all(isinstance(v, str) for v in d) for d in disputes
        ):
            raise WireError("disputes must be a list of [accuser, digest] pairs")
        _ids([d[0] for d in disputes], "accusers", self.sent)  # known recipients, none twice
        sigs = _chunks(signatures, signing.SIGNATURE_BYTES, len(disputes), "accusations")
        disputed, keys = [], []
        for (accuser, digest_hex), signature in zip(disputes, sigs, strict=True):
            one_time, sealed = self.sent[accuser]
            digest = hashlib.sha256(sealed).digest()
            if not hmac.compare_digest(digest.hex(), digest_hex):
                continue  # not the ciphertext this party sent
            try:
                self.identities.verify(accuser, signature, _accusation(self.ctx, accuser, self.me, digest))
            except ProtocolError:
                continue
            disputed.append(accuser)
            keys.append(one_time)
        return disputed, keys

    def _check_survivors(self, bitmap: bytes) -> list[str]:
        survivors = decode_members(self.ctx, bitmap, "survivors")  # sorted: the roster's order
        if self.me not in survivors:
            raise ProtocolError("this party is not on the survivor list it was sent")
        if len(survivors) < self.t:
            raise ProtocolError(
                f"the survivor list has {len(survivors)} parties; at least {self.t} are required"
            )
        return survivors
