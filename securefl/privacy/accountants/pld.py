"""Privacy-loss-distribution accounting by Google's dp-accounting: an implementation independent of
opacus, which ``securefl audit`` adds to its recomputation when the package is installed."""

from __future__ import annotations

from securefl.privacy.accountants.base import Accountant, Entry


class PLD(Accountant):
    name = "pld"

    def _epsilon(self, grouped: list[tuple[Entry, int]], delta: float) -> float:
        from dp_accounting import dp_event
        from dp_accounting.pld import pld_privacy_accountant

        accountant = pld_privacy_accountant.PLDAccountant()
        for (_, sigma, q), steps in grouped:
            event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
            accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
        return accountant.get_epsilon(delta)

    @property
    def version(self) -> str:
        from importlib.metadata import version

        return f"pld (dp-accounting {version('dp-accounting')})"


def available() -> bool:
    try:
        import dp_accounting  # noqa: F401
    except ImportError:
        return False
    return True
