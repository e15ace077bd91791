"""The contract every privacy layer implements, and the validated stack they form.

A stack is zero or more :class:`Transform` s followed by exactly one :class:`SecureSum`:

* a **transform** maps a party's vector to a vector (``encode``) and has a matching
  ``decode_sum`` applied once to the revealed sum (clip: identity; quantize: divide by scale);
* a **secure sum** is a small protocol: the aggregator side (:class:`SumAggregator`, which never
  holds a secret key) and the party side (:class:`SumParty`) exchange opaque payloads over a
  sequence of phases that the layer names. The core moves the payloads; the layer never sees the
  network.

Where the sum is revealed decides where fusion happens. Most layers reveal it to the aggregator,
which fuses. A layer whose sum only key-holding parties can read (Paillier, CKKS) sets
``fuses_on_parties``: its party side decrypts the sum, calls the fuser the core attached (decode,
divide, strategy step) and seals the next global model under the parties' key; the aggregator only
stores that :class:`SealedModel` and hands it to the next round's parties, who ``open_model`` it.

Layers are checked together at configuration time (:meth:`PrivacyStack.validate`) so that an
impossible combination — integers needed but no quantize, a sum that could overflow the modulus —
is a :class:`~securefl.errors.ConfigError` before any party trains (design invariant 3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from securefl.codec import VectorLayout
from securefl.errors import ConfigError, RoundFailed


class ImpossibleSum(RoundFailed):
    """A revealed sum that honest parties cannot have produced: some coordinate exceeds the number
    of contributors times the per-party bound (plus the DP noise headroom). The round fails and the
    global model is unchanged. Its message names the coordinate group and the bound, never a value
    (a party that refuses a sum only it could read tells the aggregator why without revealing it)."""


@dataclass(frozen=True)
class StackContext:
    """What the layers need to know about the federation to check themselves."""

    layout: VectorLayout
    max_parties: int
    min_parties: int
    weight_bound: float | None = None
    metric_bounds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_parties < 1:
            raise ConfigError(f"max_parties must be >= 1, got {self.max_parties}")
        if not 1 <= self.min_parties <= self.max_parties:
            raise ConfigError(
                f"min_parties must be between 1 and max_parties ({self.max_parties}), got {self.min_parties}"
            )
        if self.weight_bound is not None and not self.weight_bound > 0:
            raise ConfigError(f"weight_bound must be positive, got {self.weight_bound}")


@dataclass(frozen=True)
class RoundContext:
    """One round as a secure sum sees it: who takes part and what shape the vector has."""

    session: str
    round: int
    parties: tuple[str, ...]
    vector_size: int
    integer: bool
    min_parties: int


class Transform(ABC):
    """A vector-to-vector step on the party with a matching decode on the sum."""

    name: ClassVar[str]

    def validate(self, ctx: StackContext, before: Sequence[Transform], sum_layer: SecureSum) -> None:
        """Raise ConfigError if this transform cannot work at its place in the stack."""

    @property
    def produces_integers(self) -> bool:
        return False

    def start_round(self, ctx: RoundContext) -> None:
        """Called on the party before ``encode`` in each round (DP noise sizes itself on who takes part)."""

    @abstractmethod
    def encode(self, vector: np.ndarray) -> np.ndarray:
        """Apply on the party, before the secure sum."""

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """Undo on the revealed sum (identity unless the transform changes representation)."""
        return total

    def resolution(self) -> float | np.ndarray:
        """The value of one step of this transform's encoding on a decoded sum, per coordinate
        (fixed point: 1/scale); zero for exact transforms."""
        return 0.0

    def stack_validated(self, stack: PrivacyStack) -> None:
        """Called once the whole ``stack`` is valid (default: nothing to do)."""

    def sum_headroom(self, selected: int, contributors: int) -> float | np.ndarray:
        """How far beyond the per-party bounds a sum of ``contributors`` encodings (from a round of
        ``selected``) can legitimately reach, in the units of this transform's output (a number, or
        one per coordinate), because of what this transform adds (e.g. DP noise on the parties).
        Zero by default."""
        return 0.0

    def check_sum(self, total: np.ndarray, contributors: int, headroom: float | np.ndarray) -> None:
        """Raise :class:`ImpossibleSum` if ``total`` (in this transform's output units, before its
        ``decode_sum``) cannot be the sum of ``contributors`` honest encodings, allowing ``headroom``
        for what later transforms add. Transforms that know no bound accept every sum."""


@dataclass(frozen=True)
class SealedModel:
    """The next global model, sealed under a key the aggregator does not hold."""

    data: bytes


# fuse(total, contributors=None): revealed sum -> next global vector. The layer passes the number
# of parties summed when it knows it; the fuser refuses a sum they cannot have produced.
Fuser = Callable[..., np.ndarray]
# Trains and returns this round's protected (transformed) vector; cached after the first call.
Provider = Callable[[], np.ndarray]


SIT_OUT_LIMIT = 64  # rounds: the longest a party sits out after a fault


class SitOuts:
    """Parties an aggregator leaves out of the next rounds after a fault (for
    :meth:`SumAggregator.resting`): 1 round, then 2, 4 … up to :data:`SIT_OUT_LIMIT` each further
    time a party is benched, until :meth:`forgive` restarts its count. Doubling keeps a party that
    keeps failing from failing most rounds, while one that failed once soon takes part again."""

    def __init__(self) -> None:
        self.until: dict[str, int] = {}  # party -> first round it is invited again
        self.count: dict[str, int] = {}  # party -> times benched since last forgiven

    def bench(self, party: str, round: int) -> None:
        """``party`` failed in ``round``: it sits out the next rounds."""
        count = self.count[party] = self.count.get(party, 0) + 1
        self.until[party] = round + 1 + min(2 ** (count - 1), SIT_OUT_LIMIT)

    def forgive(self, party: str) -> None:
        """``party`` did well: its next bench is one round again."""
        self.count.pop(party, None)

    def resting(self, round: int) -> dict[str, int]:
        """The parties sitting out ``round``, each with the first round it is invited again."""
        return {party: until for party, until in sorted(self.until.items()) if round < until}


class SumAggregator(ABC):
    """The aggregator's side of a secure sum for one federation. Holds no secret key."""

    # Set by the core: check_input(vector, selected) raises UpdateError for one party's protected
    # vector that no honest party can send (out of the quantize range or the clip norm, a weight,
    # count or metric outside codec.HonestBounds, non-finite). Only a layer that sees individual
    # inputs (plain) can call it.
    check_input: Callable[[np.ndarray, int], None] | None = None

    @abstractmethod
    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        """The phase names of this round, in order (at least one)."""

    @abstractmethod
    def start_round(self, ctx: RoundContext) -> None:
        """Forget the previous round; get ready to collect this one."""

    def request(self, phase: str, party: str) -> bytes:
        """The payload sent to ``party`` at the start of ``phase`` (empty by default)."""
        return b""

    @abstractmethod
    def max_reply_bytes(self, phase: str) -> int:
        """The largest reply payload that is legitimate in ``phase``; larger ones are refused."""

    @abstractmethod
    def receive(self, phase: str, party: str, payload: bytes) -> None:
        """Take one party's reply. Raise WireError/ProtocolError/UpdateError to drop that party."""

    @abstractmethod
    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        """All replies of ``phase`` are in; ``survivors`` answered validly. Raise RoundFailed to abort."""

    def finished(self) -> bool:
        """True once this round's result is final before its last phase (e.g. a decryption confirmed
        in an early attempt): the core skips the remaining phases, so that nothing in them — a party
        missing an empty request — can undo a result already revealed."""
        return False

    def culprits(self) -> dict[str, str]:
        """Parties this layer has found misbehaving in this round, each with the reason, beyond those
        whose own payload it rejected in :meth:`receive` (e.g. a share that contradicts the others,
        found only when all are in). The core drops them from the rest of the round and names them in
        the report, also when the round then fails. A culprit's vector may already be in the sum."""
        return {}

    def resting(self, round: int) -> dict[str, str]:
        """Parties this layer asks the core not to invite to ``round``, each with the reason (e.g.
        a threshold-Paillier contributor sitting out after it failed to attest, or that sits out
        until a release). They are left out of the round's roster before it starts and reported as
        sidelined. A layer whose rules count the invited parties (a quorum over the roster) would
        otherwise count parties that cannot contribute, and one of them could fail every round. By
        default none. Leaving a party out is within any aggregator's power (it chooses every
        roster), so no layer may rely on a party being invited."""
        return {}

    def sidelined(self) -> dict[str, str]:
        """Parties this layer leaves out of the rest of the round through no fault of their own,
        each with the reason (e.g. a SecAgg party with too few live neighbours left to share with,
        after another party was dropped). The core stops asking them and reports them apart from
        dropouts, so that one bad party never gets honest ones named."""
        return {}

    def inputs_summed(self, phase: str, live: frozenset[str]) -> int:
        """How many inputs the round still sums after ``phase``, with ``live`` the parties still
        answering validly — what ``min_parties`` is checked against. By default the live parties;
        SecAgg's sum is fixed once the masked inputs are in (a party that drops while unmasking is
        still summed)."""
        return len(live)

    def exposed_by(self, phase: str, asked: frozenset[str], withdrawn: frozenset[str]) -> frozenset[str]:
        """The parties whose inputs (alone or summed) the aggregator can compute once ``asked`` (the
        parties sent the request) have answered ``phase`` — what the round has released to it even
        if it then fails, so that a budget records it: a curious aggregator keeps every reply it
        receives, refused, late or not. ``withdrawn``: those whose one reply was a withdrawal — which
        carries whatever bytes its sender chose, so only a layer whose replies hold nothing but the
        sender's own input may discount it (found by an attacker: SecAgg unmask shares hidden in
        withdrawals). Empty when nothing is exposed (a layer that seals the sum from the aggregator).
        A layer that admits noise added by the parties (``dp`` checks which) must answer exactly or
        conservatively: ``plain`` each input asked for and not withdrawn, SecAgg its contributors
        once t parties are asked to unmask."""
        return frozenset()

    @abstractmethod
    def contributors(self) -> frozenset[str]:
        """After the last phase: the parties whose vectors are in the result. Not always those who
        answered the last phase (a SecAgg party that drops while unmasking is still summed)."""

    @abstractmethod
    def result(self) -> np.ndarray | SealedModel:
        """After the last phase: the revealed sum of the surviving parties' vectors, or (for
        ``fuses_on_parties`` layers) the sealed next global model."""


