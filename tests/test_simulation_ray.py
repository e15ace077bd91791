"""The Ray backend (issue 16): a real local Ray, started and stopped here.

The same federations as in-process give the same results; dropouts injected on the actors, an
actor killed mid-round and a cluster joined by address cost only the parties concerned.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import fixed_delta_client

import securefl
from securefl.errors import ConfigError
from securefl.faults import Faults
from securefl.layers import SecAggPlus
from securefl.simulation import RayBackend, backend_options
from securefl.simulation.ray_transport import SHARED_MIN_BYTES, join_segments, split_shared
from securefl.tasks import load_task
from securefl.wire import Envelope

ray = pytest.importorskip("ray")

BOUND = 2**23 - 1  # quantize(bits=24) with this bound has scale exactly 1: integers encode exactly
DIM = 6
PASSIVE = ("advertise", "share", "masked", "unmask")


@pytest.fixture(scope="module")
def local_ray():
    # Functions defined in the tests travel to the actors by value (the actors cannot import them).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(sys.modules["conftest"])
    # "local": a private Ray for this module, never a cluster someone else started on this machine.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def integer_federation(layer, n, backend, faults=None, min_parties=1, dim=DIM, seed=0):
    """Integer deltas and weights, so the revealed integer sum is known exactly."""
    rng = np.random.default_rng(seed)
    parties = [f"p{i:02d}" for i in range(n)]
    deltas = {p: rng.integers(-50, 50, dim).astype(float) for p in parties}
    weights = {p: int(rng.integers(1, 9)) for p in parties}
    clients = {p: fixed_delta_client(deltas[p], weights[p]) for p in parties}
    fed = securefl.Federation(
        {"w": np.zeros(dim)},
        clients,
        [securefl.Quantize(bits=24, update_bound=float(BOUND)), layer],
        weight_bound=float(BOUND),
        faults=faults,
        min_parties=min_parties,
        backend=backend,
    )
    return fed, deltas, weights


def expected_sum(deltas, weights, parties, dim=DIM):
    """The plaintext sum of the survivors' protected vectors [w·Δ, w, n_eval], modulo 2^32."""
    total = np.zeros(dim + 2, dtype=np.int64)
    for p in parties:
        total[:dim] += (weights[p] * deltas[p]).astype(np.int64)
        total[dim] += weights[p]
    return total.astype(np.uint64) & np.uint64(2**32 - 1)


def demo_federation(privacy, backend, parties=4):
    task = load_task("breast-cancer", parties, 0)
    fed = securefl.Federation(
        task.model,
        task.clients,
        privacy,
        train_metrics=task.train_metrics,
        eval_metrics=task.eval_metrics,
        metric_bounds=task.metric_bounds,
        weight_bound=task.weight_bound,
        backend=backend,
    )
    return fed, task


# -- without Ray running -------------------------------------------------------------------------


def test_backend_options():
    assert backend_options(None) is None and backend_options("inprocess") is None
    assert backend_options("ray") == RayBackend()
    options = backend_options({"backend": "ray", "actors": 3, "address": "127.0.0.1:6379"})
    assert options.actors == 3 and options.address == "127.0.0.1:6379"
    with pytest.raises(ConfigError, match="unknown backend"):
        backend_options("dask")
    with pytest.raises(ConfigError, match="unknown ray backend option"):
        backend_options({"backend": "ray", "gpus": 1})
    with pytest.raises(ConfigError, match="actors"):
        RayBackend(actors=0)


def test_shared_parts_travel_once_and_requests_are_rebuilt_byte_for_byte():
    model, info = os.urandom(SHARED_MIN_BYTES + 10), os.urandom(SHARED_MIN_BYTES)
    requests = {
        p: Envelope(
            "request", "ab" * 16, 0, "in", p, {"layer": p.encode(), "model": model, "x": info}
        ).encode()
        for p in ("a", "bb", "ccc")
    }
    shared, pieces = split_shared(requests)
    assert shared == [model, info]
    for party, data in requests.items():
        assert join_segments(pieces[party], shared) == data
        assert sum(len(s) for s in pieces[party] if isinstance(s, bytes)) < 1000
    small = {p: Envelope("request", "ab" * 16, 0, "x", p, {"layer": b"1"}).encode() for p in ("a", "b")}
    assert split_shared(small) == ([], {p: [d] for p, d in small.items()})
    # A part one request carries differently travels in each request; bytes that are no envelope
    # make every request travel whole.
    requests["bb"] = requests["bb"][:-20] + bytes(20)
    shared, pieces = split_shared(requests)
    assert shared == [model] and all(join_segments(pieces[p], shared) == d for p, d in requests.items())
    assert split_shared({**requests, "d": b"not an envelope"})[0] == []


