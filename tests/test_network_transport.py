"""The gRPC transport in one process: retries after a broken stream, late joiners, the PKI, the
opening frames (fuzzed), and the party's reply cache."""

import contextlib
import datetime as dt
import os
import socket
import stat
import threading

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from securefl.crypto.certificates import Issued, create_ca, issue, verify_party_certificate, write_federation
from securefl.errors import ConfigError, WireError
from securefl.network.client import _Answerer
from securefl.network.frames import METHOD, Hello, Welcome
from securefl.network.server import GrpcServerTransport, TLSFiles

AGREEMENT = "ab" * 32


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pki(tmp_path):
    write_federation(tmp_path, "test", ["p1", "p2"])
    return tmp_path


def _server(pki, port, grace=5.0):
    tls = TLSFiles(
        *(p.read_bytes() for p in (pki / "ca.pem", pki / "aggregator.pem", pki / "private/aggregator.key"))
    )
    return GrpcServerTransport(
        f"127.0.0.1:{port}",
        tls,
        {"p1": None, "p2": None},
        "s" * 32,
        {"entries": []},
        AGREEMENT,
        reconnect_grace=grace,
    )


class _RawParty:
    """A hand-driven party stream: hello, then whatever the test sends."""

    def __init__(self, pki, port, party="p1"):
        credentials = grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(),
            (pki / f"private/{party}.key").read_bytes(),
            (pki / f"parties/{party}.pem").read_bytes(),
        )
        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials)
        self.outbox = [Hello(party, AGREEMENT).encode()]
        self.ready = threading.Event()
        self.frames = []
        self.sent = threading.Condition()
        self.calls = self.channel.stream_stream(METHOD)(self._requests(), timeout=30)
        self.responses = iter(self.calls)

    def _requests(self):
        while True:
            with self.sent:
                while not self.outbox:
                    self.sent.wait()
                item = self.outbox.pop(0)
            if item is None:
                return
            yield item

    def send(self, data):
        with self.sent:
            self.outbox.append(data)
            self.sent.notify()

    def receive(self):
        return next(self.responses)

    def drop(self):
        self.calls.cancel()
        self.channel.close()


def _exchange_in_background(server, requests, timeout):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("replies", server.exchange(requests, timeout)))
    thread.start()
    return thread, result


def test_a_late_party_gets_its_pending_request_and_a_broken_stream_gets_it_again(pki):
    port = _port()
    server = _server(pki, port)
    try:
        thread, result = _exchange_in_background(server, {"p1": b"request-1"}, 20)
        first = _RawParty(pki, port)
        assert Welcome.decode(first.receive()).session == "s" * 32
        assert first.receive() == b"request-1"  # sent on connection: it joined after the exchange began
        first.drop()  # the stream breaks before the reply
        second = _RawParty(pki, port)
        second.receive()  # welcome
        assert second.receive() == b"request-1"  # the retry on reconnect
        second.send(b"reply-1")
        thread.join(20)
        assert [(r.sender, r.data) for r in result["replies"]] == [("p1", b"reply-1")]
        second.send(None)
    finally:
        server.close(0)


def test_a_party_that_stays_away_is_waited_for_only_the_grace(pki):
    port = _port()
    server = _server(pki, port, grace=0.5)
    try:
        thread, result = _exchange_in_background(server, {"p1": b"r", "p2": b"r"}, 60)
        party = _RawParty(pki, port)
        party.receive()
        assert party.receive() == b"r"
        party.send(b"answer")
        thread.join(10)
        assert not thread.is_alive()  # p2 never connected: settled after the grace, not the 60 s deadline
        assert [r.sender for r in result["replies"]] == ["p1"]
        party.send(None)
    finally:
        server.close(0)


def test_the_party_answers_a_repeated_request_from_its_cache():
    calls = []

    class Node:
        def handle(self, data):
            calls.append(data)
            return b"reply to " + data

    answerer = _Answerer(lambda session, spec: Node())
    answerer.welcome(Welcome("s" * 32, {"as_list": False, "entries": []}, AGREEMENT))
    assert answerer.answer(b"x") == answerer.answer(b"x") == b"reply to x"
    assert answerer.answer(b"y") == b"reply to y" and calls == [b"x", b"y"]


def test_keys_tls_writes_private_keys_0600_and_never_overwrites(pki):
    for key in (pki / "private").iterdir():
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with pytest.raises(ConfigError, match="never overwritten"):
        write_federation(pki, "test", ["p1"])
    cert = verify_party_certificate((pki / "parties/p1.pem").read_bytes(), (pki / "ca.pem").read_bytes())
    assert cert.party == "p1" and len(cert.identity) == 32


def test_certificate_checks_name_the_problem(pki):
    ca_pem = (pki / "ca.pem").read_bytes()
    ca = Issued(ca_pem, (pki / "private/ca.key").read_bytes())
    identity = Ed25519PrivateKey.generate().public_key()
    foreign = issue(create_ca("other"), "p1", identity=identity)
    with pytest.raises(ConfigError, match="not issued by this federation's CA"):
        verify_party_certificate(foreign.cert_pem, ca_pem)
    old = issue(
        ca, "p1", identity=identity, days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    )
    with pytest.raises(ConfigError, match="not now: issue a new one"):
        verify_party_certificate(old.cert_pem, ca_pem)
    server = (pki / "aggregator.pem").read_bytes()
    with pytest.raises(ConfigError, match="not a party certificate"):
        verify_party_certificate(server, ca_pem)
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        verify_party_certificate(b"garbage", ca_pem)


@given(st.binary(max_size=300))
def test_opening_frames_refuse_garbage_with_a_wire_error(data):
    for frame in (Hello, Welcome):
        with contextlib.suppress(WireError):  # anything else escaping is the bug this looks for
            frame.decode(data)


@given(st.text(min_size=1, max_size=40), st.text(max_size=80))
def test_hello_round_trips(party, agreement):
    assert Hello.decode(Hello(party, agreement).encode()) == Hello(party, agreement)


def test_deployment_files_with_mistakes_are_refused_with_the_fix(tmp_path):
    from securefl.deploy import load_federation, load_party

    write_federation(tmp_path / "certs", "test", ["p1", "p2"])
    fed = tmp_path / "fed.toml"
    base = '[network]\nparties = ["p1", "p2"]\n[tls]\nca = "certs/ca.pem"\ncert = "certs/aggregator.pem"\n'
    fed.write_text("rounds = 2\nroundz = 3\n" + base)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['roundz'\]"):
        load_federation(fed)
    fed.write_text('rounds = 2\nweighting = "votes"\n' + base)
    with pytest.raises(ConfigError, match="weighting must be"):
        load_federation(fed)
    fed.write_text("rounds = 2\n" + base)
    assert load_federation(fed).agreement == load_federation(fed).agreement
    party = tmp_path / "p3.toml"
    party.write_text('federation = "fed.toml"\nparty = "p3"\n')
    with pytest.raises(ConfigError, match="not in the federation's allowlist"):
        load_party(party)
    party.write_text(
        'federation = "fed.toml"\nparty = "p1"\n[tls]\nca = "certs/ca.pem"\ncert = "nope.pem"\nkey = "k"\n'
    )
    with pytest.raises(ConfigError, match="does not exist"):
        load_party(party)
