"""One bad party costs only itself (design invariant 7), checked by a hypothesis-driven harness.

In a real in-process federation, ONE party replaces its reply in ONE phase with whatever hypothesis
chooses: random bytes, a truncation, a valid envelope around a garbage layer part, a valid layer
record with wrong sizes, saturated (out-of-range) field elements or ciphertexts, other parties' ids
or duplicates, altered counts and flags, another party's payload, its own payload or envelope from
an earlier round, a duplicate reply, or a false "I refuse the sum" withdrawal. For every example:

* ``run_round`` returns (no exception escapes it);
* no honest party is in ``report.dropouts`` (nobody is dropped for another's message);
* if the round is ok, the revealed sum is exactly that of the contributors: the bad party is either
  dropped (and named in ``report.dropouts``) or, if it is a contributor, its corruption happened
  outside the input phase so its own vector is exact too — or it corrupted its input, which input
  integrity without proofs cannot catch (out of scope) unless the sum-bound check refuses it;
* if the round failed, it failed cleanly: an error string, the global model unchanged, and the bad
  party named (in the error or the dropouts) — or the sum-bound check refused a corrupted input.

The harness intercepts replies after every party has answered (a transport wrapper), so a bad party
can replay any other party's reply of the same phase.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import fixed_delta_client
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

import securefl
from securefl.faults import Faults
from securefl.layers import CKKS, Identities, Paillier, Plain, Quantize, SecAgg, SecAggPlus
from securefl.party import REFUSED_SUM
from securefl.transport import Reply, Transport
from securefl.wire import REPLY, WITHDRAW, Envelope, encode_record

DIM = 5
BOUND = 2**23 - 1  # quantize(bits=24) at this bound has scale 1: integer deltas encode exactly
PAILLIER_BOUND = 32767.0  # quantize(bits=16): scale 1
PAILLIER_BITS = 512  # tests only


# --- the federations ---------------------------------------------------------------------------


@dataclass
class Setup:
    name: str
    fed: securefl.Federation
    parties: list[str]
    deltas: dict[str, np.ndarray]
    weights: dict[str, int]
    input_phase: str
    modulus_bits: int | None  # the revealed integer sum's modulus; None: sealed (compare models)
    atol: float = 0.0  # sealed models: a few ulps (a record's model is moved by a PRF of its request)


def build(name: str, seed: int = 0) -> Setup:
    rng = np.random.default_rng(seed)
    n = {"plain": 4, "secagg": 5, "secagg-active": 5, "secagg+": 8, "paillier": 4, "ckks": 3}[name]
    parties = [f"p{i:02d}" for i in range(n)]
    deltas = {p: rng.integers(-40, 40, DIM).astype(float) for p in parties}
    weights = {p: int(rng.integers(1, 9)) for p in parties}
    clients = {p: fixed_delta_client(deltas[p], weights[p]) for p in parties}
    kw: dict = {}
    if name == "plain":
        stack, kw["weight_bound"], input_phase, bits = (
            [Quantize(24, float(BOUND)), Plain()],
            BOUND,
            "input",
            64,
        )
    elif name.startswith("secagg"):
        if name == "secagg+":
            layer = SecAggPlus(degree=4)
        else:
            layer = SecAgg(identities=Identities.generate(parties) if name == "secagg-active" else None)
        stack, kw["weight_bound"], input_phase, bits = (
            [Quantize(24, float(BOUND)), layer],
            BOUND,
            "masked",
            32,
        )
    elif name == "paillier":
        layer = Paillier(key_bits=PAILLIER_BITS, workers=1)
        stack, kw["weight_bound"], input_phase, bits = (
            [Quantize(16, PAILLIER_BOUND), layer],
            32767,
            "encrypt",
            None,
        )
    else:
        stack, kw["weight_bound"], input_phase, bits = [CKKS(update_bound=100.0)], 20, "encrypt", None
        deltas = {p: d / 4 for p, d in deltas.items()}  # within the update bound of 100 at weight 8
        clients = {p: fixed_delta_client(deltas[p], weights[p]) for p in parties}
    fed = securefl.Federation({"w": np.zeros(DIM)}, clients, stack, **kw)
    return Setup(name, fed, parties, deltas, weights, input_phase, bits, 1e-3 if name == "ckks" else 1e-300)


def expected_sum(setup: Setup, parties) -> np.ndarray:
    """The survivors' protected vectors [w·Δ, w, n_eval] summed, modulo the layer's 2^k."""
    total = np.zeros(DIM + 2, dtype=np.int64)
    for p in parties:
        total[:DIM] += (setup.weights[p] * setup.deltas[p]).astype(np.int64)
        total[DIM] += setup.weights[p]
    mask = np.uint64((1 << setup.modulus_bits) - 1) if setup.modulus_bits < 64 else np.uint64(2**64 - 1)
    return total.astype(np.uint64) & mask


def expected_step(setup: Setup, parties) -> np.ndarray:
    total = sum(setup.weights[p] for p in parties)
    return sum(setup.weights[p] * setup.deltas[p] for p in parties) / total


# --- the attacks -------------------------------------------------------------------------------

ATTACKS = (
    "random_bytes",
    "truncate",
    "garbage_layer",
    "empty_layer",
    "flip_layer_byte",
    "resize_part",
    "saturate_chunk",
    "mutate_ids",
    "mutate_int",
    "mutate_bool",
    "other_party_payload",
    "old_round_payload",
    "old_round_envelope",
    "duplicate",
    "reply_then_garbage",
    "false_refusal",
)
NEEDS_HISTORY = ("old_round_payload", "old_round_envelope")
_PREFIX = struct.Struct(">4sHI")


def parse_record(data: bytes):
    """A layer record's magic, header and parts, without a schema; None if it is not a record."""
    try:
        magic, _version, hlen = _PREFIX.unpack_from(data)
        header = json.loads(data[_PREFIX.size : _PREFIX.size + hlen])
        offset, parts = _PREFIX.size + hlen, {}
        for name, length in header.pop("parts"):
            parts[name] = data[offset : offset + length]
            offset += length
        return magic, header, parts
    except Exception:
        return None


