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
    MAX_HEADER_BYTES,
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
        ("round", 2, "current round is 3"),  # rounds as printed count from 1
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


# -- issue 14: every decoder of a party's bytes raises WireError and nothing else ----------------

from securefl.network.frames import Hello, Welcome  # noqa: E402
from securefl.wire import MAX_JSON_DEPTH, check_name, load_json  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# JSON-ish text built to hit the parser's edges: deep or unbalanced brackets, long integers, huge
# exponents, the constants, escapes and lone surrogates, repeated keys, stray quotes and bytes.
nasty_tokens = st.sampled_from(
    [
        "[", "]", "{", "}", ",", ":", '"', '"a"', '"a":1', "-", "0", "9" * 120, "1e999", "-1e999",
        "NaN", "Infinity", "-Infinity", "true", "null", '"\\ud800"', '"\\ud83d\\ude00"', '"\\"',
        "\\", '"\\u00"', "\n", " ", "é", '"version"', "1", '"party"', '"parts"', "[]",
    ]
)  # fmt: skip
nasty_json = st.one_of(
    st.lists(nasty_tokens, max_size=60).map(lambda t: "".join(t).encode()),
    st.builds(lambda n, inner: (b"[" * n) + inner + (b"]" * n), st.integers(0, 3000), st.binary(max_size=8)),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


def _record(header: bytes, magic: bytes = ENVELOPE_MAGIC, body: bytes = b"") -> bytes:
    return struct.pack(">4sHI", magic, WIRE_VERSION, len(header)) + header + body


def _every_decoder(data: bytes) -> None:
    """Feed ``data`` to every decoder a party's (or the aggregator's) bytes reach; only WireError
    may come out."""
    for decode in (
        lambda: load_json(data, "test"),
        lambda: Hello.decode(data),
        lambda: Welcome.decode(data),
        lambda: Envelope.decode(data),
        lambda: Envelope.decode(_record(data)),
        lambda: RoundInfo.decode(_record(data, b"SFLR")),
        lambda: decode_record(_record(data, b"TEST"), b"TEST", {"a": int}),
        lambda: unpack_array(data),
    ):
        with contextlib.suppress(WireError):
            decode()


@given(nasty_json)
@settings(max_examples=400, deadline=None)
def test_every_decoder_turns_any_bytes_into_a_wire_error(data):
    _every_decoder(data)


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_load_json_reads_what_json_writes(value):
    text = json.dumps(value).encode()
    nested = text.count(b"[") + text.count(b"{")  # (a bound: brackets inside strings count too)
    if nested <= MAX_JSON_DEPTH:
        assert load_json(text, "test") == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[" * 33 + b"]" * 33, "nested 33 deep, more than the 32"),
        (b"[" * 100_000, "nested 100000 deep"),
        (b'{"a": 1, "a": 2}', "key 'a' appears twice"),
        (b"[1e999]", "out of a float's range"),
        (b"[-1e400]", "out of a float's range"),
        (b"[Infinity]", "Infinity is not a JSON number"),
        (b"[NaN]", "NaN is not a JSON number"),
        (b"[" + b"9" * 5000 + b"]", "an integer of 5000 digits"),
        (b'["\\udc00"]', "lone UTF-16 surrogate"),
        (b"\xff", "not UTF-8"),
        (b"[1,]", "not valid JSON"),
    ],
    ids=lambda v: v[:30].decode("latin-1") if isinstance(v, bytes) else None,
)
def test_load_json_refuses_what_wire_md_forbids(text, message):
    with pytest.raises(WireError, match=message):
        load_json(text, "test")


def test_load_json_keeps_strings_with_brackets_and_escaped_quotes():
    text = b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"{{{{", "b": [-12, 2.5, "\\ud83d\\ude00"]}'
    assert load_json(text, "test") == {"a": "[" * 38 + '"{{{{', "b": [-12, 2.5, "😀"]}


@pytest.mark.parametrize("name", ["p1\n", "p1\r\n", "\np1", "p 1", "", "a" * 65, "é"])
def test_names_are_matched_whole(name):
    with pytest.raises(WireError, match="not a valid name"):
        check_name(name, "party id")
    with pytest.raises(WireError):
        Envelope.decode(_raw({**GOOD, "party": name}))


def test_a_session_with_a_trailing_newline_is_refused():
    with pytest.raises(WireError, match="32 lowercase hex"):
        Envelope.decode(_raw({**GOOD, "session": SESSION + "\n"}))


def test_duplicate_header_keys_are_refused_not_last_wins():
    text = json.dumps(GOOD)[:-1] + ', "party": "p2"}'
    with pytest.raises(WireError, match="'party' appears twice"):
        Envelope.decode(struct.pack(">4sHI", ENVELOPE_MAGIC, WIRE_VERSION, len(text)) + text.encode())


