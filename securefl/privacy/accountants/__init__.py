"""Accountants, by name: ``create("prv")`` (default), ``create("rdp")``, and ``create("pld")`` when
Google's dp-accounting is installed. One small interface (:class:`Accountant`), one file each."""

from __future__ import annotations

from securefl.errors import ConfigError
from securefl.privacy.accountants import pld
from securefl.privacy.accountants.base import GAUSSIAN, SKELLAM, Accountant, entry_of
from securefl.privacy.accountants.pld import PLD
from securefl.privacy.accountants.prv import PRV
from securefl.privacy.accountants.rdp import RDP

ACCOUNTANTS: dict[str, type[Accountant]] = {"prv": PRV, "rdp": RDP}
if pld.available():
    ACCOUNTANTS["pld"] = PLD
DEFAULT = "prv"


def create(name: str = DEFAULT) -> Accountant:
    if name not in ACCOUNTANTS:
        raise ConfigError(
            f"unknown accountant {name!r}; available: {', '.join(ACCOUNTANTS)} (the Gaussian "
            "approximation is deliberately absent: it under-reports ε)"
        )
    return ACCOUNTANTS[name]()


def for_mechanism(mechanism: str, preferred: str = DEFAULT) -> Accountant:
    """``preferred`` if it can account ``mechanism``, else RDP (the one that covers Skellam)."""
    accountant = create(preferred)
    return accountant if mechanism in accountant.mechanisms else RDP()


__all__ = [
    "ACCOUNTANTS",
    "DEFAULT",
    "GAUSSIAN",
    "PLD",
    "PRV",
    "RDP",
    "SKELLAM",
    "Accountant",
    "create",
    "entry_of",
    "for_mechanism",
]
