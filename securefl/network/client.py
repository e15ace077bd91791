"""A party over the network: dial the aggregator over mutual TLS and answer its requests.

The party sends a hello (its id, which the aggregator checks against the certificate, and the hash
of the federation settings it enforces), receives the welcome (session and model layout), builds its
:class:`~securefl.party.PartyNode` and answers every request on the stream until the aggregator ends
it. If the stream breaks, it reconnects with exponential backoff; a request the aggregator repeats
after a reconnect gets the reply cached for it, so a retry never runs a phase twice.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from securefl.codec import ArraySpec
from securefl.errors import ProtocolError, WireError
from securefl.logtext import printable
from securefl.network.frames import METHOD, Hello, Welcome, check_message_limit
from securefl.network.server import TLSFiles
from securefl.party import PartyNode

log = logging.getLogger(__name__)

# Replies waiting to be sent, at most: the aggregator reads each before its next request (a retried
# request's cached reply may wait beside it), and a reply can be as large as the model (an attacker
# held 16 of them: 19× the model in memory).
_OUTBOX_REPLIES = 2
# Sessions whose nodes are kept (welcomed back, a party resumes its node): each holds per-value arrays
# of its model, so a few welcomes must not multiply the party's memory (an attacker held ~10 GB).
_MAX_SESSIONS = 2

NodeFactory = Callable[[str, ArraySpec], PartyNode]  # (session, spec) -> this party's node


class _NoWelcome(Exception):
    """The aggregator took the hello and sent no welcome in time: the stream is given up, retried."""


@dataclass
class PartySummary:
    requests: int = 0
    reconnects: int = 0


class _Answerer:
    """The node behind a stream, with the last reply cached for a retried request."""

    def __init__(self, factory: NodeFactory, max_values: int | None = None) -> None:
        self.factory = factory
        self.max_values = max_values  # the largest model a request of this party's size limit holds
        self.node: PartyNode | None = None
        self.session: str | None = None
        # Every session's node, kept: welcomed back to a session it served, the party resumes that
        # node — with the rounds it has started and everything else it refuses to do twice — never
        # a fresh one (an aggregator that welcomed a party elsewhere and back got a node that ran a
        # finished SecAgg round again: a second survivor list signed for it; found by an attacker).
        self._nodes: dict[str, PartyNode] = {}
        self._last: tuple[bytes, bytes] | None = None  # (sha256 of request, reply)
        self.progress = 0  # requests answered afresh with a reply

    def welcome(self, welcome: Welcome) -> None:
        if welcome.session != self.session:  # a new federation (or a restarted aggregator)
            node = self._nodes.get(welcome.session)
            if node is None:
                try:
                    spec = ArraySpec.from_json(welcome.spec)
                except Exception as exc:
                    raise ProtocolError(
                        "the aggregator's welcome holds no valid model layout: "
                        f"{type(exc).__name__}: {printable(exc, 400)}"
                    ) from None
                if self.max_values is not None and spec.size > self.max_values:
                    # A few bytes of welcome would otherwise make the party allocate per-value arrays
                    # for a model no request within its size limit can carry (found by an attacker:
                    # 2^33 values ended the party with a MemoryError; 2^29 grew it past 6 GB).
                    raise ProtocolError(
                        f"the aggregator's welcome declares a model of {spec.size:,} values; a message "
                        f"within this party's limit holds at most {self.max_values:,} (raise "
                        "max_message_mb if the model is really this large)"
                    )
                if len(self._nodes) >= _MAX_SESSIONS:
                    # The oldest session's node goes — before the new one is built, so that at most
                    # _MAX_SESSIONS exist at once — as a restart would forget it: what a party must
                    # never do twice is refused by its round log, which outlives both. Collected now:
                    # a node's arrays sit in reference cycles a full collection would free only later.
                    evicted = next(iter(self._nodes))
                    if self.node is self._nodes[evicted]:
                        self.node, self.session = None, None
                    del self._nodes[evicted]
                    gc.collect()
                try:
                    node = self.factory(welcome.session, spec)
                except Exception as exc:  # (MemoryError too): a refusal, never a crash of the party
                    raise ProtocolError(
                        f"could not set up for the aggregator's model: {type(exc).__name__}: "
                        f"{printable(exc, 400)}"
                    ) from None
                self._nodes[welcome.session] = node
            self.node = node
            self.session = welcome.session
            self._last = None

    def answer(self, request: bytes) -> bytes:
        digest = hashlib.sha256(request).digest()
        if self._last is not None and self._last[0] == digest:
            return self._last[1]
        withdrawals = getattr(self.node, "withdrawals", 0)
        reply = self.node.handle(request)
        # Progress for the reconnect count: a fresh reply, not a refusal, nor a retried request's
        # cached reply (an aggregator resending one request must not keep the party from giving up).
        self.progress += getattr(self.node, "withdrawals", 0) == withdrawals
        self._last = (digest, reply)
        return reply


def run_party(
    party: str,
    target: str,
    tls: TLSFiles,
    agreement: str,
    factory: NodeFactory,
    *,
    max_message_bytes: int = 256 << 20,
    connect_timeout: float = 60.0,
    max_reconnects: int = 5,
    server_name: str | None = None,
) -> PartySummary:
    """Serve the aggregator at ``target`` until it ends the federation; raise ProtocolError if it
    refuses this party or cannot be reached (after ``max_reconnects`` attempts)."""
    check_message_limit(max_message_bytes)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    answerer = _Answerer(factory, max_values=max_message_bytes // 4)  # (float32: 4 bytes a value)
    summary = PartySummary()
    failures = 0
    while True:
        answered = answerer.progress
        with grpc.secure_channel(target, credentials, options=options) as channel:
            try:
                _wait_until_ready(channel, target, connect_timeout)
                _serve(channel, party, agreement, answerer, summary, connect_timeout)
                return summary
            except grpc.FutureTimeoutError:
                error = f"no TLS connection to the aggregator at {target} within {connect_timeout:g}s"
            except _NoWelcome as exc:
                error = str(exc)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    raise ProtocolError(f"the aggregator refused {party!r}: {exc.details()}") from None
                if code == grpc.StatusCode.ABORTED:  # another process opened a stream as this party
                    raise ProtocolError(f"the aggregator ended {party!r}'s stream: {exc.details()}") from None
                # RESOURCE_EXHAUSTED is retried too: the aggregator was busy (its stream or
                # connection limits, perhaps held by another member) or this party's previous
                # stream was still waiting for its hello. A frame over the size bound fails the
                # same way every time and ends after max_reconnects, naming the bound.
                error = f"stream to {target} broke: {code.name}: {exc.details()}"
        # Consecutive failures: a stream in which this party answered a request with a reply (not a
        # refusal: an aggregator could send junk to keep it from giving up) was progress, so the
        # count (and the back-off with it) starts again — a few aggregator restarts over a long
        # federation must not add up to giving up, or to waits longer than its reconnect grace.
        failures = 1 if answerer.progress > answered else failures + 1
        if failures > max_reconnects:
            raise ProtocolError(f"{error}; gave up after {max_reconnects} reconnects")
        summary.reconnects += 1
        wait = min(30.0, 0.5 * 2**failures)
        log.warning("%s; reconnecting in %.1fs", printable(error), wait)  # it quotes the aggregator
        time.sleep(wait)


READY_LOG_EVERY = 5.0  # seconds between "still waiting" lines while the aggregator is unreachable


def _wait_until_ready(channel: grpc.Channel, target: str, timeout: float) -> None:
    """Wait for the TLS connection, saying so every few seconds (a party started before its
    aggregator would otherwise be silent for the whole timeout); FutureTimeoutError at the end."""
    ready = grpc.channel_ready_future(channel)
    waited = 0.0
    while True:
        step = min(READY_LOG_EVERY, timeout - waited)
        try:
            ready.result(timeout=step)
            return
        except grpc.FutureTimeoutError:
            waited += step
            if waited >= timeout:
                raise
            log.warning(
                "waiting for the aggregator at %s: no connection after %.0fs (gives up after %.0fs)",
                printable(target),
                waited,
                timeout,
            )


def _serve(
    channel: grpc.Channel,
    party: str,
    agreement: str,
    answerer: _Answerer,
    summary: PartySummary,
    welcome_timeout: float = 60.0,
) -> None:
    # Bounded: an aggregator that sends requests and never reads the replies stops this party
    # reading more (flow control) instead of growing its memory without end.
    outbox: queue.Queue = queue.Queue(maxsize=_OUTBOX_REPLIES)
    outbox.put(Hello(party, agreement).encode())
    connect = channel.stream_stream(METHOD)
    responses = connect(iter(outbox.get, None))
    # The welcome within the connect timeout, or the stream is given up (and retried): an aggregator
    # that reads the hello and says nothing must not hold the party for ever (found by an attacker).
    waited_out = threading.Event()
    welcomed = threading.Timer(welcome_timeout, lambda: (waited_out.set(), responses.cancel()))
    welcomed.daemon = True
    welcomed.start()
    try:
        frames: Iterator[bytes] = iter(responses)
        try:
            welcome = Welcome.decode(next(frames))
        except grpc.RpcError:
            if waited_out.is_set():
                raise _NoWelcome(f"no welcome from the aggregator within {welcome_timeout:g}s") from None
            raise
        except StopIteration:
            raise ProtocolError("the aggregator closed the stream before its welcome") from None
        except WireError as exc:
            raise ProtocolError(f"the aggregator's welcome is malformed: {exc}") from None
        if welcome.agreement != agreement:
            raise ProtocolError(
                f"the aggregator runs federation settings {welcome.agreement[:12]}…, this party "
                f"{agreement[:12]}…: use the same federation file"
            )
        answerer.welcome(welcome)
        log.info("party %s joined session %s", party, welcome.session[:8])
        welcomed.cancel()
        for request in frames:
            summary.requests += 1
            _queue_reply(outbox, answerer.answer(bytes(request)), responses)
    finally:
        welcomed.cancel()
        responses.cancel()
        with contextlib.suppress(queue.Empty):  # room for the end marker: nothing is sent any more
            while True:
                outbox.get_nowait()
        outbox.put_nowait(None)


def _queue_reply(outbox: queue.Queue, reply: bytes, stream: grpc.Future) -> None:
    """Queue a reply, waiting while the outbox is full — but not past the end of the stream (gRPC
    stops taking replies then, and the party must go on to reconnect, not wait for ever)."""
    while True:
        try:
            outbox.put(reply, timeout=1.0)
            return
        except queue.Full:
            if not stream.is_active():
                raise ProtocolError(
                    "the aggregator closed the stream without reading this party's replies"
                ) from None
