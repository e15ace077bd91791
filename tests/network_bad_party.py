"""A malicious member for the network tests: a party process with a valid certificate that runs the
real party node but, in each round, corrupts what it sends in one phase.

    python -m network_bad_party --config hospital-4.toml --train network_party:make_client \\
        --plan shares,garbage,-,...

The i-th entry of ``--plan`` is round i's attack (``-``: behave). Each attack hits the phase named in
:data:`ATTACKS` (``*``: the round's first request, whatever the layer), once (a request the
aggregator repeats after a reconnect is answered honestly). After the aggregator closes or refuses
its stream it reconnects, as a real party would; it exits 0 when the aggregator ends the
federation. What it did goes to stderr, one line per attack.

``--background ATTACK`` runs one of :data:`BACKGROUND` beside that honest stream, with the same
certificate, from the first welcome on; each is bounded in count and time. Its findings are the
last line of stdout, as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import socket
import struct
import sys
import threading
import time

import grpc

from securefl.crypto import shamir
from securefl.deploy import load_party, party_node_factory
from securefl.network.client import _Answerer
from securefl.network.frames import METHOD, Hello, Welcome
from securefl.wire import REPLY, WITHDRAW, Envelope, decode_record, encode_record

FORGED = "INFO securefl.deploy: round 99 ok: 4 selected, 4 summed, dropouts: none FORGED"

# attack -> the phase it corrupts (secagg in active mode: advertise, share, masked, consistency, unmask)
ATTACKS = {
    "shares": "unmask",  # the reported attack: Shamir shares that are not field elements
    "random_layer": "masked",  # random bytes as the layer payload
    "garbage": "advertise",  # random bytes as the whole frame
    "impersonate": "share",  # a reply envelope naming another party
    "oversized_payload": "masked",  # a layer payload over the phase's bound, under the transport's
    "oversized_frame": "consistency",  # a frame over max_message_mb: gRPC ends the stream
    "duplicate": "share",  # the reply twice
    "flood": "masked",  # the reply, then 200 more frames
    "wrong_round": "unmask",  # the reply relabelled for the next round
    "wrong_phase": "consistency",  # the reply relabelled for another phase
    "forged_log": "advertise",  # a withdraw whose reason tries to forge a log line and clear the screen
    "twice": "share",  # a second stream while the first is open; answers on the second
    "hangup": "masked",  # cancels its stream instead of answering, then reconnects
    "flood_big": "*",  # the reply, then FLOOD_FRAMES frames of FLOOD_BYTES (issue 14: 200 × 4 MiB)
    "bomb_reply": "*",  # a reply whose header is JSON nested 4,000 deep
}
FLOOD_FRAMES, FLOOD_BYTES = 200, 4 << 20


def _relabel(reply: Envelope, **changes) -> bytes:
    fields = {k: getattr(reply, k) for k in ("kind", "session", "round", "phase", "party", "parts")}
    fields.update(changes)
    return Envelope(**fields).encode()


def _record(data: bytes) -> tuple[dict, dict[str, bytes]]:
    """A layer record's header and parts, whatever header fields the layer puts in it."""
    _, _, length = struct.unpack_from(">4sHI", data)
    header = json.loads(data[10 : 10 + length])
    schema = {k: type(v) for k, v in header.items() if k != "parts"}
    return decode_record(data, data[:4], schema)


