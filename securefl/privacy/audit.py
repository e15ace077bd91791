"""The audit: verify a ledger, recompute the ε it records with independent accountants, and flag
what does not add up.

Integrity comes first (:func:`securefl.privacy.ledger.verify`: chain, sequence, signatures, head).
Then every release is replayed, in order, into each available accountant — PRV and RDP from opacus,
and Google's dp-accounting PLD when installed — and each record's reported cumulative ε is compared:

* below the recomputation by its *own* accountant (same name) → under-reported;
* below the PLD or PRV recomputation by more than ``TOLERANCE`` (their numerical error) →
  under-reported against an independent implementation. RDP is an upper bound, so being below it
  is expected and never flagged unless the record says it used RDP.

PRV and PLD know no Skellam noise; for Skellam releases they account the Gaussian of the same
variance and L2 sensitivity instead — a lower reference (the Skellam bound, which RDP uses, adds a
discreteness term), so a reported ε below it is under-reported too.

PRV and PLD cost up to half a second per evaluation (100 releases audit in 13 s at 20 checkpoints,
29 s at 50), so on long ledgers they recompute at up to ``CHECKPOINTS`` evenly spaced releases
(always including the last); RDP, at a millisecond, recomputes at every one.

A release that brings the recomputed ε over the budget (given, or as recorded) is an overspend.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securefl.durable import write_replacing
from securefl.errors import ConfigError
from securefl.logtext import counted
from securefl.privacy.accountants import ACCOUNTANTS, GAUSSIAN, SKELLAM, Accountant, create, entry_of
from securefl.privacy.accountants.base import BeyondAccountant
from securefl.privacy.accounts import coalition_of, recorded_as_a_party_sees, worst_party_epsilon
from securefl.privacy.ledger import verify
from securefl.privacy.observers import AGGREGATOR, COUNT, DESCRIPTIONS, MODEL, OBSERVERS, PARTICIPANTS

HIDING = ("secagg", "secagg+")  # sums that hide each input from the aggregator (guard.HIDING_SUMS)
# PRV's default error bound in ε; PLD's discretisation error is smaller at the default interval.
TOLERANCE = 0.01
TIGHT = ("prv", "pld")
CHECKPOINTS = 20
PARAMETERS = {
    "noise": "mechanism",
    "noise_multiplier": "noise multiplier (std / clip norm)",
    "noise_std": "noise standard deviation",
    "clip_norm": "clip norm (L2)",
    "sampling": "sampling",
    "sample_rate": "sampling rate",
    "delta": "δ",
    "accountant": "accountant (as recorded)",
}
REQUIRED = ("decision", "mechanism", "noise_multiplier", "sample_rate", "delta", "epsilon", "unit")
# Fields that are numbers (or absent, or null) in every record securefl writes, at the top level and
# in each per-observer figure. A signed record may hold anything its signer wrote: one holding other
# values there is named as a problem and left out of the recomputation, which reads them as numbers.
NUMERIC = (
    "epsilon",
    "delta",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "parties_summed",
    "parties_selected",
    "population",
    "budget_epsilon",
    "variance",
    "l2_sensitivity",
    "noise_std",
    "releases",
)
# Fields that are text (or absent, or null) in every record securefl writes.
TEXT = ("decision", "mechanism", "accountant", "observer", "neighbouring", "noise", "unit", "time")


@dataclass
class AuditResult:
    path: str
    valid: bool
    records: int = 0
    releases: int = 0
    refusals: int = 0
    unit: str | None = None
    neighbouring: str | None = None
    delta: float | None = None
    budget_epsilon: float | None = None
    reported: float | None = None
    epsilon: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    signer: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # the first record's mechanism fields
    interrupted: list[str] = field(default_factory=list)  # a cut append the next writer completes
    # Per observer class: the last reported ε, its recomputation, whom it protects against.
    observers: dict[str, dict[str, Any]] = field(default_factory=dict)
    observer: str | None = None  # the class the budget held against
    empirical: Any = None  # an EmpiricalAudit, when asked for (securefl audit --empirical)
    carried: int = 0  # records carried from a damaged ledger by a repair
    pinned: bool = False  # the signer was checked against a key the auditor gave (--public-key)
    first_time: str | None = None  # the records' time range (UTC, as the writer stamped them)
    last_time: str | None = None

    @property
    def guarantee(self) -> tuple[str, float | None]:
        """(who, ε): the figure the budget is enforced on — against the observer class the budget
        holds against, or the released model's ε for a ledger that names no classes."""
        for name, figure in self.observers.items():
            if figure.get("enforced"):
                return name, figure.get("epsilon")
        return "the released model", self.reported

    @property
    def budget_holds(self) -> bool | None:
        """Whether the enforced ε is within the budget (None: no budget or no figure)."""
        _, epsilon = self.guarantee
        if not (_is_number(self.budget_epsilon) and _is_number(epsilon)):
            return None  # no budget or no figure
        return epsilon <= self.budget_epsilon + 1e-12

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "ledger": self.path,
            "records": self.records,
            "releases": self.releases,
            "refusals": self.refusals,
            "unit": self.unit,
            "neighbouring": self.neighbouring,
            "epsilon": self.epsilon,
            "reported_epsilon": self.reported,
            "delta": self.delta,
            "budget_epsilon": self.budget_epsilon,
            "signer": self.signer,
            "problems": self.problems,
            "interrupted": self.interrupted,
            "observer": self.observer,
            "observers": self.observers,
            "empirical": self.empirical.to_json(scores=False) if self.empirical is not None else None,
            "carried": self.carried,
            "pinned": self.pinned,
            "time_range": [self.first_time, self.last_time],
            "guarantee": dict(zip(("observer", "epsilon"), self.guarantee, strict=True)),
            "budget_holds": self.budget_holds,
            "notes": self.notes,
            "rounds": self.rows,
        }


