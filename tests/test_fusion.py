"""Server optimizers against values computed by hand (Reddi et al. 2021, Algorithm 2)."""

import math

import numpy as np
import pytest

from securefl.errors import ConfigError
from securefl.fusion import FedAdagrad, FedAdam, FedAvg, FedYogi, build_strategy

TAU = 0.1


def test_fedavg():
    assert FedAvg().step(np.array([1.0]), np.array([0.5]))[0] == 1.5
    assert FedAvg(lr=0.5).step(np.array([1.0]), np.array([0.5]))[0] == 1.25


def test_fedadagrad_two_steps_by_hand():
    opt = FedAdagrad(lr=1.0, beta1=0.5, tau=TAU)
    x = opt.step(np.array([0.0]), np.array([1.0]))
    # m = 0.5*0 + 0.5*1 = 0.5; v = 0.01 + 1 = 1.01; x = 0.5 / (sqrt(1.01) + 0.1)
    assert x[0] == pytest.approx(0.5 / (math.sqrt(1.01) + 0.1))
    x2 = opt.step(x, np.array([-2.0]))
    # m = 0.25 - 1 = -0.75; v = 1.01 + 4 = 5.01
    assert x2[0] == pytest.approx(x[0] - 0.75 / (math.sqrt(5.01) + 0.1))


def test_fedadam_two_steps_by_hand():
    opt = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=TAU)
    x = opt.step(np.array([1.0]), np.array([2.0]))
    m1, v1 = 0.2, 0.99 * 0.01 + 0.01 * 4  # 0.0499
    assert x[0] == pytest.approx(1.0 + 0.1 * m1 / (math.sqrt(v1) + 0.1))
    x2 = opt.step(x, np.array([1.0]))
    m2, v2 = 0.9 * m1 + 0.1, 0.99 * v1 + 0.01
    assert x2[0] == pytest.approx(x[0] + 0.1 * m2 / (math.sqrt(v2) + 0.1))


def test_fedyogi_two_steps_by_hand():
    opt = FedYogi(lr=0.1, beta1=0.9, beta2=0.99, tau=TAU)
    x = opt.step(np.array([0.0]), np.array([2.0]))
    # v0 = 0.01 < 4: sign(v - Δ²) = -1, so v = 0.01 + 0.01*4 = 0.05
    assert x[0] == pytest.approx(0.1 * 0.2 / (math.sqrt(0.05) + 0.1))
    x2 = opt.step(x, np.array([0.1]))
    # v = 0.05 > 0.01: v = 0.05 - 0.01*0.01 = 0.0499; m = 0.18 + 0.01 = 0.19
    assert x2[0] == pytest.approx(x[0] + 0.1 * 0.19 / (math.sqrt(0.0499) + 0.1))


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_state_dict_resumes_identically(cls):
    a, b = cls(lr=0.1), cls(lr=0.1)
    x = a.step(np.zeros(3), np.array([1.0, -1.0, 0.5]))
    b.load_state_dict(a.state_dict())
    delta = np.array([0.2, 0.3, -0.4])
    np.testing.assert_array_equal(a.step(x, delta), b.step(x, delta))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "fedadam", "beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
        ({"name": "fedavg", "lr": 0}, "lr must be a positive"),
        ({"name": "fedyogi", "tau": -1}, "tau must be a positive"),
        ({"name": "fedavg", "momentum": 0.9}, "strategy 'fedavg'"),
        ("fedsgd", "unknown strategy 'fedsgd'"),
    ],
)
def test_bad_strategy_parameters(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_strategy(spec)
