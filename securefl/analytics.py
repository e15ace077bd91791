"""Federated analytics: count, sum, mean and histogram queries answered by a secure sum across parties.

Each query is one round of a federation whose "model" is the statistic. Every party computes its
contribution on its own data — a count, a sum, a histogram — and sends it through the same privacy
stack as training (``plain``, ``secagg``, ``secagg+``, ``paillier``, ``ckks`` or layer entries), so
the aggregator learns only the total, and with DP only the noised total::

    analytics = Analytics({"h0": records0, "h1": records1, "h2": records2}, "secagg")
    malignant = analytics.count(lambda r: int((r.y == 0).sum()), max_per_party=500)
    radius = analytics.mean(lambda r: r.x[:, 0], lower=5.0, upper=30.0, max_records=500)

A secure sum and DP noise both need each party's influence bounded, so every query declares a bound
(``max_per_party``, ``bound``, ``max_records``) fixed *before* anyone looks at the data: a bound read
off the data would itself leak. Contributions are scaled by the bound to unit size and clipped to
L2 norm 1 (√2 for the mean's [sum, count] pair); the clip is the party-level sensitivity the noise
is calibrated to. Without DP a contribution over its bound is refused by its party, which withdraws
(clipping it would bias the answer silently); with DP it is clipped, as DP contribution bounding
requires (a data-dependent withdrawal would change the number of parties summed).

With ``noise_multiplier`` set, each query adds DP noise (``distributed`` by default: Skellam shares
with an integer secure sum), is accounted by one guard across all queries of this object — the same
privacy unit, one party, spends its budget on every query — refused before it runs if it would
overspend, and recorded in the ledger with the query's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefl.codec import check_finite
from securefl.errors import ConfigError, RoundFailed, UpdateError
from securefl.federation import Federation, PrivacySpec, build_stack
from securefl.layers import DPNoise, PrivacyStack, with_clip, with_dp
from securefl.privacy.guard import Budget, PrivacyGuard
from securefl.privacy.ledger import Ledger, open_ledger

STATISTIC = "statistic"


@dataclass
class QueryResult:
    """A query's answer and what it cost."""

    query: str
    value: Any  # int / float / array: the answer (noised with DP)
    sums: np.ndarray  # the secure sum behind it, in the query's units (for mean: [Σ values, count])
    parties: int  # contributions summed
    dropouts: dict[str, str]  # party -> why it is missing, as the aggregator was told
    noise_std: np.ndarray | None = None  # std of the DP noise on each coordinate of ``sums``
    epsilon: float | None = None  # cumulative party-level ε after this query (DP only)
    edges: np.ndarray | None = None  # histogram only
    # The noised answer left its valid range (a negative count, a mean outside [lower, upper]) and
    # ``value`` was moved back into it: post-processing of a DP release, which costs no privacy.
    # ``sums`` keeps the released figure as it was.
    clamped: bool = False

    def _clamp(self, low: Any, high: Any) -> None:
        value = np.asarray(self.value, dtype=np.float64)
        inside = np.clip(value, low, high)
        if not np.array_equal(np.isnan(value), np.isnan(inside)) or not np.allclose(
            value, inside, equal_nan=True
        ):
            self.clamped = True
        self.value = float(inside) if inside.ndim == 0 else inside

    @property
    def complete(self) -> bool:
        return not self.dropouts


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ConfigError(f"{name} must be a positive finite number fixed before the query, got {value!r}")
    return float(value)


