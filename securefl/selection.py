"""Which parties take part in a round: all, a fixed number, or Poisson sampling with rate q.

Poisson sampling (each party independently with probability q) is what the DP accountants assume
for privacy amplification by sampling; the rate is exposed as ``sample_rate``. Randomness comes
from the OS CSPRNG (design invariant 5).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from securefl.errors import ConfigError
from securefl.randomness import SecureRandom
from securefl.registry import construct


class Selection(ABC):
    name: str

    def __init__(self, rng: SecureRandom | None = None) -> None:
        self._rng = rng or SecureRandom()

    @abstractmethod
    def select(self, parties: Sequence[str], round: int) -> list[str]:
        """The parties invited to ``round``, in the order given."""

    @abstractmethod
    def max_selected(self, n_parties: int) -> int:
        """The most parties a round can invite (what overflow checks must allow for)."""

    def sample_rate(self, n_parties: int) -> float:
        """The probability that a given party is in a round."""
        return self.max_selected(n_parties) / n_parties


class AllParties(Selection):
    name = "all"

    def select(self, parties: Sequence[str], round: int) -> list[str]:
        return list(parties)

    def max_selected(self, n_parties: int) -> int:
        return n_parties


class FixedCount(Selection):
    """``count`` parties drawn uniformly without replacement each round."""

    name = "fixed"

    def __init__(self, count: int, rng: SecureRandom | None = None) -> None:
        super().__init__(rng)
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"fixed selection needs count >= 1, got {count!r}")
        self.count = count

    def select(self, parties: Sequence[str], round: int) -> list[str]:
        if self.count > len(parties):
            raise ConfigError(f"cannot select {self.count} of {len(parties)} parties")
        chosen = set(self._rng.sample(list(parties), self.count))
        return [p for p in parties if p in chosen]

    def max_selected(self, n_parties: int) -> int:
        return min(self.count, n_parties)


class Poisson(Selection):
    """Each party independently with probability ``rate``; a round may invite none."""

    name = "poisson"

    def __init__(self, rate: float, rng: SecureRandom | None = None) -> None:
        super().__init__(rng)
        if not (isinstance(rate, (int, float)) and 0 < rate <= 1):
            raise ConfigError(f"poisson selection needs 0 < rate <= 1, got {rate!r}")
        self.rate = float(rate)

    def select(self, parties: Sequence[str], round: int) -> list[str]:
        return [p for p in parties if self._rng.random() < self.rate]

    def max_selected(self, n_parties: int) -> int:
        return n_parties

    def sample_rate(self, n_parties: int) -> float:
        return self.rate


SELECTIONS: dict[str, type[Selection]] = {"all": AllParties, "fixed": FixedCount, "poisson": Poisson}


def build_selection(spec: str | Mapping[str, Any] | Selection | None) -> Selection:
    """From a config value: ``"all"``, ``{"kind": "fixed", "count": 3}`` or
    ``{"kind": "poisson", "rate": 0.5}``."""
    if spec is None or spec == "all":
        return AllParties()
    if isinstance(spec, Selection):
        return spec
    if isinstance(spec, Mapping):
        return construct("selection", SELECTIONS, spec, "kind")
    raise ConfigError(
        f"unknown selection {spec!r}; use 'all', {{kind='fixed', count=K}} or {{kind='poisson', rate=Q}}"
    )
