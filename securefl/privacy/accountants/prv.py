"""Privacy-random-variable accounting (Gopi, Lee, Wutschitz 2021) via opacus: tight ε with a
numerical error bound; the default accountant."""

from __future__ import annotations

import warnings

from opacus.accountants import PRVAccountant

from securefl.privacy.accountants.base import Accountant, Entry


class PRV(Accountant):
    name = "prv"

    def __init__(self, eps_error: float = 0.01) -> None:
        super().__init__()
        self.eps_error = eps_error

    def _epsilon(self, grouped: list[tuple[Entry, int]], delta: float) -> float:
        accountant = PRVAccountant()
        accountant.history = [(sigma, q, n) for (_, sigma, q), n in grouped]
        with warnings.catch_warnings():  # opacus warns about its own numerical domain choices
            warnings.simplefilter("ignore")
            return accountant.get_epsilon(delta, eps_error=self.eps_error)
