"""``plain``: the baseline secure sum that hides nothing. Parties send their vectors as they are.

Threat model: none — the aggregator sees every update. It exists to measure what the other layers
cost and to run the federation when privacy is not needed. One phase, ``input``.

Real vectors travel as float32 by default (float64 with ``dtype="float64"``) and are summed in
float64; quantized vectors travel as uint64 and are summed modulo 2**64.
"""

from __future__ import annotations

import numpy as np

from securefl.codec import check_finite
from securefl.errors import ConfigError, ProtocolError
from securefl.layers.base import Provider, RoundContext, SecureSum, SumAggregator, SumParty
from securefl.wire import pack_array, unpack_array

INPUT = "input"
_ARRAY_OVERHEAD = 64


class Plain(SecureSum):
    name = "plain"
    accepts_floats = True
    modulus_bits = 64

    def __init__(self, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"plain dtype must be 'float32' or 'float64', got {dtype!r}")
        self.float_dtype = np.dtype(dtype).newbyteorder("<")

    def _wire_dtype(self, ctx: RoundContext) -> np.dtype:
        return np.dtype("<u8") if ctx.integer else self.float_dtype

    def aggregator(self) -> SumAggregator:
        return _PlainAggregator(self)

    def party(self, party_id: str) -> SumParty:
        return _PlainParty(self)

    def __repr__(self) -> str:
        return f"Plain(dtype={self.float_dtype.name!r})"


class _PlainAggregator(SumAggregator):
    def __init__(self, layer: Plain) -> None:
        self._layer = layer
        self._ctx: RoundContext | None = None
        self._total: np.ndarray | None = None
        self._contributors: set[str] = set()

    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        return (INPUT,)

    def start_round(self, ctx: RoundContext) -> None:
        self._ctx = ctx
        self._total = np.zeros(ctx.vector_size, dtype=np.uint64 if ctx.integer else np.float64)
        self._contributors = set()

    def max_reply_bytes(self, phase: str) -> int:
        return self._ctx.vector_size * self._layer._wire_dtype(self._ctx).itemsize + _ARRAY_OVERHEAD

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        if party in self._contributors:
            raise ProtocolError(f"party {party!r} already sent its input this round")
        ctx = self._ctx
        vector = unpack_array(payload, self._layer._wire_dtype(ctx), (ctx.vector_size,))
        if not ctx.integer:
            check_finite(vector, f"input from {party!r}")
        if self.check_input is not None:
            # This layer sees each input, so it can name the party whose input is impossible
            # instead of refusing the whole sum later.
            self.check_input(vector, len(ctx.parties))
        # Sum as they arrive: memory does not grow with the number of parties.
        self._total += vector.astype(self._total.dtype)
        self._contributors.add(party)

    def exposed_by(self, phase: str, asked: frozenset[str], withdrawn: frozenset[str]) -> frozenset[str]:
        # Each input arrives in the clear; a reply holds its sender's own input only, so a party that
        # withdrew (whatever its withdrawal carries) exposed no one else.
        return asked - withdrawn

    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        # Every valid input was already added; a party that dropped simply never was.
        pass

    def contributors(self) -> frozenset[str]:
        return frozenset(self._contributors)

    def result(self) -> np.ndarray:
        return self._total


class _PlainParty(SumParty):
    def __init__(self, layer: Plain) -> None:
        self._layer = layer

    def start_round(self, ctx: RoundContext, provide: Provider) -> None:
        self._ctx, self._provide = ctx, provide

    def respond(self, phase: str, request: bytes) -> bytes:
        if phase != INPUT:
            raise ProtocolError(f"plain has a single phase {INPUT!r}, not {phase!r}")
        return pack_array(np.asarray(self._provide()).astype(self._layer._wire_dtype(self._ctx)))
