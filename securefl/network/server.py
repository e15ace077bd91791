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
ends that party's stream, so at most two of its frames are held (its reply and that one).

Resources are bounded by configuration, never by a client (``protocols/network.md``, "Bounds"):
per party at most one open stream and one waiting for its hello; a stream that sends no hello within
``hello_timeout`` is cancelled, and so is every stream this server has closed or replaced and that
has not ended within ``_LINGER`` seconds (a stream whose party does not read would otherwise hold a
worker thread in a blocked send). gRPC itself bounds the rest: ``maximum_concurrent_rpcs`` streams in
all (more are refused with ``RESOURCE_EXHAUSTED``), ``max_concurrent_streams`` per connection,
``max_connections`` connections (more are closed on accept), the TLS handshake within
``hello_timeout``, and connections without a stream closed after ``_IDLE_SECONDS``. What gRPC cannot
bound per member is done here: a party's new streams pass a token bucket (:class:`_StreamBucket`),
its connections that carry no stream the handler holds are closed (:class:`_ConnectionGuard`, which
a refused stream does not satisfy), and every log line a party can trigger goes through one
per-party, per-kind rate limiter (:class:`~securefl.logtext.RateLimitedLog`). Nothing a party
sends raises out of this module: the reader thread turns every failure into a closed stream (a
dropout), and every decoding error of the hello into a status code.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import ipaddress
import itertools
import json
import logging
import os
import queue
import resource
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from securefl.crypto.certificates import PartyCertificate, verify_party_certificate
from securefl.errors import ConfigError, WireError
from securefl.logtext import RateLimitedLog, printable
from securefl.network.frames import METHOD, Hello, Welcome, check_message_limit
from securefl.transport import Reply, Traffic, Transport

log = logging.getLogger(__name__)
_CLOSE = None  # sentinel in a connection's outbox: end the stream
_MAX_UNREAD = 4  # requests queued for a stream that has not taken them: more, and it is closed
_LINGER = 5.0  # seconds a stream this server closed may take to end before it is cancelled
_IDLE_SECONDS = 60.0  # a connection without any stream for this long is closed (GOAWAY)
_STREAMS_PER_CONNECTION = 4  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a party needs one
_KEEPALIVE_SECONDS = 30.0  # the server pings each connection this often; no answer in 20 s: closed
_LOG_EVERY = 10.0  # seconds between two log lines of one kind about one party (the rest are counted)
_STREAM_BURST = 4  # streams one party may open at once (a token bucket)...
_STREAM_EVERY = 2.0  # ...then one per this many seconds; faster ones are refused, RESOURCE_EXHAUSTED
_CONNECTIONS_PER_PARTY = 2  # a party's connections carrying no stream the handler holds, at most
_UNUSED_GRACE = 3.0  # seconds a connection may carry no stream the handler holds before it is closed
_OVER_SHARE_GRACE = 1.0  # seconds a connection beyond a party's share lives (its refusal gets out)
_SWEEP_EVERY = 0.5  # seconds between two passes of the connection guard
_REPLACED = "replaced by a newer stream of the same party"


def default_max_connections(parties: int) -> int:
    """64 + 4 per party, never more than half this process's file-descriptor limit (the ledger and
    the log must always be able to open files, whoever holds connections)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 64 + 4 * parties
    return wanted if soft == resource.RLIM_INFINITY else max(8, min(wanted, soft // 2))


class _Watchdog:
    """One thread that runs callbacks at their times: the hello deadlines and the cancelling of
    streams that linger after being closed. One thread for all streams, not one timer each."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self._stopped = False
        threading.Thread(target=self._run, daemon=True, name="securefl-watchdog").start()

    def after(self, seconds: float, callback: Callable[[], None]) -> threading.Event:
        """Run ``callback`` in ``seconds`` unless the returned event is set first."""
        done = threading.Event()

        def guarded() -> None:
            if not done.is_set():
                done.set()
                callback()

        with self._lock:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._count), guarded))
            self._lock.notify()
        return done

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._lock.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # a cancel on a finished stream, or the like: never ends the watchdog
                log.debug("watchdog callback failed", exc_info=True)


