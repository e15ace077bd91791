"""Fault injection for securefl inside Flower, as Flower mods (for tests, drills and benchmarks).

They sit in front of the securefl mod (``ClientApp(mods=[drop, secure.client_mod])``) and pick
their victims by Flower partition id (``context.node_config["partition-id"]``), since node ids are
random. Rules match on the securefl phase and round read from the request's envelope.

* :func:`drop_mod`: the node's ClientApp fails on a matching request (a crash: Flower answers with
  an error message) — the party drops out at that phase;
* :func:`tamper_mod`: the node's reply bytes are altered inside the Flower record after the party
  made them (truncated, a bit flipped, or replaced) — what a malicious client or a broken relay
  sends.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, Message

from securefl.errors import WireError
from securefl.flower.records import ENVELOPE, RECORD, envelope_of, is_securefl
from securefl.wire import Envelope

TAMPERS = ("truncate", "flip_last", "replace")


class NodeDropped(RuntimeError):
    """Raised by :func:`drop_mod`: the simulated crash of a node's ClientApp."""


def _matches(message: Message, context: Context, partitions: Collection[int], phase, round_) -> bool:
    if message.metadata.message_type != "train" or not is_securefl(message):
        return False
    if int(context.node_config.get("partition-id", -1)) not in partitions:
        return False
    try:
        envelope = Envelope.decode(envelope_of(message))
    except WireError:
        return False
    return (phase is None or envelope.phase == phase) and (round_ is None or envelope.round == round_)


@dataclass(frozen=True)
class drop_mod:
    """The ClientApp of the nodes with these partition ids crashes on securefl requests of ``phase``
    (every phase if None) in ``round`` (every round if None)."""

    partitions: tuple[int, ...]
    phase: str | None = None
    round: int | None = None

    def __call__(self, message: Message, context: Context, call_next: Callable) -> Message:
        if _matches(message, context, self.partitions, self.phase, self.round):
            raise NodeDropped(f"node {message.metadata.dst_node_id} drops in phase {self.phase}")
        return call_next(message, context)


@dataclass(frozen=True)
class tamper_mod:
    """The reply of the nodes with these partition ids to securefl requests of ``phase`` is altered
    inside its Flower record: ``truncate`` (first half kept), ``flip_last`` (last bit of the last
    byte) or ``replace`` (by ``data``)."""

    partitions: tuple[int, ...]
    phase: str | None = None
    how: str = "truncate"
    round: int | None = None
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.how not in TAMPERS:
            raise ValueError(f"unknown tamper {self.how!r}; use one of {TAMPERS}")

    def __call__(self, message: Message, context: Context, call_next: Callable) -> Message:
        reply = call_next(message, context)
        if not _matches(message, context, self.partitions, self.phase, self.round) or reply.has_error():
            return reply
        data = envelope_of(reply)
        if self.how == "truncate":
            data = data[: len(data) // 2]
        elif self.how == "flip_last":
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        else:
            data = self.data
        reply.content.config_records[RECORD] = ConfigRecord({ENVELOPE: data})
        return reply


__all__ = ["TAMPERS", "NodeDropped", "drop_mod", "tamper_mod"]
