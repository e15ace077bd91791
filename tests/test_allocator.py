"""The simulating processes' allocator setting (securefl/simulation/allocator.py)."""

import sys

import pytest

from securefl.simulation import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_the_allocator_setting_applies_once_and_keeps_what_it_decided():
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True  # idempotent: mallopt is not called again
