"""BatchCrypt-style packing: many signed fixed-point values in one Paillier plaintext.

A value v with |v| ≤ 2^(b−1) − 1 is offset to u = v + 2^(b−1) − 1 ∈ [0, 2^b − 2] and placed in a
slot of w bits, least significant slot first. Adding the plaintexts of up to P parties adds slot by
slot without carries as long as P·(2^b − 2) < 2^w, so w = bitlen(P·(2^b − 2)): the guard bits
grow with log2 P. A sum of s contributions is read back as slot − s·(2^(b−1) − 1).

Example: b = 16 bits, P = 100 parties: w = 23, and a 2048-bit key (2047 usable bits) holds 89
values per ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefl.errors import ConfigError, ProtocolError


@dataclass(frozen=True)
class Packing:
    value_bits: int
    max_summands: int
    plaintext_bits: int

    def __post_init__(self) -> None:
        if not 2 <= self.value_bits <= 48:
            raise ConfigError(f"packed values must have 2 to 48 bits, got {self.value_bits}")
        if self.max_summands < 1:
            raise ConfigError("packing needs at least one summand")
        if self.slots < 1:
            raise ConfigError(
                f"a {self.slot_bits}-bit slot ({self.value_bits}-bit values summed over "
                f"{self.max_summands} parties) does not fit a {self.plaintext_bits}-bit plaintext"
            )

    @property
    def offset(self) -> int:
        return (1 << (self.value_bits - 1)) - 1

    @property
    def slot_bits(self) -> int:
        return (self.max_summands * ((1 << self.value_bits) - 2)).bit_length()

    @property
    def slots(self) -> int:
        return self.plaintext_bits // self.slot_bits

    def plaintexts_for(self, count: int) -> int:
        return -(-count // self.slots)

    def pack(self, values: np.ndarray) -> list[int]:
        """Signed integers (|v| ≤ offset) into plaintext integers, ``slots`` per plaintext."""
        values = np.asarray(values, dtype=np.int64)
        if values.size and np.abs(values).max() > self.offset:
            raise ValueError(f"a value exceeds the {self.value_bits}-bit range of the packing")
        rows = self.plaintexts_for(values.size)
        shifted = np.zeros(rows * self.slots, dtype=np.uint64)
        shifted[: values.size] = (values + self.offset).astype(np.uint64)
        return self._to_ints(shifted.reshape(rows, self.slots))

    def unpack(self, plaintexts: list[int], count: int, summands: int) -> np.ndarray:
        """The slot sums of ``count`` values, minus the offsets of ``summands`` contributions.

        Refuses (ProtocolError) a sum that honest parties cannot produce: each honest slot holds
        u ∈ [0, 2^b − 2], so a sum of ``summands`` slots lies in [0, summands·(2^b − 2)], i.e. the
        value is within ±summands·(2^(b−1) − 1); padding slots are 0 in every honest plaintext.
        A slot outside that range means a tampered or foreign ciphertext, or a wrong summand count.
        """
        if len(plaintexts) != self.plaintexts_for(count):
            raise ProtocolError(f"{len(plaintexts)} plaintexts cannot hold exactly {count} values")
        if (
            isinstance(summands, bool)
            or not isinstance(summands, int)
            or not 0 < summands <= self.max_summands
        ):
            raise ProtocolError(f"{summands!r} summands is outside 1..{self.max_summands}")
        slots = self._from_ints(plaintexts).reshape(-1)
        if slots[count:].any():
            raise ProtocolError(
                "a padding slot of the decrypted sum is not zero: no honest party packs anything there "
                "(tampered or foreign ciphertext)"
            )
        slots = slots[:count]
        limit = summands * ((1 << self.value_bits) - 2)
        if slots.size and int(slots.max()) > limit:
            raise ProtocolError(
                f"the decrypted sum leaves the packing bound: a slot exceeds {summands} contributions × "
                f"(2^{self.value_bits} − 2) = {limit}, i.e. a value beyond ±{summands} × {self.offset}; "
                "it cannot come from honest parties (tampered or foreign ciphertext, or a wrong count)"
            )
        return slots.astype(np.int64) - summands * self.offset

    def _to_ints(self, rows: np.ndarray) -> list[int]:
        w = self.slot_bits
        bits = ((rows[..., None] >> np.arange(w, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
        flat = bits.reshape(rows.shape[0], -1)
        packed = np.packbits(flat, axis=1, bitorder="little")
        return [int.from_bytes(row.tobytes(), "little") for row in packed]

    def _from_ints(self, plaintexts: list[int]) -> np.ndarray:
        w, width = self.slot_bits, (self.slots * self.slot_bits + 7) // 8
        if any(p < 0 or p.bit_length() > self.slots * w for p in plaintexts):
            raise ProtocolError("a decrypted plaintext does not fit the packing (wrong key or tampered sum)")
        raw = np.frombuffer(b"".join(p.to_bytes(width, "little") for p in plaintexts), dtype=np.uint8)
        bits = np.unpackbits(raw.reshape(len(plaintexts), width), axis=1, bitorder="little")
        bits = bits[:, : self.slots * w].reshape(len(plaintexts), self.slots, w).astype(np.uint64)
        return (bits << np.arange(w, dtype=np.uint64)).sum(axis=2, dtype=np.uint64)
