"""The aggregator's network transport: a gRPC server that parties dial into over mutual TLS.

Security argument, in order: the TLS handshake (BoringSSL, inside grpcio) refuses a client whose
certificate does not chain to the federation's CA or is outside its validity period, and a client
without a certificate or without TLS; the handler then re-verifies the certificate with
``cryptography`` (same CA, validity, protocol-identity extension), refuses a party not in the
allowlist, and takes the party's identity **from the certificate**, never from anything the client
says: a hello naming another party is refused. Frames over ``max_message_bytes`` are refused by
gRPC for that stream only.

Deadlines and reconnects: :meth:`exchange` sends each request down its party's stream and waits up
to the phase deadline; a party whose stream has broken is waited for ``reconnect_grace`` seconds
(if it reconnects within the round its pending request is sent again — the party answers a repeated
request with its cached reply), then counted as a dropout.

One member cannot hurt the others through its stream: replies are matched to requests in order, per
stream, so a late reply never answers a later request; a frame no request asked for (a duplicate, a
flood) is handed on once as a second reply — the aggregator drops the party for the phase — and
ends that party's stream; at most one stream per party is open and one more may be opening, and a
stream that sends no hello within ``hello_timeout`` is cancelled. Nothing a party sends raises out
of this module: the reader thread turns every failure into a closed stream (a dropout).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from securefl.crypto.certificates import PartyCertificate, verify_party_certificate
from securefl.errors import ConfigError, WireError
from securefl.logtext import printable
from securefl.network.frames import METHOD, Hello, Welcome
from securefl.transport import Reply, Traffic, Transport

log = logging.getLogger(__name__)
_CLOSE = None  # sentinel in a connection's outbox: end the stream
_MAX_UNREAD = 4  # requests queued for a stream that has not taken them: more, and it is closed


@dataclass(frozen=True)
class _Abort:
    """In a connection's outbox: end the stream with this status (the party broke the protocol)."""

    code: grpc.StatusCode
    details: str