def _shown_round(record: dict[str, Any]) -> int | None:
    """A record's round as securefl prints rounds everywhere, counting from 1 (the ledger stores the
    protocol's index from 0 in ``round``, under every signature already made)."""
    value = record.get("round")
    return value + 1 if isinstance(value, int) and not isinstance(value, bool) else None


def _accountant_name(record: dict[str, Any]) -> str:
    return str(record.get("accountant", "")).split(" ", 1)[0]


def _check_is_a_ledger(path: Path) -> None:
    """Refuse, with what it is instead, a path that cannot be a ledger: a directory, a file empty
    without a signed head beside it (a ledger is created head first), or one that is not text."""
    from securefl.privacy.ledger import head_path, read_nofollow

    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the ledger file (e.g. {path}/dp-ledger.jsonl)")
    # As verify() reads it: never through a link, never blocking (a pipe given as the ledger made
    # `audit` wait for ever — found by an attacker), regular files only.
    content = read_nofollow(path, "ledger")
    if content is None:
        return  # verify() names a missing ledger itself
    start = content[:4096]
    if not start and not head_path(path).exists():
        raise ConfigError(
            f"{path} is empty and has no signed head ({head_path(path).name}) beside it: it is not a "
            "securefl ledger (a ledger writes its head before any record)"
        )
    try:
        start.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(start) - 4:  # not a character cut at the end of the sample
            raise ConfigError(
                f"{path} is not text (binary data at byte {exc.start}): it is not a securefl ledger"
            ) from None


_WRONG_SIGNER = re.compile(r"record \d+: signed by '([0-9a-f]+)', not the ledger's key ([0-9a-f]+)")


def _one_line_per_wrong_signer(problems: list[str], public_key: str | None) -> list[str]:
    """Records signed by another key than the one expected, said once per signer: a wrong
    --public-key makes every record fail alike, and one line per record hides the cause."""
    by_signer: dict[tuple[str, str], int] = {}
    kept = []
    for problem in problems:
        match = _WRONG_SIGNER.fullmatch(problem)
        if match is None:
            kept.append(problem)
        else:
            by_signer[match.groups()] = by_signer.get(match.groups(), 0) + 1
    for (signer, expected), count in by_signer.items():
        hint = " (does --public-key name another ledger's key?)" if public_key else ""
        kept.append(f"{counted(count, 'record')} signed by {signer}, not the expected key {expected}{hint}")
    return kept