@dataclass
class Attack:
    """What the bad party does. Its choices depend on the honest payload it replaces, so hypothesis
    draws them in advance (``numbers``, ``blob``) and the attack reads them as it goes: no draw
    happens inside ``run_round``, which would catch hypothesis' own control-flow exceptions."""

    kind: str
    party: str
    phase: str
    round: int
    numbers: list[int]
    blob: bytes
    everyone: tuple[str, ...] = ()
    done: list[str] = field(default_factory=list)  # what was actually sent, for the failure message

    def pick(self, options: list | range):
        """The next pre-drawn choice among ``options``."""
        value = self.numbers.pop(0) if self.numbers else 0
        return options[value % len(options)]

    def apply(self, reply: bytes, same_phase: dict[str, bytes], history: dict) -> list[bytes]:
        envelope = Envelope.decode(reply)
        layer = envelope.parts.get("layer", b"")

        def envelope_of(kind: str, parts: dict) -> bytes:
            return Envelope(
                kind, envelope.session, envelope.round, envelope.phase, envelope.party, parts
            ).encode()

        def wrap(payload: bytes) -> bytes:
            return envelope_of(REPLY, {"layer": payload})

        kind = self.kind
        if kind == "random_bytes":
            return [self.blob]
        if kind == "truncate":
            return [reply[: self.pick(range(len(reply)))]]
        if kind == "garbage_layer":
            return [wrap(self.blob)]
        if kind == "empty_layer":
            return [wrap(b"")]
        if kind == "flip_layer_byte" and layer:
            index, bit = self.pick(range(len(layer))), self.pick(range(8))
            self.done.append(f"flipped bit {bit} of byte {index}")
            return [wrap(layer[:index] + bytes([layer[index] ^ (1 << bit)]) + layer[index + 1 :])]
        if kind in ("resize_part", "saturate_chunk", "mutate_ids", "mutate_int", "mutate_bool"):
            mutated = self._mutate_record(layer)
            if mutated is not None:
                return [wrap(mutated)]
            # not a record (a raw array) or no such field: corrupt the raw payload instead
            return [wrap(self._raw(layer))]
        if kind == "other_party_payload":
            others = sorted(p for p in same_phase if p != self.party)
            if others:
                victim = self.pick(others)
                other = Envelope.decode(same_phase[victim])
                self.done.append(f"{victim}'s {other.kind}")
                if other.kind == WITHDRAW:
                    return [envelope_of(WITHDRAW, dict(other.parts))]
                return [wrap(other.parts.get("layer", b""))]
            return [wrap(self._raw(layer))]
        if kind == "old_round_payload":
            old = history.get((self.round - 1, self.phase, self.party))
            if old is not None and Envelope.decode(old).kind == REPLY:
                return [wrap(Envelope.decode(old).parts["layer"])]
            return [wrap(self._raw(layer))]
        if kind == "old_round_envelope":
            old = history.get((self.round - 1, self.phase, self.party))
            return [old if old is not None else reply[:-1]]
        if kind == "duplicate":
            return [reply, reply]
        if kind == "reply_then_garbage":
            return [reply, wrap(self.blob)]
        if kind == "false_refusal":
            return [envelope_of(WITHDRAW, {"reason": b"the revealed sum is impossible", REFUSED_SUM: b""})]
        return [wrap(self._raw(layer))]

    def _raw(self, layer: bytes) -> bytes:
        """Corrupt raw bytes: resize, or saturate a chunk with 0xff (out of every field's range)."""
        if not layer or self.pick([True, False]):
            delta = self.pick([*range(-70, 0), *range(1, 71)])
            self.done.append(f"raw size {delta:+d}")
            return layer[:delta] if delta < 0 else layer + bytes(delta)
        start, width = self.pick(range(len(layer))), self.pick([4, 8, 66, len(layer)])
        self.done.append(f"raw saturate {width} at {start}")
        end = min(len(layer), start + width)
        return layer[:start] + b"\xff" * (end - start) + layer[end:]

    def _mutate_record(self, layer: bytes) -> bytes | None:
        record = parse_record(layer)
        if record is None:
            return None
        magic, header, parts = record
        kind = self.kind
        if kind in ("resize_part", "saturate_chunk"):
            if not parts:
                return None
            name = self.pick(sorted(parts))
            data = parts[name]
            if kind == "resize_part" or not data:
                delta = self.pick([*range(-70, 0), *range(1, 71)])
                parts[name] = data[:delta] if delta < 0 else data + bytes(delta)
            else:
                width = self.pick([4, 8, 66, 128, len(data)])
                start = self.pick(range(len(data)))
                end = min(len(data), start + width)
                parts[name] = data[:start] + b"\xff" * (end - start) + data[end:]
            self.done.append(f"{kind} {name}")
            return encode_record(magic, header, parts)
        wanted = {"mutate_ids": list, "mutate_int": int, "mutate_bool": bool}[kind]
        fields = sorted(
            k
            for k, v in header.items()
            if isinstance(v, wanted) and (wanted is bool or not isinstance(v, bool))
        )
        if not fields:
            return None
        name = self.pick(fields)
        value = header[name]
        everyone = sorted(self.everyone)
        if kind == "mutate_ids":
            op = self.pick(["other_ids", "duplicate", "unknown", "drop", "everyone", "self"])
            if op == "other_ids":
                value = [self.pick(everyone) for _ in range(self.pick(range(len(everyone) + 1)))]
            elif op == "duplicate" and value:
                value = [*value, value[0]]
            elif op == "unknown":
                value = [*value, "zz99"]
            elif op == "drop" and value:
                value = value[:-1]
            elif op == "everyone":
                value = everyone
            else:
                value = [*value, self.party]
            self.done.append(f"{name} {op}")
        elif kind == "mutate_int":
            value = self.pick([-1, 0, 1, value + 1, value - 1, 2**31, 2**64])
            self.done.append(f"{name} = {value}")
        else:
            value = not value
            self.done.append(f"{name} flipped")
        header[name] = value
        return encode_record(magic, header, parts)