@dataclass(frozen=True)
class TLSFiles:
    """PEM bytes of the federation CA and of this process's certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes


_sequence = itertools.count(1)


@dataclass(eq=False)
class _Pending:
    data: bytes
    sent: float
    replies: list[Reply] = field(default_factory=list)
    seq: int = field(default_factory=lambda: next(_sequence))


@dataclass(eq=False)
class _Connection:
    party: str
    outbox: queue.Queue = field(default_factory=queue.Queue)
    open: bool = True
    closed_at: float = 0.0
    # The requests sent down this stream and not yet answered (their seq), oldest first: the party
    # answers them in order, so each frame up answers the oldest (or nothing: a protocol violation).
    outstanding: deque[int] = field(default_factory=deque)
    ignored: int = 0  # frames that arrived after the stream was closed
    context: grpc.ServicerContext | None = None

    def send(self, pending: _Pending) -> None:
        """Queue a request; a stream that leaves requests unread is closed instead (a party that
        never reads would otherwise make the aggregator hold every request it was sent)."""
        if self.outbox.qsize() >= _MAX_UNREAD:
            log.warning(
                "party %s does not read its stream: %d requests unread, stream closed",
                self.party,
                self.outbox.qsize(),
            )
            self.open = False
            self.closed_at = time.monotonic()
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.outbox.put(_CLOSE)
            if self.context is not None:
                self.context.cancel()
            return
        self.outstanding.append(pending.seq)
        self.outbox.put(pending.data)


class GrpcServerTransport(Transport):
    """Accepts the allowlisted parties' streams; :meth:`exchange` talks to them."""

    def __init__(
        self,
        address: str,
        tls: TLSFiles,
        allowlist: Mapping[str, str | None],
        session: str,
        spec: dict,
        agreement: str,
        *,
        max_message_bytes: int = 256 << 20,
        reconnect_grace: float = 5.0,
        hello_timeout: float = 30.0,
    ) -> None:
        """``allowlist`` maps each admitted party id to the SHA-256 fingerprint its certificate must
        have (or None: any certificate of the CA naming it). A stream that sends no hello within
        ``hello_timeout`` seconds is cancelled."""
        self.allowlist = dict(allowlist)
        self.welcome = Welcome(session, spec, agreement).encode()
        self.agreement = agreement
        self.ca = tls.ca
        self.max_message_bytes = max_message_bytes
        self.reconnect_grace = reconnect_grace
        self.hello_timeout = hello_timeout
        self.traffic = Traffic()
        self._lock = threading.Condition()
        self._connections: dict[str, _Connection] = {}
        self._pending: dict[str, _Pending] = {}
        self._opening: set[str] = set()  # parties with a stream between handshake and hello
        self.seen: set[str] = set()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        # One thread per open stream, one per opening stream, plus headroom; more streams than that
        # wait, they are not lost. No party can hold more than two (see _connect).
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=2 * len(self.allowlist) + 8), options=options
        )
        handler = grpc.stream_stream_rpc_method_handler(self._connect)
        service, method = METHOD.strip("/").split("/")
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {method: handler})]
        )
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
        )
        try:
            self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from None
        if self.port == 0:
            raise ConfigError(f"cannot listen on {address}: address in use or invalid")
        self._server.start()

    # -- connections ---------------------------------------------------------------------------

    def _authenticate(self, context: grpc.ServicerContext) -> PartyCertificate:
        pem = (context.auth_context().get("x509_pem_cert") or [None])[0]
        if pem is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a party certificate is required")
        try:
            cert = verify_party_certificate(pem, self.ca)
        except ConfigError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if cert.party not in self.allowlist:
            log.warning("refused %r: not in the federation's allowlist", cert.party)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"party {cert.party!r} is not in this federation"
            )
        expected = self.allowlist[cert.party]
        if expected is not None and expected != cert.fingerprint:
            log.warning("refused %r: not the certificate the federation pinned for it", cert.party)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"not the certificate pinned for {cert.party!r}")
        return cert

    def _connect(self, frames: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        cert = self._authenticate(context)
        party = cert.party
        with self._lock:
            if party in self._opening:
                log.warning("refused a second opening stream of %s", party)
                busy = True
            else:
                self._opening.add(party)
                busy = False
        if busy:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"party {party!r} already has a stream waiting for its hello: one at a time",
            )
        try:
            self._hello(party, frames, context)
        finally:
            with self._lock:
                self._opening.discard(party)
        connection = self._register(party, context)
        threading.Thread(
            target=self._read, args=(connection, frames), daemon=True, name=f"read-{party}"
        ).start()
        context.add_callback(lambda: self._closed(connection))
        yield self.welcome
        while True:
            item = connection.outbox.get()
            if item is _CLOSE:
                return
            if isinstance(item, _Abort):
                context.abort(item.code, item.details)
            yield item

    def _hello(self, party: str, frames: Iterator[bytes], context: grpc.ServicerContext) -> Hello:
        """The stream's first frame, within ``hello_timeout``; any problem aborts the stream."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            context.cancel()

        timer = threading.Timer(self.hello_timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            hello = Hello.decode(next(frames))
        except (StopIteration, WireError, grpc.RpcError) as exc:
            if expired.is_set():
                log.info("refused %s: no hello within %gs", party, self.hello_timeout)
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {self.hello_timeout:g}s")
            why = printable(exc) if isinstance(exc, WireError) else "the stream ended"
            log.info("refused %s: no valid hello: %s", party, why)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected a hello first: {why}")
        finally:
            timer.cancel()
        if hello.party != party:
            log.warning("refused %s: its hello names %s", party, printable(repr(hello.party), 80))
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {party!r}, the hello {hello.party!r}: identity comes from the "
                "certificate",
            )
        if hello.agreement != self.agreement:
            log.warning("refused %s: it holds other federation settings", party)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"party {party!r} holds federation settings {hello.agreement[:12]}…, the aggregator "
                f"{self.agreement[:12]}…: both must use the same federation file",
            )
        return hello

    def _register(self, party: str, context: grpc.ServicerContext | None = None) -> _Connection:
        with self._lock:
            old = self._connections.get(party)
            if old is not None and old.open:
                old.open = False
                old.outbox.put(_CLOSE)
                log.info("party %s opened a new stream: its previous one is closed", party)
            connection = _Connection(party, context=context)
            self._connections[party] = connection
            first = party not in self.seen
            self.seen.add(party)
            pending = self._pending.get(party)
            if pending is not None and not pending.replies:
                connection.send(pending)  # the retry of a request lost with the old stream
            self._lock.notify_all()
        log.info("party %s %s", party, "connected" if first else "reconnected")
        return connection

    def _read(self, connection: _Connection, frames: Iterator[bytes]) -> None:
        """The frames a party sends up its stream, until it ends; never raises."""
        try:
            for frame in frames:
                if not self._deliver(connection, frame):
                    break
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            why = code.name if code is not None else "cancelled by the party, or the connection broke"
            log.info("stream of %s ended: %s", connection.party, why)
        except Exception as exc:  # a broken stream is a dropout, never a crashed aggregator
            log.warning("stream of %s failed: %s: %s", connection.party, type(exc).__name__, printable(exc))
        self._closed(connection)

    def _closed(self, connection: _Connection) -> None:
        with self._lock:
            if connection.open:
                connection.open = False
                connection.closed_at = time.monotonic()
                connection.outbox.put(_CLOSE)
                log.info("party %s disconnected", connection.party)
            self._lock.notify_all()

    def _deliver(self, connection: _Connection, frame: bytes) -> bool:
        """Hand one frame to the request it answers; False when the stream must end."""
        party = connection.party
        with self._lock:
            if not connection.open:
                # Frames still in flight on a stream this server closed (a newer stream replaced
                # it, or the party broke the protocol): nobody asked for them.
                connection.ignored += 1
                if connection.ignored == 1:
                    log.info("frames of %s after its stream closed are ignored", party)
                return False
            pending = self._pending.get(party)
            if not connection.outstanding:
                # One reply per request: this frame answers nothing (a duplicate, a flood, a reply
                # before any request). Handed on once as a second reply, so that the aggregator
                # drops the party for the phase; then the stream ends — nothing it sends is read.
                if pending is not None and len(pending.replies) == 1:
                    pending.replies.append(Reply(party, bytes(frame), time.monotonic() - pending.sent))
                connection.open = False
                connection.closed_at = time.monotonic()
                connection.outbox.put(
                    _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "a frame that answers no request (one reply per request): stream closed",
                    )
                )
                self._lock.notify_all()
                log.warning(
                    "party %s sent a frame that answers no request (%d bytes): its stream is closed",
                    party,
                    len(frame),
                )
                return False
            answered = connection.outstanding.popleft()
            if pending is None or answered != pending.seq:
                log.info("late reply of %s to an earlier request dropped (%d bytes)", party, len(frame))
                return True
            pending.replies.append(Reply(party, bytes(frame), time.monotonic() - pending.sent))
            self._lock.notify_all()
            return True

    # -- the Transport interface ---------------------------------------------------------------

    def connected(self) -> list[str]:
        with self._lock:
            return sorted(p for p, c in self._connections.items() if c.open)

    def wait_for(self, count: int, timeout: float) -> list[str]:
        """Wait until ``count`` parties are connected or ``timeout`` passes; return who is."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(c.open for c in self._connections.values()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
        return self.connected()

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> list[Reply]:
        unknown = sorted(set(requests) - set(self.allowlist))
        if unknown:
            raise KeyError(f"no route to parties {unknown}")
        deadline = time.monotonic() + timeout
        with self._lock:
            now = time.monotonic()
            for party, data in requests.items():
                pending = self._pending[party] = _Pending(data, now)
                self.traffic.bytes_down += len(data)
                self.traffic.messages += 1
                connection = self._connections.get(party)
                if connection is not None and connection.open:
                    connection.send(pending)
            while not self._settled(requests, deadline):
                self._lock.wait(
                    max(0.0, min(deadline, self._next_grace_end(requests)) - time.monotonic()) + 0.01
                )
            replies = [reply for party in requests for reply in self._pending.pop(party).replies]
        for reply in replies:
            self.traffic.bytes_up += len(reply.data)
            self.traffic.messages += 1
        return replies

    def _settled(self, requests: Mapping[str, bytes], deadline: float) -> bool:
        now = time.monotonic()
        if now >= deadline:
            return True
        for party in requests:
            if self._pending[party].replies:
                continue
            connection = self._connections.get(party)
            if connection is None:
                # Never connected: wait for it only as long as for a reconnect.
                if now - self._pending[party].sent < self.reconnect_grace:
                    return False
            elif connection.open or now - connection.closed_at < self.reconnect_grace:
                return False
        return True

    def _next_grace_end(self, requests: Mapping[str, bytes]) -> float:
        ends = [self._pending[p].sent + self.reconnect_grace for p in requests]
        ends += [
            c.closed_at + self.reconnect_grace
            for p in requests
            if (c := self._connections.get(p)) and not c.open
        ]
        upcoming = [t for t in ends if t > time.monotonic()]
        return min(upcoming) if upcoming else time.monotonic() + 1.0

    def close(self, grace: float = 1.0) -> None:
        """End every stream (parties see the federation finish) and stop the server."""
        with self._lock:
            for connection in self._connections.values():
                if connection.open:
                    connection.outbox.put(_CLOSE)
        time.sleep(min(grace, 0.2))
        self._server.stop(grace).wait()
