"""A malicious member for the network tests: a party process with a valid certificate that runs the
real party node but, in each round, corrupts what it sends in one phase.

    python -m network_bad_party --config hospital-4.toml --train network_party:make_client \\
        --plan shares,garbage,-,...

The i-th entry of ``--plan`` is round i's attack (``-``: behave). Each attack hits the phase named in
:data:`ATTACKS`, once (a request the aggregator repeats after a reconnect is answered honestly).
After the aggregator closes or refuses its stream it reconnects, as a real party would; it exits 0
when the aggregator ends the federation. What it did goes to stderr, one line per attack.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import struct
import sys
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
}


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
        not_field = (shamir.PRIME + 1).to_bytes(shamir.SHARE_BYTES, "big")  # ≥ the prime 2^521 − 1
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
    if attack == "forged_log":
        reason = f"leaving\n{FORGED}\n\x1b[2J\x1b[31m\u202eevil".encode()
        return [_relabel(reply, kind=WITHDRAW, parts={"reason": reason})]
    raise ValueError(f"unknown attack {attack!r}")


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
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 4 * limit)]
    channels: list[grpc.Channel] = []
    done: set[int] = set()  # rounds whose attack was carried out

    def connect() -> _Stream:
        for attempt in range(20):
            channel = grpc.secure_channel(cfg.aggregator, credentials, options=options)
            channels.append(channel)
            try:
                stream = _Stream(channel, cfg.party, fed.agreement)
                answerer.welcome(stream.welcome)
                return stream
            except (grpc.RpcError, StopIteration) as exc:
                print(f"connect attempt {attempt}: {exc!r}"[:300], file=sys.stderr, flush=True)
                time.sleep(0.25)
        raise SystemExit("the aggregator is gone")

    stream = connect()
    while True:
        try:
            request = bytes(next(stream.frames))
        except StopIteration:
            print("the aggregator ended the federation", file=sys.stderr, flush=True)
            return 0
        except grpc.RpcError as exc:
            print(f"stream ended: {exc.code().name}: {exc.details()}"[:300], file=sys.stderr, flush=True)
            stream.close()
            stream = connect()
            continue
        envelope = Envelope.decode(request)
        reply = answerer.answer(request)
        attack = plan[envelope.round] if envelope.round < len(plan) else "-"
        if attack == "-" or ATTACKS[attack] != envelope.phase or envelope.round in done:
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
