"""The deployment surface attacked (2026-12-01): key ceremonies never overwrite or write through a
link, outputs are of their kind, FED.toml numbers and TLS files are checked when read, and secrets
stay out of reprs. Each test attempts what the attacker did."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.cli import main
from securefl.crypto.certificates import check_tls_pair, read_public_file, write_federation
from securefl.deploy import load_federation, load_party
from securefl.errors import ConfigError

PARTIES = ["a", "b", "c"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    write_federation(out, "test", PARTIES)
    return out


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 9), link=st.booleans())
def test_keys_tls_never_overwrites_or_writes_through_a_link(tmp_path_factory, index, link):
    """Found by an attacker: with ca.key moved offline (good practice) a re-run re-minted every
    issued key, and certificates were written through links planted at their paths. Every target
    is checked before anything is made; one that exists (a file or a link) refuses the whole run."""
    out = tmp_path_factory.mktemp("tls")
    victim = out.parent / f"victim-{out.name}.txt"
    victim.write_text("keep me")
    targets = ["ca.pem", "aggregator.pem", "private/ca.key", "private/aggregator.key"]
    targets += [f"parties/{p}.pem" for p in PARTIES] + [f"private/{p}.key" for p in PARTIES]
    planted = out / targets[index]
    planted.parent.mkdir(parents=True, exist_ok=True)
    if link:
        planted.symlink_to(victim)
    else:
        planted.write_text("issued before")
    before = {p: os.path.lexists(out / p) for p in targets}
    with pytest.raises(ConfigError, match="never overwritten"):
        write_federation(out, "test", PARTIES)
    assert victim.read_text() == "keep me"
    assert {p: os.path.lexists(out / p) for p in targets} == before  # nothing else was made


def test_keys_tls_checks_names_before_making_anything(tmp_path):
    for argv in (["--server-names", "hôst"], ["--federation", "x" * 60], ["--federation", ""]):
        out = tmp_path / str(len(os.listdir(tmp_path)))
        assert main(["keys", "tls", "--parties", "a,b", "--out", str(out), *argv]) == 2
        assert not out.exists() or not any(out.rglob("*"))


def test_keys_paillier_never_overwrites_never_follows_and_bounds_its_size(tmp_path, capsys):
    """Found by an attacker: the public key was written through a link planted at its path; a size
    of 1000 bits left an empty directory; 1,048,576 bits was accepted (it would run for ever)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "pk"
    out.mkdir()
    (out / "paillier.public.json").symlink_to(victim)
    assert main(["keys", "paillier", "--bits", "2048", "--out", str(out)]) == 2
    assert victim.read_text() == "keep me" and not (out / "paillier.keys.json").exists()
    for bits in ("1000", "1048576"):
        fresh = tmp_path / f"pk{bits}"
        assert main(["keys", "paillier", "--bits", bits, "--out", str(fresh)]) == 2
        assert not fresh.exists()
    assert "multiple of 16" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["paillier.keys.json", "L.jsonl.key", "a.key", "party.pem"])
def test_save_writes_only_a_checkpoint(tmp_path, capsys, target):
    """Found by an attacker: --save replaced a Paillier private key, another run's ledger signing
    key and a party's TLS key with a checkpoint (no input of this run, so nothing protected them)."""
    victim = tmp_path / target
    victim.write_text("a secret")
    argv = ["demo", "--parties", "2", "--rounds", "1", "--privacy", "plain", "--save", str(victim)]
    assert main(argv) == 2
    assert victim.read_text() == "a secret"
    assert "ending in .npz" in capsys.readouterr().err


