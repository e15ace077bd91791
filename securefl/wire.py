"""The wire format: every message is bytes, versioned, schema-checked and size-bounded.

Layout of a *record* (used for envelopes and for layer payloads alike)::

    magic    4 bytes   identifies the record kind (b"SFLE" for envelopes)
    version  u16 BE    WIRE_VERSION
    hlen     u32 BE    length of the JSON header, at most MAX_HEADER_BYTES
    header   hlen      UTF-8 JSON object; its "parts" field lists [name, length] pairs
    parts    ...       the named binary parts, concatenated in header order

Nothing is ever unpickled: the header is JSON checked against a schema of exact keys and types,
the parts are raw bytes (numpy arrays as little-endian buffers with their dtype and shape checked).
Any deviation raises :class:`~securefl.errors.WireError` naming the problem.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefl.errors import WireError

WIRE_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
ENVELOPE_MAGIC = b"SFLE"
_PREFIX = struct.Struct(">4sHI")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # always fullmatch: "$" lets a final "\n" in
_SESSION = re.compile(r"[0-9a-f]{32}")
MAX_ROUND = 2**31 - 1
# JSON from another process (record headers, the opening frames): limits that hold before and while
# it is parsed, so that no bytes can make the parser recurse, spin or build huge integers.
MAX_JSON_DEPTH = 32  # nesting of arrays and objects
MAX_JSON_INT_DIGITS = 100  # digits of one integer (2**256 has 78)

# Envelope kinds: the aggregator asks, a party replies, or a party withdraws with a reason.
REQUEST, REPLY, WITHDRAW = "request", "reply", "withdraw"
_KINDS = (REQUEST, REPLY, WITHDRAW)


def check_name(value: object, what: str) -> str:
    """A party id, phase or part name: 1-64 characters of [A-Za-z0-9_.:-]."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise WireError(
            f"{what} {value!r} is not a valid name: use 1-64 characters of letters, digits, "
            "'_', '.', ':' or '-', starting with a letter or digit"
        )
    return value


def check_session(value: object) -> str:
    """A session id: exactly 32 lowercase hex characters."""
    if not isinstance(value, str) or not _SESSION.fullmatch(value):
        raise WireError("session id must be 32 lowercase hex characters")
    return value


# A JSON string token (escapes included), or a backslash pair outside one: removing these leaves
# only the structure. The pair alternative keeps the scan linear on an unterminated string full of
# escaped quotes. Linear: each alternative is possessive and they never overlap.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"|\\.', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1


