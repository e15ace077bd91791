"""A two-phase secure sum for exercising the core's generic phase machinery in tests.

``commit``: each party sends SHA-256 of its vector; ``open``: it sends the vector, which must match
its commitment. It hides nothing (like plain) but has two phases, so dropouts, deadlines and bad
messages can be injected in each.
"""

from __future__ import annotations

import hashlib

import numpy as np

from securefl.errors import ProtocolError
from securefl.layers.base import RoundContext, SecureSum, SumAggregator, SumParty
from securefl.wire import pack_array, unpack_array


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

    def result(self):
        return self.total


class _Party(SumParty):
    def start_round(self, ctx, vector):
        self.payload = pack_array(np.asarray(vector, dtype="<f8"))

    def respond(self, phase, request):
        if phase == "commit":
            return hashlib.sha256(self.payload).digest()
        if phase == "open":
            return self.payload
        raise ProtocolError(f"unknown phase {phase!r}")