def _round_info(**change) -> bytes:
    roster = "\n".join(change.pop("parties", ["a", "b"])).encode()
    header = {"round": 1, "count": roster.count(b"\n") + 1, "min_parties": 1, "config": {}, **change}
    header.setdefault("parts", [["parties", len(roster)]])
    return _record(json.dumps(header).encode(), b"SFLR", roster)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": {"lr": float("inf")}}, "Infinity is not a JSON number"),
        ({"round": -1}, "out of range"),
        ({"round": 2**31}, "out of range"),
        ({"parties": ["b", "a"]}, "sorted"),
        ({"parties": ["a", "a"]}, "twice"),
        ({"parties": ["a\r"]}, "not a valid name"),
        ({"parties": ["a", ""]}, "not a valid name"),
        ({"parties": ["a\u00e9"]}, "not ASCII"),
        ({"parties": ["a", "b"], "count": 3}, "holds 2 entries, its header says 3"),
        ({"parties": ["a", "b"], "count": 2**21}, "out of range"),
        ({"parties": ["a" * 64, "b" * 64], "count": 1}, "too long"),
        ({"parties": ["a"], "parts": [["roster", 1]]}, "do not match the expected"),
        ({"min_parties": True}, "got a boolean"),
        ({"config": {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, "nested"),
    ],
)
def test_round_info_refuses_what_wire_md_forbids(change, message):
    with pytest.raises(WireError, match=message):
        RoundInfo.decode(_round_info(**change))


def test_round_info_refuses_an_overflowing_number_and_a_repeated_key():
    with pytest.raises(WireError, match="float's range"):
        RoundInfo.decode(
            _record(
                b'{"round":1,"count":1,"min_parties":1,"config":{"x":1e999},"parts":[["parties",1]]}',
                b"SFLR",
                b"a",
            )
        )
    with pytest.raises(WireError, match="appears twice"):
        RoundInfo.decode(
            _record(
                b'{"round":1,"round":2,"count":1,"min_parties":1,"config":{},"parts":[["parties",1]]}',
                b"SFLR",
                b"a",
            )
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"version": true, "party": "p", "agreement": "a"}', "version True"),
        (b'{"version": 1.0, "party": "p", "agreement": "a"}', "version 1.0"),
        (b'{"version": 1, "party": "p", "agreement": "a", "extra": 1}', "unknown fields"),
        (b'{"version": 1, "party": "p", "agreement": "a", "party": "q"}', "appears twice"),
        (b'{"version": 1, "party": "p", "agreement": ' + b"1" * 3000 + b"}", "3000 digits"),
        (b"[" * 4000, "nested 4000 deep"),
        (b" " * 5000, "5000 bytes is over 4096"),
    ],
    ids=lambda v: v[:40].decode() if isinstance(v, bytes) else None,
)
def test_hello_refuses_what_network_md_forbids(data, message):
    with pytest.raises(WireError, match=message):
        Hello.decode(data)


def test_a_roster_beyond_the_header_limit_round_trips():
    """The roster travels in a binary part: 10,000 party ids (~70 kB, more than a header may hold)."""
    parties = tuple(f"party{i:05d}" for i in range(10_000))
    assert len("\n".join(parties)) > MAX_HEADER_BYTES
    data = RoundInfo(4, parties, 7000, {"lr": 0.1}).encode()
    info = RoundInfo.decode(data)
    assert info == RoundInfo(4, parties, 7000, {"lr": 0.1})
    assert RoundInfo.decode(bytes(data)).parties is info.parties  # parsed once per process, shared


def test_a_malicious_roster_part_is_refused():
    parties = [f"p{i:05d}" for i in range(10_000)]
    with pytest.raises(WireError, match="sorted"):
        RoundInfo.decode(_round_info(parties=[*parties[:5000], parties[9000], *parties[5000:9000]]))
    with pytest.raises(WireError, match="twice"):
        RoundInfo.decode(_round_info(parties=[*parties, parties[-1]]))
    with pytest.raises(WireError, match="too long"):  # an oversized roster against a small count
        RoundInfo.decode(_round_info(parties=["a" * 64] * 2, count=1))
    roster = "\n".join(parties).encode()
    header = json.dumps(
        {"round": 1, "count": 10_000, "min_parties": 1, "config": {}, "parts": [["parties", len(roster) + 9]]}
    ).encode()
    with pytest.raises(WireError, match="truncated inside part"):
        RoundInfo.decode(_record(header, b"SFLR", roster))
    with pytest.raises(WireError, match="out of range"):
        RoundInfo.decode(_round_info(parties=["a"], count=-1))
    with pytest.raises(WireError, match="not a valid name"):
        RoundInfo.decode(_round_info(parties=["a", "b\x00"]))


@given(header_bytes=st.integers(0, 40), before=st.binary(max_size=20), words=st.integers(0, 50))
def test_an_aligned_array_part_starts_at_a_multiple_of_8_and_reads_unchanged(header_bytes, before, words):
    array = np.arange(words, dtype="<u4")
    header = {"note": "x" * header_bytes}
    parts = {"before": before, "masked": pack_array(array)}
    record = encode_record(b"TEST", header, parts, align_array="masked")
    got_header, got = decode_record(record, b"TEST", {"note": str}, ("before", "masked"), views=("masked",))
    assert got_header == header and got["before"] == before
    data = unpack_array(got["masked"], "<u4", (words,))
    np.testing.assert_array_equal(data, array)
    start = len(record) - len(parts["masked"]) + 2 + 8  # the array's data, after its dtype, ndim, dims
    assert start % 8 == 0
