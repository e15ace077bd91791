"""Ready-made fault injection for the in-process transport: drops, duplicates, corruption, delay.

Rules match on (round, phase, party) read from the request envelope, so a test can say "hospital-2
goes offline in phase `input` of round 3" without knowing anything about the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from securefl.errors import WireError
from securefl.transport import Handler
from securefl.wire import Envelope

# What a rule does: offline (the party never sees the request), lose_reply (the party works but its
# reply is lost), duplicate, truncate, flip (one byte of the reply), delay, replace (the reply),
# tamper_request (a dishonest aggregator: the request is altered before the party sees it).
ACTIONS = ("offline", "lose_reply", "duplicate", "truncate", "flip", "delay", "replace", "tamper_request")


@dataclass(frozen=True)
class Rule:
    action: str
    party: str
    phase: str | None = None
    round: int | None = None
    seconds: float = 0.0
    replace: Callable[[bytes], bytes] | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; use one of {ACTIONS}")

    def matches(self, party: str, envelope: Envelope | None) -> bool:
        if party != self.party:
            return False
        if envelope is None:
            return self.phase is None and self.round is None
        return (self.phase is None or envelope.phase == self.phase) and (
            self.round is None or envelope.round == self.round
        )


@dataclass
class Faults:
    """A list of rules applied in order; the first that matches a request decides."""

    rules: list[Rule] = field(default_factory=list)

    def add(
        self, action: str, party: str, phase: str | None = None, round: int | None = None, **kw
    ) -> Faults:
        self.rules.append(Rule(action, party, phase, round, **kw))
        return self

    def __call__(self, party: str, request: bytes, deliver: Handler) -> list[tuple[bytes, float]]:
        try:
            envelope = Envelope.decode(request)
        except WireError:
            envelope = None
        rule = next((r for r in self.rules if r.matches(party, envelope)), None)
        if rule is None:
            return [(deliver(request), 0.0)]
        if rule.action == "offline":
            return []
        if rule.action == "tamper_request":
            return [(deliver(rule.replace(request)), 0.0)]
        reply = deliver(request)
        if rule.action == "lose_reply":
            return []
        if rule.action == "duplicate":
            return [(reply, 0.0), (reply, 0.0)]
        if rule.action == "truncate":
            return [(reply[: len(reply) // 2], 0.0)]
        if rule.action == "flip":
            index = len(reply) - 1
            return [(reply[:index] + bytes([reply[index] ^ 0x01]), 0.0)]
        if rule.action == "delay":
            return [(reply, rule.seconds)]
        return [(rule.replace(reply), 0.0)]