class _StreamBucket:
    """Per party, a token bucket of accepted streams: ``_STREAM_BURST`` at once, then one per
    ``_STREAM_EVERY`` seconds. A member churning connections (new connection, hello, cancel, again)
    costs the aggregator a handshake and a refusal, never a registered stream and its log lines."""

    def __init__(self, burst: int = _STREAM_BURST, every: float = _STREAM_EVERY) -> None:
        self.burst, self.every = burst, every
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}  # party -> (tokens, when counted)

    def take(self, party: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, then = self._state.get(party, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) / self.every)
            if tokens < 1.0:
                self._state[party] = (tokens, now)
                return False
            self._state[party] = (tokens - 1.0, now)
            return True


def _address(ip: str | bytes, port: int) -> tuple[str, int]:
    """An endpoint, IPv4-mapped IPv6 addresses as IPv4: one spelling for channelz and the kernel."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port)


def _peer_address(peer: str) -> tuple[str, int] | None:
    """``ipv4:1.2.3.4:5`` or ``ipv6:[::1]:5`` (``context.peer()``) as an endpoint."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return _address(host.strip("[]"), int(port))
    except ValueError:
        return None


def _channelz_servers() -> set[int]:
    """The channelz ids of this process's gRPC servers (empty without channelz)."""
    try:
        from grpc._cython import cygrpc

        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
        return {int(server["ref"]["serverId"]) for server in servers}
    except Exception:
        log.debug("channelz unavailable", exc_info=True)
        return set()


