"""securefl bench: the JSON it promises, and figures that agree with what the layers produced."""

import json
import math

import numpy as np
import pytest

from securefl import bench
from securefl.cli import main
from securefl.errors import ConfigError
from securefl.wire import REPLY, Envelope, pack_array

KEYS = {
    "privacy",
    "params",
    "parties",
    "party_seconds",
    "aggregator_seconds",
    "keyholder_seconds",
    "bytes_up",
    "expansion",
    "max_error",
    "speedup_vs_naive",
}


def test_json_document_shape(capsys, tmp_path):
    code = main(
        [
            "bench",
            "--params",
            "300",
            "--parties",
            "3",
            "--repeat",
            "1",
            "--json",
            "--plot",
            str(tmp_path / "b.png"),
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = {r["privacy"]: r for r in document["results"]}
    assert set(results) == {"plain", "secagg", "secagg+", "paillier", "ckks"}
    for r in results.values():
        assert set(r) >= KEYS
        assert r["params"] == 300 and r["parties"] == 3
        assert r["party_seconds"] >= 0 and r["aggregator_seconds"] >= 0 and r["bytes_up"] > 0
        assert r["expansion"] == pytest.approx(r["bytes_up"] / 1200)
    for name in ("plain", "secagg", "secagg+"):
        assert results[name]["speedup_vs_naive"] is None and results[name]["keyholder_seconds"] is None
    assert results["paillier"]["speedup_vs_naive"] > 1 and results["paillier"]["naive_extrapolated"]
    assert results["ckks"]["speedup_vs_naive"] > 0 and not results["ckks"]["naive_extrapolated"]
    assert results["paillier"]["keyholder_seconds"] > 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("privacy", ["plain", "secagg", "paillier"])
def test_bytes_agree_with_the_transport(privacy):
    result, federation = bench.measure(privacy, 500, 3, repeat=1)
    last = federation.history.rounds[-1]
    assert result.bytes_up_total == last.bytes_up  # exactly what the transport carried
    if privacy == "plain":
        envelope = Envelope(
            REPLY, federation.session, 1, "input", "p0000", {"layer": pack_array(np.zeros(502, "<f4"))}
        )
        assert result.bytes_up == len(envelope.encode())


def test_errors_agree_with_each_layers_precision():
    parties = 4
    plain, _ = bench.measure("plain", 400, parties, repeat=1)
    assert plain.max_error < 1e-6  # float32 on the wire
    secagg, _ = bench.measure("secagg", 400, parties, repeat=1)
    assert secagg.max_error <= parties * 10 / (2**23 - 1)  # one 24-bit step per party, clip norm 10
    paillier, _ = bench.measure("paillier", 400, parties, repeat=1)
    assert paillier.max_error <= parties * 10 / (2**15 - 1)
    ckks, _ = bench.measure("ckks", 400, parties, repeat=1)
    assert ckks.max_error < 1e-4


def test_dropouts_are_measured_on_the_survivors():
    # 2 of 9 drop after sharing keys: each survivor keeps 6 share holders, the threshold is 6
    result, federation = bench.measure("secagg", 300, 9, dropout=0.2, repeat=1)
    assert len(federation.history.rounds[-1].survivors) == 7
    assert result.max_error < 1e-4


def test_a_configuration_that_cannot_fit_is_refused_before_starting(capsys):
    with pytest.raises(ConfigError, match=r"needs about .* GiB in one process"):
        bench.check_fits("ckks", 10_000_000, 1000)
    assert main(["bench", "--params", "10000000", "--parties", "1000", "--privacy", "ckks"]) == 2
    assert "GiB are available" in capsys.readouterr().err.replace("\n", " ")
    for args, message in [((5, 3), "--params must be between"), ((100, 1), "--parties must be between")]:
        with pytest.raises(ConfigError, match=message):
            bench.check_fits("plain", *args)


def test_secagg_quantizes_to_fit_a_thousand_parties():
    stack = bench.bench_stack("secagg", 1000)
    assert stack[1].bits == 21 and 1000 * (2**20 - 1) <= 2**31 - 1
    assert math.isclose(
        bench.check_fits("plain", 1_000_000, 2)["memory_gib"], 2 * 1e6 * 56 / 2**30 + 64e6 / 2**30
    )


def test_cli_bench_runs_paillier_threshold_without_a_traceback(capsys):
    """Every registered layer benches from the CLI (paillier-threshold once raised a KeyError)."""
    args = ["bench", "--privacy", "paillier-threshold", "--params", "100", "--parties", "3", "--repeat", "1"]
    assert main([*args, "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert {r["privacy"] for r in results} >= {"plain", "paillier-threshold"}
    assert all(r["max_error"] < 1e-2 for r in results)
