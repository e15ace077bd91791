"""One federation round at scale on the Ray backend: what it costs in time and memory.

``scale_round("secagg+", parties=1000, params=100_000)`` runs a warm-up round (the actors build their
parties) and one measured round of the bench's federation (a fixed random update per party, made
on its actor), and reports wall time, the median party's and the aggregator's seconds in the
secure sum, the error of the revealed sum, and peak resident memory: this process (the
aggregator) and each actor (its parties). :func:`check_scale` refuses, with its estimate, a round that
would not fit (secagg's complete graph at thousands of parties).
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from typing import Any

import numpy as np

from securefl import bench
from securefl.durable import save_figure
from securefl.errors import ConfigError
from securefl.federation import Federation
from securefl.simulation import RayBackend
from securefl.wire import MAX_HEADER_BYTES

# Bytes per party per parameter, with a margin over what protocols/simulation.md measures (secagg+,
# 2 actors): the aggregator (the phase's replies in flight, the sum; ~10-14 measured at 1,000 ×
# 100k and 10,000 × 10k) and the actors (each party's data and update while it is needed; the
# global model is shared per actor; ~15 measured at 1,000 × 100k, ~22 at 10,000 × 10k with the
# parties' fixed overhead; peak, with Ray's copies).
AGGREGATOR_BYTES_PER_PARAM = 14
ACTOR_BYTES_PER_PARAM = 30
# Bytes the aggregator routes and holds per pair of neighbours in SecAgg: an advertised key pair with
# its signature, a sealed share pair and its unmasking share (~300 bytes, protocols/secagg.md sizes).
NEIGHBOUR_BYTES = 300
# Single-core seconds per neighbour per parameter to expand and add a pairwise mask.
MASK_SECONDS = 1e-9


def estimate(privacy: str, parties: int, params: int) -> dict[str, float]:
    """What one round costs as the federation grows: the neighbours each party masks with (n − 1
    for secagg's complete graph, O(log n) for secagg+), memory and total CPU seconds."""
    from securefl.layers import SecAggPlus

    neighbours = {"secagg": parties - 1, "secagg+": SecAggPlus().degree(parties)}.get(privacy, 0)
    aggregator = parties * params * AGGREGATOR_BYTES_PER_PARAM + parties * neighbours * NEIGHBOUR_BYTES
    actors = parties * params * ACTOR_BYTES_PER_PARAM
    return {
        "neighbours": neighbours,
        "aggregator_gib": aggregator / 2**30,
        "actors_gib": actors / 2**30,
        "memory_gib": (aggregator + actors) / 2**30,
        "mask_cpu_seconds": parties * neighbours * params * MASK_SECONDS,
    }


def check_scale(
    privacy: str, parties: int, params: int, available: float | None = None, id_length: int = 6
) -> dict[str, float]:
    """Refuse, with the estimate, a round that would not fit in this machine's memory — or, for
    secagg's complete graph, in a message header: its share and masked phases name each party's
    n − 1 neighbours (ids of ``id_length`` characters) in a header of at most 64 KiB."""
    est = estimate(privacy, parties, params)
    available = bench._available_memory() if available is None else available
    if est["memory_gib"] * 2**30 > 0.8 * available:
        hint = (
            f"secagg's complete graph has each party mask with all {est['neighbours']:,} others "
            "(memory and time grow as n²); secagg+ masks with O(log n) neighbours"
            if privacy == "secagg"
            else "use fewer parties or parameters, or a Ray cluster with more memory"
        )
        raise ConfigError(
            f"{privacy} with {parties:,} parties × {params:,} parameters needs about "
            f"{est['memory_gib']:.1f} GiB ({est['aggregator_gib']:.1f} GiB in the aggregator, "
            f"{est['actors_gib']:.1f} GiB on the actors) and ~{est['mask_cpu_seconds']:,.0f} CPU seconds of "
            f"masking; {available / 2**30:.1f} GiB are available: {hint}"
        )
    named = (parties - 1) * (id_length + 3) + 1024
    if privacy == "secagg" and named > MAX_HEADER_BYTES:
        raise ConfigError(
            f"secagg with {parties:,} parties names each party's {parties - 1:,} neighbours in its share "
            f"and masked messages: ~{named:,} bytes of header where the wire format allows "
            f"{MAX_HEADER_BYTES:,} (and about {est['memory_gib']:.1f} GiB, ~{est['mask_cpu_seconds']:,.0f} "
            "CPU seconds of masking); secagg+ masks with O(log n) neighbours"
        )
    return est


def _peak_rss(_host: Any = None) -> int:
    """Peak resident bytes of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _pid(_host: Any = None) -> int:
    return os.getpid()


def _proc_rss(pid: int) -> int:
    """Resident bytes of a process now, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(root: int) -> set[int]:
    """``root``'s child processes, recursively (a local Ray's raylet, GCS and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class RssSampler:
    """Samples, every ``interval`` seconds, the summed resident memory of a set of processes (the
    driver and the actors' worker processes) and of this process's whole tree (with Ray's own
    raylet, GCS and idle workers), read from /proc; keeps the peaks. Shared pages (Ray's object
    store is shared memory) count once per process mapping them: an upper bound."""

    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peak = 0
        self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.peak = max(self.peak, sum(_proc_rss(p) for p in self.pids))
        tree = {os.getpid(), *_descendants(os.getpid())}
        self.peak_tree = max(self.peak_tree, sum(_proc_rss(p) for p in tree))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def scale_round(
    privacy: str,
    parties: int,
    params: int,
    backend: RayBackend | None = None,
    seed: int = 0,
    selection: Any = None,
) -> dict[str, Any]:
    """``selection``: as Federation's (e.g. ``{"kind": "fixed", "count": 5000}``): a cohort drawn
    from the whole population; parties never selected are never built on their actors."""
    backend = backend or RayBackend()
    check_scale(privacy, parties, params, id_length=6)  # the ids below: p00000 ...
    started = time.perf_counter()
    ids = [f"p{i:05d}" for i in range(parties)]
    factory = bench.BenchClients(seed, params)
    federation = Federation(
        {"w": np.zeros(params, dtype=np.float32)},
        ids,
        bench.bench_stack(privacy, parties),
        weighting="uniform",
        selection=selection,
        backend=RayBackend(**{**vars(backend), "client_factory": factory}),
    )
    setup = time.perf_counter() - started
    try:
        pids = [os.getpid(), *federation.transport.apply(_pid)]
        start = time.perf_counter()
        with RssSampler(pids) as warm_rss:
            warm = federation.run_round()
        warm_seconds = time.perf_counter() - start
        if not warm.ok:
            return {"ok": False, "error": warm.error, "privacy": privacy, "parties": parties}
        inst = bench.instrument(federation)
        before = federation.global_vector
        load_before = os.getloadavg()
        start = time.perf_counter()
        cpu_start = time.process_time()
        with RssSampler(pids) as rss:
            report = federation.run_round()
        wall = time.perf_counter() - start
        driver_cpu = time.process_time() - cpu_start
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
            "driver_cpu_seconds": driver_cpu,
            "selected": len(report.selected),
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
            # Sampled from /proc during the measured round (and the warm-up, which builds the parties):
            # the driver and the actors' workers summed, and every process of this tree (Ray's too).
            sampled_peak_rss_gib=rss.peak / 2**30,
            sampled_peak_rss_all_gib=rss.peak_tree / 2**30,
            warmup_sampled_peak_rss_gib=warm_rss.peak / 2**30,
            warmup_sampled_peak_rss_all_gib=warm_rss.peak_tree / 2**30,
            load_average_before=load_before,
            load_average=os.getloadavg(),
            cpus=os.cpu_count(),
        )
        return result
    finally:
        federation.close()


# -- how cost grows with the number of parties (securefl bench --scale parties=10,100,1000) --------

PER_PARTY_MODELS = {"O(1)": lambda n: 1.0, "O(log n)": lambda n: np.log(n), "O(n)": lambda n: float(n)}
TOTAL_MODELS = {
    "O(n)": lambda n: float(n),
    "O(n log n)": lambda n: n * np.log(n),
    "O(n²)": lambda n: float(n) ** 2,
}


def fit_growth(ns: list[int], values: list[float], models: dict) -> tuple[str, float]:
    """The model c·f(n) closest to the measurements in log space, and the log-log slope."""
    x = np.log(np.asarray(ns, dtype=float))
    y = np.log(np.maximum(np.asarray(values, dtype=float), 1e-9))
    slope = float(np.polyfit(x, y, 1)[0]) if len(ns) > 1 else float("nan")
    best, best_error = "", float("inf")
    for name, f in models.items():
        fx = np.log([f(n) for n in ns])
        c = float(np.mean(y - fx))
        error = float(np.sum((y - fx - c) ** 2))
        if error < best_error:
            best, best_error = name, error
    return best, slope


def scaling(
    layers: list[str],
    counts: list[int],
    params: int,
    repeat: int = 1,
    backend: Any = None,
    on_done: Any = None,
) -> dict[str, Any]:
    """Each layer at each party count (bench rounds): per-party, aggregator and round seconds, and
    the fitted growth of each against n."""
    rows = []
    for name in layers:
        for n in counts:
            result, federation = bench.measure(name, params, n, repeat=repeat, backend=backend)
            federation.close()
            rows.append(result)
            if on_done is not None:
                on_done(result)
    fits: dict[str, dict[str, Any]] = {}
    for name in layers:
        mine = [r for r in rows if r.privacy == name]
        ns = [r.parties for r in mine]
        fits[name] = {}
        for key, models in (
            ("party_seconds", PER_PARTY_MODELS),
            ("aggregator_seconds", TOTAL_MODELS),
            ("round_seconds", TOTAL_MODELS),
        ):
            growth, slope = fit_growth(ns, [getattr(r, key) for r in mine], models)
            fits[name][key] = {"growth": growth, "slope": slope}
    return {"results": rows, "fits": fits}


def plot_scaling(report: dict[str, Any], path: str) -> str:
    """A log-log PNG: per-party, aggregator and round seconds against n, one line per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("party_seconds", "per party"), ("aggregator_seconds", "aggregator"), ("round_seconds", "round"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    layers = list(report["fits"])
    for ax, (key, title) in zip(axes, keys, strict=True):
        for name in layers:
            mine = [r for r in report["results"] if r.privacy == name]
            fit = report["fits"][name][key]
            ax.loglog(
                [r.parties for r in mine],
                [max(getattr(r, key), 1e-6) for r in mine],
                "o-",
                label=f"{name}: {fit['growth']} (slope {fit['slope']:.2f})",
            )
        ax.set_xlabel("parties (n)")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)  # never through a link planted at the path
    plt.close(fig)
    return path