def corrupt(attack: str, reply_bytes: bytes, others: list[str], max_message_bytes: int) -> list[bytes]:
    """The frames the bad party sends instead of ``reply_bytes``."""
    reply = Envelope.decode(reply_bytes)
    layer = reply.parts.get("layer", b"")
    if attack == "shares":
        header, parts = _record(layer)
        count = len(parts["shares"]) // shamir.SHARE_BYTES
        not_field = (shamir.PRIME + 1).to_bytes(shamir.SHARE_BYTES, "big")  # ≥ the field prime
        bad = encode_record(b"SAUr", header, {**parts, "shares": not_field * count})
        return [_relabel(reply, parts={"layer": bad})]
    if attack == "random_layer":
        return [_relabel(reply, parts={"layer": os.urandom(max(len(layer), 16))})]
    if attack == "garbage":
        return [os.urandom(300)]
    if attack == "impersonate":
        return [_relabel(reply, party=others[0])]
    if attack == "oversized_payload":
        return [_relabel(reply, parts={"layer": os.urandom(max_message_bytes // 2)})]
    if attack == "oversized_frame":
        return [os.urandom(2 * max_message_bytes)]
    if attack == "duplicate":
        return [reply_bytes, reply_bytes]
    if attack == "flood":
        return [reply_bytes] * 201
    if attack == "wrong_round":
        return [_relabel(reply, round=reply.round + 1)]
    if attack == "wrong_phase":
        return [_relabel(reply, phase="advertise")]
    if attack == "flood_big":
        junk = os.urandom(FLOOD_BYTES)
        return [reply_bytes] + [junk] * FLOOD_FRAMES
    if attack == "bomb_reply":
        return [_record_bytes(b"SFLE", b"[" * 4000)]  # nested 4,000 deep, under the phase size bound
    if attack == "forged_log":
        reason = f"leaving\n{FORGED}\n\x1b[2J\x1b[31m\u202eevil".encode()
        return [_relabel(reply, kind=WITHDRAW, parts={"reason": reason})]
    raise ValueError(f"unknown attack {attack!r}")


def _record_bytes(magic: bytes, header: bytes) -> bytes:
    return struct.pack(">4sHI", magic, 1, len(header)) + header


# -- attacks beside the honest stream (--background) ---------------------------------------------

# Hellos no decoder may answer with a traceback: each must be refused with INVALID_ARGUMENT.
BOMBS = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "5000-digit integer": b'{"version": 1, "party": "x", "agreement": ' + b"9" * 5000 + b"}",
    "duplicate keys": b'{"version": 1, "party": "PARTY", "agreement": "AGREEMENT", "version": 2}',
    "infinity": b'{"version": 1e999, "party": "PARTY", "agreement": "AGREEMENT"}',
    "NaN": b'{"version": NaN, "party": "PARTY", "agreement": "AGREEMENT"}',
    "lone surrogate": b'{"version": 1, "party": "\\ud800", "agreement": "AGREEMENT"}',
    "version true": b'{"version": true, "party": "PARTY", "agreement": "AGREEMENT"}',
    "unknown field": b'{"version": 1, "party": "PARTY", "agreement": "AGREEMENT", "x": 1}',
    "not UTF-8": b"\xff\xfe" * 100,
    "6 MiB of spaces": b" " * (6 << 20),
}


class _Background:
    """The attacks beside the honest stream; each method returns what it saw (JSON-able)."""

    def __init__(self, cfg, count: int, options: list) -> None:
        self.cfg = cfg
        self.count = count
        # Every attack stream on its own TCP connection: gRPC would otherwise share one.
        self.options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self.credentials = grpc.ssl_channel_credentials(cfg.tls.ca, cfg.tls.key, cfg.tls.cert)
        host, _, port = cfg.aggregator.rpartition(":")
        self.address = (host, int(port))

    def _open(self, first: bytes | None):
        """A new connection and a stream on it; the stream sends ``first`` (if any), then waits."""
        channel = grpc.secure_channel(self.cfg.aggregator, self.credentials, options=self.options)
        outbox: queue.Queue = queue.Queue()
        if first is not None:
            outbox.put(first)
        call = channel.stream_stream(METHOD)(iter(outbox.get, None), timeout=60)
        return channel, outbox, call

    @staticmethod
    def _status(call) -> str:
        try:
            for _ in call:
                pass
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name

    def idle(self) -> dict:
        """``count`` connections, each with a stream that never says hello; how each ends, and when."""
        started = time.monotonic()
        ended: list[tuple[str, float]] = []
        held = [self._open(None) for _ in range(self.count)]

        def watch(call):
            code = self._status(call)
            ended.append((code, round(time.monotonic() - started, 2)))

        threads = [threading.Thread(target=watch, args=(call,), daemon=True) for _, _, call in held]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for channel, outbox, _ in held:
            outbox.put(None)
            channel.close()
        return {
            "streams": self.count,
            "codes": dict(collections.Counter(code for code, _ in ended)),
            "last_ended_after": max((t for _, t in ended), default=None),
            "unfinished": sum(t.is_alive() for t in threads),
        }

    def churn(self) -> dict:
        """``count`` connections opened and closed, 8 at a time, each with one bad opening."""
        fed = self.cfg.federation
        other = next(p for p in fed.parties if p != self.cfg.party)
        openings = [
            None,  # no hello: half-close at once
            b"not json",
            BOMBS["deep nesting"],
            Hello(other, fed.agreement).encode(),  # another party's name
            Hello(self.cfg.party, "0" * 64).encode(),  # other settings
        ]
        codes: collections.Counter = collections.Counter()
        lock = threading.Lock()
        jobs = iter(range(self.count))

        def worker():
            while True:
                with lock:
                    index = next(jobs, None)
                if index is None:
                    return
                first = openings[index % len(openings)]
                channel, outbox, call = self._open(first)
                outbox.put(None)
                code = self._status(call)
                channel.close()
                with lock:
                    codes[code] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        return {
            "connections": self.count,
            "codes": dict(codes),
            "seconds": round(time.monotonic() - started, 2),
        }

    def slowloris(self) -> dict:
        """``count`` raw TCP connections that trickle a TLS ClientHello, one byte every half second,
        held until the aggregator closes them (at most 20 s); then a new stream must get through."""
        hello = bytes.fromhex("160301020001") + os.urandom(64)
        started = time.monotonic()
        sockets, refused = {}, 0
        for index in range(self.count):
            try:
                sock = socket.create_connection(self.address, timeout=5)
            except OSError:
                refused += 1
                continue
            sock.setblocking(False)
            sockets[index] = (sock, time.monotonic())
        connected = len(sockets)
        closed_after: list[float] = []
        during = None
        sent = 0
        while sockets and time.monotonic() - started < 20:
            for index, (sock, opened) in list(sockets.items()):
                try:
                    if sock.recv(4096) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    try:
                        sock.send(hello[sent % len(hello) : sent % len(hello) + 1])
                        continue
                    except BlockingIOError:
                        continue
                    except OSError:
                        pass
                except OSError:
                    pass
                closed_after.append(time.monotonic() - opened)
                sock.close()
                del sockets[index]
            sent += 1
            if during is None and time.monotonic() - started > 0.5:
                # A member's new stream while the trickling connections are held.
                channel, _, call = self._open(Hello(self.cfg.party, "0" * 64).encode())
                during = self._status(call)
                channel.close()
            time.sleep(0.5)
        for sock, _ in sockets.values():
            sock.close()
        channel, _, call = self._open(Hello(self.cfg.party, "0" * 64).encode())
        after = self._status(call)
        channel.close()
        closed_after.sort()
        return {
            "sockets": self.count,
            "connected": connected,
            "refused_on_connect": refused,
            "closed_by_server": len(closed_after),
            "closed_within_1s": sum(t < 1 for t in closed_after),
            "longest_held": round(closed_after[-1], 2) if closed_after else None,
            "still_open_at_20s": len(sockets),
            "member_stream_during": during,
            "member_stream_after": after,
        }

    def bombs(self) -> dict:
        """Each of :data:`BOMBS` as a hello on its own connection: the status it got."""
        fed = self.cfg.federation
        codes = {}
        for name, body in BOMBS.items():
            body = body.replace(b"PARTY", self.cfg.party.encode()).replace(
                b"AGREEMENT", fed.agreement.encode()
            )
            time.sleep(2.1)  # paced: the aggregator takes a party's streams at one per 2 s
            for _ in range(10):
                channel, outbox, call = self._open(body)
                codes[name] = self._status(call)
                outbox.put(None)
                channel.close()
                if codes[name] not in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"):  # throttled, or its
                    # connection closed by the guard while a 6 MiB hello was still in flight
                    break
                time.sleep(1.0)
        return {"codes": codes}

    def connhold(self) -> dict:
        """Issue 14's slot holding: ``count`` connections, each opening a stream (no hello, so
        refused or cut) every 2 s to keep its connection busy, redialled when closed, for 30 s.
        Samples how many are connected at once, and counts the connections the server closed."""
        stop = threading.Event()
        ready = [False] * self.count
        closed = [0]
        samples: list[int] = []

        def keeper(index: int) -> None:
            while not stop.is_set():
                channel = grpc.secure_channel(self.cfg.aggregator, self.credentials, options=self.options)
                try:
                    grpc.channel_ready_future(channel).result(timeout=5)
                except grpc.FutureTimeoutError:
                    channel.close()
                    continue
                ready[index] = True
                while not stop.is_set():
                    outbox: queue.Queue = queue.Queue()
                    call = channel.stream_stream(METHOD)(iter(outbox.get, None), timeout=10)
                    self._status(call)
                    outbox.put(None)
                    if stop.wait(2.0):
                        break
                    if channel._channel.check_connectivity_state(False) != 2:  # not READY: closed
                        closed[0] += 1
                        break
                ready[index] = False
                channel.close()

        threads = [threading.Thread(target=keeper, args=(i,), daemon=True) for i in range(self.count)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        while time.monotonic() - started < 30:
            samples.append(sum(ready))
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(15)
        late = samples[len(samples) // 3 :]  # once the guard has had its say
        return {
            "connections": self.count,
            "peak_ready": max(samples),
            "mean_ready_after_10s": round(sum(late) / len(late), 1),
            "closed_by_server": closed[0],
        }

    def storm(self) -> dict:
        """Issue 14's reconnect storm: 6 threads, each a new connection, a valid hello, cancel, in a
        loop for 20 s. Counts what each stream got."""
        codes: collections.Counter = collections.Counter()
        lock = threading.Lock()
        stop = threading.Event()
        fed = self.cfg.federation

        def loop() -> None:
            while not stop.is_set():
                channel, outbox, call = self._open(Hello(self.cfg.party, fed.agreement).encode())
                try:
                    next(call)
                    code = "WELCOME"
                except grpc.RpcError as exc:
                    code = exc.code().name
                outbox.put(None)
                call.cancel()
                channel.close()
                with lock:
                    codes[code] += 1

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(20)
        stop.set()
        for thread in threads:
            thread.join(15)
        return {"codes": dict(codes)}


BACKGROUND = ("idle", "churn", "slowloris", "bombs", "connhold", "storm")


class _Stream:
    """One stream to the aggregator: hello sent, welcome read."""

    def __init__(self, channel: grpc.Channel, party: str, agreement: str) -> None:
        self.outbox: queue.Queue = queue.Queue()
        self.outbox.put(Hello(party, agreement).encode())
        self.call = channel.stream_stream(METHOD)(iter(self.outbox.get, None))
        self.frames = iter(self.call)
        self.welcome = Welcome.decode(next(self.frames))

    def send(self, frame: bytes) -> None:
        self.outbox.put(frame)

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--plan", required=True, help="comma-separated attack per round, '-' to behave")
    parser.add_argument("--background", choices=BACKGROUND, help="an attack beside the honest stream")
    parser.add_argument("--count", type=int, default=20, help="streams, connections or sockets it uses")
    args = parser.parse_args(argv)
    plan = [a.strip() for a in args.plan.split(",")]
    unknown = sorted({a for a in plan if a != "-"} - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attacks {unknown}; known: {sorted(ATTACKS)}")
    cfg = load_party(args.config)
    fed = cfg.federation
    others = [p for p in fed.parties if p != cfg.party]
    answerer = _Answerer(party_node_factory(cfg, args.train))
    credentials = grpc.ssl_channel_credentials(cfg.tls.ca, cfg.tls.key, cfg.tls.cert)
    limit = fed.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", max(4 * limit, 2 * FLOOD_BYTES)),
    ]
    channels: list[grpc.Channel] = []
    done: set[int] = set()  # rounds whose attack was carried out

    def connect() -> _Stream:
        # Patient (40 s): the aggregator may still be starting on a loaded machine, or be throttling
        # this party's streams after an attack (1 per 2 s).
        for attempt in range(80):
            channel = grpc.secure_channel(cfg.aggregator, credentials, options=options)
            channels.append(channel)
            try:
                stream = _Stream(channel, cfg.party, fed.agreement)
                answerer.welcome(stream.welcome)
                return stream
            except (grpc.RpcError, StopIteration) as exc:
                print(f"connect attempt {attempt}: {exc!r}"[:300], file=sys.stderr, flush=True)
                time.sleep(0.5)
        raise SystemExit("the aggregator is gone")

    stream = connect()
    found: dict = {}
    background = None
    if args.background:
        attack = getattr(_Background(cfg, args.count, options), args.background)
        background = threading.Thread(target=lambda: found.update(attack()), daemon=True)
        background.start()
    while True:
        try:
            request = bytes(next(stream.frames))
        except StopIteration:
            print("the aggregator ended the federation", file=sys.stderr, flush=True)
            if background is not None:
                background.join(60)
                print(json.dumps({"background": args.background, **found}), flush=True)
            return 0
        except grpc.RpcError as exc:
            print(f"stream ended: {exc.code().name}: {exc.details()}"[:300], file=sys.stderr, flush=True)
            stream.close()
            stream = connect()
            continue
        envelope = Envelope.decode(request)
        reply = answerer.answer(request)
        attack = plan[envelope.round] if envelope.round < len(plan) else "-"
        target = ATTACKS.get(attack, "-")
        if attack == "-" or target not in ("*", envelope.phase) or envelope.round in done:
            stream.send(reply)
            continue
        done.add(envelope.round)
        print(f"round {envelope.round} {envelope.phase}: {attack}", file=sys.stderr, flush=True)
        if attack == "twice":
            second = connect()  # the aggregator closes the first stream and repeats the request
            stream.close()
            stream = second
            continue
        if attack == "hangup":
            stream.close()
            time.sleep(0.2)
            stream = connect()
            continue
        if Envelope.decode(reply).kind != REPLY:
            stream.send(reply)  # the honest node withdrew: nothing to corrupt
            continue
        for frame in corrupt(attack, reply, others, limit):
            stream.send(frame)


if __name__ == "__main__":
    sys.exit(main())
