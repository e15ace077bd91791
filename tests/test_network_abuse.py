"""Tracker issue 14: an aggregator that one abusive member cannot exhaust. Real processes on
127.0.0.1: the aggregator, three honest parties, and hospital-4, a member with a valid certificate
that takes part honestly on one stream while it attacks beside it (``network_bad_party
--background``) or floods its own stream. Each attack is bounded in count and time; each test
checks that the aggregator stays up, the honest parties' rounds complete, and the aggregator's
memory, threads and file descriptors stay within the bounds protocols/network.md states.
"""

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from securefl.crypto.certificates import write_federation
from securefl.network.server import default_max_connections

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_network import RUN, _cli, _env

PARTIES = [f"hospital-{i}" for i in range(1, 5)]
BAD, HONEST = PARTIES[-1], PARTIES[:-1]
HELLO_TIMEOUT = 2.0
MAX_MESSAGE_MB = 8
MiB = 1 << 20
# protocols/network.md, "Bounds": frames of party bytes held at once, per party, in units of
# max_message_mb; and what the process needs beside them.
FRAMES_PER_PARTY = 5
OVERHEAD_MB = 64


@dataclass
class Sample:
    seconds: float
    rss: int  # bytes
    threads: int
    fds: int
    rounds_logged: int
    ready: bool  # every party connected, round 0 about to start


@dataclass
class Watch:
    """The aggregator process as the operator's tools see it, every 20 ms."""

    pid: int
    log: Path
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                fds = len(list(Path(f"/proc/{self.pid}/fd").iterdir()))
            except (FileNotFoundError, ProcessLookupError):
                return
            if "VmRSS:" not in status:  # exited (a zombie has no memory)
                return
            rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
            threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
            text = self.log.read_text()
            rounds = len(re.findall(r"deploy: round \d+ ", text))
            ready = "parties connected before round 0" in text
            self.samples.append(Sample(time.monotonic() - started, rss, threads, fds, rounds, ready))
            time.sleep(0.02)

    @property
    def start(self) -> Sample:
        """The first sample once every party is connected (imports done, listening)."""
        return next(s for s in self.samples if s.ready)

    def at_round(self, done: int) -> Sample:
        """The first sample taken once ``done`` rounds were logged."""
        return next(s for s in self.samples if s.rounds_logged >= done)

    def peak(self, attr: str, after: int = 0) -> int:
        return max(getattr(s, attr) for s in self.samples if s.rounds_logged >= after)


def _federation(tmp_path, rounds, train_seconds, **network):
    write_federation(tmp_path / "certs", "test", PARTIES)
    port = RUN.free_port()
    RUN.write_federation(
        tmp_path,
        "plain",
        rounds,
        port,
        parties=PARTIES,
        module="network_tiny",
        max_message_mb=MAX_MESSAGE_MB,
        metrics=False,
    )
    fed = tmp_path / "fed.toml"
    extra = {"hello_timeout": HELLO_TIMEOUT, **network}
    lines = "".join(f"{k} = {v}\n" for k, v in extra.items())
    fed.write_text(fed.read_text().replace("[tls]\n", lines + "\n[tls]\n", 1))
    for party in PARTIES:
        with open(tmp_path / f"{party}.toml", "a") as handle:
            handle.write(f"\n[train]\ntrain_seconds = {train_seconds}\n")
    return port


def _run(tmp_path, plan, background=None, count=20, during=None):
    """Aggregator, honest parties and the bad one; the aggregator watched until it exits.
    ``during(honest, watch, start_party)``, if given, runs beside them (it may restart a party)."""
    with contextlib.ExitStack() as files:
        return _run_logged(
            tmp_path, plan, background, count, lambda p: files.enter_context(open(p, "w")), during
        )


