"""paillier-threshold deployed: aggregator and parties as processes over mutual TLS, each in its own
directory holding only its own key file: the aggregator the public key, each party the share named
after its certificate's party id. The federation file (and so its agreed terms) is the same for all."""

import json
import shutil
import subprocess
import sys

from test_network import PARTIES, _env, _federation

from securefl.layers.paillier_threshold import PUBLIC_FILE, key_ceremony, share_file_name

PRIVACY = """
[[privacy]]
layer = "clip"
norm = 10.0

[[privacy]]
layer = "quantize"
bits = 16

[[privacy]]
layer = "paillier-threshold"
key_dir = "keys"
workers = 1
"""


def _machine(tmp_path, name, files):
    home = tmp_path / name
    (home / "keys").mkdir(parents=True)
    (home / "certs").symlink_to(tmp_path / "certs")
    shutil.copy(tmp_path / "fed.toml", home / "fed.toml")
    for source, target in files:
        shutil.copy(source, home / target)
    return home


def test_a_threshold_federation_of_processes(tmp_path):
    _federation(tmp_path, PRIVACY)
    ceremony = tmp_path / "ceremony"
    key_ceremony(ceremony, PARTIES, 3, bits=512)
    aggregator_home = _machine(tmp_path, "aggregator", [(ceremony / PUBLIC_FILE, f"keys/{PUBLIC_FILE}")])
    homes = {
        party: _machine(
            tmp_path,
            party,
            [
                (ceremony / PUBLIC_FILE, f"keys/{PUBLIC_FILE}"),
                (ceremony / share_file_name(party), f"keys/{share_file_name(party)}"),
                (tmp_path / f"{party}.toml", f"{party}.toml"),
            ],
        )
        for party in PARTIES
    }
    shutil.rmtree(ceremony)  # the dealer erases everything
    cli = [sys.executable, "-m", "securefl.cli"]
    aggregator = subprocess.Popen(
        [*cli, "aggregator", "--config", "fed.toml", "--json"],
        cwd=aggregator_home,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "aggregator.log", "w"),  # noqa: SIM115 - the process owns it
        text=True,
    )
    parties = [
        subprocess.Popen(
            [*cli, "party", "--config", f"{p}.toml", "--train", "network_party:make_client", "--json"],
            cwd=homes[p],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / f"{p}.log", "w"),  # noqa: SIM115
            text=True,
        )
        for p in PARTIES
    ]
    try:
        out, _ = aggregator.communicate(timeout=300)
        codes = [p.wait(timeout=60) for p in parties]
    finally:
        for process in [aggregator, *parties]:
            process.kill()
    log = (tmp_path / "aggregator.log").read_text()
    assert aggregator.returncode == 0, log
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["rounds_ok"] == 2 and summary["dropouts"] == {}, log
    assert summary["sealed"] and codes == [0, 0, 0, 0]
    assert "round 1 ok: 4 selected, 4 summed" in log
