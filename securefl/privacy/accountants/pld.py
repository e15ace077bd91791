"""Privacy-loss-distribution accounting by Google's dp-accounting: an implementation independent of
opacus, which ``securefl audit`` adds to its recomputation when the package is installed."""

from __future__ import annotations

from functools import lru_cache

from securefl.privacy.accountants.base import Accountant, BeyondAccountant, Entry

# PLD's support grows with the privacy loss: σ = 10⁻⁶ asked numpy for 71 PiB, σ = 0.1 at q = 1 for
# 100 releases filled 4 GB. Histories whose RDP upper bound stays below this keep it within ~10⁶
# points; beyond it, ε means no privacy anyway and RDP's bound costs nothing.
MAX_EPSILON = 100.0


class PLD(Accountant):
    name = "pld"

    def _epsilon(self, grouped: list[tuple[Entry, int]], delta: float) -> float:
        from securefl.privacy.accountants.rdp import RDP

        bound = RDP()._epsilon(grouped, delta)
        if not bound <= MAX_EPSILON:
            raise BeyondAccountant(
                f"PLD accounting of this history would need a vast grid (its RDP bound is ε = {bound:.3g}, "
                f"over {MAX_EPSILON:g}): account it with 'rdp'"
            )

        return _pld_epsilon(tuple((sigma, q, steps) for (_, sigma, q), steps in grouped), delta)

    @property
    def version(self) -> str:
        from importlib.metadata import version

        return f"pld (dp-accounting {version('dp-accounting')})"


@lru_cache(maxsize=512)
def _pld_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """ε of (σ, q, releases) compositions at ``delta``: a pure function, kept — an audit recomputes
    the growing history at every checkpoint, a guard before every round (0.4 s a composition)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant()
    for sigma, q, steps in history:
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def available() -> bool:
    """Whether dp-accounting is installed (found, not imported: importing it takes ~0.7 s, which
    every securefl process would pay at start)."""
    from importlib.util import find_spec

    return find_spec("dp_accounting") is not None
