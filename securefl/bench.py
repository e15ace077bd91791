"""``securefl bench``: what each privacy layer costs, measured side by side in one process.

For each layer it runs real federated rounds (the layer's demo stack, a no-op training step with a
fixed random update per party) and reports medians over rounds of:

* ``party_seconds`` — time inside one party's side of the secure sum (training and quantization
  excluded), median over parties; ``keyholder_seconds`` — the key holders' decrypt and arbitrate
  phases (HE layers);
  ``aggregator_seconds`` — time inside the aggregator's side of the secure sum;
* ``bytes_up`` / ``bytes_down`` per party and ``expansion`` (bytes up over the float32 size);
* ``max_error`` — the largest error of the revealed sum against the plaintext sum;
* ``speedup_vs_naive`` — Paillier: against phe's per-value ``encrypt`` (timed on a sample and
  extrapolated, marked so); CKKS: against TenSEAL with NVIDIA FLARE's parameters encrypting the
  same vector; ``null`` elsewhere. ``vs_plain`` gives the ratios to the ``plain`` row.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from securefl.durable import save_figure
from securefl.errors import ConfigError
from securefl.faults import Faults
from securefl.federation import Federation
from securefl.layers import PRESET_NAMES, Quantize, preset
from securefl.simulation.allocator import keep_freed_memory

# The phase in which a layer's input leaves the party: dropouts are injected there (for SecAgg,
# after keys were shared: the costly case).
INPUT_PHASE = {
    "plain": "input",
    "secagg": "masked",
    "secagg+": "masked",
    "paillier": "encrypt",
    "paillier-threshold": "encrypt",
    "ckks": "encrypt",
}
# Bytes per parameter a party holds while a round is in flight, and wire expansion, per layer.
_EXPANSION = {
    "plain": 1.0,
    "secagg": 1.0,
    "secagg+": 1.0,
    "paillier": 1.5,
    "paillier-threshold": 1.5,
    "ckks": 8.0,
}
# Rough single-core seconds per parameter per party, measured on this project's machines.
_SECONDS_PER_PARAM = {
    "plain": 2e-8,
    "secagg": 1.5e-7,
    "secagg+": 5e-8,
    "paillier": 7e-6,
    "paillier-threshold": 1.2e-5,
    "ckks": 5e-7,
}
# Threshold Paillier has no preset (its keys come from a ceremony): the bench deals a fresh 2048-bit
# key to its parties (t = 2 of all, t + 1 holders asked) in a temporary directory.
THRESHOLD = "paillier-threshold"
# Phases in which key holders decrypt (counted apart from a party's own encryption), per layer: the
# holder that spends the most in a round is reported. (SecAgg also has a phase named "share".)
_KEYHOLDER_PHASES = {THRESHOLD: ("share", "combine", "verify")}
MIN_PARAMS, MAX_PARAMS = 10, 10_000_000
MIN_PARTIES, MAX_PARTIES = 2, 1000


@dataclass
class BenchResult:
    backend: str  # where the parties ran: inprocess or ray
    privacy: str
    params: int
    parties: int
    dropout: float
    rounds: int
    party_seconds: float
    aggregator_seconds: float
    keyholder_seconds: float | None
    round_seconds: float
    bytes_up: int  # per party (median)
    bytes_down: int
    expansion: float
    max_error: float
    bytes_up_total: int = 0  # all parties together
    speedup_vs_naive: float | None = None
    naive_baseline: str | None = None
    naive_extrapolated: bool = False
    vs_plain: dict[str, float] = field(default_factory=dict)
    # SecAgg layers: the masks' physical limit for each side, measured in the same run (mask_bounds)
    party_bound_seconds: float | None = None
    aggregator_bound_seconds: float | None = None
    party_masks: int | None = None
    aggregator_masks: int | None = None
    # ...and the X25519 key agreements a party of this protocol cannot avoid (agreements_floor)
    party_agreements: int | None = None
    party_agreement_seconds: float | None = None
    # Shared-key Paillier: ciphertexts in the sum, and phe's raw_decrypt of as many over the key
    # holder's seconds (extrapolated from a sample)
    ciphertexts: int | None = None
    decrypt_vs_phe: float | None = None
    decrypt_per_value_vs_phe: float | None = None  # against phe decrypting one ciphertext per value
    naive_expansion: float | None = None  # CKKS: the baseline's bytes over float32 (vs expansion)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Timed:
    """Wraps an object's methods and adds their wall time to a counter under ``key(method)``."""

    def __init__(
        self, inner, counter: defaultdict, key: Callable[[str, tuple], str], methods: tuple[str, ...]
    ):
        self._inner, self._counter, self._key, self._methods = inner, counter, key, methods

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._counter[self._key(name, args)] += time.perf_counter() - start

        return timed


