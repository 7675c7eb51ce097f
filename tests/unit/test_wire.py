"""The wire format round-trips every event, and decoding untrusted bytes only ever raises
DecodeError with a reason: random bytes, mutated batches, wrong types, truncation,
oversize and unknown schema versions."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.errors import DecodeError
from replication.model.event import ChangeEvent
from replication.model.wire import SCHEMA_VERSION, decode_batch, encode_batch, pack_event
from tests.unit.strategies import events


@given(st.lists(events(), max_size=8))
def test_batches_round_trip(batch: list[ChangeEvent]) -> None:
    decoded = decode_batch(encode_batch("eu-west", batch))
    assert decoded.source == "eu-west"
    assert decoded.events == batch


@settings(max_examples=1000)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        decode_batch(data)
    except DecodeError as exc:
        reason = str(exc)
    else:
        reason = "decoded"
    assert reason


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete"]),
        st.integers(0, 10_000),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, byte in ops:
        if not buf:
            break
        i = pos % len(buf)
        if op == "flip":
            buf[i] ^= byte or 1
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf.insert(i, byte)
        else:
            del buf[i]
    return bytes(buf)


@settings(max_examples=400)
@given(st.lists(events(), min_size=1, max_size=4), mutations)
def test_mutated_batches_decode_or_raise_decode_error(
    batch: list[ChangeEvent], ops: list[tuple[str, int, int]]
) -> None:
    data = mutate(encode_batch("eu-west", batch), ops)
    try:
        decoded = decode_batch(data)
    except DecodeError:
        return
    for event in decoded.events:  # what decodes is a well-formed event
        assert event.key
        assert len(event.digest) == 16


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=8)
    | st.text(max_size=8)
)
msgpack_objects = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=400)
@given(msgpack_objects)
def test_well_formed_msgpack_of_the_wrong_shape_raises_decode_error(obj: object) -> None:
    with pytest.raises(DecodeError):
        decode_batch(msgpack.packb([SCHEMA_VERSION, "eu-west", [obj]], use_bin_type=True))


@settings(max_examples=500)
@given(st.lists(events(), min_size=1, max_size=3), st.integers(0, 7), msgpack_objects)
def test_one_field_replaced_by_anything_raises_decode_error_or_stays_valid(
    batch: list[ChangeEvent], field: int, obj: object
) -> None:
    raw = [msgpack.unpackb(pack_event(e)) for e in batch]
    raw[0][field] = obj
    data = msgpack.packb([SCHEMA_VERSION, "eu-west", raw], use_bin_type=True)
    with contextlib.suppress(DecodeError):
        decode_batch(data)


@given(events())
def test_every_truncation_raises_decode_error(event: ChangeEvent) -> None:
    data = encode_batch("eu-west", [event])
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_batch(data[:cut])


def test_unknown_schema_version_is_named_in_the_error() -> None:
    data = msgpack.packb([SCHEMA_VERSION + 1, "eu-west", []])
    with pytest.raises(DecodeError, match="unknown schema version 2"):
        decode_batch(data)


def test_oversized_batches_are_refused_before_parsing() -> None:
    data = encode_batch("eu-west", [])
    with pytest.raises(DecodeError, match="exceeds"):
        decode_batch(data + b"\x00" * 100, max_bytes=len(data) + 10)


def test_deeply_nested_input_raises_decode_error() -> None:
    data = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(DecodeError):
        decode_batch(data)


def test_internal_keys_are_refused() -> None:
    raw = [0, b"__rr:status", 1, b"v", 0, ["eu-west", 1], "eu-west", b"d" * 16]
    with pytest.raises(DecodeError, match="reserved"):
        decode_batch(msgpack.packb([SCHEMA_VERSION, "eu-west", [raw]], use_bin_type=True))


def test_an_origin_missing_from_the_clock_is_refused() -> None:
    raw = [0, b"k", 1, b"v", 0, ["us-east", 1], "eu-west", b"d" * 16]
    with pytest.raises(DecodeError, match="no entry for its origin"):
        decode_batch(msgpack.packb([SCHEMA_VERSION, "eu-west", [raw]], use_bin_type=True))
