"""Accountants, by name: ``create("prv")`` (default) or ``create("rdp")``."""

from __future__ import annotations

from securefl.errors import ConfigError
from securefl.privacy.accountants.base import Accountant
from securefl.privacy.accountants.prv import PRV
from securefl.privacy.accountants.rdp import RDP

ACCOUNTANTS: dict[str, type[Accountant]] = {"prv": PRV, "rdp": RDP}
DEFAULT = "prv"


def create(name: str = DEFAULT) -> Accountant:
    if name not in ACCOUNTANTS:
        raise ConfigError(
            f"unknown accountant {name!r}; available: {', '.join(ACCOUNTANTS)} (the Gaussian "
            "approximation is "
            "deliberately absent: it under-reports ε)"
        )
    return ACCOUNTANTS[name]()


__all__ = ["ACCOUNTANTS", "DEFAULT", "PRV", "RDP", "Accountant", "create"]