class Tamper(Transport):
    """Wraps a federation's transport: after everyone answered, the bad party's reply is replaced."""

    def __init__(self, inner: Transport, attack: Attack) -> None:
        self.inner, self.attack = inner, attack
        self.traffic = inner.traffic
        self.history: dict[tuple[int, str, str], bytes] = {}

    def exchange(self, requests, timeout):
        replies = self.inner.exchange(requests, timeout)
        request = Envelope.decode(next(iter(requests.values())))
        same_phase = {r.sender: r.data for r in replies}
        for reply in replies:
            self.history[(request.round, request.phase, reply.sender)] = reply.data
        a = self.attack
        if (request.round, request.phase) != (a.round, a.phase):
            return replies
        out = []
        for reply in replies:
            if reply.sender != a.party:
                out.append(reply)
                continue
            for data in a.apply(reply.data, same_phase, self.history):
                out.append(Reply(a.party, data, reply.seconds))
        return out


# --- the property ------------------------------------------------------------------------------

REFUSED = "cannot come from"  # the sum-bound check (ImpossibleSum) and paillier's packing bound
PACKING = "leaves the packing bound"


KEY_PHASES = ("key_offer", "key_grant", "key_install")  # shared-key layers: round 0 only


def run_attack(name: str, phase: str, data) -> None:
    """One example: build the federation, let one party attack in ``phase``, check the property."""
    setup = build(name, seed=data.draw(st.integers(0, 3), label="seed"))
    fed = setup.fed
    kind = data.draw(st.sampled_from(ATTACKS), label="attack")
    bad = data.draw(st.sampled_from(setup.parties), label="bad party")
    attack_round = 1 if kind in NEEDS_HISTORY and phase not in KEY_PHASES else 0
    numbers = data.draw(st.lists(st.integers(0, 2**16), min_size=8, max_size=8), label="choices")
    blob = data.draw(st.binary(max_size=300), label="bytes")
    attack = Attack(kind, bad, phase, attack_round, numbers, blob, everyone=tuple(setup.parties))
    fed.aggregator.transport = Tamper(fed.aggregator.transport, attack)
    if attack_round:
        assert fed.run_round().ok  # an honest round 0, whose replies the bad party replays
    before = fed.global_vector
    sealed_before, weights_before = fed.aggregator.sealed, fed.aggregator.weights.copy()
    report = fed.run_round()  # must return, whatever the bad party sent
    note(f"{name}: {bad} {kind} in {attack.phase} {attack.done}: {report}")
    honest = set(setup.parties) - {bad}
    blamed = honest & set(report.dropouts)
    assert not blamed, (
        f"honest parties dropped for {bad}'s message: { {p: report.dropouts[p] for p in blamed} }"
    )
    input_corrupted = attack.phase == setup.input_phase
    if report.ok:
        survivors = set(report.survivors)
        assert honest <= survivors, f"honest parties missing from the sum: {honest - survivors}"
        if bad not in survivors:
            assert bad in report.dropouts, f"{bad} is neither summed nor dropped"
        elif input_corrupted and kind not in ("duplicate", "old_round_envelope", "false_refusal"):
            return  # its own input is whatever it sent: input integrity is out of scope
        if setup.modulus_bits is not None:
            np.testing.assert_array_equal(fed.aggregator.secure_sum.result(), expected_sum(setup, survivors))
        else:
            # opened by an honest survivor (the bad party may hold no keys)
            opened = fed.nodes[min(honest)].open_global(fed.aggregator.sealed.data)
            np.testing.assert_allclose(
                opened - before, expected_step(setup, survivors), rtol=1e-9, atol=setup.atol
            )
        return
    assert report.status == "failed" and isinstance(report.error, str) and report.error
    assert fed.aggregator.sealed is None or fed.aggregator.sealed is sealed_before
    np.testing.assert_array_equal(fed.aggregator.weights, weights_before)
    refused = REFUSED in report.error or PACKING in report.error
    # A party that advertises a mask key it does not hold corrupts only its own contribution (its
    # pairwise masks no longer cancel): like a corrupted input, the sum check refuses it, unnamed.
    own_masks_corrupted = attack.phase == "advertise" and name.startswith("secagg")
    assert (
        bad in report.error
        or bad in report.dropouts
        or ((input_corrupted or own_masks_corrupted) and refused)
    ), f"the round failed without naming {bad}: {report.error}"


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PASSIVE = ("advertise", "share", "masked", "unmask")
ACTIVE = ("advertise", "share", "masked", "consistency", "unmask")
SHARED_KEY = (*KEY_PHASES, "encrypt", "decrypt", "arbitrate")