def test_the_aggregator_holds_a_phase_s_shared_parts_once():
    """Envelope.encode_segments joins back to exactly Envelope.encode; SharedRequests gives each
    request's bytes on demand and their sizes without joining them."""
    from securefl.transport import SharedRequests

    model, info = os.urandom(SHARED_MIN_BYTES + 3), os.urandom(100)
    shared = {"model": 0, "round": 1}
    envelopes = {
        p: Envelope("request", "ab" * 16, 0, "in", p, {"layer": p.encode(), "model": model, "round": info})
        for p in ("a", "bb")
    }
    requests = SharedRequests([model, info], {p: e.encode_segments(shared) for p, e in envelopes.items()})
    assert dict(requests) == {p: e.encode() for p, e in envelopes.items()}
    assert requests.size("bb") == len(envelopes["bb"].encode()) and len(requests) == 2
    assert all(not isinstance(s, bytes) or len(s) < 300 for s in requests.pieces["a"])


def test_a_round_whose_roster_outgrows_a_header_completes():
    """1,100 parties with 60-character ids: the roster (~67 kB) and the survivor set would not fit
    a 64 KiB header."""
    from securefl.wire import MAX_HEADER_BYTES

    ids = [f"{'x' * 55}{i:05d}" for i in range(1100)]
    assert sum(len(p) + 1 for p in ids) > MAX_HEADER_BYTES
    clients = dict.fromkeys(ids, fixed_delta_client(np.ones(2), 1))
    fed = securefl.Federation({"w": np.zeros(2)}, clients, "plain", weighting="uniform")
    report = fed.run_round()
    assert report.ok and len(report.survivors) == 1100 and fed.global_vector[0] == 1.0
    # secagg+ (degree 4, to stay fast): its survivor set would not fit a header either.
    stack = [securefl.Clip(4.0), securefl.Quantize(16), SecAggPlus(degree=4)]
    fed = securefl.Federation({"w": np.zeros(2)}, clients, stack, weighting="uniform")
    report = fed.run_round()
    assert report.ok and len(report.survivors) == 1100
    assert np.allclose(fed.global_vector, 1.0, atol=1e-5)


def test_parties_in_one_process_share_one_read_only_global_model():
    """A process hosting many parties (a Ray actor) keeps each round's clear global model once."""
    clients = {f"p{i}": fixed_delta_client(np.ones(DIM), 1) for i in range(3)}
    fed = securefl.Federation({"w": np.arange(DIM, dtype=float)}, clients, "plain")
    assert fed.run_round().ok
    shared = fed.nodes["p0"].round_global
    assert all(fed.nodes[p].round_global is shared for p in clients)
    assert not shared.flags.writeable and np.array_equal(shared, np.arange(DIM))
    assert fed.run_round().ok and fed.global_vector[0] == 2.0


# -- on a real local Ray ---------------------------------------------------------------------------


@pytest.mark.parametrize("privacy", ["plain", "secagg+", pytest.param("paillier", marks=pytest.mark.slow)])
def test_demo_gives_the_same_result_as_in_process(local_ray, privacy):
    results = {}
    for backend in ("inprocess", RayBackend(actors=2)):
        fed, task = demo_federation(privacy, backend)
        try:
            reports = [fed.run_round() for _ in range(2)]
            assert all(r.ok for r in reports), [r.error for r in reports]
            results[getattr(backend, "name", backend)] = (
                task.evaluate(fed.global_weights),
                fed.global_vector,
            )
        finally:
            fed.close()
    (scores, vector), (ray_scores, ray_vector) = results["inprocess"], results["ray"]
    assert ray_scores["accuracy"] == scores["accuracy"]
    if privacy == "plain":  # the same float sums, bit for bit
        np.testing.assert_array_equal(ray_vector, vector)
    else:  # the quantizers' stochastic rounding differs (paillier quantizes to fewer bits)
        np.testing.assert_allclose(ray_vector, vector, atol={"secagg+": 1e-4, "paillier": 5e-3}[privacy])