class _ConnectionGuard:
    """Bounds the connections of each certificate, which gRPC alone cannot: it counts connections
    only in all (``max_allowed_incoming_connections``) and keeps one alive for as long as streams,
    even refused ones, keep arriving on it. Every ``_SWEEP_EVERY`` seconds the guard lists this
    server's connections through gRPC's channelz (each with its peer's certificate, once the TLS
    handshake is done) and closes — ``shutdown()`` on the socket, which gRPC sees as the peer
    hanging up — every connection that carries no stream the handler holds (``protected``: an open
    stream, one waiting for its hello, one closed and lingering) once it has been so for
    ``_UNUSED_GRACE`` seconds, and at once (after ``_OVER_SHARE_GRACE``) those of a certificate
    holding more than ``_CONNECTIONS_PER_PARTY``, oldest first: the newest connection is the one a
    restarted party comes back on. Connections still in their TLS handshake are not listed; gRPC's
    handshake timeout bounds them. Without channelz or ``/proc/self/fd`` (not Linux) the guard
    stays off and gRPC's idle timeout is the only bound."""

    def __init__(self, server: GrpcServerTransport, before: set[int]) -> None:
        from grpc._cython import cygrpc

        self._cygrpc = cygrpc
        self._server = server
        self._before = before
        self._first_seen: dict[str, float] = {}  # channelz socket id -> first seen unprotected
        self._identities: dict[str, str] = {}  # base64 PEM -> identity (party, or the certificate)
        self.closed = 0
        self._stop = threading.Event()
        self._server_id = self._find_server()
        self.active = self._server_id is not None and os.path.isdir("/proc/self/fd")
        if not self.active:
            log.warning("connection guard off (no channelz or /proc): only gRPC's idle timeout applies")
            return
        threading.Thread(target=self._run, daemon=True, name="securefl-connections").start()

    def stop(self) -> None:
        self._stop.set()

    def _find_server(self) -> int | None:
        """This server's channelz id: the one server created since ``before`` (channelz lists a
        listener's requested port, 0, not the one bound)."""
        new = _channelz_servers() - self._before
        return new.pop() if len(new) == 1 else None

    def _sockets(self) -> list[dict]:
        found, start = [], 0
        while True:
            page = json.loads(self._cygrpc.channelz_get_server_sockets(self._server_id, start, 500))
            refs = page.get("socketRef", [])
            for ref in refs:
                try:
                    found.append(json.loads(self._cygrpc.channelz_get_socket(int(ref["socketId"])))["socket"])
                except (KeyError, ValueError):  # closed in between (channelz answers an error)
                    log.debug("socket %s gone", ref.get("socketId"))
            if page.get("end", True) or not refs:
                return found
            start = max(int(r["socketId"]) for r in refs) + 1

    def _identity(self, pem64: str) -> str:
        identity = self._identities.get(pem64)
        if identity is None:
            pem = base64.b64decode(pem64)
            try:
                cert = verify_party_certificate(pem, self._server.ca)
                pinned = self._server.allowlist.get(cert.party, "")
                allowed = cert.party in self._server.allowlist and pinned in (None, cert.fingerprint)
                identity = cert.party if allowed else f"certificate {cert.fingerprint[:16]}"
            except Exception:
                identity = f"certificate {hashlib.sha256(pem).hexdigest()[:16]}"
            if len(self._identities) > 1024:
                self._identities.clear()
            self._identities[pem64] = identity
        return identity

    def _run(self) -> None:
        while not self._stop.wait(_SWEEP_EVERY):
            try:
                self.sweep()
            except Exception:  # never ends the guard
                log.debug("connection guard pass failed", exc_info=True)

    def sweep(self) -> None:
        now = time.monotonic()
        protected = self._server.protected_peers()
        by_identity: dict[str, list[tuple[float, str, tuple[str, int]]]] = {}
        alive = set()
        for sock in self._sockets():
            sid = sock["ref"]["socketId"]
            remote = sock.get("remote", {}).get("tcpipAddress")
            pem64 = sock.get("security", {}).get("tls", {}).get("remoteCertificate")
            if not remote or not pem64:
                continue
            address = _address(base64.b64decode(remote.get("ipAddress", "")), remote.get("port", 0))
            alive.add(sid)
            if address in protected:
                self._first_seen.pop(sid, None)
                continue
            first = self._first_seen.setdefault(sid, now)
            by_identity.setdefault(self._identity(pem64), []).append((first, sid, address))
        for sid in set(self._first_seen) - alive:
            del self._first_seen[sid]
        doomed: dict[tuple[str, int], str] = {}
        for identity, unprotected in by_identity.items():
            unprotected.sort()  # oldest first
            held = sum(1 for p in protected.values() if p == identity)
            over = len(unprotected) + held - _CONNECTIONS_PER_PARTY
            for index, (first, _, address) in enumerate(unprotected):
                if now - first >= _UNUSED_GRACE or (index < over and now - first >= _OVER_SHARE_GRACE):
                    doomed[address] = identity
        if doomed:
            self._shutdown(doomed)

    def _shutdown(self, doomed: dict[tuple[str, int], str]) -> None:
        """``shutdown()`` the sockets of this server connected to ``doomed``; gRPC then closes them.
        A duplicate of each descriptor is checked before use, so a number reused meanwhile is safe."""
        for name in os.listdir("/proc/self/fd"):
            try:
                if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                    continue
                copy = os.dup(int(name))
            except OSError:
                continue
            try:
                sock = socket.socket(fileno=copy)
            except OSError:
                os.close(copy)
                continue
            try:
                if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != self._server.port:
                    continue
                peer = sock.getpeername()
                identity = doomed.get(_address(peer[0], peer[1]))
                if identity is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                    self.closed += 1
                    self._server._say(
                        logging.INFO,
                        identity,
                        "connection",
                        "closed a connection of %s that carried no accepted stream",
                        identity,
                    )
            except (OSError, ValueError):
                pass
            finally:
                sock.close()


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
    key: bytes = field(repr=False)  # a secret: never in a repr, a log line or an error


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
    reaper: threading.Event | None = None  # set once the linger cancel is scheduled
    say: Callable[..., None] | None = None  # the server's rate-limited log

    def close(self, watchdog: _Watchdog | None, item: object = _CLOSE) -> None:
        """Mark closed and end the stream with ``item`` (``_CLOSE`` or an ``_Abort``); a stream that
        has not ended ``_LINGER`` seconds later (its handler blocked sending to a party that does not
        read) is cancelled, so that it frees its worker thread. Call with the server's lock held."""
        if self.open:
            self.open = False
            self.closed_at = time.monotonic()
        self.outbox.put(item)
        if watchdog is not None and self.context is not None and self.reaper is None:
            self.reaper = watchdog.after(_LINGER, self.context.cancel)

    def send(self, pending: _Pending) -> None:
        """Queue a request; a stream that leaves requests unread is closed instead (a party that
        never reads would otherwise make the aggregator hold every request it was sent)."""
        if self.outbox.qsize() >= _MAX_UNREAD:
            (self.say or _unlimited)(
                logging.WARNING,
                self.party,
                "unread",
                "party %s does not read its stream: %d requests unread, stream closed",
                self.party,
                self.outbox.qsize(),
            )
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.close(None)
            if self.context is not None:
                self.context.cancel()
            return
        self.outstanding.append(pending.seq)
        self.outbox.put(pending.data)


