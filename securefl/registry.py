"""Building a named component from a configuration table, with one shape of error for all."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from securefl.errors import ConfigError

T = TypeVar("T")


def construct(kind: str, registry: Mapping[str, Callable[..., T]], entry: Mapping[str, Any], key: str) -> T:
    """``registry[entry[key]](**rest of entry)``; unknown names and bad parameters are ConfigErrors
    that name what is valid."""
    check_entry(kind, registry, entry, key)
    params = dict(entry)
    name = params.pop(key)
    try:
        return registry[name](**params)
    except TypeError as exc:
        raise ConfigError(f"{kind} {name!r}: {exc}") from None


def check_entry(
    kind: str, registry: Mapping[str, Callable[..., Any]], entry: Mapping[str, Any], key: str
) -> None:
    """That ``entry`` names a component of ``registry`` by ``key`` and only options it takes."""
    available = ", ".join(sorted(registry))
    if key not in entry:
        raise ConfigError(f'a {kind} table needs {key} = "..." naming one of: {available}')
    name = entry[key]
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; available: {available}")
    options = _options(registry[name])
    unknown = sorted(set(entry) - {key} - set(options)) if options is not None else []
    if unknown:
        valid = ", ".join(options) if options else "none"
        raise ConfigError(
            f"{kind} {name!r} has no option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"its options: {valid}"
        )


def _options(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword options ``factory`` takes (None when it takes any). A class whose ``__init__``
    passes ``**kwargs`` on to its base takes the base's options too."""
    names: list[str] = []
    targets = (
        [c.__init__ for c in factory.__mro__ if "__init__" in vars(c)]
        if isinstance(factory, type)
        else [factory]
    )
    for target in targets:
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        forwards = False
        for parameter in signature.parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD:
                forwards = True
            elif (
                parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
                and parameter.name != "self"
                and parameter.name not in names
            ):
                names.append(parameter.name)
        if not forwards:
            return names
    return None
