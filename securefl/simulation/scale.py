"""One federation round at scale on the Ray backend: what it costs in time and memory.

``scale_round("secagg+", parties=1000, params=100_000)`` runs a warm-up round (the actors build their
parties) and one measured round of the bench's federation (a fixed random update per party, made
on its actor), and reports wall time, the median party's and the aggregator's seconds in the
secure sum, the error of the revealed sum, and peak resident memory: this process (the
aggregator) and each actor (its parties).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Any

import numpy as np

from securefl import bench
from securefl.federation import Federation
from securefl.simulation import RayBackend


def _peak_rss(_host: Any = None) -> int:
    """Peak resident bytes of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def scale_round(
    privacy: str, parties: int, params: int, backend: RayBackend | None = None, seed: int = 0
) -> dict[str, Any]:
    backend = backend or RayBackend()
    started = time.perf_counter()
    ids = [f"p{i:05d}" for i in range(parties)]
    factory = bench.BenchClients(seed, params)
    federation = Federation(
        {"w": np.zeros(params, dtype=np.float32)},
        ids,
        bench.bench_stack(privacy, parties),
        weighting="uniform",
        backend=RayBackend(**{**vars(backend), "client_factory": factory}),
    )
    setup = time.perf_counter() - started
    try:
        start = time.perf_counter()
        warm = federation.run_round()
        warm_seconds = time.perf_counter() - start
        if not warm.ok:
            return {"ok": False, "error": warm.error, "privacy": privacy, "parties": parties}
        inst = bench.instrument(federation)
        before = federation.global_vector
        start = time.perf_counter()
        report = federation.run_round()
        wall = time.perf_counter() - start
        bench._collect(federation, inst)
        result: dict[str, Any] = {
            "ok": report.ok,
            "error": report.error,
            "privacy": privacy,
            "parties": parties,
            "params": params,
            "actors": len(federation.transport.actors),
            "setup_seconds": setup,
            "warmup_round_seconds": warm_seconds,
            "round_seconds": wall,
            "survivors": len(report.survivors),
            "bytes_up": report.bytes_up,
            "bytes_down": report.bytes_down,
        }
        if report.ok:
            party_seconds = [inst.seconds[p] for p in report.survivors if p in inst.seconds]
            expected = np.zeros(params)
            for p in report.survivors:
                expected += bench.bench_delta(seed, p, params)
            revealed = (federation.global_vector - before) * len(report.survivors)
            result.update(
                party_seconds_median=statistics.median(party_seconds) if party_seconds else None,
                party_seconds_max=max(party_seconds) if party_seconds else None,
                aggregator_seconds=inst.seconds["aggregator"],
                max_error=float(np.abs(revealed - expected).max()),
            )
        actor_rss = federation.transport.apply(_peak_rss)
        result.update(
            peak_rss_aggregator_gib=_peak_rss() / 2**30,
            peak_rss_actors_gib=[r / 2**30 for r in actor_rss],
            peak_rss_total_gib=(_peak_rss() + sum(actor_rss)) / 2**30,
            load_average=os.getloadavg(),
            cpus=os.cpu_count(),
        )
        return result
    finally:
        federation.close()