def audit(
    path: str | Path, public_key: str | None = None, budget_epsilon: float | None = None
) -> AuditResult:
    """Verify ``path`` and recompute its ε; ``public_key`` (hex) pins the signer; ``budget_epsilon``
    overrides the budget the records carry."""
    if budget_epsilon is not None and not (math.isfinite(budget_epsilon) and budget_epsilon > 0):
        raise ConfigError(
            f"--budget-epsilon must be a finite positive number, got {budget_epsilon}; leave it out to "
            "audit against the budget the records carry"
        )
    _check_is_a_ledger(Path(path))
    check = verify(path, public_key)
    result = AuditResult(str(path), check.valid, signer=check.signer, pinned=public_key is not None)
    times = [r["time"] for r in check.records if isinstance(r.get("time"), str)]
    if times:
        result.first_time, result.last_time = min(times), max(times)
    result.problems = _one_line_per_wrong_signer(
        [p for p in check.problems if not p.startswith("note:")], public_key
    )
    result.notes = [p.removeprefix("note: ") for p in check.problems if p.startswith("note:")]
    result.records = len(check.records)
    result.interrupted = check.interrupted
    if check.interrupted:
        result.notes.append(
            "the last append was interrupted by a crash (not tampering); the next writer completes it, "
            "or run `securefl audit LEDGER --repair`"
        )
    carried = [r["carried"] for r in check.records if isinstance(r.get("carried"), dict)]
    result.carried = len(carried)
    unverified = [c for c in carried if not c.get("verified") and not c.get("missing")]
    if unverified:
        result.problems.append(
            f"{counted(len(unverified), 'record')} carried by a repair from a damaged ledger whose "
            "signatures no longer verified: their figures may have been altered, so each is accounted as "
            "the costliest verified release (compare the damaged copy "
            f"{unverified[0].get('from')} with your own records)"
        )
    if carried:
        placeholders = sum(1 for c in carried if c.get("missing"))
        result.notes.append(
            f"{counted(len(carried), 'record')} carried from a damaged ledger by a repair "
            f"({', '.join(sorted({str(c.get('from')) for c in carried}))}), {placeholders} of them "
            "placeholders for records the damage hid or altered (counted as the costliest verified release)"
        )
    if check.records:
        result.parameters = {k: check.records[0].get(k) for k in PARAMETERS}
    accountants: dict[str, Accountant] = {name: create(name) for name in ACCOUNTANTS}
    if "pld" not in accountants:
        result.notes.append(
            "dp-accounting is not installed: no PLD recomputation (pip install dp-accounting)"
        )
    unsupported: set[str] = set()
    records = [r for r in check.records if _numbers_hold(r, result)]
    releases = sum(1 for r in records if r.get("decision") == "released")
    every = max(1, math.ceil(releases / CHECKPOINTS))
    if every > 1:
        result.notes.append(f"prv/pld recomputed at one release in {every} and the last; rdp at every one")
    for record in records:
        index = result.releases
        tight = index % every == every - 1 or index == releases - 1
        _replay_or_name(
            record,
            result,
            lambda r=record, t=tight: _replay(r, accountants, unsupported, result, budget_epsilon, t),
        )
    try:
        _observers(records, result, every)
    except _RECOMPUTATION_ERRORS as exc:
        result.problems.append(
            f"the per-observer figures cannot be recomputed ({type(exc).__name__}: {_short(str(exc))[1:-1]})"
        )
    if any(r.get("mechanism") == SKELLAM and r.get("decision") == "released" for r in records):
        result.notes.append(
            "prv/pld of Skellam releases: the Gaussian of the same variance and L2 sensitivity, a lower "
            "reference; the rdp figure is the Skellam bound (Agarwal, Kairouz, Liu 2021)"
        )
    for name in sorted(unsupported):
        result.notes.append(f"the {name} accountant cannot account the whole ledger: its ε is n/a")
    if result.delta is not None:
        result.epsilon = {
            name: (None if name in unsupported else _final_epsilon(name, acc, result))
            for name, acc in accountants.items()
        }
    if (
        result.budget_epsilon is not None
        and result.reported is not None
        and result.reported > result.budget_epsilon
    ):
        result.problems.append(
            f"reported ε {result.reported:.4g} exceeds the budget {result.budget_epsilon:g}: overspent"
        )
    result.valid = not result.problems
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers_hold(record: dict[str, Any], result: AuditResult) -> bool:
    """Whether every NUMERIC field of ``record`` is a number (or null), every TEXT field text (or
    null), and its per-observer figures a mapping of names to mappings; if not, say which."""
    figures = record.get("observers")
    wrong = []
    if figures is not None and not (
        isinstance(figures, dict) and all(isinstance(f, dict) for f in figures.values())
    ):
        wrong.append(f"observers = {_short(figures)}")
        figures = {}
    places = [("", record)]
    places += [(f"observers.{name}.", figure) for name, figure in (figures or {}).items()]
    wrong += [
        f"{prefix}{key} = {_short(value)}"
        for prefix, fields in places
        for key, value in fields.items()
        if value is not None
        and ((key in NUMERIC and not _is_number(value)) or (key in TEXT and not isinstance(value, str)))
    ]
    if wrong:
        result.problems.append(
            f"record {record.get('seq')} (round {_shown_round(record)}) holds {', '.join(wrong)} where "
            "numbers or text belong: its ε cannot be recomputed, so it is not counted"
        )
    return not wrong


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# What a signed record's figures can make the recomputation raise (a zero rate, a δ out of range,
# an accountant refusing its parameters): the record is named and the audit fails, never crashes.
_RECOMPUTATION_ERRORS = (ArithmeticError, ValueError, TypeError, KeyError, IndexError, ConfigError)