@dataclass
class Instruments:
    """Per-round timings and traffic of a federation whose sides were wrapped by :func:`instrument`."""

    seconds: defaultdict = field(default_factory=lambda: defaultdict(float))
    up: defaultdict = field(default_factory=lambda: defaultdict(int))
    down: defaultdict = field(default_factory=lambda: defaultdict(int))

    def reset(self) -> None:
        self.seconds.clear()
        self.up.clear()
        self.down.clear()


def instrument(federation: Federation, on_reply: Callable[[str], None] | None = None) -> Instruments:
    """Time both sides of the secure sum and count each party's bytes.

    Party time excludes ``provide()`` (training and transforms); the decrypt phase of HE layers is
    counted apart as the key holder's time.
    """
    inst = Instruments()
    keyholder_phases = _KEYHOLDER_PHASES.get(federation.stack.secure_sum.name, ("decrypt", "arbitrate"))
    federation.aggregator.secure_sum = _Timed(
        federation.aggregator.secure_sum,
        inst.seconds,
        lambda m, a: "aggregator",
        ("request", "receive", "close_phase", "result", "contributors"),
    )
    if not federation.parties_in_process:  # parties on Ray actors: timed there
        federation.transport.apply(_instrument_host, keyholder_phases)
        return inst
    for pid, node in federation.nodes.items():
        _instrument_node(pid, node, inst, keyholder_phases)
        handler = federation.transport.handlers[pid]

        def counted(data, _pid=pid, _handler=handler):
            inst.down[_pid] += len(data)
            reply = _handler(data)
            inst.up[_pid] += len(reply)
            if on_reply is not None:
                on_reply(_pid)
            return reply

        federation.transport.handlers[pid] = counted
    return inst


def _instrument_node(pid: str, node: Any, inst: Instruments, keyholder_phases: tuple[str, ...]) -> None:
    """Time one party's side of the secure sum, training and transforms excluded."""
    inner = node.secure_sum

    def key(method, args):
        keyholder = method == "respond" and args and args[0] in keyholder_phases
        return f"keyholder:{pid}" if keyholder else pid

    timed = _Timed(inner, inst.seconds, key, ("start_round", "respond"))
    original_start = inner.start_round

    def start_round(ctx, provide):
        def untimed_provide():
            start = time.perf_counter()
            try:
                return provide()
            finally:
                inst.seconds[pid] -= time.perf_counter() - start  # training is not the layer's cost

        return original_start(ctx, untimed_provide)

    inner.start_round = start_round
    node.secure_sum = timed


def _instrument_host(host: Any, keyholder_phases: tuple[str, ...]) -> int:
    """On a Ray actor (securefl.simulation): build and time every party it hosts, count its bytes."""
    host.bench = Instruments()
    for pid in list(host.clients):
        node = host._node(pid)
        _instrument_node(pid, node, host.bench, keyholder_phases)
        handle = node.handle

        def counted(data, _pid=pid, _handle=handle):
            host.bench.down[_pid] += len(data)
            reply = _handle(data)
            host.bench.up[_pid] += len(reply)
            return reply

        node.handle = counted
    return len(host.clients)


