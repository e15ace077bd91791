"""The ε of every observer class (:mod:`securefl.privacy.observers`) over one federation's releases.

Each class's composition is a :class:`Tally`: the preferred accountant, handing the history over to
PLD (tight, and able to take histories PRV's grid cannot) and only then to RDP (an upper bound).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from securefl.privacy.accountants import ACCOUNTANTS, RDP, Accountant, create, entry_of, for_mechanism
from securefl.privacy.accountants.base import GAUSSIAN, BeyondAccountant, Entry
from securefl.privacy.observers import AGGREGATOR, COUNT, MODEL, OBSERVERS, PARTICIPANTS

log = logging.getLogger(__name__)


class Tally:
    """One observer class's composition: the preferred accountant, handing the history over to PLD,
    then RDP, when it cannot compute it (PRV's grid limit) — PLD first, because RDP's upper bound can
    jump far above the tight figure (σ 0.3, q 0.001, 19,015 releases: RDP 64.2, tight 56.7)."""

    def __init__(self, preferred: str, mechanism: str) -> None:
        self.accountant: Accountant = for_mechanism(mechanism, preferred)
        # The same history is asked for several times a round (admit, admit_selection, record):
        # PRV takes up to half a second, so the last few answers are remembered.
        self._memo: dict[tuple, float] = {}

    def add(self, entry: Entry, steps: int = 1) -> None:
        self._able(entry)
        self.accountant._add(entry, steps)

    def _able(self, entry: Entry) -> None:
        """A Skellam release after Gaussian ones (the next analytics query): RDP takes the history."""
        if entry[0] not in self.accountant.mechanisms:
            successor = RDP()
            for known, steps in self.accountant.history.items():
                successor._add(known, steps)
            self.accountant = successor

    def take_over(self, other: Tally) -> None:
        for entry, steps in other.accountant.history.items():
            self.add(entry, steps)

    @property
    def version(self) -> str:
        return self.accountant.version

    def epsilon(self, delta: float, extra: Iterable[tuple[Entry, int]] = ()) -> float:
        """ε of the history plus ``extra`` releases (not recorded): what a round would bring."""
        extra = list(extra)
        while True:
            for entry, _ in extra:
                self._able(entry)
            saved = dict(self.accountant.history)
            try:
                for entry, steps in extra:
                    self.accountant._add(entry, steps)
                key = (self.accountant.name, delta, *sorted(self.accountant.history.items()))
                if key not in self._memo:
                    if len(self._memo) >= 8:
                        self._memo.pop(next(iter(self._memo)))
                    self._memo[key] = self.accountant.epsilon(delta)
                return self._memo[key]
            except BeyondAccountant as exc:
                failure = exc
            finally:
                self.accountant.history = saved
            self._hand_over(failure)

    def _hand_over(self, why: BeyondAccountant) -> None:
        """PRV → PLD → RDP: each takes the whole history of the one that could not compute it."""
        previous = self.accountant
        kinds = {entry[0] for entry in previous.history}
        if previous.name not in ("pld", "rdp") and "pld" in ACCOUNTANTS and kinds <= {GAUSSIAN}:
            successor: Accountant = create("pld")
        elif previous.name != "rdp":
            successor = RDP()
        else:
            raise why
        for entry, steps in previous.history.items():
            successor._add(entry, steps)
        log.warning("%s; accounting with %s from here on", why, successor.version)
        self.accountant = successor


def seen_by_a_party(fields: Mapping[str, Any], summed: int, sharing: int, placement: str) -> dict[str, Any]:
    """The release as a party summed in it sees it — or the coalition of ``fields["colluders"]``
    summed parties the figures hold against: with ``distributed`` noise each knows its own share
    (1/``sharing`` of the calibrated variance) and takes it out of the sum, leaving the other
    ``summed`` − c shares — less than the calibrated noise when the sum is at its fewest (found by
    an attacker: with 3 parties summed, 2/3 of the variance; ε 2.57 where 1.99 was recorded; and by
    another, two colluders at t = 10 left 8/10 of it). Other placements, or enough parties summed
    (shares sized on t − c), leave the mechanism as calibrated."""
    coalition = coalition_of(fields)
    keep = min(1.0, (summed - coalition) / sharing) if placement == "distributed" and sharing >= 1 else 1.0
    if keep >= 1.0 or summed <= coalition:  # (a coalition of everyone summed learns nothing new)
        return dict(fields)
    seen = dict(fields)
    if fields.get("mechanism") == GAUSSIAN:
        seen["noise_multiplier"] = float(fields["noise_multiplier"]) * math.sqrt(keep)
    elif "variance" in fields:
        seen["variance"] = float(fields["variance"]) * keep
    return seen


def coalition_of(fields: Mapping[str, Any]) -> int:
    """The coalition of summed parties a release's figures hold against: its ``colluders``, at least
    one party (each knows its own share)."""
    colluders = fields.get("colluders")
    return max(1, colluders) if type(colluders) is int else 1


def recorded_as_a_party_sees(record: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger record's release as a party summed in it saw it (:func:`seen_by_a_party` with the
    record's ``parties_summed`` and ``noise_threshold``): what a resumed guard and the audit replay,
    exactly as a live guard recorded it. A record without those fields (older) is taken as is."""
    summed, sharing = record.get("parties_summed"), record.get("noise_threshold")
    if not (type(summed) is int and type(sharing) is int):
        return dict(record)
    return seen_by_a_party(record, summed, sharing, str(record.get("placement", "")))


def _with_rate(fields: Mapping[str, Any], rate: float) -> Entry:
    return entry_of({**fields, "sample_rate": rate})


def _unsampled(entry: Entry) -> Entry:
    return (*entry[:2], 1.0) if entry[0] == GAUSSIAN else entry


class ObserverAccounts:
    """The ε of every observer class over one federation's releases (see the module docstring).

    ``amplified`` is the Poisson rate q when amplification by sampling may be claimed at all
    (Poisson selection and Gaussian noise), else None: every class is then accounted at rate 1."""

    def __init__(
        self,
        preferred: str,
        mechanism: str,
        placement: str,
        population: int,
        amplified: float | None,
        aggregator_protected: bool = True,
    ) -> None:
        self.preferred, self.placement, self.population = preferred, placement, population
        # False when the aggregator sees what the recorded mechanism does not cover: the un-noised
        # sum (central noise), or each update with only its share of distributed noise (a sum that
        # does not hide inputs, e.g. plain).
        self.aggregator_protected = aggregator_protected
        self.amplified = amplified
        # The count class composes a different rate k/n nearly every round: PRV and PLD cost seconds
        # per evaluation for a few dozen distinct rates, RDP (one cached curve per rate) milliseconds.
        # RDP is an upper bound (8-15% over the tight figure): honest, if not tight.
        self.count = Tally("rdp", mechanism)
        self.full: dict[Entry, int] = {}  # every release, unsampled: the participants' histories
        self.worst_accountant = preferred
        self.most_selected = 0  # m: the most releases any one party has been in
        self.floors: dict[str, float] = {}  # figures a resumed ledger already recorded (floor())
        self._floor = 0  # each party's count before this process saw it (a resumed ledger's m)
        self._times: dict[str, int] = {}

    def take_over(self, previous: ObserverAccounts) -> None:
        """Keep composing onto what ``previous`` accounted (successive analytics queries)."""
        self.count.take_over(previous.count)
        for entry, steps in previous.full.items():
            self.full[entry] = self.full.get(entry, 0) + steps
        self.most_selected, self._floor = previous.most_selected, previous._floor
        self.floors = dict(previous.floors)
        self._times = dict(previous._times)

    def rates(self, selected: int) -> dict[str, float]:
        if self.amplified is None:
            return {MODEL: 1.0, COUNT: 1.0}
        rate = min(1.0, max(1, selected) / self.population)
        return {MODEL: rate, COUNT: rate}

    def _selected_most(self, contributors: Sequence[str] | None) -> int:
        """m after a release summing ``contributors`` (None: unknown, so the worst party is assumed in)."""
        if contributors is None:
            return self.most_selected + 1
        times = [self._times.get(p, self._floor) + 1 for p in contributors]
        return max([self.most_selected, *times])

    def record(
        self,
        fields: Mapping[str, Any],
        selected: int,
        contributors: Sequence[str] | None,
        party_sees: Mapping[str, Any] | None = None,
    ) -> None:
        """Account one release of ``fields`` from a round that selected ``selected`` parties and summed
        ``contributors``; ``party_sees``: the release as a summed party sees it (seen_by_a_party),
        what the participants' (and so every) figure composes."""
        rates = self.rates(selected)
        self.count.add(_with_rate(fields, rates[COUNT]))
        entry = _with_rate(party_sees or fields, 1.0)
        self.full[entry] = self.full.get(entry, 0) + 1
        self.most_selected = self._selected_most(contributors)
        for party in contributors or ():
            self._times[party] = self._times.get(party, self._floor) + 1

    def replay(self, record: Mapping[str, Any], colluders: int = 0) -> None:
        """Account one ``released`` ledger record (a resumed federation). A record written before the
        observer classes existed gives no count or selection: the count class takes its model rate,
        and the worst party is assumed in the release. ``colluders``: the coalition the resuming
        guard's figures hold for — an earlier release is replayed as the larger of its own coalition
        and that one sees it (found by an attacker: resumed with colluders=2 over releases recorded
        for one party, the guard admitted rounds that took a coalition of two over the budget)."""
        observers = record.get("observers") if isinstance(record.get("observers"), Mapping) else {}
        steps = int(record.get("steps", 1))
        # An older record has no count rate: its sample_rate is the best there is.
        count_rate = _number(observers.get(COUNT, {}), "sample_rate", float(record.get("sample_rate", 1.0)))
        self.count.add(_with_rate(record, count_rate), steps)
        # As the live guard composed it: a summed party knows its own share of distributed noise.
        # (Replayed as calibrated, a resumed guard undercounted every earlier round at few survivors:
        # an attacker restarting the guard each round released 9 rounds where 6 fit the budget.)
        if colluders > coalition_of(record):
            record = {**record, "colluders": colluders}
        entry = _with_rate(recorded_as_a_party_sees(record), 1.0)
        self.full[entry] = self.full.get(entry, 0) + steps
        releases = observers.get(PARTICIPANTS, {}).get("releases") if observers else None
        if isinstance(releases, int) and not isinstance(releases, bool) and releases >= self.most_selected:
            self.most_selected = releases
        else:
            self.most_selected += steps
        # A resumed process does not know who was selected before: every party starts at the worst.
        self._floor = self.most_selected
        self._times.clear()

    def floor(self, record: Mapping[str, Any]) -> None:
        """A resumed ledger's recorded figures are floors: recomputing with another accountant, or
        from records a repair carried, never reports less than was already recorded."""
        observers = record.get("observers") if isinstance(record.get("observers"), Mapping) else {}
        figures = {name: _number(observers.get(name, {}), "epsilon", 0.0) for name in OBSERVERS}
        enforced = record.get("observer") if record.get("observer") in OBSERVERS else None
        recorded = _number(record, "epsilon", 0.0)
        for name in [enforced] if enforced else [MODEL, COUNT]:  # an older record: the model's
            figures[name] = max(figures[name], recorded)
        for name, value in figures.items():
            self.floors[name] = max(self.floors.get(name, 0.0), value)

    def epsilons(self, delta: float, observers: Sequence[str] = OBSERVERS) -> dict[str, float | None]:
        """ε spent so far against each of ``observers``."""
        return self._figures(delta, self.most_selected, {}, self.full, observers)

    def projected(
        self,
        fields: Mapping[str, Any],
        delta: float,
        selected: int,
        contributors: Sequence[str] | None,
        observers: Sequence[str] = OBSERVERS,
        party_sees: Mapping[str, Any] | None = None,
    ) -> dict[str, float | None]:
        """ε against each of ``observers`` if one more release of ``fields`` were made (nothing is
        recorded); ``party_sees`` as for :meth:`record`."""
        rates = self.rates(selected)
        extra = {
            MODEL: [(_with_rate(fields, rates[MODEL]), 1)],
            COUNT: [(_with_rate(fields, rates[COUNT]), 1)],
        }
        full = dict(self.full)
        entry = _with_rate(party_sees or fields, 1.0)
        full[entry] = full.get(entry, 0) + 1
        return self._figures(delta, self._selected_most(contributors), extra, full, observers)

    def _figures(
        self,
        delta: float,
        most: int,
        extra: Mapping[str, list[tuple[Entry, int]]],
        full: dict[Entry, int],
        observers: Sequence[str],
    ) -> dict[str, float | None]:
        figures: dict[str, float | None] = {}
        selection = self._worst_party(delta, most, full)
        if MODEL in observers or COUNT in observers:
            # The released average divides by the realized count, whose noise scale gives the count
            # away (an attacker read k off the model in 200 rounds of 200): those who see the models
            # see the count, so the two classes have one figure. Never below the worst party's
            # unsampled figure: k/n holds only if who is summed, given how many, is uniform — but
            # dropouts can depend on who the party is (a party that always answers among flaky ones
            # is in nearly every sum of a given size), and the composition of the target's own
            # releases, unsampled, holds against every observer whatever the dropouts.
            counted = self.count.epsilon(delta, extra.get(COUNT, ()))
            figures[COUNT] = figures[MODEL] = max(counted, selection)
        if PARTICIPANTS in observers or AGGREGATOR in observers:
            figures[PARTICIPANTS] = selection
            figures[AGGREGATOR] = selection if self.aggregator_protected else None
        return {
            name: None if value is None else max(value, self.floors.get(name, 0.0))
            for name, value in figures.items()
        }

    def _worst_party(self, delta: float, most: int, full: dict[Entry, int]) -> float:
        """ε of the ``most`` costliest releases, unsampled: the party selected most often."""
        # The history is rebuilt each time (m changes), but the accountant that could last take it
        # is kept: a PRV that failed once is not retried every round.
        value, self.worst_accountant = worst_party_epsilon(full, most, delta, self.worst_accountant)
        return value


def worst_party_epsilon(
    full: Mapping[Entry, int], most: int, delta: float, preferred: str
) -> tuple[float, str]:
    """ε of the ``most`` costliest releases, unsampled (the party selected most often), and the name
    of the accountant that computed it (``preferred``, or the one it handed the history to)."""
    chosen = costliest(full, most, delta)
    if not chosen:
        return 0.0, preferred
    tally = Tally(preferred, chosen[0][0][0])
    for entry, steps in chosen:
        tally.add(entry, steps)
    return tally.epsilon(delta), tally.accountant.name


def costliest(full: Mapping[Entry, int], most: int, delta: float) -> list[tuple[Entry, int]]:
    """The ``most`` costliest of the releases ``full`` (entry → count): the history of the party
    selected most often, or an upper bound on it when the mechanism changed (ranked by RDP ε of one
    release: cheap, and monotone in the noise for one kind of mechanism)."""
    ranked = sorted(full.items(), key=lambda item: single_cost(item[0], delta), reverse=True)
    chosen, left = [], most
    for entry, steps in ranked:
        if left <= 0:
            break
        chosen.append((entry, min(steps, left)))
        left -= steps
    return chosen


def single_cost(entry: Entry, delta: float) -> float:
    accountant = RDP()
    accountant._add(entry, 1)
    value = accountant.epsilon(delta)
    return value if math.isfinite(value) else math.inf


def _number(mapping: Any, key: str, default: float) -> float:
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
