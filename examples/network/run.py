"""Three hospital processes and an aggregator on 127.0.0.1, over gRPC with mutual TLS.

    python examples/network/run.py --privacy secagg        # or plain, secagg+, paillier, ckks
    python examples/network/run.py --privacy secagg --workdir fed/   # keep the files to look at

What it does, as an operator would by hand:

1. ``securefl keys tls --parties hospital-1,hospital-2,hospital-3 --out certs`` — a federation CA,
   the aggregator's certificate, and per hospital a certificate binding its id to its Ed25519
   protocol identity (private keys 0600 in certs/private/);
2. writes fed.toml (the federation's agreement, the same file for everyone) and one party toml per
   hospital;
3. starts ``securefl aggregator --config fed.toml`` and ``securefl party --config hospital-N.toml
   --train hospital:make_client`` for each hospital, as separate processes;
4. waits for them, and scores the final global model on held-out data (when the layer lets the
   aggregator hold it: not with paillier or ckks, whose model only the hospitals can open).

The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PARTIES = ["hospital-1", "hospital-2", "hospital-3"]
SECURE = {  # the privacy stack per preset, with the demo task's metrics declared
    "plain": 'privacy = "plain"',
    "secagg": 'privacy = "secagg"',
    "secagg+": 'privacy = "secagg+"',
    "paillier": 'privacy = "paillier"',
    "ckks": 'privacy = "ckks"',
}


def write_federation(
    workdir: Path,
    privacy: str,
    rounds: int,
    port: int,
    extra: str = "",
    parties: list[str] = PARTIES,
    module: str = "hospital",
    max_message_mb: float = 64,
    metrics: bool = True,
) -> Path:
    """fed.toml and one toml per party in ``workdir`` (certificates already in workdir/certs);
    ``extra`` is added after the privacy stack, ``module`` provides ``initial_model``. Without
    ``metrics`` (as DP requires) every party weighs 1 and reports none."""
    fed = workdir / "fed.toml"
    weighing = (
        'weight_bound = 300\ntrain_metrics = ["loss"]\neval_metrics = ["loss", "accuracy"]\n'
        "metric_bounds = { loss = 10.0, accuracy = 1.0 }"
        if metrics
        else 'weighting = "uniform"'
    )
    fed.write_text(
        f"""rounds = {rounds}
model = "{module}:initial_model"
min_parties = 2
phase_timeout = 60.0
{weighing}
{SECURE.get(privacy, privacy)}
{extra}
[network]
address = "127.0.0.1:{port}"
parties = {json.dumps(parties)}
max_message_mb = {max_message_mb}
connect_timeout = 60.0
reconnect_grace = 3.0

[tls]
ca = "certs/ca.pem"
cert = "certs/aggregator.pem"
key = "certs/private/aggregator.key"
party_certs = "certs/parties"
"""
    )
    for party in parties:
        (workdir / f"{party}.toml").write_text(
            f"""federation = "fed.toml"
party = "{party}"

[tls]
ca = "certs/ca.pem"
cert = "certs/parties/{party}.pem"
key = "certs/private/{party}.key"
identity = "certs/private/{party}.identity.key"
"""
        )
    return fed


def securefl(*args: str) -> list[str]:
    return [sys.executable, "-m", "securefl.cli", *args]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--privacy", default="secagg", choices=sorted(SECURE))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", help="keep the certificates, configs and logs here")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="securefl-network-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment()
    subprocess.run(
        securefl("keys", "tls", "--parties", ",".join(PARTIES), "--out", str(workdir / "certs")),
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    write_federation(workdir, args.privacy, args.rounds, free_port())
    model = workdir / "final.npz"
    with open(workdir / "aggregator.log", "w") as log:
        save = [] if args.privacy in ("paillier", "ckks") else ["--save-model", str(model)]
        aggregator = subprocess.Popen(
            securefl("aggregator", "--config", "fed.toml", "--json", *save),
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        parties = [
            subprocess.Popen(
                securefl("party", "--config", f"{party}.toml", "--train", "hospital:make_client", "--json"),
                cwd=workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=open(workdir / f"{party}.log", "w"),  # noqa: SIM115 - closed when the process ends
                text=True,
            )
            for party in PARTIES
        ]
        out, _ = aggregator.communicate(timeout=900)
        for process in parties:
            process.wait(timeout=120)
    print((workdir / "aggregator.log").read_text(), file=sys.stderr)
    summary = json.loads(out.strip().splitlines()[-1])
    if model.exists():
        sys.path.insert(0, str(HERE))
        from hospital import held_out_accuracy

        with np.load(model, allow_pickle=False) as arrays:
            summary["accuracy"] = held_out_accuracy({k: arrays[k] for k in arrays.files})
    summary["party_exit_codes"] = [p.returncode for p in parties]
    summary["workdir"] = str(workdir)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