class SumParty(ABC):
    """A party's side of a secure sum. May hold secrets; lives as long as the party."""

    @abstractmethod
    def start_round(self, ctx: RoundContext, provide: Provider) -> None:
        """Begin a round. Call ``provide()`` in the phase that needs the protected vector: the party
        trains then, so it can first complete set-up phases (e.g. receive the keys that open the
        sealed global model), and trains not at all if the round dies before."""

    @abstractmethod
    def respond(self, phase: str, request: bytes) -> bytes:
        """Answer the aggregator's request for ``phase``."""

    def attach_fuser(self, fuse: Fuser, base: Callable[[], np.ndarray | None] | None = None) -> None:
        """(``fuses_on_parties`` layers) Keep ``fuse``: revealed sum -> next global vector. Call it as
        ``fuse(total, contributors=count)`` with the number of parties summed (as the decrypt request
        states it): the fuser then refuses, with :class:`ImpossibleSum`, a sum they cannot have made.
        ``base()`` returns the global vector this round trained from (None before training)."""

    def open_model(self, sealed: bytes) -> np.ndarray:
        """(``fuses_on_parties`` layers) The global vector inside a :class:`SealedModel`."""
        raise NotImplementedError(f"{type(self).__name__} does not seal models")

    def check_clear_model(self, model: Provider, session: str) -> None:
        """(``fuses_on_parties`` layers) Raise ProtocolError if this party must not train on the
        global vector ``model()`` (decoded on demand, once per process), sent in the clear in
        ``session`` (the node calls it before it does); by default it may."""


