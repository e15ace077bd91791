"""The empirical privacy audit: canary parties run through the real stack, and an ε *lower* bound.

The accountants give an upper bound on what a federation leaks about one party, computed from the
mechanism the ``dp`` layer *claims*. This module measures it instead: canary parties whose updates
are random directions go through the same clip, noise layer, quantize and secure sum as any party,
each inserted or withheld at random, and an attacker who sees only the released global models tries
to tell which. How often it is right bounds ε from below, with a stated confidence. A lower bound
above the accounted ε means the mechanism leaks more than its ledger says — for instance a noise
layer that adds less noise than it claims.

Method
------
*The bound* is Steinke, Nasr and Jagielski's one-run audit ("Privacy auditing with one (1) training
run", NeurIPS 2023: their main theorem, in its (ε, δ) form): m canaries are each included
independently with probability 1/2; the attacker guesses "in" for the k/2 highest scores and "out"
for the k/2 lowest, abstaining on the rest; if the mechanism were (ε, δ)-DP for each canary, the
number W of correct guesses among the r = k guesses would satisfy

    P[W ≥ v] ≤ P[Bin(r, p) ≥ v] + 2·m·δ · max_{1≤i≤v} P[v − i ≤ Bin(r, p) < v] / i,
    p = e^ε / (1 + e^ε).

The reported ``epsilon_lower`` is the largest ε that this rejects at significance 1 − confidence,
over a grid of guess counts fixed in advance (each tested at (1 − confidence)/grid size:
Bonferroni), so it is a lower bound with the stated confidence, whatever the scores' distribution.
It is chosen over a Gaussian fit because it is a *bound*: a claim of the form "at least ε, with
95% confidence" needs no assumption about how the scores are distributed, and one training run
(here: one set of canary federations) suffices. It is loose for Gaussian noise by design — even an
exactly accounted mechanism yields a bound well below its ε (at m = 1000 canaries, a single
Gaussian release with z = 1, accounted ε ≈ 4.4 at δ = 10⁻⁵, gives 1.3 to 2.2), and m caps it
(every guess right among 1000 gives 5.2) — so a bound *below* the accounted ε is no proof of
correctness; a bound *above* it is evidence of a violation.

*The estimate* beside it is Andrew et al.'s ("One-shot empirical privacy estimation for federated
learning", 2023; ICLR 2024): the canaries' scores are fitted by Gaussians of one variance, and ε is that
of the Gaussian mechanism with the fitted separation μ = (mean in − mean out) / std. It is an
estimate, not a bound (no confidence, it assumes Gaussian scores) and, when the accounting is tight,
lands on either side of the accounted ε; it tells how much of the gap the bound's looseness explains.

Canaries and scores
-------------------
Canaries are parties of in-process :class:`~securefl.federation.Federation` s, ``group`` canaries
each, built with the library's own layers (``Clip`` → ``DPNoise`` [→ ``Quantize``] → secure sum, or
``Clip`` → ``Quantize`` → ``DPNoise`` → ``SecAgg`` for integer noise). A group's canaries get
orthonormal random directions u (so canaries do not disturb each other's scores); an inserted canary
sends C·u every round it is selected, a withheld one sends zeros — the *zero-out* relation the
ledger's ε is defined on, so the number of parties summed is the same either way. The score of a
canary is Σ_rounds n_t · ⟨w_t − w_{t−1}, u⟩ / C over the released global models w_t (n_t: parties
summed, which is released), i.e. the released noised sums projected on its direction.
Noise shares are sized on all of a group's parties (``min_parties`` = group size) and nobody drops
out, so every released sum carries exactly the calibrated noise: the least any accounted round
carries, the tightest case to audit. Under ``local`` noise each canary runs alone (group 1), so the
released model is its own noised update — what the aggregator of a local-DP federation sees.

Python API: :func:`empirical_audit` (a mechanism described by its parameters) and
:func:`run_for_ledger` (the mechanism of a ledger's released records); both return an
:class:`EmpiricalAudit` with ``to_json()`` and ``html_section()`` (an HTML fragment with an inline SVG
plot). Randomness (directions, inclusion) comes from :class:`~securefl.randomness.SecureRandom`;
seeds are for tests only.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from securefl.errors import ConfigError
from securefl.layers import Clip, DPNoise, Plain, PrivacyStack, Quantize, SecAgg, SecAggPlus
from securefl.layers.dp import PLACEMENTS
from securefl.privacy.accountants import for_mechanism
from securefl.privacy.accountants.base import check_delta
from securefl.randomness import SecureRandom

METHOD = "one-run canary audit (Steinke, Nasr, Jagielski 2023)"
ESTIMATE_METHOD = "Gaussian fit of canary scores (Andrew et al. 2023): an estimate, not a bound"
# Guess counts tried, as fractions of the canaries (fixed before any score is seen; Bonferroni).
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SECURE_SUMS: dict[str, Callable[[], Any]] = {"plain": Plain, "secagg": SecAgg, "secagg+": SecAggPlus}
# Canaries per federation: plain sums are cheap at any size; SecAgg's cost per party grows with the
# group (pairwise keys), 5 was the fastest per canary here; local noise needs a federation per canary.
DEFAULT_GROUP = {"central": 100, "distributed": 5, "local": 1}
NoiseLayer = Callable[[float, str], DPNoise]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Segment:
    """Consecutive rounds of one mechanism: where the noise goes, how much, the clip, the sampling.

    ``integer`` selects Skellam noise on quantized integers (``quantize_bits``) instead of Gaussian
    noise on reals; ``secure_sum`` is ``plain``, ``secagg`` or ``secagg+`` (None: ``secagg`` for
    distributed integer noise, else ``plain``)."""

    placement: str
    noise_multiplier: float
    rounds: int = 1
    clip: float = 1.0
    sample_rate: float = 1.0
    integer: bool = False
    secure_sum: str | None = None
    quantize_bits: int = 16

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be a positive integer, got {self.rounds!r}")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if self.sample_rate < 1 and self.placement != "central":
            raise ConfigError(
                "amplification by sampling is claimed only for central noise; with noise on the parties "
                "the aggregator knows who took part (sample_rate 1)"
            )
        if self.sum_name not in SECURE_SUMS:
            raise ConfigError(f"secure_sum must be one of {', '.join(SECURE_SUMS)}, got {self.secure_sum!r}")
        if self.placement == "central" and (self.integer or self.sum_name != "plain"):
            raise ConfigError("central noise is Gaussian on the plain sum the aggregator reads")
        if self.sum_name != "plain" and not self.integer:
            raise ConfigError(f"{self.sum_name} sums integers: party noise on it is Skellam (integer=True)")

    @property
    def sum_name(self) -> str:
        if self.secure_sum is not None:
            return self.secure_sum
        return "secagg" if self.integer and self.placement == "distributed" else "plain"

    def stack(self, noise_layer: NoiseLayer) -> PrivacyStack:
        noise = noise_layer(self.noise_multiplier, self.placement)
        secure_sum = SECURE_SUMS[self.sum_name]()
        if self.integer:
            return PrivacyStack.of([Clip(self.clip), Quantize(self.quantize_bits), noise, secure_sum])
        return PrivacyStack.of([Clip(self.clip), noise, secure_sum])

    def label(self) -> str:
        noise = "skellam" if self.integer else "gaussian"
        sampling = f", poisson q={self.sample_rate:g}" if self.sample_rate < 1 else ""
        return (
            f"{self.rounds} round{'s' * (self.rounds != 1)} of {noise} ({self.placement}), "
            f"z={self.noise_multiplier:g}, C={self.clip:g}{sampling}, sum {self.sum_name}"
        )


@dataclass
class GuessTest:
    """One guess count tried: r guesses (top r/2 in, bottom r/2 out), v correct, its lower bound."""

    guesses: int
    correct: int
    epsilon_lower: float
    threshold_in: float
    threshold_out: float


@dataclass
class EmpiricalAudit:
    """The outcome of an empirical audit; ``epsilon_lower`` holds with probability ``confidence``."""

    epsilon_lower: float
    confidence: float
    delta: float
    epsilon_accounted: float
    accountant: str
    epsilon_estimate: float | None
    estimate_interval: tuple[float, float] | None
    segments: list[Segment]
    canaries: int
    group: int
    dimension: int
    scores: np.ndarray
    inserted: np.ndarray
    tests: list[GuessTest]
    assumptions: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rounds_failed: int = 0
    epsilon_ledger: float | None = None  # the ledger's own reported ε, when audited from one
    ledger_releases: int | None = None

    @property
    def rounds(self) -> int:
        return sum(s.rounds for s in self.segments)

    @property
    def best(self) -> GuessTest:
        return max(self.tests, key=lambda t: (t.epsilon_lower, -t.guesses))

    @property
    def violated(self) -> bool:
        """The mechanism provably (at ``confidence``) leaks more than its accounting says."""
        return self.epsilon_lower > self.epsilon_accounted

    @property
    def problems(self) -> list[str]:
        if not self.violated:
            return []
        return [
            f"empirical audit: ε ≥ {self.epsilon_lower:.3f} with {self.confidence:.0%} confidence, above "
            f"the accounted ε {self.epsilon_accounted:.3f} (δ={self.delta:g}): the mechanism leaks more than "
            "it accounts for (e.g. it adds less noise than it claims)"
        ]

    def summary(self) -> str:
        verdict = "ABOVE the accounted ε: violation" if self.violated else "below the accounted ε"
        return (
            f"empirical ε ≥ {self.epsilon_lower:.3f} ({self.confidence:.0%} confidence, {self.canaries} "
            f"canaries) vs accounted ε {self.epsilon_accounted:.3f} at δ={self.delta:g}: {verdict}"
        )

    def to_json(self, scores: bool = True) -> dict[str, Any]:
        """JSON-ready; ``scores=False`` leaves out the per-canary scores (``m`` entries)."""
        best = self.best
        return {
            "method": METHOD,
            "epsilon_lower": self.epsilon_lower,
            "confidence": self.confidence,
            "delta": self.delta,
            "epsilon_accounted": self.epsilon_accounted,
            "accountant": self.accountant,
            "violated": self.violated,
            "epsilon_estimate": self.epsilon_estimate,
            "estimate_interval": None if self.estimate_interval is None else list(self.estimate_interval),
            "estimate_method": ESTIMATE_METHOD,
            "epsilon_ledger": self.epsilon_ledger,
            "ledger_releases": self.ledger_releases,
            "mechanism": [
                {
                    "placement": s.placement,
                    "noise": "skellam" if s.integer else "gaussian",
                    "noise_multiplier": s.noise_multiplier,
                    "clip_norm": s.clip,
                    "sample_rate": s.sample_rate,
                    "rounds": s.rounds,
                    "secure_sum": s.sum_name,
                    "quantize_bits": s.quantize_bits if s.integer else None,
                }
                for s in self.segments
            ],
            "rounds": self.rounds,
            "rounds_failed": self.rounds_failed,
            "canaries": self.canaries,
            "inserted": int(self.inserted.sum()),
            "group": self.group,
            "dimension": self.dimension,
            "guesses": best.guesses,
            "correct": best.correct,
            "tests": [vars(t).copy() for t in self.tests],
            "assumptions": list(self.assumptions),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
            "scores": [
                {"score": round(float(s), 6), "inserted": bool(i)}
                for s, i in zip(self.scores, self.inserted, strict=True)
            ]
            if scores
            else None,
        }

    def html_section(self) -> str:
        """An HTML fragment (a ``<section>``): the bound beside the accounted ε, a plot of the canary
        scores and of the three figures, the mechanism audited and the assumptions. Text escaped."""
        e = html.escape
        best = self.best
        colour = "#b42318" if self.violated else "#1a7f37"
        verdict = (
            "the mechanism leaks <b>more</b> than its accounting allows: a violation"
            if self.violated
            else "consistent with the accounting (a lower bound cannot prove it right)"
        )
        estimate = "—"
        if self.epsilon_estimate is not None and self.estimate_interval is not None:
            low, high = self.estimate_interval
            estimate = f"{self.epsilon_estimate:.3f} ({self.confidence:.0%} interval {low:.3f} – {high:.3f})"
        ledger = (
            ""
            if self.epsilon_ledger is None
            else f"<tr><th>ε the ledger reports ({self.ledger_releases} releases)</th>"
            f"<td>{self.epsilon_ledger:.3f}</td></tr>"
        )
        mechanism = "".join(f"<li>{e(s.label())}</li>" for s in self.segments)
        assumptions = "".join(f"<li>{e(a)}</li>" for a in self.assumptions)
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        return f"""<section class="empirical-audit">
<h2>Empirical privacy audit</h2>
<p>{self.canaries} canary parties, each inserted or withheld at random, went through the audited
privacy stack; an attacker who sees only the released models guessed which were inserted. From how
often it was right: <b>ε ≥ {self.epsilon_lower:.3f}</b> with {self.confidence:.0%} confidence,
beside the accounted <b>ε = {self.epsilon_accounted:.3f}</b>
(δ = {e(f"{self.delta:g}")}, {e(self.accountant)}):
<span style="color:{colour};font-weight:bold">{verdict}</span>.</p>
<table>
<tr><th>ε lower bound ({self.confidence:.0%} confidence)</th><td>{self.epsilon_lower:.3f}</td></tr>
<tr><th>ε accounted for the audited rounds</th><td>{self.epsilon_accounted:.3f}</td></tr>
{ledger}<tr><th>ε estimate (Gaussian fit, not a bound)</th><td>{estimate}</td></tr>
<tr><th>canaries (inserted)</th><td>{self.canaries} ({int(self.inserted.sum())})</td></tr>
<tr><th>guesses, correct</th><td>{best.guesses}, {best.correct}</td></tr>
<tr><th>model dimension, canaries per federation</th><td>{self.dimension}, {self.group}</td></tr>
<tr><th>method</th><td>{e(METHOD)}</td></tr>
</table>
<p>Mechanism audited:</p><ul>{mechanism}</ul>
{_svg(self)}
<h3>Assumptions</h3><ul>{assumptions}</ul>
{f"<h3>Notes</h3><ul>{notes}</ul>" if notes else ""}
</section>
"""


# -- the bound and the estimate ---------------------------------------------------------------


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The probability, under an (ε, δ)-DP mechanism, of ≥ ``correct`` right guesses among ``guesses``
    (Steinke, Nasr, Jagielski 2023: the binomial tail of ε-randomized response, plus δ's term)."""
    if not 0 <= correct <= guesses <= canaries:
        raise ConfigError(f"need 0 ≤ correct ≤ guesses ≤ canaries, got {correct}, {guesses}, {canaries}")
    p = float(special.expit(epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, p))  # P[Bin(r, p) ≥ v]
    if delta == 0 or correct == 0:
        return tail
    shortfall = np.arange(1, correct + 1)
    # P[v − i ≤ Bin(r, p) ≤ v − 1] for i = 1 … v
    window = stats.binom.cdf(correct - 1, guesses, p) - stats.binom.cdf(correct - 1 - shortfall, guesses, p)
    return min(1.0, tail + 2 * canaries * delta * float(np.max(window / shortfall)))


def epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, significance: float, delta: float
) -> float:
    """The largest ε whose (ε, δ)-DP claim ``correct`` right guesses reject at ``significance`` (0 if
    none); the p-value grows with ε, so it is found by bisection, rounded down."""
    if p_value(canaries, guesses, correct, 0.0, delta) > significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(canaries, guesses, correct, high, delta) <= significance:
        low, high = high, 2 * high
        if high > 1e3:  # every guess right with δ = 0: no finite ε survives
            return math.inf
    root = optimize.brentq(
        lambda eps: p_value(canaries, guesses, correct, eps, delta) - significance, low, high, xtol=1e-7
    )
    return max(0.0, root - 1e-6)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """ε at ``delta`` of the Gaussian mechanism whose outputs are separated by ``mu`` standard
    deviations (μ-GDP; Balle and Wang 2018, Theorem 8): δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)."""
    if not mu > 0:
        return 0.0

    def excess(eps: float) -> float:
        a = stats.norm.logcdf(-eps / mu + mu / 2)
        b = eps + stats.norm.logcdf(-eps / mu - mu / 2)
        return float(np.exp(a) - np.exp(b)) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
        if high > 1e4:
            return math.inf
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-7))


def guess_tests(scores: np.ndarray, inserted: np.ndarray, confidence: float, delta: float) -> list[GuessTest]:
    """Each guess count of :data:`GUESS_FRACTIONS`: top half of the guesses "in", bottom half "out",
    tested at significance (1 − confidence) / number of counts."""
    m = len(scores)
    counts = sorted(
        {max(2, 2 * round(f * m / 2)) for f in GUESS_FRACTIONS if max(2, 2 * round(f * m / 2)) <= m}
    )
    significance = (1 - confidence) / len(counts)
    order = np.argsort(scores, kind="stable")
    tests = []
    for r in counts:
        half = r // 2
        low, high = order[:half], order[m - half :]
        correct = int(inserted[high].sum() + (~inserted[low]).sum())
        tests.append(
            GuessTest(
                r,
                correct,
                epsilon_lower_bound(m, r, correct, significance, delta),
                float(scores[high].min()),
                float(scores[low].max()),
            )
        )
    return tests