def test_secrets_stay_out_of_reprs(certs):
    """Found by an attacker: the default reprs of TLSFiles, KeyMaterial and the Paillier private key
    held the TLS key, the model key, p and q — one log line away from a leak."""
    os.environ.setdefault("SECUREFL_ALLOW_TEST_SEEDS", "1")
    from securefl.crypto import paillier
    from securefl.crypto import threshold_paillier as tp
    from securefl.layers.paillier import KeyMaterial
    from securefl.network.server import TLSFiles

    key = (certs / "private" / "a.key").read_bytes()
    files = TLSFiles(b"ca", b"cert", key)
    assert "PRIVATE" not in repr(files)
    private = paillier.generate_keypair(512)
    material = KeyMaterial(private.public, b"\x07" * 32, private)
    text = repr(material)
    assert str(material.private.p) not in text and repr(b"\x07" * 32) not in text
    share = tp.deal(512, ["a", "b", "c"], 2).shares["a"]
    assert str(share.share) not in repr(share) and repr(share.model_key) not in repr(share)


def _fed_toml(tmp_path: Path, certs: Path, network: str = "", top: str = "") -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(
        f'rounds = 1\nprivacy = "plain"\n{top}\n[network]\nparties = {PARTIES!r}\n{network}\n'
        f'[tls]\nca = "{certs}/ca.pem"\ncert = "{certs}/aggregator.pem"\n'
        f'key = "{certs}/private/aggregator.key"\n'
        f'party_certs = "{certs}/parties"\n'
    )
    return path


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["connect_timeout", "reconnect_grace", "hello_timeout", "max_message_mb"]),
    value=st.sampled_from(["nan", "inf", "-1", "0", '"soon"', "true", "1e30"]),
)
def test_network_numbers_are_checked_when_the_file_is_read(tmp_path_factory, certs, key, value):
    """Found by an attacker: connect_timeout = nan hung the aggregator for ever if a party was
    missing; inf, negative and text values were taken, or failed deep inside, mid-run."""
    path = _fed_toml(tmp_path_factory.mktemp("fed"), certs, f"{key} = {value}")
    with pytest.raises(ConfigError, match=key):
        load_federation(path)


@pytest.mark.parametrize(
    ("line", "named"),
    [("min_parties = 2.7", "min_parties"), ("phase_timeout = nan", "phase_timeout"),
     ("weight_bound = \"x\"", "weight_bound"), ("metric_bounds = 5", "metric_bounds"),
     ("train_metrics = 5", "train_metrics")],
)  # fmt: skip
def test_agreement_values_are_typed(tmp_path, certs, line, named):
    with pytest.raises(ConfigError, match=named):
        load_federation(_fed_toml(tmp_path, certs, top=line))


def test_a_fifo_or_a_directory_as_a_certificate_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    done = []
    worker = threading.Thread(target=lambda: done.append(_refusal(fifo)), daemon=True)
    worker.start()
    worker.join(60)
    assert done == ["not a regular file"], "reading a FIFO blocked"
    assert _refusal(tmp_path) == "not a regular file"
    from securefl.crypto.keyfiles import read_private

    os.chmod(fifo, 0o600)
    for path in (fifo, tmp_path):  # a key given as a directory printed "error: 3: Is a directory"
        with pytest.raises(ConfigError, match=f"{path}.*not a regular file"):
            read_private(path, "TLS private key")


def _refusal(path: Path) -> str:
    try:
        read_public_file(path, "ca")
    except ConfigError as exc:
        return "not a regular file" if "not a regular file" in str(exc) else str(exc)
    return "read"


@pytest.mark.parametrize(
    ("cert", "key", "server", "message"),
    [("aggregator.pem", "private/a.key", True, "not this certificate's key"),
     ("aggregator.pem", "private/a.identity.key", True, "not this certificate's key"),
     ("parties/a.pem", "private/a.key", True, "not the aggregator's"),
     ("parties/a.pem", "private/b.key", False, "not this certificate's key"),
     ("aggregator.pem", "private/aggregator.key", False, "not this party's")],
)  # fmt: skip
def test_a_tls_key_and_certificate_must_be_a_pair_of_this_side(certs, cert, key, server, message):
    """Found by an attacker: the aggregator given a party's key or certificate exited with "cannot
    listen … failed to bind", and a party holding another's key waited out its connect timeout."""
    with pytest.raises(ConfigError, match=message):
        pem = {name: (certs / name).read_bytes() for name in (cert, key, "ca.pem")}
        check_tls_pair(pem[cert], pem[key], pem["ca.pem"], server, "x")