def _final_epsilon(name: str, accountant: Accountant, result: AuditResult) -> float | None:
    try:
        return accountant.epsilon(result.delta)
    except _RECOMPUTATION_ERRORS as exc:
        result.problems.append(
            f"the {name} accountant cannot compute ε over these records ({type(exc).__name__}: "
            f"{_short(str(exc))[1:-1]})"
        )
        return None


def _replay_or_name(record: dict[str, Any], result: AuditResult, replay: Any) -> None:
    try:
        replay()
    except _RECOMPUTATION_ERRORS as exc:
        result.problems.append(
            f"record {record.get('seq')} (round {_shown_round(record)}): its figures cannot be recomputed "
            f"({type(exc).__name__}: {_short(str(exc))[1:-1]}), so it is not counted"
        )


def _replay(
    record: dict[str, Any],
    accountants: dict[str, Accountant],
    unsupported: set[str],
    result: AuditResult,
    budget_epsilon: float | None,
    tight: bool = True,
) -> None:
    where = f"record {record.get('seq')} (round {_shown_round(record)})"
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        result.problems.append(f"{where} lacks {missing}: ε cannot be recomputed")
        return
    for key, value in (("unit", record["unit"]), ("delta", record["delta"])):
        current = getattr(result, key)
        if current is not None and current != value:
            result.problems.append(
                f"{where} has {key} {value!r}, earlier records {current!r}: not one guarantee"
            )
        setattr(result, key, value)
    result.neighbouring = record.get("neighbouring", result.neighbouring)
    result.budget_epsilon = budget_epsilon if budget_epsilon is not None else record.get("budget_epsilon")
    row = {
        "seq": record.get("seq"),
        "round": _shown_round(record),
        "decision": record["decision"],
        "parties_summed": record.get("parties_summed"),
        "reported": record["epsilon"],
        "recomputed": {},
    }
    result.rows.append(row)
    if record["decision"] == "refused":
        result.refusals += 1
        return
    if record["decision"] != "released":
        result.problems.append(f"{where} has decision {record['decision']!r}, not 'released' or 'refused'")
        return
    result.releases += 1
    steps = int(record.get("steps", 1))
    try:
        for name, accountant in accountants.items():
            release = record if accountant.supports(record) else _gaussian_reference(record)
            if release is None:
                unsupported.add(name)
                continue
            accountant.step_release(release, steps)
            if (tight or name not in TIGHT) and name not in unsupported:
                try:
                    row["recomputed"][name] = accountant.epsilon(record["delta"])
                except BeyondAccountant as exc:
                    unsupported.add(name)
                    result.notes.append(f"{name} stops at {where}: {exc}")
    except ConfigError as exc:
        result.problems.append(f"{where}: {exc}")
        return
    result.reported = float(record["epsilon"])
    # The figure these accountants recompute (the record's sample_rate) is the released-model one;
    # the other observers' figures are checked by _observers.
    if isinstance(record.get("observers"), dict):
        return  # the per-observer figures are checked by _observers (the model's viewers see k)
    reported = float(record["epsilon"])
    own = _accountant_name(record)
    recomputed = row["recomputed"]
    if own in recomputed and reported < recomputed[own] * (1 - 1e-9) - 1e-12:
        result.problems.append(
            f"{where} reports ε={reported:.6g}, but its own accountant ({own}) recomputes "
            f"{recomputed[own]:.6g}: under-reported"
        )
    for name in TIGHT:
        if name != own and name in recomputed and reported < recomputed[name] - TOLERANCE:
            result.problems.append(
                f"{where} reports ε={reported:.6g}, below the independent {name} recomputation "
                f"{recomputed[name]:.6g} by more than {TOLERANCE}: under-reported"
            )


def _observer_figure(record: dict[str, Any], observer: str) -> float | None:
    entry = record.get("observers", {}).get(observer) if isinstance(record.get("observers"), dict) else None
    value = entry.get("epsilon") if isinstance(entry, dict) else None
    return float(value) if _is_number(value) else None