class Analytics:
    """Queries over the data of ``parties`` (party id → that party's data, handed only to its own
    query function), through ``privacy``.

    DP: ``noise_multiplier`` (noise std over the query's clip) and ``placement`` as for the ``dp``
    layer; ``budget`` (default: unlimited ε, δ=1e-5) is enforced across all queries; ``ledger`` (a
    :class:`~securefl.privacy.ledger.Ledger` or a path, its key kept next to it) records each.
    """

    def __init__(
        self,
        parties: Mapping[str, Any],
        privacy: PrivacySpec | Sequence[PrivacySpec] = "secagg",
        *,
        noise_multiplier: float | None = None,
        placement: str = "distributed",
        budget: Budget | None = None,
        ledger: Ledger | str | Path | None = None,
        accountant: str = "prv",
        min_parties: int = 1,
        phase_timeout: float = 600.0,
    ) -> None:
        if not parties:
            raise ConfigError("analytics needs at least one party")
        if noise_multiplier is None and (budget is not None or ledger is not None):
            raise ConfigError("a budget or ledger accounts DP noise: set noise_multiplier too")
        self.parties = dict(parties)
        self.privacy = privacy
        self.min_parties = min_parties
        self.phase_timeout = phase_timeout
        self.noise_multiplier = noise_multiplier
        self.placement = placement
        self.guard: PrivacyGuard | None = None
        self._queries = 0
        if noise_multiplier is not None:
            DPNoise(noise_multiplier, placement)  # the parameters' errors, before any query
            if isinstance(ledger, (str, Path)):
                ledger = open_ledger(ledger)
            self.guard = PrivacyGuard(budget or Budget(math.inf), ledger, accountant)
        build_stack(privacy)  # an unknown preset or layer fails here, not at the first query

    @property
    def epsilon(self) -> float | None:
        """Party-level ε spent by the queries so far (None without DP)."""
        if self.guard is None:
            return None
        return self.guard.spent if self.guard.accountant is not None else 0.0

    # -- the queries -------------------------------------------------------------------------

    def count(self, count: Callable[[Any], int], *, max_per_party: float) -> QueryResult:
        """Σ over parties of ``count(data)`` (e.g. how many of its records match), each at most
        ``max_per_party``. Exact (an int) without DP."""
        bound = _positive("max_per_party", max_per_party)
        result = self._query("count", lambda d: np.array([_number(count(d), "count")]), np.array([bound]))
        result.value = int(_rounded(result)[0]) if self.noise_multiplier is None else float(result.sums[0])
        if self.noise_multiplier is not None:
            result._clamp(0.0, bound * result.parties)
        return result

    def sum(self, values: Callable[[Any], Any], *, bound: float, dim: int = 1) -> QueryResult:
        """Σ over parties of ``values(data)``: a vector of ``dim`` numbers (or one number) whose L2
        norm is at most ``bound`` for every party."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"sum dim must be a positive integer, got {dim!r}")
        scale = np.full(dim, _positive("bound", bound))
        result = self._query("sum", lambda d: np.asarray(values(d), dtype=np.float64).reshape(-1), scale)
        result.value = float(result.sums[0]) if dim == 1 else result.sums.copy()
        return result

    def mean(
        self, values: Callable[[Any], Any], *, lower: float, upper: float, max_records: float
    ) -> QueryResult:
        """The mean of every party's records' ``values(data)`` (one number per record), each clamped
        to [lower, upper]: Σ values / Σ counts, from one secure sum of [Σ values, count] per party
        holding at most ``max_records`` records (or less influence than that)."""
        if not (isinstance(lower, (int, float)) and isinstance(upper, (int, float)) and lower < upper):
            raise ConfigError(f"mean needs lower < upper, got [{lower!r}, {upper!r}]")
        records = _positive("max_records", max_records)
        largest = max(abs(lower), abs(upper))

        def contribution(data: Any) -> np.ndarray:
            x = np.clip(_records(values(data)), lower, upper)
            return np.array([x.sum(), x.size], dtype=np.float64)

        result = self._query(
            "mean", contribution, np.array([records * largest, records]), clip=math.sqrt(2.0)
        )
        total, count = result.sums
        result.value = float(total / count) if count > 0 else math.nan  # DP noise can cancel a tiny count
        result._clamp(lower, upper)
        return result

    def histogram(
        self, values: Callable[[Any], Any], *, edges: Sequence[float], max_records: float
    ) -> QueryResult:
        """Per-bin counts of every party's records' ``values(data)`` over the bins ``edges`` (values
        outside are clamped into the first or last bin); each party's count vector has L2 norm at
        most ``max_records`` (true of any party with that many records). Exact ints without DP."""
        edges = np.asarray(edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
            raise ConfigError(
                "histogram edges must be at least two finite, strictly increasing numbers fixed before "
                "the query (a range read off the data would leak it)"
            )
        bins = edges.size - 1

        def contribution(data: Any) -> np.ndarray:
            x = np.clip(_records(values(data)), edges[0], edges[-1])
            return np.histogram(x, bins=edges)[0].astype(np.float64)

        result = self._query("histogram", contribution, np.full(bins, _positive("max_records", max_records)))
        result.edges = edges
        result.value = _rounded(result) if self.noise_multiplier is None else result.sums.copy()
        if self.noise_multiplier is not None:
            result._clamp(0.0, np.inf)
        return result

    # -- one query = one round -----------------------------------------------------------------

    def _query(
        self,
        name: str,
        contribution: Callable[[Any], np.ndarray],
        scale: np.ndarray,
        clip: float = 1.0,
    ) -> QueryResult:
        """Run one secure sum of ``contribution(data) / scale`` (L2 norm ≤ ``clip``) over the parties."""
        dp = self.noise_multiplier is not None
        label = f"{name} #{self._count_query()}"

        def client(data: Any) -> Callable:
            def train(weights, info):
                value = contribution(data)
                if value.shape != scale.shape:
                    raise UpdateError(f"{name} query gave {value.shape} numbers, expected {scale.shape}")
                check_finite(value, f"{name} contribution")
                normalized = value / scale
                if not dp and np.linalg.norm(normalized) > clip * (1 + 1e-9):
                    raise UpdateError(
                        f"this party's {name} contribution is over the query's declared bound; raise the "
                        "bound (clipping it would bias the answer)"
                    )
                return {STATISTIC: normalized}, 1

            return train

        stack = build_stack(self.privacy)
        layers = [*stack.transforms, stack.secure_sum]
        noise = DPNoise(self.noise_multiplier, self.placement) if dp else None
        layers = with_dp(layers, noise, clip) if noise else with_clip(layers, clip)
        if self.guard is not None:
            self.guard.tags = {"query": label}
        federation = Federation(
            {STATISTIC: np.zeros(scale.size)},
            {pid: client(data) for pid, data in self.parties.items()},
            PrivacyStack.of(layers),
            weighting="uniform",
            min_parties=self.min_parties,
            phase_timeout=self.phase_timeout,
            guard=self.guard,
        )
        report = federation.run_round()  # BudgetExhausted: refused and recorded, nobody computed
        if not report.ok:
            raise RoundFailed(f"{label} failed: {report.error}; dropouts: {report.dropouts}")
        mean = federation.global_vector  # FedAvg from zero at lr 1: the sum over the weight
        total_weight = report.total_weight
        if report.sealed:  # the aggregator could not read it; a key-holding party can
            total_weight = next(
                n.last_fused.total_weight for n in federation.nodes.values() if n.last_fused is not None
            )
        noise_std = None
        if noise is not None:
            noise_std = noise.sum_noise_std(len(report.selected), len(report.survivors)) * scale
        return QueryResult(
            query=label,
            value=None,
            sums=mean * total_weight * scale,
            parties=len(report.survivors),
            dropouts=dict(report.dropouts),
            noise_std=noise_std,
            epsilon=report.epsilon,
        )

    def _count_query(self) -> int:
        self._queries += 1
        return self._queries


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UpdateError(f"a {what} query must return a number, got {type(value).__name__}")
    return float(value)


def _records(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    check_finite(x, "record values")
    return x


def _rounded(result: QueryResult) -> np.ndarray:
    """Counts are integers; the fixed-point or CKKS error of the sum is far below ½."""
    return np.rint(result.sums).astype(np.int64)


__all__ = ["Analytics", "QueryResult"]