def _run_logged(tmp_path, plan, background, count, log_file, during=None):
    log = tmp_path / "aggregator.log"
    aggregator = subprocess.Popen(
        [*_cli("aggregator", "--config", "fed.toml", "--json")],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=log_file(log),
        text=True,
    )
    watch = Watch(aggregator.pid, log)
    watcher = threading.Thread(target=watch.run, daemon=True)
    watcher.start()

    def start_party(p, log_name=None):
        return subprocess.Popen(
            [*_cli("party", "--config", f"{p}.toml", "--train", "network_tiny:make_client")],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=log_file(tmp_path / (log_name or f"{p}.log")),
        )

    honest = [start_party(p) for p in HONEST]
    command = [
        sys.executable,
        "-m",
        "network_bad_party",
        "--config",
        f"{BAD}.toml",
        "--train",
        "network_tiny:make_client",
        "--plan=" + ",".join(plan),  # (with "=": a plan may start with "-")
    ]
    if background:
        command += ["--background", background, "--count", str(count)]
    bad = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=log_file(tmp_path / f"{BAD}.log"),
        text=True,
    )
    beside = None
    if during is not None:
        beside = threading.Thread(target=during, args=(honest, watch, start_party), daemon=True)
        beside.start()
    try:
        out, _ = aggregator.communicate(timeout=120)  # a generous bound that proves "did not hang"
        if beside is not None:
            beside.join(30)
        codes = [p.wait(timeout=60) for p in honest]
        bad_out, _ = bad.communicate(timeout=90)
    finally:
        watch.stop.set()
        for process in [aggregator, *honest, bad]:
            process.kill()
    watcher.join(5)
    text = log.read_text()
    context = f"{text}\n--- {BAD} ---\n{(tmp_path / f'{BAD}.log').read_text()}"
    assert aggregator.returncode == 0, context
    assert "Traceback" not in text, context
    summary = json.loads(out.strip().splitlines()[-1])
    found = json.loads(bad_out.strip().splitlines()[-1]) if background else {}
    return summary, codes, found, watch, context


def _honest_rounds_complete(summary, codes, rounds, context):
    assert codes == [0, 0, 0], context
    assert summary["rounds_ok"] == rounds, context
    for dropped in summary["dropouts"].values():
        assert not set(dropped) & set(HONEST), context


def _within_bounds(watch, context, parties=len(PARTIES)):
    """Memory, threads and descriptors within what protocols/network.md states."""
    start = watch.start
    rss_bound = start.rss + (parties * FRAMES_PER_PARTY * MAX_MESSAGE_MB + OVERHEAD_MB) * MiB
    assert watch.peak("rss") <= rss_bound, (watch.peak("rss") / MiB, rss_bound / MiB, context)
    # Threads: the main one, gRPC's own, the watchdog, 2 × parties + 8 workers, a reader per party.
    workers = 2 * parties + 8
    assert watch.peak("threads") <= start.threads + workers + parties + 4, context
    assert watch.peak("fds") <= start.fds + default_max_connections(parties) + 16, context


def _figures(name, watch, **extra):
    """What the test measured, for the report (pytest -s shows it)."""
    first = watch.start
    print(
        f"\n[{name}] rss start {first.rss / MiB:.0f} MiB, peak {watch.peak('rss') / MiB:.0f} MiB, "
        f"end {watch.samples[-1].rss / MiB:.0f} MiB; threads start {first.threads}, peak "
        f"{watch.peak('threads')}; fds start {first.fds}, peak {watch.peak('fds')}; {extra}"
    )


