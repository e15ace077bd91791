"""What the aggregator saw of one party: the point of secure aggregation, shown at the end of a demo.

:class:`AggregatorView` is a transcript that keeps only what one watched party sent in the latest
round, and a wrapper of that party's client that keeps its latest update. :meth:`AggregatorView.
summary` puts them side by side: the first values of the update the party computed, and the
first values of what the aggregator received for it — the update itself under ``plain``, uniformly
random words under ``secagg`` (the masks cancel only in the sum), ciphertexts under the HE layers.
Nothing here is sent anywhere: the view is taken inside the simulating process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from securefl.errors import WireError
from securefl.party import Client, as_train_result
from securefl.transcript import Transcript
from securefl.wire import Envelope, decode_record, unpack_array

HEAD = 4  # values shown of each side
INPUT_PHASES = ("input", "masked", "encrypt")  # plain; secagg and secagg+; the HE layers


class AggregatorView(Transcript):
    """Keeps, of everything the aggregator receives, one party's messages of the latest round."""

    def __init__(self, party: str) -> None:
        super().__init__()
        self.party = party
        self.update: np.ndarray | None = None  # the watched party's latest update, flattened

    def record(self, round: int, phase: str, direction: str, party: str, data: bytes) -> None:
        if direction != "in" or party != self.party:
            return
        self.entries = [e for e in self.entries if e.round == round]  # the latest round only
        super().record(round, phase, direction, party, data)

    def watch(self, client: Any) -> Client:
        """``client`` (a Client or a train function), keeping the update it computes."""
        client = client if isinstance(client, Client) else Client(train=client)

        def train(weights, info):
            result = as_train_result(client.train(weights, info))
            self.update = np.concatenate(
                [
                    (np.asarray(result.weights[name], dtype=np.float64) - np.asarray(weights[name])).ravel()
                    for name in weights
                ]
            )
            return result

        return dataclasses.replace(client, train=train)

    def summary(self) -> dict[str, Any] | None:
        """The watched party's update and what the aggregator received for it (JSON-ready), or None
        if it sent nothing."""
        if not self.entries or self.update is None:
            return None
        # The phase that carried its input (key set-up phases of the HE layers can be larger).
        inputs = [e for e in self.entries if e.phase in INPUT_PHASES] or self.entries
        largest = max(inputs, key=lambda e: len(e.data))
        try:
            payload = Envelope.decode(largest.data).parts.get("layer", b"")
        except WireError:
            return None
        kind, head = _received(payload)
        return {
            "party": self.party,
            "round": largest.round + 1,
            "phase": largest.phase,
            "update": [float(v) for v in self.update[:HEAD]],
            "received_bytes": len(payload),
            "received_kind": kind,
            "received": head,
        }


def _received(payload: bytes) -> tuple[str, list]:
    """What a party's input message looks like to the aggregator: a kind and its first values."""
    if payload[:4] == b"SAMr":  # secagg / secagg+: the masked input, words modulo 2^32
        try:
            _, parts = decode_record(payload, b"SAMr", {"unopened": list}, ("masked", "accusations"))
            words = unpack_array(parts["masked"])
            return "masked words (mod 2^32)", [int(w) for w in words[:HEAD]]
        except WireError:
            pass
    if payload[:4] == b"PENr":  # paillier / paillier-threshold: the packed ciphertexts
        try:
            _, parts = decode_record(payload, b"PENr", {"count": int}, ("ciphertexts",))
            blob = parts["ciphertexts"]
            return "Paillier ciphertext bytes", [blob[i : i + 8].hex() for i in range(0, 8 * HEAD, 8)]
        except WireError:
            pass
    try:
        values = unpack_array(payload)
        if values.dtype.kind == "f":  # plain: the weighted update itself
            return "the update in the clear (times the party's weight)", [float(v) for v in values[:HEAD]]
        return f"{values.dtype} words", [int(v) for v in values[:HEAD]]
    except WireError:
        return "encrypted bytes", [payload[i : i + 8].hex() for i in range(64, 64 + 8 * HEAD, 8)]