def _collect_host(host: Any) -> tuple[dict, dict, dict]:
    """On a Ray actor: the round's timings and bytes per party, then reset."""
    inst = host.bench
    out = (dict(inst.seconds), dict(inst.up), dict(inst.down))
    inst.reset()
    return out


def _collect(federation: Federation, inst: Instruments) -> None:
    """Bring the actors' timings into ``inst`` (parties on Ray actors only)."""
    if federation.parties_in_process:
        return
    for seconds, up, down in federation.transport.apply(_collect_host):
        inst.seconds.update(seconds)
        inst.up.update(up)
        inst.down.update(down)


def check_fits(privacy: str, params: int, parties: int) -> dict[str, float]:
    """Refuse, before starting, a configuration that cannot run here; else return estimates."""
    if privacy not in PRESET_NAMES:
        raise ConfigError(f"unknown privacy layer {privacy!r}; available: {', '.join(PRESET_NAMES)}")
    if not MIN_PARAMS <= params <= MAX_PARAMS:
        raise ConfigError(f"--params must be between {MIN_PARAMS} and {MAX_PARAMS:,}, got {params:,}")
    if not MIN_PARTIES <= parties <= MAX_PARTIES:
        raise ConfigError(f"--parties must be between {MIN_PARTIES} and {MAX_PARTIES}, got {parties}")
    if privacy in ("secagg", "secagg+") and parties < 3:
        raise ConfigError(f"{privacy} needs at least 3 parties")
    # Every simulated party holds its global model, update, protected vector and intermediate
    # copies (about 48 bytes per parameter, measured) and its payload while a phase is in flight.
    need = parties * params * (48 + 8 * _EXPANSION[privacy]) + params * 64
    available = _available_memory()
    if need > 0.8 * available:
        raise ConfigError(
            f"{privacy} with {parties} parties × {params:,} parameters needs about {need / 2**30:.1f} GiB "
            f"in one process; {available / 2**30:.1f} GiB are available. Use fewer parties or parameters"
        )
    workers = (os.cpu_count() or 1) if privacy in ("paillier", THRESHOLD) else 1
    return {
        "memory_gib": need / 2**30,
        "seconds_per_round": parties * params * _SECONDS_PER_PARAM[privacy] / workers,
    }


def _available_memory() -> float:
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def _ids(parties: int) -> list[str]:
    return [f"p{i:04d}" for i in range(parties)]


def bench_stack(privacy: str, parties: int) -> list:
    """The demo stack of ``privacy``; SecAgg quantizes to fewer bits when many parties must fit
    the 32-bit modulus (24 bits fit 256 parties; 21 bits fit 1,000)."""
    layers = preset(privacy, _ids(parties))
    if privacy in ("secagg", "secagg+"):
        bits = min(24, 31 - (parties - 1).bit_length())
        layers = [layers[0], Quantize(bits), layers[2]]
    return layers


def bench_delta(seed: int, party: str, params: int) -> np.ndarray:
    """A party's fixed update, of L2 norm about 5: half the stacks' clip norm of 10, so the
    quantization range is used as in training, and clipping never changes them."""
    rng = np.random.default_rng([seed, int(party[1:])])
    return rng.normal(0, 5 / np.sqrt(params), params).astype(np.float32)


@dataclass(frozen=True)
class BenchClients:
    """Builds a party's client where it runs (on a Ray actor, its update is made there)."""

    seed: int
    params: int

    def __call__(self, party: str):
        delta = bench_delta(self.seed, party, self.params)

        def train(weights, info):
            return {"w": weights["w"] + delta}, 1, {}

        return train


def _federation(privacy: str, params: int, parties: int, dropout: float, seed: int, backend: Any = None):
    from securefl.simulation import backend_options

    ids = _ids(parties)
    factory = BenchClients(seed, params)
    options = backend_options(backend)

    dropped = ids[1 : 1 + round(dropout * parties)]  # never the first party: it holds HE keys
    faults = Faults()
    for party in dropped:
        faults.add("offline", party, phase=INPUT_PHASE[privacy])
    if options is not None:
        options = dataclasses.replace(options, client_factory=factory)
    federation = Federation(
        {"w": np.zeros(params, dtype=np.float32)},
        ids if options is not None else {p: factory(p) for p in ids},
        bench_stack(privacy, parties),
        weighting="uniform",
        faults=faults,
        backend=options,
    )
    return federation, lambda p: bench_delta(seed, p, params)


