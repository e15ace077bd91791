"""ckks against protocols/vectors/ckks.json (approximate: within the stated tolerance)."""

import json
from pathlib import Path

import numpy as np
import pytest

from securefl.crypto import ckks
from securefl.errors import ConfigError

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "protocols/vectors/ckks.json").read_text())


@pytest.mark.parametrize("row", VECTORS["parameters"], ids=lambda r: r["preset"])
def test_parameter_table(row):
    p = ckks.PRESETS[row["preset"]]
    assert (p.poly_modulus_degree, list(p.coeff_mod_bit_sizes), p.scale_bits) == (
        row["poly_modulus_degree"],
        row["coeff_mod_bit_sizes"],
        row["scale_bits"],
    )
    assert (p.slots, p.data_bits, p.max_abs_sum) == (row["slots"], row["data_bits"], row["max_abs_sum"])
    assert ckks.MAX_COEFF_BITS_128[p.poly_modulus_degree] == row["max_coeff_bits_for_128_bit_security"]


@pytest.mark.parametrize("case", VECTORS["sums"], ids=lambda c: c["preset"])
def test_sums_within_tolerance(case):
    params = ckks.PRESETS[case["preset"]]
    secret = ckks.new_context(params)
    public = ckks.load_context(ckks.serialize(secret, secret=False), params, secret=False)
    n = len(case["sum"])
    total = ckks.CiphertextSum(public, params, n)
    for values in case["parties"]:
        total.add(ckks.encrypt(secret, np.array(values), params))
    out = ckks.decrypt(secret, total.blobs(), n, params)
    np.testing.assert_allclose(out, case["sum"], atol=case["tolerance"], rtol=0)


@pytest.mark.parametrize("case", VECTORS["refused"], ids=lambda c: c["why"][:20])
def test_refused_parameters(case):
    with pytest.raises(ConfigError):
        ckks.CkksParams(
            case["poly_modulus_degree"], tuple(case["coeff_mod_bit_sizes"]), case.get("scale_bits", 30)
        )
