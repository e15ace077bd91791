"""Aggregator and parties as real processes on 127.0.0.1, over gRPC with mutual TLS."""

import datetime as dt
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.crypto.certificates import Issued, create_ca, issue, write_federation
from securefl.deploy import load_federation
from securefl.network.frames import METHOD, Hello
from securefl.privacy.audit import audit

ROOT = Path(__file__).resolve().parent.parent
PARTIES = [f"hospital-{i}" for i in range(1, 5)]
_spec = importlib.util.spec_from_file_location("network_run", ROOT / "examples" / "network" / "run.py")
RUN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RUN)


def _federation(tmp_path, privacy="secagg", rounds=2, train=None, metrics=True):
    write_federation(tmp_path / "certs", "test", PARTIES)
    port = RUN.free_port()
    RUN.write_federation(
        tmp_path,
        privacy,
        rounds,
        port,
        parties=PARTIES,
        module="network_party",
        max_message_mb=1,
        metrics=metrics,
    )
    for party, table in (train or {}).items():
        with open(tmp_path / f"{party}.toml", "a") as handle:
            handle.write("\n[train]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()))
    return port


def _cli(*args):
    return [sys.executable, "-m", "securefl.cli", *args]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    return env


def _aggregator(tmp_path):
    return subprocess.Popen(
        [sys.executable, "-m", "securefl.cli", "aggregator", "--config", "fed.toml", "--json"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "aggregator.log", "w"),
        text=True,
    )


def _parties(tmp_path, parties=PARTIES):
    return [
        subprocess.Popen(
            [*_cli("party", "--config", f"{p}.toml"), "--train", "network_party:make_client", "--json"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / f"{p}.log", "w"),
            text=True,
        )
        for p in parties
    ]


def _finish(tmp_path, aggregator, parties):
    try:
        out, _ = aggregator.communicate(timeout=300)
        codes = [p.wait(timeout=60) for p in parties]
    finally:
        for process in [aggregator, *parties]:
            process.kill()
    log = (tmp_path / "aggregator.log").read_text()
    assert aggregator.returncode == 0, log
    return json.loads(out.strip().splitlines()[-1]), codes, log


@pytest.mark.parametrize("privacy", ["secagg", "paillier"])
def test_a_federation_of_processes_over_mutual_tls(tmp_path, privacy):
    _federation(tmp_path, privacy)
    aggregator = _aggregator(tmp_path)
    summary, codes, log = _finish(tmp_path, aggregator, _parties(tmp_path))
    assert summary["rounds_ok"] == 2 and summary["dropouts"] == {}, log
    assert summary["parties_seen"] == PARTIES and codes == [0, 0, 0, 0]
    assert summary["sealed"] == (privacy == "paillier")
    assert "round 1 ok: 4 selected, 4 summed" in log


def test_a_party_killed_mid_round_is_a_dropout_and_the_round_completes(tmp_path):
    _federation(tmp_path, "secagg", rounds=3, train={"hospital-4": {"die_in_round": 1}})
    aggregator = _aggregator(tmp_path)
    summary, codes, log = _finish(tmp_path, aggregator, _parties(tmp_path))
    assert summary["rounds_ok"] == 3, log
    # killed in round index 1: rounds count from 1 in the summary and the log
    assert set(summary["dropouts"]) == {"2", "3"} and "hospital-4" in summary["dropouts"]["2"]
    assert codes[:3] == [0, 0, 0] and codes[3] == -9
    assert "round 2 ok: 4 selected, 3 summed" in log


def _wait_listening(port, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the aggregator did not listen on {port}")


DP_SECAGG = """
[[privacy]]
layer = "clip"
norm = 1.0
[[privacy]]
layer = "quantize"
bits = 16
[[privacy]]
layer = "dp"
noise_multiplier = 1.0
[[privacy]]
layer = "secagg"

[budget]
epsilon = 100.0
ledger = "ledger.jsonl"
"""


def test_distributed_dp_over_the_network_logs_epsilon_and_keeps_a_ledger(tmp_path):
    _federation(tmp_path, DP_SECAGG, train={p: {"metrics": "false"} for p in PARTIES}, metrics=False)
    summary, codes, log = _finish(tmp_path, _aggregator(tmp_path), _parties(tmp_path))
    assert summary["rounds_ok"] == 2 and codes == [0, 0, 0, 0], log
    assert 0 < summary["epsilon"] < 100 and f"ε {summary['epsilon']:.4g}" in log
    result = audit(tmp_path / "ledger.jsonl", (tmp_path / "ledger.jsonl.pub").read_text().strip())
    assert (
        result.valid and result.releases == 2 and result.epsilon["rdp"] == pytest.approx(summary["epsilon"])
    )


def _attempt(port, agreement, ca, leaf: Issued | None, hello="hospital-1", frames=(), plaintext=False):
    target = f"127.0.0.1:{port}"
    if plaintext:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(ca, leaf.key_pem, leaf.cert_pem)
        channel = grpc.secure_channel(target, credentials)
    with channel:
        responses = channel.stream_stream(METHOD)(
            iter([Hello(hello, agreement).encode(), *frames]), timeout=20
        )
        with pytest.raises(grpc.RpcError) as refused:
            for _ in responses:
                pass
    return refused.value.code(), refused.value.details() or ""


def test_outsiders_are_refused_and_the_aggregator_goes_on(tmp_path):
    port = _federation(tmp_path, "secagg", rounds=1)
    agreement = load_federation(tmp_path / "fed.toml").agreement
    certs = tmp_path / "certs"
    ca_pem = (certs / "ca.pem").read_bytes()
    ca = Issued(ca_pem, (certs / "private" / "ca.key").read_bytes())
    member = Issued(
        (certs / "parties" / "hospital-1.pem").read_bytes(),
        (certs / "private" / "hospital-1.key").read_bytes(),
    )
    identity = Ed25519PrivateKey.generate().public_key()
    aggregator = _aggregator(tmp_path)
    try:
        _wait_listening(port)
        refusals = {
            "another CA": _attempt(
                port, agreement, ca_pem, issue(create_ca("other"), "hospital-1", identity=identity)
            ),
            "expired": _attempt(
                port,
                agreement,
                ca_pem,
                issue(
                    ca,
                    "hospital-2",
                    identity=identity,
                    days=1,
                    not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=9),
                ),
                hello="hospital-2",
            ),
            "not allowlisted": _attempt(
                port, agreement, ca_pem, issue(ca, "mallory", identity=identity), hello="mallory"
            ),
            "impersonation": _attempt(port, agreement, ca_pem, member, hello="hospital-2"),
            "other settings": _attempt(port, "0" * 64, ca_pem, member),
            "plaintext": _attempt(port, agreement, ca_pem, None, plaintext=True),
            "oversized": _attempt(port, agreement, ca_pem, member, frames=[b"\0" * (2 << 20)]),
        }
    except BaseException:
        aggregator.kill()
        raise
    codes = {why: code for why, (code, _) in refusals.items()}
    assert codes["another CA"] == codes["expired"] == codes["plaintext"] == grpc.StatusCode.UNAVAILABLE
    assert codes["not allowlisted"] == codes["impersonation"] == grpc.StatusCode.PERMISSION_DENIED
    assert codes["oversized"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert codes["other settings"] == grpc.StatusCode.FAILED_PRECONDITION
    assert "not in this federation" in refusals["not allowlisted"][1]
    # The aggregator is still up: the real hospitals join and the round completes.
    summary, codes, log = _finish(tmp_path, aggregator, _parties(tmp_path))
    assert summary["rounds_ok"] == 1 and codes == [0, 0, 0, 0], log
    assert "refused 'mallory'" in log


# -- a malicious member -------------------------------------------------------------------------

BAD = "hospital-4"
HONEST = [p for p in PARTIES if p != BAD]
# One attack per round (network_bad_party.ATTACKS names the phase each corrupts), then two honest
# rounds: the federation must still be whole after all of them.
PLAN = [
    "shares",
    "random_layer",
    "garbage",
    "impersonate",
    "oversized_payload",
    "oversized_frame",
    "duplicate",
    "flood",
    "wrong_round",
    "wrong_phase",
    "forged_log",
    "twice",
    "hangup",
    "-",
    "-",
]


def _bad_party(tmp_path, plan):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "network_bad_party",
            "--config",
            f"{BAD}.toml",
            "--train",
            "network_party:make_client",
            "--plan",
            ",".join(plan),
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / f"{BAD}.log", "w"),
        text=True,
    )


