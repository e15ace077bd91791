"""Federated analytics: statistics across hospitals that never pool their records.

Five hospitals hold parts of scikit-learn's breast-cancer data. Without training anything, they
answer questions together — how many malignant cases, the mean tumour radius, its histogram — each
through a secure sum, so the aggregator learns the totals only. Run it twice to see the two modes:

    python examples/analytics.py --privacy secagg            # exact answers, aggregator sees totals
    python examples/analytics.py --privacy secagg --dp 2 --budget-epsilon 10 --ledger q.jsonl
    securefl audit q.jsonl --public-key q.jsonl.pub

With ``--dp Z`` every answer carries Skellam noise added in shares by the hospitals (so not even the
aggregator sees an exact total), every query spends party-level ε from one budget, and each is
written to a signed ledger. The last line printed is a JSON summary. Party-level DP hides a whole
hospital — up to MAX_RECORDS patients — so its noise is of that size: with five hospitals the
answers are mostly noise, which is the honest price; it pays off with many parties.

Threat model in one paragraph: the aggregator is honest-but-curious and must not learn any one
hospital's statistics (secure sum); with DP, nobody who sees the answers — the aggregator included —
can tell whether any one hospital took part with its real data (party-level DP, zero-out relation).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.datasets import load_breast_cancer

from securefl.analytics import Analytics
from securefl.errors import BudgetExhausted
from securefl.privacy.guard import Budget

HOSPITALS = 5
MAX_RECORDS = 250  # the most records any hospital may bring: fixed before anyone looks at the data
RADIUS_EDGES = [6, 10, 14, 18, 22, 26, 30]


def hospitals(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The data set dealt unevenly to the hospitals: (features, diagnosis) each, 0 = malignant."""
    data = load_breast_cancer()
    order = np.random.default_rng(seed).permutation(len(data.target))
    sizes = np.random.default_rng(seed + 1).dirichlet([2.0] * HOSPITALS) * (len(order) - 40 * HOSPITALS)
    cuts = np.cumsum(40 + sizes.astype(int))[:-1]
    return {f"hospital-{i}": (data.data[p], data.target[p]) for i, p in enumerate(np.split(order, cuts))}


def _noise(result) -> str:
    """The noise std of the sums behind an answer (for a mean: of its numerator and its count)."""
    if result.noise_std is None:
        return ""
    stds = " and ".join(f"{s:.0f}" for s in result.noise_std[:2])
    clamped = "; clamped into its valid range" if result.clamped else ""
    return f"  (noise std {stds}; ε so far {result.epsilon:.3g}{clamped})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--privacy", default="secagg", help="plain, secagg, secagg+, paillier or ckks")
    parser.add_argument(
        "--dp", type=float, default=None, metavar="Z", help="noise multiplier (off by default)"
    )
    parser.add_argument("--budget-epsilon", type=float, default=None)
    parser.add_argument("--ledger", default=None)
    args = parser.parse_args()

    parties = hospitals()
    budget = Budget(args.budget_epsilon, 1e-5) if args.budget_epsilon else None
    analytics = Analytics(parties, args.privacy, noise_multiplier=args.dp, budget=budget, ledger=args.ledger)
    answers: dict[str, object] = {}
    try:
        malignant = analytics.count(lambda h: int((h[1] == 0).sum()), max_per_party=MAX_RECORDS)
        print(f"malignant cases: {malignant.value:.0f}{_noise(malignant)}")
        answers["malignant"] = float(malignant.value)
        radius = analytics.mean(lambda h: h[0][:, 0], lower=6, upper=30, max_records=MAX_RECORDS)
        shown = "n/a (the noised count is ≤ 0)" if np.isnan(radius.value) else f"{radius.value:.3f}"
        print(f"mean radius: {shown}{_noise(radius)}")
        answers["mean_radius"] = radius.value
        histogram = analytics.histogram(lambda h: h[0][:, 0], edges=RADIUS_EDGES, max_records=MAX_RECORDS)
        for low, high, count in zip(RADIUS_EDGES, RADIUS_EDGES[1:], histogram.value, strict=False):
            print(f"  radius {low:>2}-{high:<2} {count:8.1f} {'#' * min(60, max(0, int(count // 5)))}")
        if histogram.noise_std is not None:
            print(f"  (each bin{_noise(histogram)})")
        answers["radius_histogram"] = [float(c) for c in histogram.value]
    except BudgetExhausted as exc:
        print(f"refused: {exc}")
        answers["refused"] = str(exc)
    data = load_breast_cancer()
    answers["pooled"] = {  # what a central database would say; the example's check, not a release
        "malignant": int((data.target == 0).sum()),
        "mean_radius": float(data.data[:, 0].mean()),
        "radius_histogram": np.histogram(np.clip(data.data[:, 0], 6, 30), RADIUS_EDGES)[0].tolist(),
    }
    print(json.dumps({**answers, "privacy": args.privacy, "epsilon": analytics.epsilon}))


if __name__ == "__main__":
    main()