def _observers(records: list[dict[str, Any]], result: AuditResult, every: int) -> None:
    """Check each release's per-observer figures (protocols/dp.md § Observers): the rules that tie
    them to placement and sampling, and their values, recomputed at checkpoints from the records
    alone — the count class at k/n, the participants and aggregator at the m costliest releases
    unsampled (PLD for Gaussian noise, RDP for Skellam). Records written before the observer classes
    existed carry none and are skipped with a note."""
    released = [r for r in records if r.get("decision") == "released"]
    if not released:
        return
    carrying = [isinstance(r.get("observers"), dict) for r in released]
    if not any(carrying):
        result.notes.append(
            "no release carries per-observer ε (a ledger written before securefl recorded them, or one "
            "they were stripped from): its ε holds only against observers who know neither the selection "
            "nor the count of any round"
        )
        return
    if not all(carrying):
        result.problems.append(
            f"{carrying.count(False)} of {len(released)} releases carry no per-observer ε while the others "
            "do: figures were removed"
        )
        return
    if len({r.get("observer") for r in released}) > 1:
        result.problems.append("the observer class the budget holds against changes between releases")
    budgets = {r.get("budget_epsilon") for r in records}
    if len(budgets) > 1:
        result.problems.append(f"the budget changes between records ({sorted(map(str, budgets))})")
    result.problems.extend(_poisson_plausibility(released))
    highest: dict[str, float] = {}
    count_history: dict[tuple, int] = {}
    full: dict[tuple, int] = {}
    previous_m, participations = 0, 0
    for index, record in enumerate(released):
        where = f"record {record.get('seq')} (round {_shown_round(record)})"
        try:
            participations += int(record.get("parties_summed") or 0)
            problems = _observer_rules(record, previous_m, participations)
            count_entry = entry_of({**record, "sample_rate": record["observers"][COUNT]["sample_rate"]})
            unsampled = entry_of({**recorded_as_a_party_sees(record), "sample_rate": 1.0})
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            result.problems.append(f"{where}: its per-observer figures are malformed ({exc})")
            return
        result.problems.extend(f"{where}: {p}" for p in problems)
        steps = int(record.get("steps", 1))
        count_history[count_entry] = count_history.get(count_entry, 0) + steps
        full[unsampled] = full.get(unsampled, 0) + steps
        previous_m = record["observers"][PARTICIPANTS]["releases"]
        for observer in OBSERVERS:
            value = _observer_figure(record, observer)
            if value is not None and value < highest.get(observer, 0.0):
                result.problems.append(
                    f"{where}: its ε against {observer} ({value:.6g}) is below an earlier record's "
                    f"({highest[observer]:.6g}): ε never decreases"
                )
            if value is not None:
                highest[observer] = max(highest.get(observer, 0.0), value)
        budget = record.get("budget_epsilon")
        if isinstance(budget, (int, float)) and float(record["epsilon"]) > budget:
            result.problems.append(
                f"{where}: released at ε {float(record['epsilon']):.6g} against {record.get('observer')}, "
                f"over its budget {budget:g}"
            )
        tight = index % every == every - 1 or index == len(released) - 1
        recomputed = _recompute_observers(count_history, full, previous_m, float(record["delta"]), tight)
        for observer, (value, name) in recomputed.items():
            reported = _observer_figure(record, observer)
            if reported is None or value is None:
                continue
            slack = TOLERANCE if name in TIGHT else value * 1e-9
            if reported < value - slack:
                result.problems.append(
                    f"{where} reports ε={reported:.6g} against {observer}, below the {name} "
                    f"recomputation {value:.6g}: under-reported"
                )
        if tight:
            last = recomputed
    final = released[-1]
    result.observer = final.get("observer")
    for observer in OBSERVERS:
        value, name = last.get(observer, (None, None))
        result.observers[observer] = {
            "epsilon": final["epsilon"]
            if observer == MODEL and _observer_figure(final, MODEL) is None
            else _observer_figure(final, observer),
            "recomputed": value,
            "accountant": name,
            "protects_against": DESCRIPTIONS[observer],
            "enforced": observer == result.observer,
        }
    distributed = [r for r in released if r.get("placement") == "distributed"]
    if distributed:
        # Each summed party can take its own noise share out; the figures hold for coalitions no
        # larger than every release was sized for (DPNoise(colluders=...); 1 party by default).
        coalition = min(coalition_of(r) for r in distributed)
        result.observers[PARTICIPANTS]["coalition"] = coalition
        result.observers[PARTICIPANTS]["protects_against"] = (
            f"{DESCRIPTIONS[PARTICIPANTS]}; with distributed noise, coalitions of at most {coalition} summed "
            f"part{'y' if coalition == 1 else 'ies'} (each takes its own noise share out of the sum)"
        )
    if final["observers"].get(AGGREGATOR, {}).get("epsilon") is None:
        result.observers[AGGREGATOR]["note"] = (
            "not protected: with central noise it reads the sum before noising it; with distributed "
            "noise and a sum that shows it each input, it sees each with only a share of the noise"
        )