def load_json(data: bytes, what: str) -> Any:
    """Parse JSON that another process sent, raising only :class:`WireError` whatever ``data`` is.

    Stricter than :func:`json.loads`, as the wire format requires: UTF-8 only; no duplicate object
    keys (the last would silently win); no ``NaN``/``Infinity``, and no number that overflows to an
    infinity (``1e999``); integers of at most :data:`MAX_JSON_INT_DIGITS` digits; nesting at most
    :data:`MAX_JSON_DEPTH` deep, checked before parsing (so the parser never recurses deeper); no
    lone UTF-16 surrogate (``"\\ud800"``: not text, it could not be encoded again). ``what`` names
    the thing in the error ("header", "hello").
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} is not UTF-8: {exc}") from None
    # Nesting cannot exceed the number of opening brackets: the exact depth (outside strings) is
    # computed only when there are enough of them for it to matter (a header has a handful).
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:
        structure = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET)
        if structure:
            steps = _DEPTH_STEP[np.frombuffer(structure, dtype=np.uint8)]
            depth = int(np.cumsum(steps, dtype=np.int64).max())
            if depth > MAX_JSON_DEPTH:
                raise WireError(f"{what} JSON is nested {depth} deep, more than the {MAX_JSON_DEPTH} allowed")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
        if b"\\u" in data:  # valid UTF-8 holds no surrogate: only a \u escape can write one
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate cannot be encoded
    except _JSONRefused as exc:
        raise WireError(f"{what} JSON refused: {exc}") from None
    except UnicodeEncodeError:
        raise WireError(f"{what} JSON holds a lone UTF-16 surrogate escape, which is not text") from None
    except RecursionError:  # not reached after the depth check; kept so that no bytes can crash us
        raise WireError(f"{what} JSON is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise WireError(f"{what} is not valid JSON: {exc}") from None
    return value


class _JSONRefused(Exception):
    """Raised by the parsing hooks of :func:`load_json` (not a ValueError, so never confused with one)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _JSONRefused(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _refuse_constant(name: str) -> None:
    raise _JSONRefused(f"{name} is not a JSON number")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _JSONRefused(f"an integer of {len(digits)} digits (at most {MAX_JSON_INT_DIGITS})")
    return int(digits)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _JSONRefused(f"the number {literal[:40]!r} is out of a float's range")
    return value


def encode_record(
    magic: bytes, header: Mapping[str, Any], parts: Mapping[str, bytes], align_array: str | None = None
) -> bytes:
    """Serialise a header and named binary parts into one record.

    ``align_array`` names a part holding a :func:`pack_array` array whose data is to start at a
    multiple of 8 bytes from the record's start: the JSON header is padded with spaces (which JSON
    ignores, so any reader parses the record as before). A receiver then reads the array in place
    as an aligned one — adding an unaligned 100,000-word vector takes twice as long (measured on
    the aggregator's masked vectors, issue 19)."""
    return b"".join([_record_head(magic, header, parts, align_array), *parts.values()])


def _record_head(
    magic: bytes, header: Mapping[str, Any], parts: Mapping[str, bytes], align_array: str | None = None
) -> bytes:
    """The record's prefix and JSON header (which lists the parts' names and lengths)."""
    if len(magic) != 4:
        raise ValueError("magic must be 4 bytes")
    for name in parts:
        check_name(name, "part name")
    full = dict(header)
    full["parts"] = [[name, len(data)] for name, data in parts.items()]
    text = json.dumps(full, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    if align_array is not None:
        before = 0
        for name, data in parts.items():
            if name == align_array:
                break
            before += len(data)
        else:
            raise ValueError(f"no part {align_array!r} to align")
        array = parts[align_array]
        data_start = _PREFIX.size + len(text) + before + _ARRAY_HEAD.size + 8 * array[1]
        text += b" " * (-data_start % 8)
    if len(text) > MAX_HEADER_BYTES:
        raise WireError(f"record header is {len(text)} bytes, the limit is {MAX_HEADER_BYTES}")
    return _PREFIX.pack(magic, WIRE_VERSION, len(text)) + text


def decode_record(
    data: bytes,
    magic: bytes,
    schema: Mapping[str, type | tuple[type, ...]],
    part_names: tuple[str, ...] | None = None,
    max_bytes: int | None = None,
    views: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Parse and check a record: magic, version, size, exact header keys and types, parts.

    ``part_names`` (if given) is the exact set of parts allowed, in any order. Parts named in
    ``views`` come back as read-only memoryviews of ``data`` instead of copies: for a large part
    read once (a masked vector: copying it costs as much as adding it).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"a message must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes for this phase")
    if len(data) < _PREFIX.size:
        raise WireError(f"message truncated: {len(data)} bytes is shorter than the record prefix")
    got_magic, version, hlen = _PREFIX.unpack_from(data)
    if got_magic != magic:
        raise WireError(f"not a {magic!r} record (starts with {got_magic!r})")
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version} is not supported (this is version {WIRE_VERSION})")
    if hlen > MAX_HEADER_BYTES:
        raise WireError(f"header length {hlen} exceeds the limit of {MAX_HEADER_BYTES}")
    end = _PREFIX.size + hlen
    if len(data) < end:
        raise WireError("message truncated inside its header")
    header = load_json(data[_PREFIX.size : end], "header")
    if not isinstance(header, dict):
        raise WireError("header must be a JSON object")
    raw_parts = header.pop("parts", None)
    _check_schema(header, schema)
    parts = _split_parts(data, end, raw_parts, part_names, views)
    return header, parts


def _check_schema(header: dict, schema: Mapping[str, type | tuple[type, ...]]) -> None:
    missing = sorted(set(schema) - set(header))
    unknown = sorted(set(header) - set(schema))
    if missing or unknown:
        raise WireError(f"header fields wrong: missing {missing or 'none'}, unknown {unknown or 'none'}")
    for key, expected in schema.items():
        value = header[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) and bool not in types:
            raise WireError(f"header field {key!r} must be {_type_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise WireError(f"header field {key!r} must be {_type_names(types)}, got {type(value).__name__}")


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _split_parts(
    data: bytes,
    offset: int,
    raw_parts: object,
    part_names: tuple[str, ...] | None,
    views: tuple[str, ...] = (),
) -> dict[str, bytes]:
    if not isinstance(raw_parts, list):
        raise WireError("header field 'parts' must be a list of [name, length] pairs")
    parts: dict[str, bytes] = {}
    for item in raw_parts:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
            or item[1] < 0
        ):
            raise WireError(f"part entry {item!r} must be [name, non-negative length]")
        name = check_name(item[0], "part name")
        if name in parts:
            raise WireError(f"part {name!r} appears twice")
        if offset + item[1] > len(data):
            raise WireError(f"message truncated inside part {name!r}")
        if name in views:
            parts[name] = memoryview(data)[offset : offset + item[1]]
        else:
            parts[name] = data[offset : offset + item[1]]
        offset += item[1]
    if offset != len(data):
        raise WireError(f"{len(data) - offset} trailing bytes after the last part")
    if part_names is not None and set(parts) != set(part_names):
        raise WireError(f"parts {sorted(parts)} do not match the expected {sorted(part_names)}")
    return parts


# --- arrays -------------------------------------------------------------------------------------

_ARRAY_DTYPES = ("<f4", "<f8", "<u8", "<i8", "<u4", "<i4", "|u1")
_ARRAY_HEAD = struct.Struct(">BB")


def pack_array(array: np.ndarray) -> bytes:
    """A numpy array as bytes: dtype code, ndim, dims (u64 BE each), little-endian data."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = dtype.str
    if code not in _ARRAY_DTYPES:
        raise WireError(f"dtype {array.dtype} cannot travel; allowed: {', '.join(_ARRAY_DTYPES)}")
    if array.ndim > 8:
        raise WireError("arrays of more than 8 dimensions cannot travel")
    head = _ARRAY_HEAD.pack(_ARRAY_DTYPES.index(code), array.ndim)
    dims = struct.pack(f">{array.ndim}Q", *array.shape)
    return head + dims + np.ascontiguousarray(array, dtype=code).tobytes()


def unpack_array(data: bytes, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse :func:`pack_array` output, checking the expected dtype and shape if given."""
    if len(data) < _ARRAY_HEAD.size:
        raise WireError("array truncated before its header")
    code_index, ndim = _ARRAY_HEAD.unpack_from(data)
    if code_index >= len(_ARRAY_DTYPES) or ndim > 8:
        raise WireError(f"array header invalid (dtype code {code_index}, ndim {ndim})")
    code = _ARRAY_DTYPES[code_index]
    start = _ARRAY_HEAD.size + 8 * ndim
    if len(data) < start:
        raise WireError("array truncated inside its shape")
    dims = struct.unpack_from(f">{ndim}Q", data, _ARRAY_HEAD.size)
    itemsize = np.dtype(code).itemsize
    count = 1
    for d in dims:
        count *= d
    if len(data) - start != count * itemsize:
        raise WireError(
            f"array of shape {dims} and dtype {code} needs {count * itemsize} bytes, got {len(data) - start}"
        )
    if dtype is not None and code != np.dtype(dtype).str:
        raise WireError(f"array has dtype {code}, expected {np.dtype(dtype).str}")
    if shape is not None and tuple(dims) != tuple(shape):
        raise WireError(f"array has shape {tuple(dims)}, expected {tuple(shape)}")
    return np.frombuffer(data, dtype=code, offset=start).reshape(dims)


# --- envelopes ----------------------------------------------------------------------------------

_ENVELOPE_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "session": str,
    "round": int,
    "phase": str,
    "party": str,
}


