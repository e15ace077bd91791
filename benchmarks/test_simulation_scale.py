"""Scale runs of the Ray backend (issue 16): one round at 1,000 and 10,000 parties.

They take minutes and several GiB, so ``make test`` skips them; run them with
``SECUREFL_SCALE=1 .venv/bin/python -m pytest -q -s benchmarks/test_simulation_scale.py``. Each prints
one JSON line: wall, per-party and aggregator seconds, peak RSS of the aggregator and the actors
(each process's own peak, and the sum over the driver and the actors' workers sampled from /proc).
"""

import json
import os

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(os.environ.get("SECUREFL_SCALE") != "1", reason="set SECUREFL_SCALE=1")


# Every party of the population takes part (the round's roster and survivor sets travel in binary
# parts, never in the 64 KiB header); the last case draws a cohort from a population, the others
# never built.
@pytest.mark.parametrize(
    ("privacy", "parties", "params", "cohort"),
    [
        ("secagg+", 1000, 100_000, None),
        ("plain", 10_000, 10_000, None),
        ("secagg+", 10_000, 10_000, None),
        ("secagg+", 20_000, 10_000, 5000),
    ],
)
def test_one_round_at_scale(privacy, parties, params, cohort):
    from securefl.simulation.scale import scale_round

    selection = None if cohort is None else {"kind": "fixed", "count": cohort}
    result = scale_round(privacy, parties, params, selection=selection)
    print(json.dumps(result))
    assert result["ok"], result["error"]
    # Each party's quantization error adds up in the sum (17 bits per party at 10,000 parties).
    assert result["max_error"] < 5e-6 * parties
