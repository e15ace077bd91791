"""Side by side in Flower's simulation engine: Flower plain, Flower's SecAgg+, securefl's secure sum
(50 clients × 100k parameters by default), with and without a client dropping during key setup.

    python benchmarks/flower_secagg.py --clients 50 --params 100000 --rounds 2 [--json out.json]

The benchmark itself is :mod:`securefl.flower.bench` (Flower's actors import the clients from it).
"""

import sys

from securefl.flower.bench import main

if __name__ == "__main__":
    sys.exit(main())
