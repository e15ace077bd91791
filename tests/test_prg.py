"""The mask accumulator expands many masks chunk by chunk: it must equal the masks one by one."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.crypto import prg


@settings(max_examples=25, deadline=None)
@given(
    count=st.sampled_from([1, 5, prg.CHUNK_WORDS - 1, prg.CHUNK_WORDS, 2 * prg.CHUNK_WORDS + 7]),
    dtype=st.sampled_from([np.uint32, np.uint64]),
    signs=st.lists(st.booleans(), max_size=5),
    data=st.data(),
)
def test_chunked_expansion_equals_the_masks_one_by_one(count, dtype, signs, data):
    seeds = [data.draw(st.binary(min_size=32, max_size=32)) for _ in signs]
    start = data.draw(st.integers(0, 2**32 - 1))
    masks = prg.MaskAccumulator(count, dtype)
    expected = np.full(count, start, dtype=dtype)
    for seed, added in zip(seeds, signs, strict=True):
        (masks.add if added else masks.subtract)(seed)
        if added:
            expected += prg.expand(seed, count, dtype)
        else:
            expected -= prg.expand(seed, count, dtype)
    vector = np.full(count, start, dtype=dtype)
    assert masks.apply_to(vector) is vector
    assert np.array_equal(vector, expected)
    # Removing them again gives back the start; the total is the masks alone.
    assert np.array_equal(masks.apply_to(vector, sign=-1), np.full(count, start, dtype=dtype))
    assert np.array_equal(masks.total, expected - np.full(count, start, dtype=dtype))


def test_wrong_seeds_and_vectors_are_refused():
    masks = prg.MaskAccumulator(10)
    with pytest.raises(ValueError, match="32 bytes"):
        masks.add(b"short")
    with pytest.raises(ValueError, match="cannot apply"):
        masks.apply_to(np.zeros(11, dtype=np.uint32))
    with pytest.raises(ValueError, match="cannot apply"):
        masks.apply_to(np.zeros(10, dtype=np.uint64))
    with pytest.raises(ValueError, match="sign"):
        masks.apply_to(np.zeros(10, dtype=np.uint32), sign=2)