class SecureSum(ABC):
    """A secure-sum layer: configuration plus factories for its two sides."""

    name: ClassVar[str]
    accepts_floats: ClassVar[bool] = False
    # The sum is computed modulo 2**modulus_bits when the vector holds integers (a layer may set
    # it per instance).
    modulus_bits: int = 64
    # True if only key-holding parties can read the sum: they fuse, the aggregator never can.
    fuses_on_parties: ClassVar[bool] = False

    def validate(self, ctx: StackContext, transforms: Sequence[Transform]) -> None:
        """Raise ConfigError if the layer cannot sum this federation safely."""

    def resolution(self) -> float:
        """How far one party's contribution to the revealed sum may be off per coordinate (CKKS:
        its stated precision); zero for exact sums."""
        return 0.0

    def min_contributors(self, selected: int, min_parties: int) -> int:
        """The fewest parties whose vectors a successful round of ``selected`` parties can sum — even
        with a dishonest aggregator. Distributed DP noise is calibrated to it."""
        return min_parties

    @abstractmethod
    def aggregator(self) -> SumAggregator:
        """The aggregator's side (no secrets)."""

    @abstractmethod
    def party(self, party_id: str) -> SumParty:
        """One party's side."""


@dataclass(frozen=True)
class PrivacyStack:
    """Transforms in order, then one secure sum; validated as a whole."""

    transforms: tuple[Transform, ...]
    secure_sum: SecureSum

    @classmethod
    def of(cls, layers: Sequence[Transform | SecureSum]) -> PrivacyStack:
        if not layers:
            raise ConfigError("the privacy stack is empty; end it with a secure sum such as 'plain'")
        *transforms, last = layers
        if not isinstance(last, SecureSum):
            raise ConfigError(
                f"the privacy stack must end with a secure sum (plain, secagg, ...), "
                f"but ends with {_layer_name(last)!r}"
            )
        for layer in transforms:
            if isinstance(layer, SecureSum):
                raise ConfigError(
                    f"secure sum {layer.name!r} must be the last layer, and there can be only one"
                )
            if not isinstance(layer, Transform):
                raise ConfigError(f"{layer!r} is not a privacy layer")
        return cls(tuple(transforms), last)

    @property
    def integer(self) -> bool:
        return any(t.produces_integers for t in self.transforms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.transforms] + [self.secure_sum.name]

    def validate(self, ctx: StackContext) -> None:
        for index, transform in enumerate(self.transforms):
            transform.validate(ctx, self.transforms[:index], self.secure_sum)
        if not self.integer and not self.secure_sum.accepts_floats:
            raise ConfigError(
                f"secure sum {self.secure_sum.name!r} adds integers modulo 2^"
                f"{self.secure_sum.modulus_bits}; put a 'quantize' transform before it"
            )
        self.secure_sum.validate(ctx, self.transforms)
        for transform in self.transforms:
            transform.stack_validated(self)

    def resolution(self) -> float | np.ndarray:
        """One encoding step per coordinate, in decoded units: what one party's rounding can move."""
        return sum((t.resolution() for t in self.transforms), self.secure_sum.resolution())

    def start_round(self, ctx: RoundContext) -> None:
        for transform in self.transforms:
            transform.start_round(ctx)

    def encode(self, vector: np.ndarray) -> np.ndarray:
        for transform in self.transforms:
            vector = transform.encode(vector)
        return vector

    def decode_sum(
        self, total: np.ndarray, contributors: int | None = None, selected: int | None = None
    ) -> np.ndarray:
        """Undo the transforms on a revealed sum.

        Given the number of ``contributors`` (and of parties ``selected`` in the round, which sizes
        distributed DP noise; by default the contributors), each transform first checks the sum
        against what that many honest parties can produce — its bound times the contributors, plus
        the headroom that transforms after it add (DP noise) — and :class:`ImpossibleSum`, naming
        the coordinate group and the bound, refuses a sum that cannot be. This is the free part of
        input integrity: a party can still send any in-range vector.
        """
        if contributors is not None:
            if (
                isinstance(contributors, bool)
                or not isinstance(contributors, (int, np.integer))
                or contributors < 0
            ):
                raise ImpossibleSum(
                    f"the number of contributors must be a non-negative integer, got {contributors!r}"
                )
            contributors = int(contributors)
            selected = max(contributors, int(selected or 0))
        headroom: float | np.ndarray = 0.0
        for transform in reversed(self.transforms):
            if contributors is not None:
                transform.check_sum(total, contributors, headroom)
                headroom = headroom + transform.sum_headroom(selected, contributors)
            total = transform.decode_sum(total)
        return np.asarray(total, dtype=np.float64)


def _layer_name(layer: object) -> str:
    return getattr(layer, "name", type(layer).__name__)