def measure(
    privacy: str,
    params: int,
    parties: int,
    dropout: float = 0.0,
    repeat: int = 3,
    on_reply: Callable[[str], None] | None = None,
    seed: int = 0,
    backend: Any = None,
) -> tuple[BenchResult, Federation]:
    """One layer: a warm-up round (HE key set-up), then ``repeat`` measured rounds. ``backend``:
    where the parties run (None: this process; "ray" or a RayBackend: Ray actors)."""
    if not 0 <= dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {dropout}")
    check_fits(privacy, params, parties)
    keep_freed_memory()  # as every simulating process of securefl does (Ray's actors included)
    federation, delta_of = _federation(privacy, params, parties, dropout, seed, backend)
    inst = instrument(federation, on_reply)
    rows: list[dict] = []
    for r in range(repeat + 1):
        inst.reset()
        before = federation.global_vector
        start = time.perf_counter()
        report = federation.run_round()
        wall = time.perf_counter() - start
        if not report.ok:
            raise ConfigError(f"{privacy}: round failed: {report.error}")
        _collect(federation, inst)
        if r == 0:
            continue
        survivors = report.survivors
        expected_sum = np.zeros(params)
        for p in survivors:
            expected_sum += delta_of(p)
        revealed_sum = (federation.global_vector - before) * len(survivors)
        party_times = [inst.seconds[p] for p in survivors]
        keyholder = [v for k, v in inst.seconds.items() if k.startswith("keyholder:")]
        rows.append(
            {
                "party": statistics.median(party_times),
                "aggregator": inst.seconds["aggregator"],
                "keyholder": max(keyholder) if keyholder else None,
                "round": wall,
                "up": statistics.median(inst.up[p] for p in survivors),
                "down": statistics.median(inst.down[p] for p in survivors),
                "up_total": sum(inst.up.values()),
                "error": float(np.abs(revealed_sum - expected_sum).max()),
            }
        )

    def med(key):
        values = [row[key] for row in rows if row[key] is not None]
        return statistics.median(values) if values else None

    result = BenchResult(
        backend=getattr(backend, "name", backend) or "inprocess",
        privacy=privacy,
        params=params,
        parties=parties,
        dropout=dropout,
        rounds=repeat,
        party_seconds=med("party"),
        aggregator_seconds=med("aggregator"),
        keyholder_seconds=med("keyholder"),
        round_seconds=med("round"),
        bytes_up=int(med("up")),
        bytes_down=int(med("down")),
        expansion=med("up") / (4 * params),
        max_error=max(row["error"] for row in rows),
        bytes_up_total=int(med("up_total")),
    )
    _naive_baseline(result, federation)
    if privacy in ("secagg", "secagg+"):
        (
            result.party_bound_seconds,
            result.aggregator_bound_seconds,
            result.party_masks,
            result.aggregator_masks,
        ) = mask_bounds(federation.stack.secure_sum, params, parties, parties - len(survivors))
        result.party_agreements, result.party_agreement_seconds = agreements_floor(
            federation.stack.secure_sum, parties
        )
    return result, federation


_UNCACHED_BYTES = 64 << 20  # twice a large last-level cache: vectors cycled beyond it are not cached