def test_exact_sum_with_a_dropout_in_every_phase_injected_on_the_actors(local_ray):
    n = 12
    faults = Faults()
    dropped = {round: (f"p{3 + round:02d}", phase) for round, phase in enumerate(PASSIVE)}
    for round, (party, phase) in dropped.items():
        faults.add("offline", party, phase=phase, round=round)
    fed, deltas, weights = integer_federation(SecAggPlus(degree=4), n, RayBackend(actors=2), faults, 6)
    try:
        for round, (party, phase) in dropped.items():
            report = fed.run_round()
            assert report.ok, report.error
            assert list(report.dropouts) == [party] and report.dropouts[party].startswith(phase)
            survivors = [p for p in deltas if p != party or phase == "unmask"]
            assert report.survivors == survivors
            np.testing.assert_array_equal(
                fed.aggregator.secure_sum.result(), expected_sum(deltas, weights, survivors)
            )
    finally:
        fed.close()


def test_a_party_that_raises_on_its_actor_is_a_dropout(local_ray):
    def crash(weights, info):
        raise RuntimeError("out of memory")

    clients = {"a": fixed_delta_client(np.ones(2), 1), "b": crash, "c": fixed_delta_client(np.ones(2), 3)}
    fed = securefl.Federation({"w": np.zeros(2)}, clients, "plain", backend=RayBackend(actors=2))
    try:
        report = fed.run_round()
        assert report.ok and report.survivors == ["a", "c"] and list(report.dropouts) == ["b"]
        np.testing.assert_allclose(fed.global_weights["w"], np.ones(2))
    finally:
        fed.close()


def _allocator_setting(_host):
    from securefl.simulation import allocator

    return allocator._applied


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_every_actor_keeps_freed_model_sized_buffers(local_ray):
    """Each actor sets its allocator once as it starts (half a 1M-parameter secagg+ round was page
    faults otherwise: securefl/simulation/allocator.py)."""
    fed = securefl.Federation(
        {"w": np.zeros(2)},
        {p: fixed_delta_client(np.ones(2), 1) for p in "ab"},
        "plain",
        backend=RayBackend(actors=2),
    )
    try:
        assert fed.transport.apply(_allocator_setting) == [True, True]
    finally:
        fed.close()


def _wait_until_dead(actor, seconds: float = 30.0) -> None:
    """Block until ``actor`` no longer answers (a CI run once started the next round first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=1.0)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            return
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.1)
    raise AssertionError("the killed actor still answers")


def test_an_actor_killed_mid_round_costs_only_its_parties(local_ray):
    """p00, p02, p04 live on actor 0; it is killed while p00 trains in round 1."""
    rng = np.random.default_rng(1)
    deltas = {f"p{i:02d}": rng.integers(-9, 9, 3).astype(float) for i in range(6)}

    def client(delta, slow):
        def train(weights, info):
            if slow and info.round == 1:
                time.sleep(3)
            return {"w": weights["w"] + delta}, 1, {}

        return train

    clients = {p: client(d, p == "p00") for p, d in deltas.items()}
    fed = securefl.Federation(
        {"w": np.zeros(3)}, clients, "plain", weighting="uniform", min_parties=2, backend=RayBackend(actors=2)
    )
    try:
        first = fed.run_round()
        assert first.ok and len(first.survivors) == 6
        before = fed.global_vector
        threading.Timer(1.0, ray.kill, args=(fed.transport.actors[0],)).start()
        report = fed.run_round()
        assert report.ok, report.error
        lost = ["p00", "p02", "p04"]
        assert sorted(report.dropouts) == lost and report.survivors == ["p01", "p03", "p05"]
        expected = np.mean([deltas[p] for p in report.survivors], axis=0)
        np.testing.assert_allclose(fed.global_vector - before, expected, atol=1e-9)
        # The next round goes on without them; with too few left it fails cleanly.
        assert fed.run_round().survivors == ["p01", "p03", "p05"]
        ray.kill(fed.transport.actors[1])
        _wait_until_dead(fed.transport.actors[1])  # ray.kill is asynchronous: a busy machine lags
        failed = fed.run_round()
        assert failed.status == "failed" and "only 0 of 6 parties" in failed.error
    finally:
        fed.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_DRIVER = """