def _observer_rules(record: dict[str, Any], previous_m: int, participations: int) -> list[str]:
    """The rules of dp.md § Observers that one release's figures must follow. ``participations``:
    the parties summed by every release so far — some party was in at least their average."""
    problems = []
    figures = record["observers"]
    observer = record.get("observer")
    if observer not in OBSERVERS:
        problems.append(f"names no valid observer class ({observer!r})")
    elif figures[observer]["epsilon"] != record["epsilon"]:
        problems.append(f"its ε {record['epsilon']} is not the {observer} figure it enforces")
    poisson = record.get("sampling") == "poisson" and record.get("mechanism") == GAUSSIAN
    rate = float(record["sample_rate"])
    if not poisson and rate != 1.0:
        problems.append(
            f"claims amplification by sampling (q={rate:g}) with sampling {record.get('sampling')!r} and "
            f"{record.get('mechanism')} noise; dp.md allows it only for Poisson selection and Gaussian noise"
        )
    selected, population = record.get("parties_selected"), record.get("population")
    summed = record.get("parties_summed")
    if not (
        all(isinstance(v, int) and not isinstance(v, bool) for v in (selected, population, summed))
        and 1 <= summed <= selected <= population
    ):
        problems.append(
            f"its counts are impossible (summed {summed!r}, selected {selected!r}, population "
            f"{population!r}): 1 ≤ summed ≤ selected ≤ population"
        )
        selected = population = None
    expected = min(1.0, selected / population) if poisson and selected and population else 1.0
    for observer in (MODEL, COUNT):  # the model's viewers see the count (the average divides by it)
        rate_used = float(figures[observer]["sample_rate"])
        if abs(rate_used - expected) > 1e-12:
            problems.append(f"accounts {observer} at {rate_used:g}, not k/n = {expected:g}")
    if figures[MODEL]["epsilon"] != figures[COUNT]["epsilon"]:
        problems.append("its released-model and count figures differ (the released average shows the count)")
    threshold, in_sum = record.get("noise_threshold"), record.get("noise_std_in_sum")
    calibrated = float(record.get("noise_std", 0) or 0)
    short = not (isinstance(in_sum, (int, float)) and in_sum >= calibrated * (1 - 1e-9))
    on_parties = record.get("placement") != "central" and isinstance(threshold, int)
    if on_parties and isinstance(summed, int) and (summed < threshold or short):
        problems.append(
            f"its sum carried less than the accounted noise ({summed} parties summed, shares sized for "
            f"{threshold}; std in the sum {in_sum!r} below {calibrated!r})"
        )
    for observer in (PARTICIPANTS, AGGREGATOR):
        if float(figures[observer].get("sample_rate", 1.0)) != 1.0:
            problems.append(f"claims amplification against {observer}, who know the selection")
    m = figures[PARTICIPANTS]["releases"]
    if (
        not isinstance(m, int)
        or isinstance(m, bool)
        or not previous_m <= m <= previous_m + int(record.get("steps", 1))
    ):
        problems.append(f"its worst party's release count {m!r} does not follow the previous {previous_m}")
    population = record.get("population")
    if isinstance(m, int) and isinstance(population, int) and population > 0:
        floor = max(1, -(-participations // population))
        if m < floor:
            problems.append(
                f"its worst party's release count {m} is below {floor}: {participations} participations "
                f"among {population} parties put some party in at least that many"
            )
    placement = record.get("placement")
    protected = placement == "local" or (placement == "distributed" and record.get("secure_sum") in HIDING)
    if protected == (figures[AGGREGATOR]["epsilon"] is None):
        problems.append(
            "gives no figure against the aggregator although it cannot see around the noise"
            if protected
            else f"claims protection against the aggregator with {placement} noise and the "
            f"{record.get('secure_sum')!r} sum, where it sees the sum or the inputs with less noise"
        )
    if protected and figures[AGGREGATOR]["epsilon"] != figures[PARTICIPANTS]["epsilon"]:
        problems.append("its aggregator and participants figures differ (both know the selection)")
    return problems


def _poisson_plausibility(released: list[dict[str, Any]]) -> list[str]:
    """A claimed Poisson rate q must fit the counts: over R releases (rounds with k ≥ 1), Σk is a sum
    of binomials B(n, q) conditioned on k ≥ 1; a total more than 5 standard deviations above its mean
    means q was understated (a smaller q claims more amplification)."""
    poisson = [r for r in released if r.get("sampling") == "poisson" and r.get("mechanism") == GAUSSIAN]
    try:
        groups: dict[tuple[float, int], list[int]] = {}
        for r in poisson:
            groups.setdefault((float(r["sample_rate"]), int(r["population"])), []).append(
                int(r["parties_selected"])
            )
    except (KeyError, TypeError, ValueError):
        return ["Poisson releases lack sample_rate, population or parties_selected"]
    problems = []
    for (q, n), counts in groups.items():
        if not (0 < q < 1 and n > 0):
            continue
        nonzero = 1 - (1 - q) ** n
        mean = n * q / nonzero
        variance = (n * q * (1 - q) + (n * q) ** 2) / nonzero - mean**2
        spread = math.sqrt(max(variance, 1e-12) * len(counts))
        excess = (sum(counts) - mean * len(counts)) / spread
        if excess > 5:
            problems.append(
                f"{len(counts)} releases claim Poisson rate q={q:g} of {n} parties, but selected "
                f"{sum(counts)} in all where about {mean * len(counts):.0f} were expected "
                f"({excess:.1f} standard deviations above): the rate was understated"
            )
    return problems


def _recompute_observers(
    count_history: dict[tuple, int], full: dict[tuple, int], most: int, delta: float, tight: bool = True
) -> dict[str, tuple[float | None, str]]:
    """The count (and released-model) figure by RDP at every release — cheap, as the guard computes
    it; the participants' at checkpoints (``tight``) by PLD, and there the count figure is never
    below it (the guard's rule: k/n does not hold when dropouts depend on who the party is)."""
    count = create("rdp")  # as the guard accounts it (many distinct rates: PLD would take seconds)
    for entry, steps in count_history.items():
        count._add(entry, steps)
    counted = count.epsilon(delta)
    if not tight:
        return {MODEL: (counted, "rdp"), COUNT: (counted, "rdp")}
    # PLD (independent of the guard's PRV), handing over to RDP for Skellam or too little noise.
    preferred = "pld" if "pld" in ACCOUNTANTS else "rdp"
    selection, name = worst_party_epsilon(full, most, delta, preferred)
    seen = (counted, "rdp") if counted >= selection else (selection, name)
    return {MODEL: seen, COUNT: seen, PARTICIPANTS: (selection, name), AGGREGATOR: (selection, name)}


def _gaussian_reference(record: dict[str, Any]) -> dict[str, Any] | None:
    """The Gaussian of a Skellam release's variance and L2 sensitivity (see the module docstring)."""
    if record.get("mechanism") != SKELLAM:
        return None
    try:
        sigma = math.sqrt(float(record["variance"])) / float(record["l2_sensitivity"])
    except (KeyError, TypeError, ValueError):
        return None
    return {"mechanism": GAUSSIAN, "noise_multiplier": sigma, "sample_rate": 1.0}


def write_report(result: AuditResult, path: str | Path) -> Path:
    """An HTML page for a compliance officer: verdict, unit of privacy, parameters, ε per round."""

    def e(value: Any) -> str:  # a signed record may hold anything where text belongs
        return html.escape(str(value))

    if not result.valid:
        verdict, colour = "NOT verified", "#b42318"
    elif result.pinned:
        verdict, colour = "verified, signed by the key you gave", "#1a7f37"
    else:
        # Consistent signatures by an unpinned key prove only that someone signed the whole file:
        # a forger could have rewritten and re-signed it. Not shown as verified.
        verdict, colour = (
            "consistently signed, but the signer was not pinned (audit with --public-key to verify it)",
            "#9a6700",
        )
    who, guaranteed = result.guarantee
    holds = result.budget_holds
    budget_line = (
        "no budget recorded"
        if holds is None
        else f"budget ε = {_number(result.budget_epsilon, 'g')}: "
        + ("<b>holds</b>" if holds else "<b style='color:#b42318'>overspent</b>")
    )
    span = (
        f"records from {e(result.first_time)} to {e(result.last_time)} (UTC)"
        if result.first_time
        else "no timestamped records"
    )
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    problems = "".join(f"<li>{e(p)}</li>" for p in result.problems) or "<li>none</li>"
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    param_rows = "".join(
        f"<tr><th>{e(label)}</th><td>{e(str(result.parameters.get(key, '—')))}</td></tr>"
        for key, label in PARAMETERS.items()
    )
    observer_rows = (
        "".join(
            f"<tr><th>{e(name)}{' (budget)' if f['enforced'] else ''}</th>"
            f"<td>{'not protected' if f['epsilon'] is None else format(f['epsilon'], '.4f')}</td>"
            f"<td>{'—' if f['recomputed'] is None else format(f['recomputed'], '.4f')}</td>"
            f"<td>{e(f['protects_against'])}{'. ' + e(f['note']) if 'note' in f else ''}</td></tr>"
            for name, f in result.observers.items()
        )
        or "<tr><td colspan=4>not recorded (an older ledger): the figures below are the released "
        "model's</td></tr>"
    )
    names = sorted({n for r in result.rows for n in r["recomputed"]})
    header = "".join(f"<th>ε {e(n)}</th>" for n in names)
    body = "".join(
        "<tr>"
        + f"<td>{e(str(r['round']))}</td><td>{e(r['decision'])}</td><td>{e(str(r['parties_summed']))}</td>"
        + f"<td>{r['reported']:.4f}</td>"
        + "".join(
            f"<td>{r['recomputed'][n]:.4f}</td>" if n in r["recomputed"] else "<td>—</td>" for n in names
        )
        + "</tr>"
        for r in result.rows
    )
    totals = ", ".join(f"{e(k)} {v:.4f}" for k, v in result.epsilon.items() if v is not None) or "—"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Privacy audit: {e(result.path)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;line-height:1.45}}
table{{border-collapse:collapse;margin:1rem 0}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}
.verdict{{color:{colour};font-weight:bold}}</style></head><body>
<h1>Privacy audit</h1>
<p class="headline"><span class="verdict">{e(verdict)}</span>. The guarantee: <b>ε = {
        _number(guaranteed, ".4f")
    }</b> against {e(str(who))} at δ = {e(str(result.delta))}; {budget_line}.</p>
<p>Ledger <code>{e(result.path)}</code>, signed by <code>{e(result.signer or "—")}</code>;
{counted(result.releases, "release")}, {counted(result.refusals, "refusal")}; {span}.
Report written {written}.</p>
<h2>What is protected</h2>
<p>Unit of privacy: <b>{e(str(result.unit))}</b>. Neighbouring relation: {e(str(result.neighbouring))}.
Anyone who sees the released models learns at most what an (ε, δ)-differentially private
algorithm reveals about one {e(str(result.unit))}: ε = {totals} at δ = {e(str(result.delta))}
(budget ε = {e(str(result.budget_epsilon))}). This holds only if the recorded assumptions hold.</p>
<h2>Who each ε protects against</h2>
<table><tr><th>observer</th><th>ε</th><th>recomputed</th><th>who that is</th></tr>{observer_rows}</table>
<p>The budget holds against <b>{e(str(result.observer or "the released model"))}</b>. Amplification by
sampling protects only against those who do not know who took part in each round.</p>
<h2>Parameters</h2><table>{param_rows}</table>
<h2>ε per round</h2><img alt="epsilon per round" src="data:image/png;base64,{_plot(result, names)}">
<table><tr><th>round</th><th>decision</th><th>parties summed</th><th>ε reported</th>{header}</tr>
{body}</table>
{result.empirical.html_section() if result.empirical is not None else ""}
<h2>Problems</h2><ul>{problems}</ul>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<p>ε recomputed from the recorded mechanisms by each accountant independently of the reported values.</p>
</body></html>
"""
    # Written beside and renamed into place: a link at the report's path is replaced, never
    # followed (it could point at the ledger or its key), and a reader never sees half a page.
    return write_replacing(path, page.encode("utf-8"))


def _number(value: Any, spec: str) -> str:
    """A figure from the ledger for the page: formatted if it is a number, else shown escaped as
    text (a record may hold anything its signer wrote)."""
    if _is_number(value):
        return format(value, spec)
    return "—" if value is None else html.escape(str(value))


def _plot(result: AuditResult, names: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    released = [r for r in result.rows if r["decision"] == "released"]
    fig, ax = plt.subplots(figsize=(8.5, 3.6), dpi=100)
    xs = [r["round"] for r in released]
    ax.plot(xs, [r["reported"] for r in released], "o-", label="reported")
    for name in names:
        ax.plot(
            xs,
            [r["recomputed"].get(name, float("nan")) for r in released],
            ".--",
            label=f"recomputed ({name})",
        )
    if result.budget_epsilon is not None:
        ax.axhline(result.budget_epsilon, color="red", linewidth=1, label="budget")
    refused = [r["round"] for r in result.rows if r["decision"] == "refused"]
    for i, x in enumerate(refused):
        ax.axvline(x, color="orange", linestyle=":", linewidth=1.5, label="refused" if i == 0 else None)
    ax.set_xlabel("round (counting from 1)")
    ax.set_ylabel("cumulative ε")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    # Outside the axes: the legend never covers the budget line or a refused round.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
