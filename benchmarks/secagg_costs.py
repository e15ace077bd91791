"""What secure aggregation costs, measured on one in-process round.

    python benchmarks/secagg_costs.py            # the issue's reference configurations
    python benchmarks/secagg_costs.py --quick    # small sizes

Per party: seconds inside its side of the secure sum (keys, shares, masking, unmasking: what
SecAgg adds) and bytes it uploads; aggregator: seconds inside its side of the secure sum
(combining, reconstructing, removing masks); end to end: the whole round's wall time in one process,
all parties included. Dropouts are parties that vanish after sharing keys, before their masked
input: the costly case, since the aggregator must then remove their pairwise masks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import securefl
from securefl.bench import instrument
from securefl.faults import Faults
from securefl.layers import SecAgg, SecAggPlus


def measure(layer: str, parties: int, params: int, dropout: float = 0.0, **layer_options) -> dict:
    """One round of ``layer`` ("plain", "secagg", "secagg+") with a no-op training step."""
    ids = [f"p{i:03d}" for i in range(parties)]
    delta = np.full(params, 1e-3)

    def train(weights, info):
        return {"w": weights["w"] + delta}, 10, {}

    sum_layer = {"plain": securefl.Plain, "secagg": SecAgg, "secagg+": SecAggPlus}[layer](**layer_options)
    stack = [sum_layer] if layer == "plain" else [securefl.Clip(10.0), securefl.Quantize(24), sum_layer]
    dropped = ids[: round(dropout * parties)]
    faults = Faults()
    for party in dropped:
        faults.add("offline", party, phase="masked" if layer != "plain" else None)
    fed = securefl.Federation(
        {"w": np.zeros(params, dtype=np.float32)},
        {p: train for p in ids},
        stack,
        weight_bound=10,
        faults=faults,
    )
    inst = instrument(fed)
    start = time.perf_counter()
    report = fed.run_round()
    wall = time.perf_counter() - start
    if not report.ok:
        return {
            "privacy": layer,
            "parties": parties,
            "params": params,
            "dropout": dropout,
            "failed": report.error,
        }
    survivors = [p for p in ids if p not in dropped]
    party_seconds = [inst.seconds[p] for p in survivors]
    party_bytes = [inst.up[p] for p in survivors]
    return {
        "privacy": layer,
        "parties": parties,
        "params": params,
        "dropout": dropout,
        "party_seconds_median": statistics.median(party_seconds),
        "aggregator_seconds": inst.seconds["aggregator"],
        "round_seconds": wall,
        "bytes_up_per_party": int(statistics.median(party_bytes)),
        "expansion_vs_float32": statistics.median(party_bytes) / (4 * params),
        "neighbours": (sum_layer.degree(parties) if layer != "plain" else 0),
        "threshold": (sum_layer.shares_needed(sum_layer.degree(parties)) if layer != "plain" else 0),
    }


REFERENCE: list[tuple] = [
    ("secagg", 100, 1_000_000, 0.0),
    ("secagg", 100, 1_000_000, 0.1),
    ("secagg", 100, 1_000_000, 0.3),
    ("secagg+", 100, 1_000_000, 0.0),
    ("secagg+", 100, 1_000_000, 0.1),
    # At 30% dropouts a neighbourhood must still keep more than half (t > k/2, for safety against a
    # lying aggregator): k = 90 with t = 0.55·k keeps the failure bound at 13% (k = 60, t = 0.6: ≈ 1).
    ("secagg+", 100, 1_000_000, 0.3, {"degree": 90, "threshold": 0.55}),
    ("plain", 50, 100_000, 0.0),
    ("secagg", 50, 100_000, 0.0),
    ("secagg+", 50, 100_000, 0.0),
]
QUICK = [("plain", 10, 10_000, 0.0), ("secagg", 10, 10_000, 0.2), ("secagg+", 20, 10_000, 0.1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds per configuration; medians are reported"
    )
    parser.add_argument("--only", type=int, nargs="*", help="indices into the configuration list")
    args = parser.parse_args()
    configs = QUICK if args.quick else REFERENCE
    for index, config in enumerate(configs):
        if args.only and index not in args.only:
            continue
        options = config[4] if len(config) > 4 else {}
        runs = [measure(*config[:4], **options) for _ in range(args.repeat)]
        failed = [r for r in runs if "failed" in r]
        runs = [r for r in runs if "failed" not in r]
        if failed:
            print(
                json.dumps({"config": config[:4], "failed_rounds": len(failed), "error": failed[0]["failed"]})
            )
        if not runs:
            continue
        keys = ("party_seconds_median", "aggregator_seconds", "round_seconds")
        row = dict(runs[0]) | {k: statistics.median(r[k] for r in runs) for k in keys}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
