"""The mask PRG: a 256-bit seed expanded by AES-256 in counter mode into uniform words.

Each seed keys AES-256 directly and is used for exactly one mask, so the counter starts at zero
(a fresh key per mask makes the fixed nonce safe). Expanding into a reusable buffer avoids an
allocation per mask: about 0.6 ms per 4 MB here, so masking is cheap next to the model.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_NONCE = bytes(16)


def _check_seed(seed: bytes) -> None:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")


def expand(seed: bytes, count: int, dtype: np.dtype | str = np.uint32) -> np.ndarray:
    """``count`` uniform words of ``dtype`` from ``seed`` (AES-256-CTR keystream, little-endian)."""
    _check_seed(seed)
    dtype = np.dtype(dtype).newbyteorder("<")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
    return np.frombuffer(encryptor.update(bytes(count * dtype.itemsize)), dtype=dtype).copy()


class MaskAccumulator:
    """Adds and subtracts many masks into one vector, reusing one keystream buffer."""

    def __init__(self, count: int, dtype: np.dtype | str = np.uint32) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.total = np.zeros(count, dtype=self.dtype)
        nbytes = count * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        self._buffer = bytearray(nbytes + 15)  # update_into wants block-size slack
        self._words = np.frombuffer(self._buffer, dtype=self.dtype, count=count)

    def _fill(self, seed: bytes) -> np.ndarray:
        _check_seed(seed)
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        return self._words

    def add(self, seed: bytes) -> None:
        self.total += self._fill(seed)

    def subtract(self, seed: bytes) -> None:
        self.total -= self._fill(seed)