def test_a_party_config_names_its_aggregator_as_text(tmp_path, certs):
    fed = _fed_toml(tmp_path, certs)
    party = tmp_path / "a.toml"
    party.write_text(
        f'federation = "{fed}"\nparty = "a"\naggregator = 5\n[tls]\nca = "{certs}/ca.pem"\n'
        f'cert = "{certs}/parties/a.pem"\nkey = "{certs}/private/a.key"\n'
    )
    os.chmod(certs / "private" / "a.key", 0o600)
    with pytest.raises(ConfigError, match="aggregator must be text"):
        load_party(party)
    assert math.isfinite(load_federation(fed).phase_timeout)


@pytest.mark.parametrize("parties", [["ca", "b"], ["aggregator", "b"], ["a", "a.identity"]])
def test_keys_tls_refuses_ids_whose_files_share_a_path_before_making_anything(tmp_path, parties):
    """Found by the re-attacker: party "ca" (the CA's key), "aggregator", or "a" beside "a.identity"
    left a half-made ceremony that a re-run then refused."""
    out = tmp_path / "certs"
    with pytest.raises(ConfigError, match="share a path"):
        write_federation(out, "test", parties)
    assert not out.exists()


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, float("nan"), -1, 0])
def test_a_phase_timeout_beyond_a_week_or_not_finite_is_refused(timeout):
    """Found by the re-attacker: inf (and anything past a thread wait's limit) made every party a
    crashed dropout and, from `securefl run`, aborted the process."""
    import numpy as np

    import securefl

    with pytest.raises(ConfigError, match="phase_timeout"):
        securefl.Federation(
            {"w": np.zeros(2)}, {"a": lambda w, i: (w, 1, {})}, "plain", phase_timeout=timeout
        )


def test_an_abandoned_call_s_worker_exits_once_the_call_returns(monkeypatch):
    """Found by the re-attacker: every abandoned call left its worker thread alive for good (one
    thread per hang of a party that overran every round)."""
    import time

    from securefl import deadlines

    monkeypatch.setattr(deadlines, "_IDLE_SECONDS", 0.2)
    caller = deadlines.DeadlineCaller()
    before = threading.active_count()
    for _ in range(10):
        with pytest.raises(deadlines.Hung):
            caller.call("p", lambda: time.sleep(0.15), 0.01)
        time.sleep(0.2)  # the call returns; the party is free again
        assert not caller.busy("p")
    time.sleep(0.6)
    assert threading.active_count() <= before + 1


@pytest.mark.parametrize("limit", [-1, 0, 1 << 31, 2.5, True, "256"])
def test_a_frame_limit_outside_grpc_s_range_is_refused_by_both_ends_of_the_api(certs, limit):
    """FED.toml's max_message_mb was checked, but the library's own ends took any value: −1 turned
    gRPC's size limit off on a party. Both ends now refuse it before touching the network."""
    from securefl.network.client import run_party
    from securefl.network.server import GrpcServerTransport, TLSFiles

    tls = TLSFiles((certs / "ca.pem").read_bytes(), (certs / "parties/a.pem").read_bytes(), b"")
    with pytest.raises(ConfigError, match="max_message_bytes must be a whole number"):
        run_party("a", "127.0.0.1:1", tls, "0" * 64, lambda *a: None, max_message_bytes=limit)
    with pytest.raises(ConfigError, match="max_message_bytes must be a whole number"):
        GrpcServerTransport("127.0.0.1:0", tls, {"a": None}, "s", {}, "0" * 64, max_message_bytes=limit)
