"""The wire format round-trips every event, and decoding untrusted bytes only ever raises
DecodeError with a reason: random bytes, mutated records, wrong types, truncation,
oversize, unknown schema versions, unsigned or badly signed records. One bad event of a
signed record is set aside with its reason; the record's other events still decode."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.errors import DecodeError
from replication.model.auth import AuthError, Keyring
from replication.model.event import ChangeEvent
from replication.model.vclock import MAX_CLOCK_ENTRY, VectorClock
from replication.model.wire import (
    SCHEMA_VERSION,
    ClockRangeError,
    decode_batch,
    encode_batch,
    pack_event,
    seal_body,
)
from tests.unit.strategies import events

RING = Keyring.parse(Keyring.generate_text(["eu-west", "us-east", "ap-south"]))
SIGNER = RING.signer("eu-west")


def sealed(raw_events: list[object], target: str = "") -> bytes:
    """A validly signed record around arbitrary event objects."""
    return seal_body(SIGNER, msgpack.packb(raw_events, use_bin_type=True), target)


@settings(deadline=None)
@given(st.lists(events(), max_size=8), st.sampled_from(["", "us-east"]))
def test_batches_round_trip(batch: list[ChangeEvent], target: str) -> None:
    decoded = decode_batch(encode_batch(SIGNER, batch, target), RING, expected_source="eu-west")
    assert decoded.source == "eu-west"
    assert decoded.target == target
    assert decoded.events == batch
    assert decoded.invalid == []


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_batch(data, RING)
    assert caught.value.reason


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


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), min_size=1, max_size=4), mutations)
def test_a_tampered_record_never_decodes_to_anything_else(
    batch: list[ChangeEvent], ops: list[tuple[str, int, int]]
) -> None:
    data = mutate(encode_batch(SIGNER, batch), ops)
    try:
        decoded = decode_batch(data, RING)
    except DecodeError:
        return
    # Only a re-encoding of the very same values survives (msgpack has several lengths
    # for one integer or string); the signature covers every value.
    assert (decoded.source, decoded.target, decoded.events) == ("eu-west", "", batch)


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


@settings(max_examples=400, deadline=None)
@given(msgpack_objects)
def test_a_signed_event_of_the_wrong_shape_is_set_aside_with_a_reason(obj: object) -> None:
    batch = decode_batch(sealed([obj]), RING)
    assert batch.events == []
    (bad,) = batch.invalid
    assert bad.reason
    assert bad.message


@settings(max_examples=500, deadline=None)
@given(st.lists(events(), min_size=2, max_size=4), st.integers(0, 7), msgpack_objects)
def test_one_field_replaced_by_anything_never_takes_the_other_events_down(
    batch: list[ChangeEvent], field: int, obj: object
) -> None:
    raw = [msgpack.unpackb(pack_event(e)) for e in batch]
    raw[0][field] = obj
    decoded = decode_batch(sealed(raw), RING)
    assert decoded.events[-(len(batch) - 1) :] == batch[1:]
    assert len(decoded.events) + len(decoded.invalid) == len(batch)


@settings(deadline=None)  # every cut of a record: hundreds of decodes per example
@given(events())
def test_every_truncation_raises_decode_error(event: ChangeEvent) -> None:
    data = encode_batch(SIGNER, [event])
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_batch(data[:cut], RING)


def test_unknown_schema_version_is_named_in_the_error() -> None:
    data = msgpack.packb([SCHEMA_VERSION + 1, "eu-west", "k1", "", b"", b""])
    with pytest.raises(DecodeError, match=f"unknown schema version {SCHEMA_VERSION + 1}"):
        decode_batch(data, RING)


def test_an_unsigned_schema_1_record_is_refused_as_unsigned() -> None:
    raw = [0, b"k", 1, b"v", 0, ["eu-west", 1], "eu-west", b"d" * 16]
    with pytest.raises(AuthError, match="no signature") as caught:
        decode_batch(msgpack.packb([1, "eu-west", [raw]], use_bin_type=True), RING)
    assert caught.value.reason == "unsigned"


def test_a_record_signed_by_another_region_or_claiming_another_source_is_refused() -> None:
    forged = encode_batch(RING.signer("us-east"), [])
    with pytest.raises(AuthError) as caught:
        decode_batch(forged, RING, expected_source="eu-west")
    assert caught.value.reason == "wrong-source"
    # us-east's bytes relabelled as eu-west's: the signature no longer holds.
    relabelled = forged.replace(b"us-east", b"eu-west", 1)
    with pytest.raises(AuthError) as caught:
        decode_batch(relabelled, RING, expected_source="eu-west")
    assert caught.value.reason == "bad-signature"


def test_a_record_signed_with_an_unknown_key_is_refused() -> None:
    stranger = Keyring.parse(Keyring.generate_text(["eu-west"], key_id="k9"))
    with pytest.raises(AuthError) as caught:
        decode_batch(encode_batch(stranger.signer("eu-west"), []), RING)
    assert caught.value.reason == "unknown-key"


def test_the_target_is_signed() -> None:
    data = encode_batch(SIGNER, [], target="us-east")
    with pytest.raises(AuthError):
        decode_batch(data.replace(b"us-east", b"ap-sout", 1), RING)


def test_oversized_records_are_refused_before_parsing() -> None:
    data = encode_batch(SIGNER, [])
    with pytest.raises(DecodeError, match="exceeds") as caught:
        decode_batch(data + b"\x00" * 100, RING, max_bytes=len(data) + 10)
    assert caught.value.reason == "oversized"


def test_deeply_nested_input_raises_decode_error() -> None:
    data = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(DecodeError):
        decode_batch(data, RING)
    with pytest.raises(DecodeError):
        decode_batch(seal_body(SIGNER, data), RING)


def test_internal_keys_are_refused() -> None:
    raw = [0, b"__rr:status", 1, b"v", 0, ["eu-west", 1], "eu-west", b"d" * 16]
    (bad,) = decode_batch(sealed([raw]), RING).invalid
    assert "reserved" in bad.message


def test_an_origin_missing_from_the_clock_is_refused() -> None:
    raw = [0, b"k", 1, b"v", 0, ["us-east", 1], "eu-west", b"d" * 16]
    (bad,) = decode_batch(sealed([raw]), RING).invalid
    assert "no entry for its origin" in bad.message


def test_clock_entries_past_the_bound_are_refused_by_the_decoder_and_the_encoder() -> None:
    good = [0, b"k", 1, b"v", 0, ["eu-west", MAX_CLOCK_ENTRY], "eu-west", b"d" * 16]
    forged = [0, b"k", 1, b"v", 0, ["eu-west", 1, "us-east", 2**53 - 1], "eu-west", b"d" * 16]
    batch = decode_batch(sealed([good, forged]), RING)
    assert [e.hlc for e in batch.events] == [MAX_CLOCK_ENTRY]
    (bad,) = batch.invalid
    assert (bad.index, bad.reason) == (1, "clock-range")
    event = batch.events[0]
    over = ChangeEvent(
        event.db,
        event.key,
        event.kind,
        event.value,
        0,
        VectorClock({"eu-west": MAX_CLOCK_ENTRY + 1}),
        "eu-west",
        event.digest,
    )
    with pytest.raises(ClockRangeError, match="above the limit"):
        pack_event(over)