import json, sys
import numpy as np
import securefl
from securefl.simulation import RayBackend

deltas = {f"p{i}": np.full(3, float(i)) for i in range(4)}
def client(delta):
    return lambda weights, info: ({"w": weights["w"] + delta}, 1, {})
fed = securefl.Federation({"w": np.zeros(3)}, {p: client(d) for p, d in deltas.items()}, "plain",
                          weighting="uniform", backend=RayBackend(address=sys.argv[1], actors=1))
report = fed.run_round()
import ray
print(json.dumps({"ok": report.ok, "w": fed.global_weights["w"].tolist(),
                  "nodes": len(ray.nodes()), "address": ray.get_runtime_context().gcs_address}))
"""


def test_join_a_running_cluster_by_address():
    """A head started with `ray start --head` on 127.0.0.1; a separate driver joins it by address."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    temp = tempfile.mkdtemp(prefix="sflray", dir="/tmp")  # short: Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(120):  # the head takes a few seconds to come up
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(0.5)
        driver = subprocess.run(
            [sys.executable, "-c", _DRIVER, address], env=env, capture_output=True, text=True, timeout=180
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        result = json.loads(driver.stdout.strip().splitlines()[-1])
        # Ray names the head by this machine's address; it is the head started here (same port).
        assert result["ok"] and result["address"].endswith(f":{port}") and result["nodes"] == 1
        assert result["w"] == [1.5, 1.5, 1.5]  # the mean of 0, 1, 2, 3
    finally:
        os.killpg(head.pid, 15)  # the head and everything it started, and nothing else
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
            head.wait()


# -- the command line and TOML ---------------------------------------------------------------------


def test_simulation_table_and_flags(tmp_path):
    from securefl.cli import _backend, build_parser
    from securefl.config import settings_from_dict

    plain = {"privacy": "plain"}
    settings = settings_from_dict(
        {**plain, "simulation": {"backend": "ray", "actors": 2, "address": "10.0.0.5:6379"}}
    )
    assert settings.backend == RayBackend(actors=2, address="10.0.0.5:6379")
    assert settings_from_dict(plain).backend is None
    assert settings_from_dict({**plain, "simulation": {"backend": "inprocess"}}).backend is None
    for bad, message in (
        ({"nodes": 3}, "unknown key"),
        ({"actors": 0}, "actors"),
        ({"backend": "x"}, "backend"),
    ):
        with pytest.raises(ConfigError, match=message):
            settings_from_dict({**plain, "simulation": bad})
    parser = build_parser()

    def backend(argv, configured=None):
        return _backend(parser.parse_args(argv), configured)

    assert backend(["demo"]) is None and backend(["demo", "--backend", "ray"]) == RayBackend()
    assert backend(["demo", "--ray-address", "h:1"]) == RayBackend(address="h:1")
    assert backend(["run", "f.toml", "--ray-actors", "3"], RayBackend(address="h:1")) == RayBackend(3, "h:1")
    assert backend(["run", "f.toml", "--backend", "inprocess"], RayBackend()) is None
    with pytest.raises(ConfigError, match="need --backend ray"):
        backend(["demo", "--backend", "inprocess", "--ray-actors", "2"])


@pytest.mark.slow
def test_demo_and_run_on_ray_from_the_command_line(local_ray, tmp_path, capsys):
    from securefl.cli import main

    def summary(argv):
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    common = ["--parties", "3", "--rounds", "2", "--privacy", "secagg+", "--plot", "", "--json"]
    inprocess = summary(["demo", *common])
    on_ray = summary(["demo", *common, "--backend", "ray", "--ray-actors", "2"])
    assert on_ray["final_accuracy"] == inprocess["final_accuracy"] and on_ray["rounds_failed"] == 0
    config = tmp_path / "fed.toml"
    config.write_text(
        'rounds = 1\nprivacy = "plain"\n[federation]\nparties = 3\n[simulation]\nbackend = "ray"\n'
    )
    assert summary(["run", str(config), "--json"])["rounds_failed"] == 0


def test_bench_measures_the_ray_backend_side_by_side(local_ray):
    from securefl import bench

    results = []
    for backend in (None, RayBackend(actors=2)):
        result, federation = bench.measure("secagg+", 500, 4, repeat=1, backend=backend)
        federation.close()
        results.append(result)
    inprocess, on_ray = results
    assert (inprocess.backend, on_ray.backend) == ("inprocess", "ray")
    assert on_ray.party_seconds > 0 and on_ray.aggregator_seconds > 0 and on_ray.max_error < 1e-3
    assert on_ray.bytes_up == inprocess.bytes_up
    assert bench.backend_ratios(results) == {"secagg+": on_ray.round_seconds / inprocess.round_seconds}


def test_a_reply_after_the_deadline_is_a_dropout_as_in_process(local_ray):
    def slow(weights, info):
        time.sleep(3.0)
        return {"w": weights["w"] + 5.0}, 1, {}

    clients = {"a": fixed_delta_client(np.ones(2), 1), "b": slow, "c": fixed_delta_client(np.ones(2), 1)}
    for backend in (None, RayBackend(actors=2)):
        fed = securefl.Federation({"w": np.zeros(2)}, clients, "plain", phase_timeout=1.0, backend=backend)
        try:
            report = fed.run_round()
            assert report.ok and report.survivors == ["a", "c"], backend
            assert "no reply before the deadline" in report.dropouts["b"]
        finally:
            fed.close()


def test_complete_graph_secagg_at_ten_thousand_parties_is_refused_with_an_estimate():
    from securefl.simulation.scale import check_scale

    machine = 24 * 2**30
    refused = r"secagg with 10,000 parties .* GiB .* secagg\+ masks with O\(log n\)"
    with pytest.raises(ConfigError, match=refused):
        check_scale("secagg", 10_000, 10_000, available=machine)
    assert check_scale("secagg+", 10_000, 10_000, available=machine)["neighbours"] < 60
    assert check_scale("plain", 10_000, 10_000, available=machine)["memory_gib"] < 10
    assert check_scale("secagg", 1000, 100_000, available=machine)["neighbours"] == 999
    with pytest.raises(ConfigError, match=r"7,499 neighbours .* header"):  # fits memory, not a header
        check_scale("secagg", 7500, 100, available=machine)


def test_fitted_growth():
    from securefl.simulation.scale import PER_PARTY_MODELS, TOTAL_MODELS, fit_growth

    ns = [10, 100, 1000]
    assert fit_growth(ns, [2e-3 * n * n for n in ns], TOTAL_MODELS) == ("O(n²)", pytest.approx(2.0))
    assert fit_growth(ns, [0.5 * n for n in ns], TOTAL_MODELS)[0] == "O(n)"
    assert fit_growth(ns, [n * np.log(n) for n in ns], TOTAL_MODELS)[0] == "O(n log n)"
    assert fit_growth(ns, [0.01, 0.011, 0.0099], PER_PARTY_MODELS)[0] == "O(1)"


def test_bench_scale_prints_and_plots_cost_against_n(tmp_path, capsys):
    from securefl.cli import main

    plot = tmp_path / "scaling.png"
    argv = ["bench", "--privacy", "secagg+", "--params", "50", "--repeat", "1", "--scale", "parties=3,6,12"]
    assert main([*argv, "--plot", str(plot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["privacy"], r["parties"]) for r in out["results"]] == [
        (layer, n) for layer in ("plain", "secagg+") for n in (3, 6, 12)
    ]
    assert set(out["fits"]["secagg+"]) == {"party_seconds", "aggregator_seconds", "round_seconds"}
    assert plot.stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["bench", "--scale"])
    assert main([*argv[:-1], "parties=3", "--plot", str(plot)]) == 2


def _hanging_clients(deltas, hung, release=None):
    """Clients of fixed updates; ``hung`` blocks in train until ``release`` is set (None: for ever,
    e.g. on a Ray actor, where an event of this process cannot travel)."""

    def client(party, delta):
        def train(weights, info):
            if party == hung:
                (release or threading.Event()).wait()
            return {"w": weights["w"] + delta}, 1, {}

        return train

    return {p: client(p, d) for p, d in deltas.items()}


def _run_bounded(fed, limit=120.0):
    """run_round in a thread: a driver blocked for ever (the bug) fails the test, not the suite."""
    out = []
    worker = threading.Thread(target=lambda: out.append(fed.run_round()), daemon=True)
    worker.start()
    worker.join(limit)
    assert out, "the driver stayed blocked by one hung party"
    return out[0]


@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_a_hung_party_costs_only_itself(backend, request):
    """Found by an attacker: a train that never returns blocked the driver for ever in process, and
    on Ray dropped every party of its actor for the life of the federation. Its call is now
    abandoned at the deadline; the round sums the others exactly, later rounds skip it while it is
    still inside that call, and it takes part again once the call returned."""
    if backend == "ray":
        request.getfixturevalue("local_ray")
    rng = np.random.default_rng(2)
    deltas = {f"p{i:02d}": rng.integers(-9, 9, 3).astype(float) for i in range(6)}
    release = threading.Event()
    fed = securefl.Federation(
        {"w": np.zeros(3)},
        _hanging_clients(deltas, "p00", release if backend == "inprocess" else None),
        "plain",
        weighting="uniform",
        min_parties=2,
        phase_timeout=1.0,
        backend=RayBackend(actors=2, batch=1) if backend == "ray" else None,
    )
    try:
        others = [p for p in deltas if p != "p00"]
        for _ in range(2):
            before = fed.global_vector
            report = _run_bounded(fed)
            assert report.ok, report.error
            assert report.survivors == others and list(report.dropouts) == ["p00"]
            expected = np.mean([deltas[p] for p in others], axis=0)
            np.testing.assert_allclose(fed.global_vector - before, expected, atol=1e-9)
        release.set()
        if backend == "inprocess":  # (on Ray it stays hung: the actor goes with the federation)
            time.sleep(0.2)
            assert _run_bounded(fed).survivors == sorted(deltas)
    finally:
        release.set()
        fed.close()


def test_an_actor_s_answer_is_checked_item_by_item():
    """Found by an attacker: one non-bytes item failed the whole round with nobody named, and an item
    relabelled as another actor's party got that honest party dropped for answering twice. Each item
    is checked alone: only the call's own parties, each once, bytes, a finite time ≥ 0."""
    from securefl.simulation.ray_transport import RayTransport

    transport = RayTransport(actors=[], placement={"a": 0, "b": 0, "c": 1})
    good = ("a", [(b"reply", 0.0)], 0.01)
    bad = [
        ("c", [(b"spoofed", 0.0)], 0.01),  # another actor's party
        ("a", [(b"again", 0.0)], 0.01),  # twice
        ("b", [(None, 0.0)], 0.01),  # not bytes
        ("b", [(b"x", 0.0)], -1e9),  # a negative time would pass any deadline
        ("b", [(b"x", float("nan"))], 0.0),
        ("b",),
        None,
    ]
    replies = transport._accept([good, *bad], 5.0, ["a", "b"])
    assert [(r.sender, r.data) for r in replies] == [("a", b"reply")]
    assert transport._accept("not a list", 5.0, ["a"]) == []


@pytest.mark.parametrize(
    "options",
    [{"actors": True}, {"batch": True}, {"cpus_per_actor": float("inf")}, {"cpus_per_actor": True},
     {"address": 123}, {"address": ""}],
)  # fmt: skip
def test_ray_backend_options_are_checked(options):
    with pytest.raises(ConfigError):
        RayBackend(**options)


def test_an_active_stack_is_refused_on_ray_before_any_actor_starts():
    """Found by an attacker: signed (active) SecAgg+ on Ray failed in Ray's pickling with a page of
    debug output; shipping the stack would put every party's signing key on every actor."""
    from securefl.crypto.signing import Identities

    parties = [f"p{i}" for i in range(4)]
    identities = Identities.generate(parties)
    with pytest.raises(ConfigError, match="signing key"):
        securefl.Federation(
            {"w": np.zeros(3)},
            {p: fixed_delta_client(np.ones(3), 1) for p in parties},
            [securefl.Clip(10.0), securefl.Quantize(bits=16), SecAggPlus(identities=identities)],
            weighting="uniform",
            backend=RayBackend(actors=1),
        )