def _unlimited(level: int, party: str, kind: str, message: str, *args: object) -> None:
    log.log(level, message, *args)


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
        max_connections: int | None = None,
        stream_rate: tuple[int, float] = (_STREAM_BURST, _STREAM_EVERY),
    ) -> None:
        """``allowlist`` maps each admitted party id to the SHA-256 fingerprint its certificate must
        have (or None: any certificate of the CA naming it). A connection must finish its TLS
        handshake, and then a stream must send its hello, each within ``hello_timeout`` seconds.
        At most ``max_connections`` connections at once (default :func:`default_max_connections`);
        more are closed as they are accepted."""
        if not hello_timeout > 0:
            raise ConfigError(f"hello_timeout must be positive, got {hello_timeout!r}")
        check_message_limit(max_message_bytes)
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
        self._watchdog = _Watchdog()
        # Every log line a party can trigger goes through this: once per 10 s per party and kind.
        self._say = RateLimitedLog(log, _LOG_EVERY)
        self._buckets = _StreamBucket(*stream_rate)  # (burst, seconds per stream after it)
        self._handling: dict[tuple[str, int], list] = {}  # peer -> [identity, streams in the handler]
        self.max_connections = (
            default_max_connections(len(self.allowlist)) if max_connections is None else max_connections
        )
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise ConfigError(f"max_connections must be an integer, got {self.max_connections!r}")
        if self.max_connections < len(self.allowlist):
            raise ConfigError(
                f"max_connections {self.max_connections} is below the {len(self.allowlist)} parties: "
                "each party needs one connection"
            )
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_concurrent_streams", _STREAMS_PER_CONNECTION),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", int(hello_timeout * 1000)),
            ("grpc.max_connection_idle_ms", int(_IDLE_SECONDS * 1000)),
            ("grpc.keepalive_time_ms", int(_KEEPALIVE_SECONDS * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]
        # Worker threads: a party holds at most two for long (its open stream, or the last one this
        # server closed until it ends, and one waiting for its hello); 8 more serve refusals.
        # Streams beyond the workers wait in a queue as long again; beyond that gRPC refuses them
        # (RESOURCE_EXHAUSTED, the party retries), so nothing a client does grows the queue.
        self.workers = 2 * len(self.allowlist) + 8
        self.max_streams = 2 * self.workers
        servers_before = _channelz_servers()
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="securefl-stream"),
            options=options,
            maximum_concurrent_rpcs=self.max_streams,
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
        self._guard = _ConnectionGuard(self, servers_before)

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
            self._say(
                logging.WARNING,
                f"certificate {cert.fingerprint[:16]}",
                "allowlist",
                "refused %r: not in the federation's allowlist",
                cert.party,
            )
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"party {cert.party!r} is not in this federation"
            )
        expected = self.allowlist[cert.party]
        if expected is not None and expected != cert.fingerprint:
            self._say(
                logging.WARNING,
                cert.party,
                "pinned",
                "refused %r: not the certificate the federation pinned for it",
                cert.party,
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"not the certificate pinned for {cert.party!r}")
        return cert

    def protected_peers(self) -> dict[tuple[str, int], str]:
        """The connections carrying a stream the handler holds (being authenticated, waiting for
        its hello, open, or closed and lingering), each with its party: the guard keeps these."""
        with self._lock:
            return {peer: identity for peer, (identity, count) in self._handling.items() if count > 0}

    def _connect(self, frames: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        peer = _peer_address(context.peer())
        if peer is not None:
            with self._lock:
                self._handling.setdefault(peer, ["", 0])[1] += 1
        try:
            yield from self._stream(frames, context, peer)
        finally:
            if peer is not None:
                with self._lock:
                    entry = self._handling[peer]
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._handling[peer]

    def _stream(
        self, frames: Iterator[bytes], context: grpc.ServicerContext, peer: tuple[str, int] | None
    ) -> Iterator[bytes]:
        cert = self._authenticate(context)
        party = cert.party
        with self._lock:
            if peer is not None:
                self._handling[peer][0] = party
            throttled = not self._buckets.take(party)
            if throttled:
                self._say(
                    logging.WARNING,
                    party,
                    "throttled",
                    "refused a stream of %s: more than %d streams, then 1 per %gs",
                    party,
                    self._buckets.burst,
                    self._buckets.every,
                )
        if throttled:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"party {party!r} opens streams too often: at most {self._buckets.burst}, then one per "
                f"{self._buckets.every:g}s",
            )
        with self._lock:
            if party in self._opening:
                self._say(logging.WARNING, party, "opening", "refused a second opening stream of %s", party)
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
        """The stream's first frame, within ``hello_timeout``; any problem aborts the stream with a
        status code (never an exception out of the handler, whatever the bytes)."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            context.cancel()

        deadline = self._watchdog.after(self.hello_timeout, expire)
        try:
            hello = Hello.decode(next(frames))
        except Exception as exc:  # StopIteration, WireError, grpc.RpcError (cancelled) or a bug
            if expired.is_set():
                self._say(
                    logging.INFO, party, "hello", "refused %s: no hello within %gs", party, self.hello_timeout
                )
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {self.hello_timeout:g}s")
            if isinstance(exc, WireError):
                why = printable(exc)
            elif isinstance(exc, (StopIteration, grpc.RpcError)):
                why = "the stream ended"
            else:
                why = f"unreadable ({type(exc).__name__})"
            self._say(logging.INFO, party, "hello", "refused %s: no valid hello: %s", party, why)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected a hello first: {why}")
        finally:
            deadline.set()
        if hello.party != party:
            self._say(
                logging.WARNING,
                party,
                "hello",
                "refused %s: its hello names %s",
                party,
                printable(repr(hello.party), 80),
            )
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {party!r}, the hello {hello.party!r}: identity comes from the "
                "certificate",
            )
        if hello.agreement != self.agreement:
            self._say(
                logging.WARNING, party, "agreement", "refused %s: it holds other federation settings", party
            )
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"party {party!r} holds federation settings {hello.agreement[:12]}…, the aggregator "
                f"{self.agreement[:12]}…: both must use the same federation file and the same securefl "
                "release",
            )
        return hello

    def _register(self, party: str, context: grpc.ServicerContext | None = None) -> _Connection:
        with self._lock:
            old = self._connections.get(party)
            if old is not None:
                if old.open:
                    self._say(
                        logging.INFO,
                        party,
                        "replaced",
                        "party %s opened a new stream: its previous one is closed",
                        party,
                    )
                # Replaced: whatever it still holds (a send its party never reads) ends now, with
                # ABORTED, never the OK that means "federation finished".
                old.close(None, _Abort(grpc.StatusCode.ABORTED, _REPLACED))
                if old.context is not None:  # cancelled shortly after, should it be blocked in a send
                    self._watchdog.after(0.2, old.context.cancel)
            connection = _Connection(party, context=context, say=self._say)
            self._connections[party] = connection
            first = party not in self.seen
            self.seen.add(party)
            pending = self._pending.get(party)
            if pending is not None and not pending.replies:
                connection.send(pending)  # the retry of a request lost with the old stream
            self._lock.notify_all()
        event = "connected" if first else "reconnected"  # two kinds: a reconnect always shows once
        self._say(logging.INFO, party, event, "party %s %s", party, event)
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
            self._say(
                logging.INFO, connection.party, "ended", "stream of %s ended: %s", connection.party, why
            )
        except Exception as exc:  # a broken stream is a dropout, never a crashed aggregator
            self._say(
                logging.WARNING,
                connection.party,
                "failed",
                "stream of %s failed: %s: %s",
                connection.party,
                type(exc).__name__,
                printable(exc),
            )
        self._closed(connection)

    def _closed(self, connection: _Connection) -> None:
        with self._lock:
            if connection.open:
                self._say(
                    logging.INFO, connection.party, "disconnected", "party %s disconnected", connection.party
                )
                connection.close(self._watchdog)
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
                    self._say(
                        logging.INFO,
                        party,
                        "ignored",
                        "frames of %s after its stream closed are ignored",
                        party,
                    )
                return False
            pending = self._pending.get(party)
            if not connection.outstanding:
                # One reply per request: this frame answers nothing (a duplicate, a flood, a reply
                # before any request). Handed on once as a second reply, so that the aggregator
                # drops the party for the phase; then the stream ends — nothing it sends is read.
                if pending is not None and len(pending.replies) == 1:
                    pending.replies.append(Reply(party, bytes(frame), time.monotonic() - pending.sent))
                connection.close(
                    self._watchdog,
                    _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "a frame that answers no request (one reply per request): stream closed",
                    ),
                )
                self._lock.notify_all()
                self._say(
                    logging.WARNING,
                    party,
                    "unasked",
                    "party %s sent a frame that answers no request (%d bytes): its stream is closed",
                    party,
                    len(frame),
                )
                return False
            answered = connection.outstanding.popleft()
            if pending is None or answered != pending.seq:
                self._say(
                    logging.INFO,
                    party,
                    "late",
                    "late reply of %s to an earlier request dropped (%d bytes)",
                    party,
                    len(frame),
                )
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
        self._guard.stop()
        self._watchdog.stop()
