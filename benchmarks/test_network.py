"""pytest-benchmark: one exchange (request down, reply up) over gRPC with mutual TLS on 127.0.0.1,
side by side with the in-process transport, at a float32 model of 1,000,000 parameters (4 MB)."""

import queue
import socket
import threading

import grpc
import pytest

from securefl.crypto.certificates import write_federation
from securefl.network.frames import METHOD, Hello
from securefl.network.server import GrpcServerTransport, TLSFiles
from securefl.transport import InProcessTransport

PAYLOAD = b"\1" * 4_000_000
AGREEMENT = "ab" * 32
SESSION = "5e" * 16


@pytest.fixture(scope="module")
def tls_echo(tmp_path_factory):
    """A server transport and one party that answers every request with its bytes."""
    pki = tmp_path_factory.mktemp("pki")
    write_federation(pki, "bench", ["p1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = (pki / "ca.pem", pki / "aggregator.pem", pki / "private/aggregator.key")
    server = GrpcServerTransport(
        f"127.0.0.1:{port}", TLSFiles(*(p.read_bytes() for p in files)), {"p1": None}, SESSION, {}, AGREEMENT
    )
    credentials = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(),
        (pki / "private/p1.key").read_bytes(),
        (pki / "parties/p1.pem").read_bytes(),
    )
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)
    outbox: queue.Queue = queue.Queue()
    outbox.put(Hello("p1", AGREEMENT).encode())
    responses = channel.stream_stream(METHOD)(iter(outbox.get, None))

    def echo():
        frames = iter(responses)
        next(frames)  # welcome
        for frame in frames:
            outbox.put(frame)

    threading.Thread(target=echo, daemon=True).start()
    server.wait_for(1, 30)
    yield server
    outbox.put(None)
    server.close(0)
    channel.close()


def test_exchange_4mb_grpc_mutual_tls(benchmark, tls_echo):
    replies = benchmark(tls_echo.exchange, {"p1": PAYLOAD}, 30)
    assert len(replies) == 1 and len(replies[0].data) == len(PAYLOAD)


def test_exchange_4mb_in_process_reference(benchmark):
    transport = InProcessTransport({"p1": lambda data: data})
    replies = benchmark(transport.exchange, {"p1": PAYLOAD}, 30)
    assert len(replies) == 1
