"""The exceptions securefl raises, one family per kind of failure.

Every message names the problem and, where there is one, the fix. Errors raised while handling
one party's message (``WireError``, ``ProtocolError``, ``UpdateError``) make the aggregator drop
that party from the round; the round goes on.
"""

from __future__ import annotations


class SecureFLError(Exception):
    """Base class of every securefl error."""


class ConfigError(SecureFLError, ValueError):
    """A federation, privacy stack or parameter set that cannot work, found before any round."""


class WireError(SecureFLError, ValueError):
    """A message that is malformed, oversized, of the wrong version, session, round or phase."""


class ProtocolError(SecureFLError):
    """A well-formed message that breaks the protocol (duplicate, wrong sender, bad payload)."""


class UpdateError(SecureFLError, ValueError):
    """A party's update that cannot be used: wrong shape, NaN or infinite values, out of range."""


class RoundFailed(SecureFLError):
    """A round that could not complete; the global model is unchanged."""


class SeedRefused(SecureFLError):
    """A fixed seed asked for where only a cryptographically secure source is allowed."""


class BudgetExhausted(SecureFLError):
    """A round refused before it started: it would spend more privacy budget than is left."""
