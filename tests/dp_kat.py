"""Known-answer vectors for protocols/dp.md, computed from the spec's formulas with mpmath (50 digits),
independently of securefl's code:

    python tests/dp_kat.py > protocols/vectors/dp.json

``tests/test_dp_vectors.py`` checks the implementation against the file.
"""

from __future__ import annotations

import json
import sys

import mpmath

mpmath.mp.dps = 50
ORDERS = range(2, 257)


def calibration(clip: float, z: float, bits: int, size: int) -> dict:
    """§ Calibration: the quantize scale, the Skellam variance and one party's sensitivities."""
    scale = mpmath.mpf((1 << (bits - 1)) - 1) / clip
    root_d = mpmath.sqrt(size)
    l2 = clip * scale + root_d
    return {
        "clip": clip,
        "noise_multiplier": z,
        "bits": bits,
        "update_size": size,
        "scale": float(scale),
        "variance": float((z * clip * scale) ** 2),
        "l2_sensitivity": float(l2),
        "l1_sensitivity": float(min(root_d * l2, l2**2)),
    }


def skellam_rdp(alpha: int, variance: float, l2: float, l1: float) -> mpmath.mpf:
    """§ Accounting: the Skellam RDP bound at integer order alpha."""
    a, v, l2, l1 = (mpmath.mpf(x) for x in (alpha, variance, l2, l1))
    return a * l2**2 / (2 * v) + min((2 * a * l2**2 + 6 * l1) / (4 * v**2), 3 * l1 / (2 * v))


def epsilon(rdp_at: dict[int, mpmath.mpf], delta: float) -> mpmath.mpf:
    """§ Accounting: RDP to (ε, δ) (Balle et al. 2020, Theorem 21), minimised over integer orders."""
    d = mpmath.mpf(delta)
    return min(
        r + mpmath.log((a - 1) / mpmath.mpf(a)) - (mpmath.log(d) + mpmath.log(a)) / (a - 1)
        for a, r in rdp_at.items()
    )


def main() -> None:
    calibrations = [
        calibration(1.0, 1.0, 16, 100),
        calibration(1.0, 2.0, 20, 50),
        calibration(0.5, 0.8, 24, 1000),
    ]
    rdp = []
    for alpha, v, l2, l1 in [(2, 1e4, 50.0, 300.0), (10, 1e6, 1001.0, 1e4), (64, 4.0e12, 1.0e6, 1.0e9)]:
        rdp.append(
            {"order": alpha, "variance": v, "l2": l2, "l1": l1, "rdp": float(skellam_rdp(alpha, v, l2, l1))}
        )
    compositions = []
    for cal, steps, delta in [(calibrations[0], 10, 1e-5), (calibrations[1], 100, 1e-6)]:
        args = (cal["variance"], cal["l2_sensitivity"], cal["l1_sensitivity"])
        total = {a: steps * skellam_rdp(a, *args) for a in ORDERS}
        compositions.append(
            {
                "variance": args[0],
                "l2_sensitivity": args[1],
                "l1_sensitivity": args[2],
                "steps": steps,
                "delta": delta,
                "epsilon": float(epsilon(total, delta)),
            }
        )
    json.dump(
        {
            "description": "Known-answer vectors for protocols/dp.md: Skellam calibration, RDP bound and "
            "composed epsilon, from the spec's formulas in 50-digit arithmetic (tests/dp_kat.py).",
            "orders": [ORDERS.start, ORDERS.stop - 1],
            "calibration": calibrations,
            "skellam_rdp": rdp,
            "skellam_epsilon": compositions,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