@dataclass(frozen=True)
class Envelope:
    """One message between the aggregator and a party. ``parts`` are opaque to the transport."""

    kind: str
    session: str
    round: int
    phase: str
    party: str
    parts: Mapping[str, bytes]

    def encode(self) -> bytes:
        _check_envelope_fields(self.kind, self.session, self.round, self.phase, self.party)
        header = {
            "kind": self.kind,
            "session": self.session,
            "round": self.round,
            "phase": self.phase,
            "party": self.party,
        }
        return encode_record(ENVELOPE_MAGIC, header, self.parts)

    def encode_segments(self, shared: Mapping[str, int]) -> list[bytes | int]:
        """The bytes of :meth:`encode` as segments: this envelope's own bytes, and for each part
        named in ``shared`` (a part many envelopes carry byte for byte, e.g. the global model) its
        index there instead of its bytes. Joining the segments gives exactly :meth:`encode`."""
        _check_envelope_fields(self.kind, self.session, self.round, self.phase, self.party)
        header = {
            "kind": self.kind,
            "session": self.session,
            "round": self.round,
            "phase": self.phase,
            "party": self.party,
        }
        segments: list[bytes | int] = [_record_head(ENVELOPE_MAGIC, header, self.parts)]
        for name, data in self.parts.items():
            if name in shared:
                segments.append(shared[name])
            elif isinstance(segments[-1], bytes):
                segments[-1] += data
            else:
                segments.append(data)
        return segments

    @classmethod
    def decode(cls, data: bytes, max_bytes: int | None = None) -> Envelope:
        header, parts = decode_record(data, ENVELOPE_MAGIC, _ENVELOPE_SCHEMA, max_bytes=max_bytes)
        _check_envelope_fields(
            header["kind"], header["session"], header["round"], header["phase"], header["party"]
        )
        return cls(
            header["kind"], header["session"], header["round"], header["phase"], header["party"], parts
        )

    def expect(self, *, kind: str, session: str, round: int, phase: str, party: str) -> Envelope:
        """Check the routing fields against what the receiver expects (replay and misrouting)."""
        if self.kind != kind and not (kind == REPLY and self.kind == WITHDRAW):
            raise WireError(f"expected a {kind} message, got {self.kind}")
        if self.session != session:
            raise WireError(f"message belongs to session {self.session}, not the current {session}")
        if self.round != round:
            raise WireError(
                f"message is for round {self.round + 1}, the current round is {round + 1} (replay?)"
            )
        if self.phase != phase:
            raise WireError(f"message is for phase {self.phase!r}, the current phase is {phase!r}")
        if self.party != party:
            raise WireError(f"message claims to be from/for {self.party!r} but is routed as {party!r}")
        return self


def _check_envelope_fields(kind: str, session: str, round: int, phase: str, party: str) -> None:
    if kind not in _KINDS:
        raise WireError(f"unknown message kind {kind!r}; expected one of {_KINDS}")
    check_session(session)
    if not isinstance(round, int) or isinstance(round, bool) or not 0 <= round <= MAX_ROUND:
        raise WireError(f"round {round!r} out of range 0..{MAX_ROUND}")
    check_name(phase, "phase")
    check_name(party, "party id")
