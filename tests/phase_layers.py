"""A two-phase secure sum for exercising the core's generic phase machinery in tests.

``commit``: each party sends SHA-256 of its vector; ``open``: it sends the vector, which must match
its commitment. It hides nothing (like plain) but has two phases, so dropouts, deadlines and bad
messages can be injected in each.
"""

from __future__ import annotations

import hashlib

import numpy as np

from securefl.errors import ProtocolError
from securefl.layers.base import RoundContext, SealedModel, SecureSum, SumAggregator, SumParty
from securefl.wire import decode_record, encode_record, pack_array, unpack_array


class CommitOpen(SecureSum):
    name = "commit-open"
    accepts_floats = True

    def aggregator(self) -> SumAggregator:
        return _Aggregator()

    def party(self, party_id: str) -> SumParty:
        return _Party()


class _Aggregator(SumAggregator):
    def phases(self, ctx):
        return ("commit", "open")

    def start_round(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        self.commitments: dict[str, bytes] = {}
        self.total = np.zeros(ctx.vector_size)
        self.closed: list[tuple[str, frozenset]] = []

    def max_reply_bytes(self, phase):
        return 32 if phase == "commit" else 8 * self.ctx.vector_size + 64

    def receive(self, phase, party, payload):
        if phase == "commit":
            if len(payload) != 32:
                raise ProtocolError("commitment must be 32 bytes")
            self.commitments[party] = payload
            return
        if party not in self.commitments:
            raise ProtocolError(f"{party} opened without committing")
        if hashlib.sha256(payload).digest() != self.commitments[party]:
            raise ProtocolError(f"{party}'s opening does not match its commitment")
        self.total += unpack_array(payload, "<f8", (self.ctx.vector_size,))

    def close_phase(self, phase, survivors):
        self.closed.append((phase, survivors))

    def contributors(self):
        return self.closed[-1][1]

    def result(self):
        return self.total


class _Party(SumParty):
    def start_round(self, ctx, provide):
        self.provide = provide

    def respond(self, phase, request):
        self.payload = pack_array(np.asarray(self.provide(), dtype="<f8"))
        if phase == "commit":
            return hashlib.sha256(self.payload).digest()
        if phase == "open":
            return self.payload
        raise ProtocolError(f"unknown phase {phase!r}")


# --- a layer that fuses on the parties ---------------------------------------------------------


def _stream(key: bytes, round: int, label: str, n: int) -> np.ndarray:
    """Test-only keystream (the real layers use AES-CTR or HE): n uint64 words."""
    seed = int.from_bytes(
        hashlib.sha256(key + round.to_bytes(8, "big") + label.encode()).digest()[:16], "big"
    )
    return np.random.default_rng(seed).integers(0, 2**64, n, dtype=np.uint64, endpoint=False)


class SharedKeySum(SecureSum):
    """Parties share ``key`` (as HE key holders do). Each pads its quantized vector with its own
    keystream; the aggregator adds padded vectors, sends the padded sum back in phase ``open``; the
    parties remove the pads, fuse, and return the next model sealed under the key. The aggregator
    only ever holds padded vectors and the sealed model."""

    name = "shared-key-test"
    accepts_floats = False
    fuses_on_parties = True

    def __init__(self, key: bytes = b"k" * 32) -> None:
        self.key = key

    def aggregator(self) -> SumAggregator:
        return _SealedAggregator()

    def party(self, party_id: str) -> SumParty:
        return _SealedParty(self.key, party_id)


class _SealedAggregator(SumAggregator):
    def phases(self, ctx):
        return ("input", "open")

    def start_round(self, ctx):
        self.ctx = ctx
        self.total = np.zeros(ctx.vector_size, dtype=np.uint64)
        self.summed: list[str] = []
        self.seal: bytes | None = None

    def request(self, phase, party):
        if phase == "input":
            return b""
        return encode_record(b"TSKO", {"contributors": self.summed}, {"sum": pack_array(self.total)})

    def max_reply_bytes(self, phase):
        return 8 * self.ctx.vector_size + 256

    def receive(self, phase, party, payload):
        if phase == "input":
            self.total += unpack_array(payload, "<u8", (self.ctx.vector_size,))
            self.summed.append(party)
        elif self.seal is None:
            self.seal = payload
        elif payload != self.seal:
            raise ProtocolError(f"{party}'s sealed model differs from the others'")

    def close_phase(self, phase, survivors):
        if phase == "input":
            self.summed = sorted(survivors)

    def contributors(self):
        return frozenset(self.summed)

    def result(self):
        return SealedModel(self.seal)


class _SealedParty(SumParty):
    def __init__(self, key, party_id):
        self.key, self.party_id = key, party_id

    def attach_fuser(self, fuse, base=None):
        self.fuse = fuse

    def start_round(self, ctx, provide):
        self.ctx, self.provide = ctx, provide

    def respond(self, phase, request):
        if phase == "input":
            return pack_array(
                self.provide() + _stream(self.key, self.ctx.round, self.party_id, self.ctx.vector_size)
            )
        header, parts = decode_record(request, b"TSKO", {"contributors": list}, ("sum",))
        total = unpack_array(parts["sum"], "<u8", (self.ctx.vector_size,)).copy()
        for party in header["contributors"]:
            total -= _stream(self.key, self.ctx.round, party, self.ctx.vector_size)
        model = self.fuse(total)
        stream = _stream(self.key, self.ctx.round, "model", model.size)
        sealed = (np.ascontiguousarray(model, dtype="<f8").view("<u8") ^ stream).astype("<u8")
        return encode_record(b"TSKM", {"round": self.ctx.round}, {"model": pack_array(sealed)})

    def open_model(self, sealed):
        header, parts = decode_record(sealed, b"TSKM", {"round": int}, ("model",))
        words = unpack_array(parts["model"], "<u8")
        return (words ^ _stream(self.key, header["round"], "model", words.size)).view("<f8")