def test_idle_member_streams_are_refused_or_cut_at_the_hello_deadline(tmp_path):
    """20 connections of one member, each with a stream that never says hello (the issue: 20 such
    kept the honest parties out): one waits its hello_timeout, the others are refused at once."""
    _federation(tmp_path, rounds=6, train_seconds=0.5)
    summary, codes, found, watch, context = _run(tmp_path, ["-"] * 6, "idle", 20)
    _honest_rounds_complete(summary, codes, 6, context)
    assert summary["dropouts"] == {}, context  # its own honest stream was never disturbed
    assert sum(found["codes"].values()) == 20 and found["unfinished"] == 0, found
    cut = found["codes"].get("DEADLINE_EXCEEDED", 0) + found["codes"].get("CANCELLED", 0)
    assert found["codes"].get("RESOURCE_EXHAUSTED", 0) >= 19 - cut and cut >= 1, found
    assert set(found["codes"]) <= {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"}, found
    assert found["last_ended_after"] < 3 * HELLO_TIMEOUT + 5, found
    _within_bounds(watch, context)
    _figures("idle", watch, **found)


def test_a_frame_flood_is_bounded_by_configuration_not_by_the_client(tmp_path):
    """Round 2: hospital-4's reply, then 200 frames of 4 MiB (the issue's flood, 800 MiB in all).
    It is dropped for one round; the aggregator's memory stays within the stated bound."""
    _federation(tmp_path, rounds=4, train_seconds=0.3)
    summary, codes, _, watch, context = _run(tmp_path, ["-", "flood_big", "-", "-"])
    _honest_rounds_complete(summary, codes, 4, context)
    # Dropped once: in round 2 — or in round 3, when a junk frame still in flight as round 3's
    # request goes out is taken as its answer (frames answer requests in order).
    assert len(summary["dropouts"]) == 1 and set(summary["dropouts"]) <= {"2", "3"}, context
    assert {p for dropped in summary["dropouts"].values() for p in dropped} == {BAD}, context
    assert "round 4 ok: 4 selected, 4 summed" in context  # it came back and was summed again
    _within_bounds(watch, context)
    before, after = watch.at_round(1), watch.samples[-1]
    _figures("flood", watch, rss_before_flood_mib=before.rss // MiB, rss_after_mib=after.rss // MiB)


def test_connection_churn_of_300_connections(tmp_path):
    """300 connections opened and closed, 8 at a time, each with a bad opening (none, garbage, a
    JSON bomb, another party's name, other settings): every one ends with a status code, and the
    aggregator's descriptors and threads come back down."""
    _federation(tmp_path, rounds=8, train_seconds=0.5)
    summary, codes, found, watch, context = _run(tmp_path, ["-"] * 8, "churn", 300)
    _honest_rounds_complete(summary, codes, 8, context)
    assert sum(found["codes"].values()) == 300, found
    assert set(found["codes"]) <= {
        "INVALID_ARGUMENT",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
    }, found
    _within_bounds(watch, context)
    _figures("churn", watch, **found)


def test_a_raw_tcp_slowloris_is_cut_at_the_handshake_deadline(tmp_path):
    """200 raw TCP connections trickling a TLS ClientHello (no certificate needed for that): those
    over max_connections are closed on accept, the rest at the handshake deadline; established
    streams go on, and once they are gone a new stream gets in."""
    _federation(tmp_path, rounds=8, train_seconds=0.6, max_connections=64)
    summary, codes, found, watch, context = _run(tmp_path, ["-"] * 8, "slowloris", 200)
    _honest_rounds_complete(summary, codes, 8, context)
    assert found["still_open_at_20s"] == 0, found
    assert found["closed_by_server"] == found["connected"], found
    assert found["longest_held"] < HELLO_TIMEOUT + 3, found
    assert found["member_stream_after"] == "FAILED_PRECONDITION", found  # it reached the handler
    _within_bounds(watch, context)
    _figures("slowloris", watch, **found)


def test_json_bombs_in_hellos_and_replies_get_status_codes_not_tracebacks(tmp_path):
    """Hellos of every malformed kind wire.md forbids, each refused with INVALID_ARGUMENT; and in
    round 2 a reply whose header is nested 4,000 deep, which drops hospital-4 for that round."""
    # Rounds long enough (about 32 s) for the 9 hellos, paced at the stream rate of one per 2 s.
    _federation(tmp_path, rounds=4, train_seconds=8.0)
    summary, codes, found, watch, context = _run(tmp_path, ["-", "bomb_reply", "-", "-"], "bombs")
    _honest_rounds_complete(summary, codes, 4, context)
    assert set(found["codes"].values()) == {"INVALID_ARGUMENT"}, found
    assert "nested 4000 deep" in summary["dropouts"]["2"][BAD], context  # round index 1: printed 2
    _within_bounds(watch, context)
    _figures("bombs", watch, **found)


def test_a_member_cannot_hold_the_connection_slots_against_a_restarting_party(tmp_path):
    """Issue 14, the slot holder: hospital-4 keeps 40 connections busy with a refused stream every
    2 s (a refused stream kept gRPC's idle timer from closing them) and redials those closed, with
    max_connections 24. Its connections beyond 2 are closed within about a second, so hospital-3,
    killed and restarted in the middle of it, gets a slot and is summed again within two rounds."""
    rejoined = {}

    def restart(honest, watch, start_party):
        while not watch.samples or watch.samples[-1].rounds_logged < 3:  # the attack is under way
            time.sleep(0.05)
        honest[2].kill()
        honest[2].wait()
        killed = time.monotonic()
        rounds_at_kill = watch.samples[-1].rounds_logged
        honest[2] = start_party(HONEST[2], f"{HONEST[2]}-restarted.log")
        while time.monotonic() - killed < 60:
            if f"party {HONEST[2]} reconnected" in watch.log.read_text():
                rejoined.update(seconds=round(time.monotonic() - killed, 1), rounds_at_kill=rounds_at_kill)
                return
            time.sleep(0.1)

    _federation(tmp_path, rounds=14, train_seconds=1.5, max_connections=24)
    summary, codes, found, watch, context = _run(tmp_path, ["-"] * 14, "connhold", 40, during=restart)
    assert codes == [0, 0, 0], context
    assert summary["rounds_ok"] == 14, context
    # Rejoined at all (its seconds are a figure, not asserted: tests never assert on wall time; the
    # bound that matters is in rounds, below).
    assert rejoined, context
    # hospital-3 misses at most the rounds running while it was down, then is summed again.
    missed = sorted(int(r) for r, dropped in summary["dropouts"].items() if HONEST[2] in dropped)
    assert len(missed) <= 2, (missed, context)
    assert not any(set(d) & set(HONEST[:2]) for d in summary["dropouts"].values()), context
    assert found["peak_ready"] >= 20, found  # the attack did fill the slots at first
    assert found["closed_by_server"] >= found["connections"], found
    # What the aggregator holds (its descriptors) once the guard has had its say: 2 connections of
    # hospital-4's beside its stream, plus those redialled and not yet closed — not the 40 (which
    # would be start + 40 or more). Redials are closed about a second after they come, later on a
    # loaded machine (the median was start + 16 in one run under a load average of about 6).
    start = watch.start
    held = sorted(s.fds for s in watch.samples if start.seconds + 10 <= s.seconds <= start.seconds + 30)
    assert held and held[len(held) // 2] <= start.fds + 24, (held, start.fds)
    _within_bounds(watch, context)
    _figures("connhold", watch, rejoined=rejoined, missed=missed, **found)


def test_a_reconnect_storm_is_throttled_and_its_log_lines_bounded(tmp_path):
    """Issue 14, the reconnect storm: 6 threads looping new connection, valid hello, cancel for 20 s
    (the issue: about 380 log lines a second). Streams of one party are accepted at most 4 at once,
    then one per 2 s, the rest refused (RESOURCE_EXHAUSTED); each kind of log line about the party
    appears at most once per 10 s; the honest parties' rounds go on."""
    _federation(tmp_path, rounds=10, train_seconds=1.0)
    summary, codes, found, watch, context = _run(tmp_path, ["-"] * 10, "storm")
    _honest_rounds_complete(summary, codes, 10, context)
    welcomed = found["codes"].get("WELCOME", 0)
    assert found["codes"].get("RESOURCE_EXHAUSTED", 0) > 10 * welcomed, found
    assert welcomed <= 4 + 20 / 2 + 2, found
    lines = [line for line in context.split("\n---")[0].splitlines() if BAD in line]
    seconds = watch.samples[-1].seconds
    kinds = 10  # the kinds of line a party can trigger: each at most once per 10 s (+ the first)
    assert len(lines) <= kinds * (seconds / 10 + 1), (len(lines), seconds, lines[:40])
    _within_bounds(watch, context)
    _figures("storm", watch, log_lines_about_it=len(lines), **found)


def _tls_hello_without_certificate(port: int, server_name: bytes) -> bool:
    """One TLS handshake with ``server_name`` as its SNI and no client certificate; whether the TCP
    connection was accepted (the handshake itself is refused)."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return False
    with sock, contextlib.suppress(OSError, ValueError):
        # bytes: passed on as they are, without IDNA's checks (which would refuse the newline)
        context.wrap_socket(sock, server_hostname=server_name).recv(1)
    return True


def test_an_outsider_without_a_certificate_writes_nothing_to_the_aggregators_log(tmp_path):
    """Found by an attacker: gRPC core wrote its own lines to the aggregator's stderr, outside
    securefl's escaping and limiter — each TLS server name that matched no certificate name, byte for
    byte (a forged record on a line of its own, terminal escapes), and a line per failed handshake
    (17,000 in 10 s), all without a certificate. gRPC's logging is off: the forged text, the escape
    byte and the handshake lines never appear, and the members' rounds go on."""
    port = _federation(tmp_path, rounds=3, train_seconds=0.5)
    forged = "INFO securefl.deploy: round 3 ok: 3 selected, 3 summed (FORGED BY OUTSIDER)"
    sent = []

    def attack(honest, watch, start_party):
        deadline = time.monotonic() + 30
        while not _tls_hello_without_certificate(port, f"x\n{forged}\n\x1b[2J\x1b[31m".encode()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        flood_until = time.monotonic() + 3
        while time.monotonic() < flood_until:
            sent.append(_tls_hello_without_certificate(port, b"flood.invalid"))

    summary, codes, _, _, context = _run(tmp_path, ["-"] * 3, during=attack)
    _honest_rounds_complete(summary, codes, 3, context)
    log = context.split(f"\n--- {BAD} ---")[0]
    assert sum(sent) > 100, len(sent)  # the flood reached the aggregator
    assert forged not in log and "\x1b" not in log, log[-3000:]
    assert "ssl_transport_security" not in log and "Handshake failed" not in log, log[-3000:]
