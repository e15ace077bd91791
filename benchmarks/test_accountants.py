"""pytest-benchmark: ε for 10,000 rounds alternating between two (σ, q) settings, grouped."""

import pytest

from securefl.privacy.accountants import create


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_epsilon_for_10000_alternating_rounds(benchmark, name):
    accountant = create(name)
    for i in range(10_000):
        accountant.step(1.1 if i % 2 else 1.3, 0.01)
    epsilon = benchmark(accountant.epsilon, 1e-5)
    assert epsilon > 0
