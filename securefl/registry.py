"""Building a named component from a configuration table, with one shape of error for all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from securefl.errors import ConfigError

T = TypeVar("T")


def construct(kind: str, registry: Mapping[str, Callable[..., T]], entry: Mapping[str, Any], key: str) -> T:
    """``registry[entry[key]](**rest of entry)``; unknown names and bad parameters are ConfigErrors."""
    params = dict(entry)
    name = params.pop(key, None)
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")
    try:
        return registry[name](**params)
    except TypeError as exc:
        raise ConfigError(f"{kind} {name!r}: {exc}") from None