def mask_bounds(layer: Any, params: int, parties: int, dropped: int, trials: int = 5) -> tuple:
    """The physical limit of a SecAgg round's two sides at this size, timed now on this machine
    (medians of ``trials``): the work no protocol can avoid, measured with the layer's own mask
    expansion. A party expands one AES-CTR keystream per mask (its self mask and one per
    neighbour) and adds each to its vector; the aggregator adds the survivors' masked vectors and
    expands a keystream for each mask it removes (every survivor's self mask, and the pairwise mask
    of each dropped party with each surviving neighbour it shared keys with — its expected count on
    ``secagg+``'s random graph). Everything else either side does (key agreement, sharing, sealing,
    encoding) is overhead over these. Returns (party s, aggregator s, party masks, aggregator masks)."""
    from securefl.crypto import prg

    k = layer.degree(parties)
    survivors = parties - dropped
    party_masks = 1 + k
    aggregator_masks = survivors + round(dropped * k * survivors / max(parties - 1, 1))
    rng = np.random.default_rng(0)
    # The aggregator reads each survivor's masked vector once, as it arrives: distinct memory, not
    # in cache. A few vectors cycled stay cached and under-state the work (measured: 7 µs against 23
    # µs to add one 100,000-word vector in a real round); distinct ones up to twice a large L3 cache
    # (64 MiB, cycled beyond that) are read from memory as a round's are.
    distinct = min(max(survivors, 1), max(4, math.ceil(_UNCACHED_BYTES / (params * layer.dtype.itemsize))))
    received = [rng.integers(0, 2**32, params, dtype=np.uint64).astype(layer.dtype) for _ in range(distinct)]

    def expand_and_add(vector: np.ndarray, masks: int) -> None:
        accumulator = prg.MaskAccumulator(params, layer.dtype)
        for _ in range(masks):
            accumulator.add(os.urandom(prg.SEED_BYTES))
        accumulator.apply_to(vector, sign=-1)

    def party() -> None:
        expand_and_add(received[0].copy(), party_masks)

    def aggregator() -> None:
        total = np.zeros(params, dtype=layer.dtype)
        for i in range(survivors):
            total += received[i % len(received)]
        expand_and_add(total, aggregator_masks)

    bounds = _median_seconds(party, trials), _median_seconds(aggregator, trials)
    return (*bounds, party_masks, aggregator_masks)


def agreements_floor(layer: Any, parties: int, trials: int = 5) -> tuple[int, float]:
    """The key agreements a SecAgg party must do in a round, timed now (median of ``trials``):
    with each of its k neighbours, one X25519 exchange of channel keys (sealing the shares) and one
    of mask keys (the pairwise mask seed), each followed by its HKDF — ``channel.agree``, as the
    layer does it. Active mode adds two per neighbour: the one-time key of each sealed share is
    generated (a scalar multiplication) and agreed by both sides. They are per round and per
    neighbour by design: the mask key is rebuilt from shares when its owner drops, so it is fresh
    every round and cannot double as the channel key (protocols/secagg.md). With the masks' bound
    this is the party's floor. Returns (agreements, seconds)."""
    from securefl.crypto import channel
    from securefl.randomness import SecureRandom

    k = layer.degree(parties)
    count = (4 if layer.active else 2) * k
    rng = SecureRandom()
    own, _ = channel.generate_loaded(rng)
    peers = [channel.generate_keypair(rng)[1] for _ in range(min(count, 64))]

    def agree_all() -> None:
        for i in range(count):
            channel.agree(own, peers[i % len(peers)], b"bench-floor")

    return count, _median_seconds(agree_all, trials)


def _naive_baseline(result: BenchResult, federation: Federation) -> None:
    """Paillier: phe per value (sampled, extrapolated). CKKS: TenSEAL with FLARE's parameters."""
    if result.privacy in ("paillier", THRESHOLD):
        from phe import paillier as phe

        public = federation.aggregator.secure_sum.public
        key = phe.PaillierPublicKey(public.n)
        per_value = _median_seconds(lambda: key.encrypt(12345), PHE_SAMPLE)
        result.speedup_vs_naive = per_value * result.params / result.party_seconds
        result.naive_baseline = f"phe encrypt per value, same {public.bits}-bit key"
        result.naive_extrapolated = True
        if result.privacy == "paillier" and result.keyholder_seconds:
            _phe_decrypt_baseline(result, federation, public)
    elif result.privacy == "ckks":
        from securefl.crypto import ckks

        flare = ckks.PRESETS["flare"]
        context = ckks.new_context(flare)
        vector = np.random.default_rng(1).normal(size=result.params)
        start = time.perf_counter()
        blobs = ckks.encrypt(context, vector, flare)
        result.speedup_vs_naive = (time.perf_counter() - start) / result.party_seconds
        result.naive_expansion = sum(len(b) for b in blobs) / (4 * result.params)
        result.naive_baseline = (
            "TenSEAL CKKS as NVIDIA FLARE's HEBuilder configures it (N=8192, [60, 40, 40], "
            "scale 2^40, symmetric encryption)"
        )