@pytest.mark.slow
def test_a_malicious_member_costs_only_itself_and_the_aggregator_stays_up(tmp_path):
    _federation(tmp_path, "secagg", rounds=len(PLAN))
    aggregator = _aggregator(tmp_path)
    bad = _bad_party(tmp_path, PLAN)
    summary, codes, log = _finish(tmp_path, aggregator, [*_parties(tmp_path, HONEST), bad])
    bad_log = (tmp_path / f"{BAD}.log").read_text()
    context = f"{log}\n--- {BAD} ---\n{bad_log}"
    # The aggregator ran every round and exited 0 by its own decision (_finish checks the code).
    assert summary["rounds_ok"] + summary["rounds_failed"] == len(PLAN), context
    for round, attack in enumerate(PLAN, start=1):  # rounds count from 1 in the summary and the log
        dropped = summary["dropouts"].get(str(round), {})
        # No honest party is ever dropped for the bad party's message.
        assert not set(dropped) & set(HONEST), (round, attack, context)
        line = next(x for x in log.splitlines() if f"deploy: round {round} " in x)
        if attack == "-":
            assert f"round {round} ok: 4 selected, 4 summed, dropouts: none" in line, context
        elif str(round) in summary["failures"]:  # failed cleanly, with a reason
            assert summary["failures"][str(round)], context
        else:  # ok: the honest three are in the sum
            assert f"round {round} ok: 4 selected" in line and "summed" in line, context
    # The attacks that the aggregator can pin on the bad party name it.
    for attack in (
        "random_layer",
        "garbage",
        "impersonate",
        "oversized_payload",
        "wrong_round",
        "wrong_phase",
    ):
        round = PLAN.index(attack) + 1
        assert BAD in summary["dropouts"].get(str(round), {}) or str(round) in summary["failures"], (
            attack,
            context,
        )
    assert "round 2 advertise: garbage" in bad_log and "round 12 masked: hangup" in bad_log, bad_log
    # Party-supplied text is escaped: no forged line, no terminal control sequence in the log.
    assert not any(x.startswith("INFO securefl.deploy: round 99") for x in log.splitlines()), log
    assert "\x1b" not in log and "\u202e" not in log
    assert "FORGED" in log  # it is there, inside the escaped withdraw reason
    assert codes == [0, 0, 0, 0], context


def test_sigterm_ends_the_aggregator_cleanly_with_a_message(tmp_path):
    port = _federation(tmp_path, "secagg", rounds=1)
    aggregator = _aggregator(tmp_path)
    try:
        _wait_listening(port)
        aggregator.send_signal(signal.SIGTERM)
        out, _ = aggregator.communicate(timeout=60)
    finally:
        aggregator.kill()
    log = (tmp_path / "aggregator.log").read_text()
    assert aggregator.returncode == 128 + signal.SIGTERM, log
    assert "stopped by SIGTERM" in log and "Traceback" not in log
    assert json.loads(out.strip().splitlines()[-1]) == {"error": "stopped by SIGTERM", "type": "Stopped"}
