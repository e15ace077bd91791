"""The DP layer and the Skellam accountant against the known-answer vectors of protocols/dp.md."""

import json
from pathlib import Path

import numpy as np
import pytest

from securefl.codec import VectorLayout
from securefl.layers import Clip, DPNoise, PrivacyStack, Quantize, SecAgg, StackContext
from securefl.privacy.accountants import RDP
from securefl.privacy.accountants.rdp import INTEGER_ORDERS, skellam_rdp

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "dp.json").read_text()
)


def test_the_spec_orders_are_the_accountants():
    assert [INTEGER_ORDERS[0], INTEGER_ORDERS[-1]] == VECTORS["orders"]


@pytest.mark.parametrize("vector", VECTORS["calibration"], ids=lambda v: f"bits{v['bits']}")
def test_skellam_calibration(vector):
    noise = DPNoise(vector["noise_multiplier"])
    stack = PrivacyStack.of([Clip(vector["clip"]), Quantize(vector["bits"]), noise, SecAgg()])
    stack.validate(StackContext(VectorLayout(vector["update_size"]), 10, 3, 1.0, {}))
    mechanism = noise.mechanism
    assert mechanism.mechanism == "skellam"
    for field in ("variance", "l2_sensitivity", "l1_sensitivity"):
        assert getattr(mechanism, field) == pytest.approx(vector[field], rel=1e-12), field


@pytest.mark.parametrize("vector", VECTORS["skellam_rdp"], ids=lambda v: f"order{v['order']}")
def test_skellam_rdp_bound(vector):
    value = skellam_rdp(np.array([vector["order"]]), vector["variance"], vector["l2"], vector["l1"])[0]
    assert value == pytest.approx(vector["rdp"], rel=1e-12)


@pytest.mark.parametrize("vector", VECTORS["skellam_epsilon"], ids=lambda v: f"steps{v['steps']}")
def test_composed_skellam_epsilon(vector):
    accountant = RDP()
    accountant.step_release({"mechanism": "skellam", **vector}, vector["steps"])
    assert accountant.epsilon(vector["delta"]) == pytest.approx(vector["epsilon"], rel=1e-9)