PHE_SAMPLE = 30  # phe operations timed per baseline (median), in the same run as the layer


def _median_seconds(work: Callable[[], Any], trials: int) -> float:
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _phe_decrypt_baseline(result: BenchResult, federation: Federation, public: Any) -> None:
    """Shared-key Paillier: the key holder's decryption of the sum against phe's ``raw_decrypt`` of
    as many ciphertexts (one at a time, as phe does; timed on a sample, extrapolated)."""
    from securefl.crypto import paillier

    holder = next(node.secure_sum for node in federation.nodes.values())
    material = getattr(holder, "material", None)
    if material is None or material.private is None:
        return
    phe_key = paillier.to_phe(material.private)
    ciphertexts = result.bytes_up // public.ciphertext_bytes
    sample = public.encrypt(1)
    per_ciphertext = _median_seconds(lambda: phe_key.raw_decrypt(sample), PHE_SAMPLE)
    result.ciphertexts = ciphertexts
    result.decrypt_vs_phe = per_ciphertext * ciphertexts / result.keyholder_seconds
    # phe's own way with a vector: one EncryptedNumber (one ciphertext) per value, same key size
    result.decrypt_per_value_vs_phe = per_ciphertext * result.params / result.keyholder_seconds


def backend_ratios(results: list[BenchResult]) -> dict[str, float]:
    """Per layer measured on both backends: the Ray round's wall time over the in-process one."""
    rounds = {(r.privacy, r.backend): r.round_seconds for r in results}
    return {
        name: rounds[(name, "ray")] / rounds[(name, "inprocess")]
        for name, where in rounds
        if where == "ray" and rounds.get((name, "inprocess"))
    }


def add_plain_ratios(results: list[BenchResult]) -> None:
    for r in results:
        plain = next((p for p in results if p.privacy == "plain" and p.backend == r.backend), None)
        if plain is None:
            continue
        r.vs_plain = {
            "party_seconds": r.party_seconds / plain.party_seconds if plain.party_seconds else None,
            "aggregator_seconds": r.aggregator_seconds / plain.aggregator_seconds
            if plain.aggregator_seconds
            else None,
            "bytes_up": r.bytes_up / plain.bytes_up,
        }


def plot(results: list[BenchResult], path: str) -> str:
    """A PNG bar chart: seconds per side (log scale) and upload expansion, per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.privacy for r in results]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    width = 0.27
    series = [
        ("per party", [r.party_seconds for r in results]),
        ("aggregator", [r.aggregator_seconds for r in results]),
        ("key holder", [r.keyholder_seconds for r in results]),  # only layers whose key holders decrypt
    ]
    for i, (label, values) in enumerate(series):
        heights = [np.nan if v is None else max(v, 1e-6) for v in values]
        ax1.bar(x + (i - 1) * width, heights, width, label=label)
    ax1.set_yscale("log")
    ax1.set_xticks(x, names)
    ax1.set_ylabel("seconds per round (median)")
    ax1.legend()
    ax1.set_title(f"{results[0].parties} parties × {results[0].params:,} parameters")
    ax2.bar(x, [r.expansion for r in results], color="tab:gray")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("bytes up / float32 bytes")
    ax2.set_title("upload expansion")
    fig.tight_layout()
    save_figure(fig, path)  # never through a link planted at the path
    plt.close(fig)
    return path
