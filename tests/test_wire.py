import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefl.errors import WireError
from securefl.roundinfo import RoundInfo
from securefl.wire import (
    ENVELOPE_MAGIC,
    REPLY,
    REQUEST,
    WIRE_VERSION,
    Envelope,
    decode_record,
    encode_record,
    pack_array,
    unpack_array,
)

SESSION = "0123456789abcdef0123456789abcdef"
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True)
envelopes = st.builds(
    Envelope,
    kind=st.sampled_from(["request", "reply", "withdraw"]),
    session=st.just(SESSION),
    round=st.integers(0, 2**31 - 1),
    phase=names,
    party=names,
    parts=st.dictionaries(names, st.binary(max_size=64), max_size=4),
)


@given(envelopes)
def test_envelope_round_trip(envelope):
    decoded = Envelope.decode(envelope.encode())
    assert decoded == envelope


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_decoder_fuzz_random_bytes_only_raise_wire_error(data):
    with contextlib.suppress(WireError):
        Envelope.decode(data)


@given(envelopes, st.data())
@settings(max_examples=500)
def test_decoder_fuzz_mutated_envelopes(envelope, data):
    """Flip, cut or extend a valid message: the decoder returns an envelope or raises WireError."""
    raw = bytearray(envelope.encode())
    action = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if action == "flip":
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=16))
    try:
        decoded = Envelope.decode(bytes(raw))
    except WireError:
        return
    assert isinstance(decoded, Envelope)


@given(
    hnp.arrays(
        dtype=st.sampled_from(["<f4", "<f8", "<u8", "<i8", "<u4", "<i4", "|u1"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_array_round_trip(array):
    back = unpack_array(pack_array(array), array.dtype.str, array.shape)
    np.testing.assert_array_equal(back, array)


@given(st.binary(max_size=128))
@settings(max_examples=300)
def test_array_decoder_fuzz(data):
    with contextlib.suppress(WireError):
        unpack_array(data)


@given(st.binary(max_size=256))
def test_round_info_decoder_fuzz(data):
    with contextlib.suppress(WireError):
        RoundInfo.decode(data)


def _raw(header: dict, body: bytes = b"", magic=ENVELOPE_MAGIC, version=WIRE_VERSION) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack(">4sHI", magic, version, len(text)) + text + body


GOOD = {"kind": "reply", "session": SESSION, "round": 1, "phase": "input", "party": "p1", "parts": []}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "gossip"}, "unknown message kind"),
        ({"session": "xyz"}, "session id must be 32 lowercase hex"),
        ({"round": -1}, "round -1 out of range"),
        ({"round": True}, "must be int, got a boolean"),
        ({"round": "1"}, "must be int, got str"),
        ({"phase": "a b"}, "not a valid name"),
        ({"party": ""}, "not a valid name"),
        ({"extra": 1}, r"unknown \['extra'\]"),
        ({"parts": [["x", 5]]}, "truncated inside part 'x'"),
        ({"parts": [["x", 0], ["x", 0]]}, "appears twice"),
        ({"parts": [["x", -1]]}, "non-negative length"),
        ({"parts": "nope"}, "must be a list"),
    ],
)
def test_malformed_headers_are_named(change, message):
    header = {**GOOD, **change}
    with pytest.raises(WireError, match=message):
        Envelope.decode(_raw(header))


def test_missing_field_is_named():
    header = dict(GOOD)
    del header["party"]
    with pytest.raises(WireError, match=r"missing \['party'\]"):
        Envelope.decode(_raw(header))


def test_wrong_magic_version_and_trailing_bytes():
    with pytest.raises(WireError, match="not a b'SFLE' record"):
        Envelope.decode(_raw(GOOD, magic=b"XXXX"))
    with pytest.raises(WireError, match="wire version 9 is not supported"):
        Envelope.decode(_raw(GOOD, version=9))
    with pytest.raises(WireError, match="3 trailing bytes"):
        Envelope.decode(_raw(GOOD, b"abc"))


def test_nan_in_header_is_refused():
    text = (
        b'{"kind":"reply","session":"'
        + SESSION.encode()
        + b'","round":NaN,"phase":"a","party":"b","parts":[]}'
    )
    with pytest.raises(WireError, match="NaN is not a JSON number"):
        Envelope.decode(struct.pack(">4sHI", ENVELOPE_MAGIC, WIRE_VERSION, len(text)) + text)


def test_deeply_nested_or_huge_header_values_are_wire_errors():
    for text in (b"[" * 60000 + b"]" * 5000, b'{"round": 1' + b"0" * 5000 + b"}"):
        with pytest.raises(WireError):
            Envelope.decode(struct.pack(">4sHI", ENVELOPE_MAGIC, WIRE_VERSION, len(text)) + text)


def test_oversized_message_is_refused_before_parsing():
    big = Envelope(REPLY, SESSION, 0, "input", "p1", {"layer": b"x" * 2000}).encode()
    with pytest.raises(WireError, match=r"exceeds the limit of 1000 bytes"):
        Envelope.decode(big, max_bytes=1000)


def test_non_bytes_is_refused():
    with pytest.raises(WireError, match="must be bytes"):
        Envelope.decode("text")  # type: ignore[arg-type]


def test_expect_catches_replay_and_misrouting():
    env = Envelope(REPLY, SESSION, 3, "input", "p1", {})
    ok = dict(kind=REPLY, session=SESSION, round=3, phase="input", party="p1")
    env.expect(**ok)
    for field, value, message in [
        ("round", 2, "round is 2"),
        ("phase", "unmask", "current phase is 'unmask'"),
        ("party", "p2", "claims to be from/for 'p1'"),
        ("session", "f" * 32, "belongs to session"),
        ("kind", REQUEST, "expected a request"),
    ]:
        with pytest.raises(WireError, match=message):
            env.expect(**{**ok, field: value})


def test_array_checks_dtype_and_shape():
    data = pack_array(np.zeros(3, dtype="<f4"))
    with pytest.raises(WireError, match="expected <f8"):
        unpack_array(data, "<f8")
    with pytest.raises(WireError, match=r"expected \(4,\)"):
        unpack_array(data, "<f4", (4,))
    with pytest.raises(WireError, match="needs 12 bytes, got 11"):
        unpack_array(data[:-1])
    with pytest.raises(WireError, match="cannot travel"):
        pack_array(np.zeros(2, dtype=np.complex64))


def test_record_part_names_enforced():
    data = encode_record(b"TEST", {"a": 1}, {"x": b"1"})
    with pytest.raises(WireError, match="do not match the expected"):
        decode_record(data, b"TEST", {"a": int}, part_names=("y",))
    header, parts = decode_record(data, b"TEST", {"a": int}, part_names=("x",))
    assert header == {"a": 1} and parts == {"x": b"1"}