# Failures the harness found in layers this file does not own, still open: a (layer, phase) whose
# examples may fail; the property is not weakened for any other case. None are open.
KNOWN: dict[tuple[str, str], str] = {}


def _cases(name: str, phases: tuple[str, ...], slow: bool = False) -> list:
    marks = [pytest.mark.slow] if slow else []
    return [
        pytest.param(
            name,
            phase,
            id=f"{name}-{phase}",
            marks=marks
            + (
                [pytest.mark.xfail(reason=KNOWN[(name, phase)], strict=False)]
                if (name, phase) in KNOWN
                else []
            ),
        )
        for phase in phases
    ]


@pytest.mark.parametrize(
    ("name", "phase"),
    _cases("plain", ("input",))
    + _cases("secagg", PASSIVE)
    + _cases("secagg-active", ACTIVE)
    + _cases("secagg+", PASSIVE),
)
@settings(max_examples=40, **_SETTINGS)
@given(data=st.data())
def test_one_bad_party_costs_only_itself(name, phase, data):
    run_attack(name, phase, data)


@pytest.mark.parametrize(
    ("name", "phase"), _cases("paillier", SHARED_KEY, True) + _cases("ckks", SHARED_KEY, True)
)
@settings(max_examples=12, phases=[Phase.explicit, Phase.reuse, Phase.generate], **_SETTINGS)
@given(data=st.data())
def test_one_bad_party_costs_only_itself_with_homomorphic_layers(name, phase, data):
    run_attack(name, phase, data)