def gaussian_fit_estimate(
    scores: np.ndarray, inserted: np.ndarray, delta: float, confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """Andrew et al.'s estimate: the ε of the Gaussian mechanism with the scores' fitted separation
    μ = (mean in − mean out) / pooled std, with the ε of μ's normal-approximation interval at
    ``confidence`` (μ's standard error √(1/n_in + 1/n_out + μ²/(2(n − 2)))): (ε, low, high)."""
    inside, outside = scores[inserted], scores[~inserted]
    n_in, n_out = len(inside), len(outside)
    if n_in < 2 or n_out < 2:
        return None
    pooled = math.sqrt(
        ((n_in - 1) * inside.var(ddof=1) + (n_out - 1) * outside.var(ddof=1)) / (n_in + n_out - 2)
    )
    if not pooled > 0:
        value = math.inf if inside.mean() > outside.mean() else 0.0
        return value, value, value
    mu = float((inside.mean() - outside.mean()) / pooled)
    error = math.sqrt(1 / n_in + 1 / n_out + mu**2 / (2 * (n_in + n_out - 2)))
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return (
        gaussian_epsilon(mu, delta),
        gaussian_epsilon(mu - z * error, delta),
        gaussian_epsilon(mu + z * error, delta),
    )


# -- running the canaries -----------------------------------------------------------------------


def _canary(update: np.ndarray) -> Callable:
    def train(weights, info):
        return {"w": weights["w"] + update}, 1

    return train


def _run_group(
    segments: Sequence[Segment],
    directions: np.ndarray,
    inserted: np.ndarray,
    noise_layer: NoiseLayer,
    tick: Callable[[], None],
) -> tuple[np.ndarray, int, list[dict[str, Any]]]:
    """One federation of canaries through every segment: their scores, the rounds that failed, and
    each segment's release as its noise layer claims it (what the guard would account)."""
    from securefl.federation import Federation  # the core imports the privacy package

    dimension, size = directions.shape
    scores = np.zeros(size)
    failed = 0
    weights = np.zeros(dimension)
    claims = []
    for segment in segments:
        updates = directions * (segment.clip * inserted)  # column j: canary j's update, or zeros
        poisson = segment.sample_rate < 1
        federation = Federation(
            {"w": weights},
            {f"canary{j:05d}": _canary(updates[:, j].copy()) for j in range(size)},
            segment.stack(noise_layer),
            weighting="uniform",
            # Shares sized on every party, nobody drops: each sum carries exactly the calibrated noise.
            min_parties=1 if poisson else size,
            selection={"kind": "poisson", "rate": segment.sample_rate} if poisson else "all",
        )
        noise = next(t for t in federation.stack.transforms if isinstance(t, DPNoise))
        claims.append({**noise.mechanism.fields(), "sample_rate": segment.sample_rate})
        for _ in range(segment.rounds):
            before = federation.global_weights["w"]
            report = federation.run_round()
            if report.ok:
                after = federation.global_weights["w"]
                scores += len(report.survivors) * ((after - before) @ directions) / segment.clip
            elif not (poisson and not report.selected):  # a Poisson round may select nobody
                failed += 1
            tick()
        weights = federation.global_weights["w"]
    return scores, failed, claims


def _accounted(claims: Sequence[Mapping[str, Any]], rounds: Sequence[int], delta: float, accountant: str):
    """ε of the audited rounds as the canary federations' noise layers claim them (their validated
    mechanisms), by the library's accountant; returns (ε, accountant version)."""
    acc = None
    for fields, count in zip(claims, rounds, strict=True):
        if acc is None or fields["mechanism"] not in acc.mechanisms:
            acc = for_mechanism(fields["mechanism"], accountant)
        acc.step_release(fields, count)
    return acc.epsilon(delta), acc.version


def audit_segments(
    segments: Sequence[Segment],
    *,
    canaries: int = 1000,
    group: int | None = None,
    dimension: int = 2000,
    confidence: float = 0.95,
    delta: float = 1e-5,
    accountant: str = "prv",
    noise_layer: NoiseLayer = DPNoise,
    seed: int | None = None,
    progress: Progress | None = None,
) -> EmpiricalAudit:
    """Audit the rounds ``segments`` describe, in order (see :func:`empirical_audit`)."""
    segments = list(segments)
    if not segments:
        raise ConfigError("nothing to audit: no rounds")
    placements = {s.placement for s in segments}
    if not isinstance(canaries, int) or canaries < 20:
        raise ConfigError(f"canaries must be an integer of at least 20, got {canaries!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    check_delta(delta)
    if group is None:
        group = min(canaries, 1 if "local" in placements else min(DEFAULT_GROUP[p] for p in placements))
    if not isinstance(group, int) or not 1 <= group <= canaries:
        raise ConfigError(f"group must be an integer from 1 to canaries ({canaries}), got {group!r}")
    if not isinstance(dimension, int) or dimension < group:
        raise ConfigError(
            f"dimension must be an integer of at least the group size {group}, got {dimension!r}"
        )
    if group == 1 and any(s.sum_name != "plain" for s in segments):
        raise ConfigError("a secure sum of one party is no sum: use group >= 2 with secagg")
    started = time.perf_counter()
    rng = SecureRandom(seed).generator()
    inserted = rng.integers(0, 2, size=canaries).astype(bool)
    scores = np.zeros(canaries)
    groups = [range(i, min(i + group, canaries)) for i in range(0, canaries, group)]
    total = len(groups) * sum(s.rounds for s in segments)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    failed = 0
    claims: list[dict[str, Any]] = []
    for members in groups:
        # Orthonormal random directions: one canary's update adds nothing to another's score.
        directions, _ = np.linalg.qr(rng.standard_normal((dimension, len(members))))
        group_scores, group_failed, claims = _run_group(
            segments, directions, inserted[members.start : members.stop], noise_layer, tick
        )
        scores[members.start : members.stop] = group_scores
        failed += group_failed
    accounted, version = _accounted(claims, [s.rounds for s in segments], delta, accountant)
    tests = guess_tests(scores, inserted, confidence, delta)
    estimate = gaussian_fit_estimate(scores, inserted, delta, confidence)
    result = EmpiricalAudit(
        epsilon_lower=max(t.epsilon_lower for t in tests),
        confidence=confidence,
        delta=delta,
        epsilon_accounted=accounted,
        accountant=version,
        epsilon_estimate=None if estimate is None else estimate[0],
        estimate_interval=None if estimate is None else (estimate[1], estimate[2]),
        segments=segments,
        canaries=canaries,
        group=group,
        dimension=dimension,
        scores=scores,
        inserted=inserted,
        tests=tests,
        assumptions=_assumptions(segments, group, len(tests), confidence),
        rounds_failed=failed,
    )
    if failed:
        result.notes.append(
            f"{failed} of {total} canary rounds failed and released nothing; the bound uses the others"
        )
    result.seconds = time.perf_counter() - started
    return result


def empirical_audit(
    placement: str = "distributed",
    noise_multiplier: float = 1.0,
    *,
    rounds: int = 1,
    clip: float = 1.0,
    sample_rate: float = 1.0,
    integer: bool | None = None,
    secure_sum: str | None = None,
    quantize_bits: int = 16,
    canaries: int = 1000,
    group: int | None = None,
    dimension: int = 2000,
    confidence: float = 0.95,
    delta: float = 1e-5,
    accountant: str = "prv",
    noise_layer: NoiseLayer = DPNoise,
    seed: int | None = None,
    progress: Progress | None = None,
) -> EmpiricalAudit:
    """Audit ``rounds`` rounds of the ``dp`` layer at ``placement`` with noise multiplier ``z``.

    ``integer`` (default: True for ``distributed``, else False) puts the noise on quantized integers
    (Skellam, ``quantize_bits``) summed by ``secure_sum`` (default ``secagg`` for distributed
    integer noise, else ``plain``); ``sample_rate`` < 1 is Poisson selection (central only).
    ``canaries`` canary parties run in federations of ``group`` (default: 100 central, 5
    distributed, 1 local), over a model of ``dimension`` coordinates. ``noise_layer(z, placement)``
    builds the noise layer (default :class:`DPNoise`; another ``DPNoise`` subclass audits that one).
    ``progress(done, total)`` is called after every canary-federation round. ``seed``: tests only.
    Returns the bound at ``confidence`` beside the accounted ε at ``delta`` (``accountant``)."""
    if integer is None:
        integer = placement == "distributed"
    segment = Segment(
        placement, noise_multiplier, rounds, clip, sample_rate, integer, secure_sum, quantize_bits
    )
    return audit_segments(
        [segment],
        canaries=canaries,
        group=group,
        dimension=dimension,
        confidence=confidence,
        delta=delta,
        accountant=accountant,
        noise_layer=noise_layer,
        seed=seed,
        progress=progress,
    )


# -- from a ledger --------------------------------------------------------------------------------


def segments_from_records(
    records: Sequence[Mapping[str, Any]], max_rounds: int | None = None
) -> list[Segment]:
    """The audited rounds of a ledger: its ``released`` party-level records in order, consecutive
    identical mechanisms merged, the first ``max_rounds`` of them (None: all)."""
    released = [r for r in records if r.get("decision") == "released"]
    if not released:
        raise ConfigError("the ledger records no release: nothing to audit")
    units = {r.get("unit") for r in released}
    if units != {"party"}:
        raise ConfigError(
            f"the empirical audit covers party-level ledgers; this one has unit {sorted(map(str, units))}"
        )
    if max_rounds is not None:
        released = released[:max_rounds]
    segments: list[Segment] = []
    for record in released:
        try:
            placement = str(record.get("placement") or str(record["noise"]).split("(")[-1].rstrip(")"))
            segment = Segment(
                placement=placement,
                noise_multiplier=float(record["noise_multiplier"]),
                rounds=int(record.get("steps", 1)),
                clip=float(record["clip_norm"]),
                sample_rate=float(record.get("sample_rate", 1.0)),
                integer=record["mechanism"] == "skellam",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"record {record.get('seq')} lacks a mechanism field to audit: {exc}") from None
        last = segments[-1] if segments else None
        if last is not None and replace(last, rounds=1) == replace(segment, rounds=1):
            segments[-1] = replace(last, rounds=last.rounds + segment.rounds)
        else:
            segments.append(segment)
    return segments


def ledger_records(source: Any) -> list[dict[str, Any]]:
    """Records from an :class:`~securefl.privacy.audit.AuditResult` (its ``path``), a
    :class:`~securefl.privacy.ledger.Verification` (its ``records``), a path, or the records."""
    from securefl.privacy.ledger import verify

    if isinstance(source, (str, Path)):
        return verify(source).records
    if hasattr(source, "records") and isinstance(source.records, list):
        return source.records
    if isinstance(getattr(source, "path", None), (str, Path)):
        return verify(source.path).records
    return [dict(r) for r in source]


def run_for_ledger(
    source: Any,
    *,
    max_rounds: int | None = 10,
    canaries: int = 1000,
    group: int | None = None,
    dimension: int = 2000,
    confidence: float = 0.95,
    accountant: str | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> EmpiricalAudit:
    """Audit the mechanism a ledger records: placement, noise multiplier, clip, sampling rate and
    rounds of its released records (the first ``max_rounds``; None: all), at the ledger's δ, against
    the ε the library's accountant (the ledger's own, unless ``accountant`` names one) gives those
    rounds. ``source``: an ``AuditResult``, a ``Verification``, a ledger path or its records.
    The ledger's last reported ε is kept beside it (``epsilon_ledger``)."""
    records = ledger_records(source)
    segments = segments_from_records(records, max_rounds)
    released = [r for r in records if r.get("decision") == "released"]
    delta = float(released[0].get("delta", 1e-5))
    if accountant is None:
        recorded = str(released[0].get("accountant", "prv")).split(" ", 1)[0]
        accountant = recorded if recorded in ("prv", "rdp", "pld") else "prv"
    result = audit_segments(
        segments,
        canaries=canaries,
        group=group,
        dimension=dimension,
        confidence=confidence,
        delta=delta,
        accountant=accountant,
        seed=seed,
        progress=progress,
    )
    result.epsilon_ledger = float(released[-1]["epsilon"]) if "epsilon" in released[-1] else None
    result.ledger_releases = len(released)
    audited = sum(s.rounds for s in segments)
    if audited < sum(int(r.get("steps", 1)) for r in released):
        result.notes.append(
            f"audited the first {audited} of the ledger's {len(released)} releases (max_rounds): later "
            "releases only add to what a party's data can leak, so the bound holds for the whole ledger"
        )
    result.assumptions.append(
        "The mechanism is read from the ledger's released records (placement, noise multiplier, clip, "
        "sampling rate, rounds); the model dimension, quantization and secure sum are the audit's own — "
        "the ledger does not record them, and every integer sum (secagg, secagg+, plain over quantize) "
        "reveals the same exact sum."
    )
    return result


@contextmanager
def rich_progress(console: Any = None, description: str = "empirical audit") -> Iterator[Progress]:
    """A ``progress`` callback drawing a rich progress bar (as ``securefl bench`` does)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


# -- words and pictures ---------------------------------------------------------------------------


def _assumptions(segments: Sequence[Segment], group: int, tests: int, confidence: float) -> list[str]:
    sums = sorted({s.sum_name for s in segments})
    placements = sorted({s.placement for s in segments})
    out = [
        "Canaries are parties whose updates are random unit directions times the clip norm; each is "
        "inserted (sends its update every round it is selected) or withheld (sends zeros, the zero-out "
        "relation the accounted ε is defined on) with probability 1/2, independently.",
        f"Every canary goes through the audited stack — the library's clip, dp noise layer, quantize "
        f"(integer noise) and secure sum ({', '.join(sums)}) — in in-process federations of {group} "
        "canary part" + ("y" if group == 1 else "ies") + "; the attacker sees only the released global "
        "models and the number of parties summed in each round.",
        "Noise shares are sized on all of a federation's parties and none drops out, so each released "
        "sum carries exactly the calibrated noise — the least an accounted round carries; real rounds "
        "that sum more parties than the threshold carry more, and leak less.",
        "Canaries of one federation have orthonormal directions; a canary's score is the released noised "
        "sums projected on its direction, added over the rounds.",
        f"The bound is Steinke, Nasr and Jagielski's (2023): the largest ε whose (ε, δ)-DP claim the "
        f"correct guesses reject, tested at {tests} guess counts fixed in advance, each at significance "
        f"{1 - confidence:.3g}/{tests} (Bonferroni); it holds with {confidence:.0%} confidence for this "
        "model dimension, sampling and number of rounds.",
        "It is a lower bound: ε is at least this. One-run audits of Gaussian-like noise are loose, so a "
        "bound below the accounted ε does not prove the accounting right; one above it shows the "
        "mechanism leaks more than it accounts for.",
        "The estimate beside it (Andrew et al. 2023) fits the scores with Gaussians: not a bound, and "
        "within sampling error on either side of a tight accounted ε.",
    ]
    if "local" in placements:
        out.append(
            "Local noise: each canary runs in a federation of its own, so the released model is its "
            "locally noised update — what the aggregator of a local-DP federation sees."
        )
    if any(s.sample_rate < 1 for s in segments):
        out.append(
            "Poisson selection: the selection is hidden from the attacker, who sees only the released "
            "models and counts (the observers the amplified ε holds against)."
        )
    return out


_W, _H, _PAD, _TOP = 720, 280, 40, 64  # _TOP: the plots start below the titles and legend
_IN, _OUT, _ACCOUNTED = "#d1495b", "#00798c", "#444"


def _svg(result: EmpiricalAudit) -> str:
    """Two panels: the canary scores (inserted vs withheld, with the best test's thresholds), and the
    ε lower bound, estimate and accounted ε as bars. Inline SVG, no dependencies."""
    e = html.escape
    scores, inserted = result.scores, result.inserted
    left_w = 440
    low, high = float(scores.min()), float(scores.max())
    if not high > low:
        high = low + 1.0
    bins = 40
    edges = np.linspace(low, high, bins + 1)
    hist_in, _ = np.histogram(scores[inserted], edges)
    hist_out, _ = np.histogram(scores[~inserted], edges)
    peak = max(int(hist_in.max(initial=0)), int(hist_out.max(initial=0)), 1)
    plot_w, plot_h = left_w - 2 * _PAD, _H - _PAD - _TOP

    def x_of(value: float) -> float:
        return _PAD + (value - low) / (high - low) * plot_w

    def y_of(count: float) -> float:
        return _H - _PAD - count / peak * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'role="img" aria-label="canary scores and epsilon" style="font:11px system-ui,sans-serif">',
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_PAD}" y="18">canary scores: inserted vs withheld</text>',
    ]
    width = plot_w / bins
    for counts, colour in ((hist_out, _OUT), (hist_in, _IN)):
        for i, count in enumerate(counts):
            if count:
                top = y_of(count)
                parts.append(
                    f'<rect x="{_PAD + i * width:.1f}" y="{top:.1f}" width="{width:.1f}" '
                    f'height="{_H - _PAD - top:.1f}" fill="{colour}" fill-opacity="0.55"/>'
                )
    best = result.best
    for threshold, label, anchor, shift in (
        (best.threshold_in, "guess in ≥", "start", 3),
        (best.threshold_out, "≤ guess out", "end", -3),
    ):
        x = x_of(threshold)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_TOP - 12}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="#222" '
            'stroke-dasharray="4 3"/>'
        )
        parts.append(f'<text x="{x + shift:.1f}" y="{_TOP - 4}" text-anchor="{anchor}">{e(label)}</text>')
    parts += [
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{left_w - _PAD}" y2="{_H - _PAD}" stroke="#888"/>',
        f'<text x="{_PAD}" y="{_H - _PAD + 14}">{low:.3g}</text>',
        f'<text x="{left_w - _PAD}" y="{_H - _PAD + 14}" text-anchor="end">{high:.3g}</text>',
        f'<text x="{left_w / 2}" y="{_H - 8}" text-anchor="middle">'
        "score: released sums along the canary, in clip norms</text>",
        f'<rect x="{_PAD + 4}" y="26" width="10" height="10" fill="{_IN}" fill-opacity="0.55"/>',
        f'<text x="{_PAD + 18}" y="35">inserted ({int(inserted.sum())})</text>',
        f'<rect x="{_PAD + 120}" y="26" width="10" height="10" fill="{_OUT}" fill-opacity="0.55"/>',
        f'<text x="{_PAD + 134}" y="35">withheld ({int((~inserted).sum())})</text>',
    ]
    bars = [
        (f"ε ≥ ({result.confidence:.0%})", result.epsilon_lower, _IN, None),
        ("ε estimate", result.epsilon_estimate, "#8c6bb1", result.estimate_interval),
        ("ε accounted", result.epsilon_accounted, _ACCOUNTED, None),
    ]
    finite = [v for _, v, _, _ in bars if v is not None and math.isfinite(v)]
    finite += [v for *_, span in bars if span is not None for v in span if math.isfinite(v)]
    top = max([*finite, 1e-9]) * 1.12
    x0, bar_w = left_w + 30, (_W - left_w - 50) / len(bars)

    def height_of(value: float) -> float:
        return min(value, top) / top * plot_h

    parts.append(f'<text x="{x0}" y="18">ε at δ={e(f"{result.delta:g}")}</text>')
    parts.append(f'<line x1="{x0}" y1="{_H - _PAD}" x2="{_W - 10}" y2="{_H - _PAD}" stroke="#888"/>')
    for i, (label, value, colour, span) in enumerate(bars):
        x = x0 + i * bar_w + 6
        middle = x + (bar_w - 12) / 2
        shown = "—" if value is None else ("∞" if not math.isfinite(value) else f"{value:.2f}")
        height = 0.0 if value is None else height_of(value)
        parts.append(
            f'<rect x="{x:.1f}" y="{_H - _PAD - height:.1f}" width="{bar_w - 12:.1f}" height="{height:.1f}" '
            f'fill="{colour}"/>'
        )
        label_y = _H - _PAD - height - 4
        if span is not None:  # the estimate's interval as a whisker
            low_y, high_y = (_H - _PAD - height_of(v) for v in span)
            for x1, y1, x2, y2 in (
                (middle, low_y, middle, high_y),
                (middle - 6, low_y, middle + 6, low_y),
                (middle - 6, high_y, middle + 6, high_y),
            ):
                parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#222"/>')
            label_y = min(label_y, high_y - 4)
        parts.append(f'<text x="{middle:.1f}" y="{label_y:.1f}" text-anchor="middle">{e(shown)}</text>')
        parts.append(f'<text x="{middle:.1f}" y="{_H - _PAD + 14}" text-anchor="middle">{e(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
