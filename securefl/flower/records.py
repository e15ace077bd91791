"""How securefl's protocol bytes ride inside Flower records (``protocols/flower.md``).

A securefl message is one :class:`~securefl.wire.Envelope` (bytes, versioned, schema-checked,
size-bounded). Over Flower it travels as the ``bytes`` value ``envelope`` of a
:class:`flwr.app.ConfigRecord` named :data:`RECORD` in a ``train`` message; requests also carry a
small ``securefl.setup`` ConfigRecord (the model's array names, shapes and dtypes and the size of
the federation, as JSON) from which a party builds its state on first contact. Nothing else in the
Flower message is read: Flower's own metadata (node ids, run id, group id) is routing, not trust.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from securefl import __version__
from securefl.codec import ArraySpec
from securefl.errors import WireError
from securefl.logtext import printable

RECORD = "securefl"  # ConfigRecord holding the envelope bytes
SETUP = "securefl.setup"  # ConfigRecord holding the setup JSON (requests only)
HELLO = "securefl.hello"  # ConfigRecord: {"challenge"} in the request, {"party", "signature"} in the reply
HELLO_PARTY = "party"
HELLO_CHALLENGE = "challenge"  # 32 random bytes, one per node and hello
HELLO_SIGNATURE = "signature"  # active mode: the party's Ed25519 signature over the challenge and name
ENVELOPE = "envelope"
SETUP_JSON = "json"
# 2: the setup names the server's securefl release, which the party's must equal (releases change
# protocols: 0.2.0 moved SecAgg's Shamir coordinates, and two releases in one round fail it or get
# honest parties named).
SETUP_VERSION = 2
MAX_SETUP_BYTES = 1 << 20
MESSAGE_TYPE = "train"  # securefl's messages go to the ClientApp's train handler, through the mod
MAX_NODE_ID = 2**64 - 1


def party_id(node_id: int) -> str:
    """A Flower node id as a securefl party id (its decimal digits)."""
    if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id <= MAX_NODE_ID:
        raise WireError(f"not a Flower node id: {node_id!r}")
    return str(node_id)


def node_id(party: str) -> int:
    """The Flower node id behind a securefl party id."""
    if not (isinstance(party, str) and party.isdigit() and len(party) <= 20):
        raise WireError(f"party id {party!r} is not a Flower node id")
    value = int(party)
    if value > MAX_NODE_ID:
        raise WireError(f"party id {party!r} is not a Flower node id")
    return value


@dataclass(frozen=True)
class Setup:
    """What a party needs before its first round: the model's layout and the federation's size."""

    spec: ArraySpec
    population: int

    def encode(self) -> str:
        entries = [[e.name, list(e.shape), e.dtype] for e in self.spec.entries]
        return json.dumps(
            {"v": SETUP_VERSION, "securefl": __version__, "arrays": entries, "population": self.population}
        )

    @classmethod
    def decode(cls, text: object) -> Setup:
        if not isinstance(text, str) or len(text) > MAX_SETUP_BYTES:
            raise WireError("securefl setup record is missing, not a string or too large")
        try:
            data = json.loads(text)
            if data["v"] != SETUP_VERSION:
                raise WireError(
                    f"securefl setup version {printable(repr(data['v']), 40)}, this party speaks "
                    f"{SETUP_VERSION}: the server and this party run different securefl releases; "
                    "install the same release on both"
                )
            if data["securefl"] != __version__:
                raise WireError(
                    f"the server runs securefl {printable(repr(data['securefl']), 40)}, this party "
                    f"{__version__}: install the same release on both (releases change protocols)"
                )
            population = data["population"]
            if isinstance(population, bool) or not isinstance(population, int) or population < 1:
                raise WireError(f"securefl setup population {printable(repr(population), 40)}")
            if not isinstance(data["arrays"], list):
                raise TypeError
            raw = [{"name": n, "shape": s, "dtype": d} for n, s, d in data["arrays"]]
        except WireError:
            raise
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise WireError(f"securefl setup record is malformed: {type(exc).__name__}") from None
        try:
            # The network party's own checks of a layout from the other side (names, at most 32
            # dimensions each below 2^40, float dtypes, at most 2^33 values counted exactly: a shape
            # [2^62, 4] wrapped numpy's product to 0 and was accepted — found by an attacker).
            spec = ArraySpec.from_json({"entries": raw})
        except ValueError as exc:
            raise WireError(f"securefl setup: {printable(exc, 300)}") from None
        return cls(spec, population)


def request_content(envelope: bytes, setup: str | None) -> RecordDict:
    records: dict[str, Any] = {RECORD: ConfigRecord({ENVELOPE: envelope})}
    if setup is not None:
        records[SETUP] = ConfigRecord({SETUP_JSON: setup})
    return RecordDict(records)


def reply_content(envelope: bytes) -> RecordDict:
    return RecordDict({RECORD: ConfigRecord({ENVELOPE: envelope})})


def is_securefl(message: Message) -> bool:
    """A message addressed to the securefl mod (anything else passes through untouched)."""
    return message.has_content() and RECORD in message.content.config_records


def is_hello(message: Message) -> bool:
    """The ServerApp asks the node for its securefl party name."""
    return message.has_content() and HELLO in message.content.config_records


def hello_content(name: str | None = None, signature: bytes = b"", challenge: bytes = b"") -> RecordDict:
    """A hello request (``challenge``) or reply (``name`` and, in active mode, ``signature``)."""
    if name is None:
        return RecordDict({HELLO: ConfigRecord({HELLO_CHALLENGE: challenge})})
    return RecordDict({HELLO: ConfigRecord({HELLO_PARTY: name, HELLO_SIGNATURE: signature})})


def hello_challenge(message: Message) -> bytes:
    """The challenge of a hello request (b"" if it carries none)."""
    value = message.content.config_records[HELLO].get(HELLO_CHALLENGE, b"")
    return value if isinstance(value, bytes) else b""


def hello_reply_signature(message: Message) -> bytes:
    value = message.content.config_records[HELLO].get(HELLO_SIGNATURE, b"")
    return value if isinstance(value, bytes) else b""


def hello_name(message: Message) -> str:
    """The party name in a hello reply; WireError if there is none."""
    if not message.has_content() or HELLO not in message.content.config_records:
        raise WireError("hello reply without the securefl.hello record")
    name = message.content.config_records[HELLO].get(HELLO_PARTY)
    if not isinstance(name, str):
        raise WireError("hello reply without a party name")
    return name


def envelope_of(message: Message) -> bytes:
    """The envelope bytes inside a securefl message; WireError if there are none."""
    if not message.has_content():
        raise WireError("Flower message has no content")
    record = message.content.config_records.get(RECORD)
    if record is None:
        raise WireError(f"Flower message has no {RECORD!r} ConfigRecord")
    data = record.get(ENVELOPE)
    if not isinstance(data, bytes):
        raise WireError(f"the {RECORD!r} record's {ENVELOPE!r} is not bytes")
    return data


def setup_of(message: Message) -> Setup | None:
    record = message.content.config_records.get(SETUP)
    return None if record is None else Setup.decode(record.get(SETUP_JSON))


def arrays_to_named(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as securefl's named arrays (its keys, in order)."""
    return {name: np.asarray(array.numpy()) for name, array in record.items()}


def named_to_arrays(arrays: Mapping[str, np.ndarray] | list[np.ndarray]) -> ArrayRecord:
    if not isinstance(arrays, Mapping):
        arrays = {str(i): a for i, a in enumerate(arrays)}
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def message_bytes(message: Message) -> int:
    """The payload bytes of a Flower message: array data, bytes and strings as their length, numbers
    as 8 bytes, booleans as 1 (Flower's own convention; metadata excluded)."""
    if not message.has_content():
        return 0
    total = 0
    for record in message.content.values():
        if isinstance(record, ArrayRecord):
            total += record.count_bytes()
            continue
        for key, value in record.items():
            total += len(key) + sum(_value_bytes(v) for v in (value if isinstance(value, list) else [value]))
    return total


def _value_bytes(value: object) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    return 1 if isinstance(value, bool) else 8