def _corrupt_mask_key(reply: bytes) -> bytes:
    """Flip bit 4 of byte 8 of the advertised mask public key (byte 40 of the 'keys' part)."""
    e = Envelope.decode(reply)
    magic, header, parts = parse_record(e.parts["layer"])
    keys = bytearray(parts["keys"])
    keys[40] ^= 0x10
    layer = encode_record(magic, header, {**parts, "keys": bytes(keys)})
    return Envelope(e.kind, e.session, e.round, e.phase, e.party, {"layer": layer}).encode()


def _corrupted_mask_key_round():
    setup = build("secagg")
    setup.fed.transport.faults = Faults().add("replace", "p01", phase="advertise", replace=_corrupt_mask_key)
    return setup, setup.fed.run_round()


def test_a_corrupted_mask_key_never_yields_a_wrong_sum_reported_ok():
    setup, report = _corrupted_mask_key_round()
    if report.ok:
        np.testing.assert_array_equal(
            setup.fed.aggregator.secure_sum.result(), expected_sum(setup, report.survivors)
        )
    else:
        assert report.error and not set(report.dropouts) - {"p01"}
        np.testing.assert_array_equal(setup.fed.aggregator.weights, np.zeros(DIM))


def test_a_corrupted_mask_key_fails_the_round_like_a_corrupted_input():
    """A mask key its sender does not hold is that party's own garbage (input integrity): it cannot
    be attributed without proofs, but the sum check refuses it and no honest party is named."""
    _setup, report = _corrupted_mask_key_round()
    assert not report.ok and REFUSED in report.error, report
    assert not set(report.dropouts) - {"p01"}
