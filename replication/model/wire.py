"""The wire format of change events: msgpack, one batch of events per Kafka record.

    batch = [schema_version, source_region, [event, ...]]
    event = [db, key, kind, value, expire_at_ms, clock, origin, digest]

`clock` is the flat [region, ts, ...] form, `kind` a `replication.model.value.Kind` number, and
`value` by kind: string -> bin; list, set -> [bin, ...]; hash -> [field, value, ...];
zset -> [member, score (float64), ...]; none (a delete) -> nil.

`decode_batch` takes untrusted bytes: anything malformed, truncated, oversized, of the
wrong type or of an unknown schema version raises `DecodeError` with the reason, never
anything else (the fuzz tests hold it to that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from replication.errors import DecodeError
from replication.model.digest import DIGEST_BYTES
from replication.model.event import ChangeEvent
from replication.model.hlc import MAX_TIMESTAMP
from replication.model.keys import is_internal, is_valid_region_name
from replication.model.value import Kind, Value
from replication.model.vclock import VectorClock

SCHEMA_VERSION = 1
DEFAULT_MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_DB = 1 << 16


@dataclass(frozen=True, slots=True)
class EventBatch:
    source: str  # the region that sent the batch
    events: list[ChangeEvent]


def _wire_value(event: ChangeEvent) -> Any:
    value: Any = event.value
    kind = event.kind
    if kind is Kind.STRING or kind is Kind.NONE or kind is Kind.LIST:
        return value
    if kind is Kind.SET:
        return list(value)
    if kind is Kind.HASH:
        return [x for pair in value.items() for x in pair]
    return [x for m, s in value.items() for x in (m, float(s))]


def pack_event(event: ChangeEvent) -> bytes:
    """One event's bytes; batches are assembled from these without re-packing."""
    packed: bytes = msgpack.packb(
        [
            event.db,
            event.key,
            int(event.kind),
            _wire_value(event),
            event.expire_at_ms,
            event.clock.to_flat(),
            event.origin,
            event.digest,
        ],
        use_bin_type=True,
    )
    return packed


_PACKER = msgpack.Packer(use_bin_type=True)


def assemble_batch(source: str, packed_events: Sequence[bytes]) -> bytes:
    """A batch from events already packed with `pack_event`."""
    header: bytes = (
        _PACKER.pack_array_header(3)
        + _PACKER.pack(SCHEMA_VERSION)
        + _PACKER.pack(source)
        + _PACKER.pack_array_header(len(packed_events))
    )
    return header + b"".join(packed_events)


def encode_batch(source: str, events: Sequence[ChangeEvent]) -> bytes:
    return assemble_batch(source, [pack_event(e) for e in events])


def decode_batch(data: bytes, *, max_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> EventBatch:
    """Decode and validate a batch; DecodeError (with the reason) for anything invalid."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(f"batch of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # UnicodeDecodeError (a bad str) is a ValueError; ExtraData, FormatError and
        # StackError are UnpackException or ValueError subclasses.
        raise DecodeError(f"not a msgpack document: {type(exc).__name__}: {exc}") from None
    if not isinstance(raw, list) or len(raw) != 3:
        raise DecodeError("batch must be a 3-item array [schema, source, events]")
    schema, source, events = raw
    if type(schema) is not int:
        raise DecodeError("schema version must be an integer")
    if schema != SCHEMA_VERSION:
        raise DecodeError(f"unknown schema version {schema} (this daemon reads {SCHEMA_VERSION})")
    if not isinstance(source, str) or not is_valid_region_name(source):
        raise DecodeError("batch source is not a valid region name")
    if not isinstance(events, list):
        raise DecodeError("batch events must be an array")
    return EventBatch(source, [_decode_event(i, e) for i, e in enumerate(events)])


def _blob_list(value: object, where: _Where, label: str) -> list[bytes]:
    if not isinstance(value, list) or not value:
        raise DecodeError(f"{where}: {label} must be a non-empty array")
    for item in value:
        if type(item) is not bytes:
            raise DecodeError(f"{where}: {label} items must be binary strings")
    return value


def _decode_value(kind: Kind, value: object, index: int) -> Value:
    where = _Where(index)
    if kind is Kind.NONE:
        if value is not None:
            raise DecodeError(f"{where}: a delete carries no value")
        return None
    if kind is Kind.STRING:
        if type(value) is not bytes:
            raise DecodeError(f"{where}: string value must be binary")
        return value
    if kind is Kind.LIST:
        return _blob_list(value, where, "list value")
    if kind is Kind.SET:
        members = _blob_list(value, where, "set value")
        unique = set(members)
        if len(unique) != len(members):
            raise DecodeError(f"{where}: set value repeats a member")
        return unique
    if kind is Kind.HASH:
        flat = _blob_list(value, where, "hash value")
        if len(flat) % 2:
            raise DecodeError(f"{where}: hash value must be field/value pairs")
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        if len(fields) * 2 != len(flat):
            raise DecodeError(f"{where}: hash value repeats a field")
        return fields
    # zset
    if not isinstance(value, list) or not value or len(value) % 2:
        raise DecodeError(f"{where}: zset value must be non-empty member/score pairs")
    scores: dict[bytes, float] = {}
    for member, score in zip(value[::2], value[1::2], strict=True):
        if type(member) is not bytes or type(score) is not float or math.isnan(score):
            raise DecodeError(f"{where}: zset pairs must be (binary member, float score)")
        scores[member] = score
    if len(scores) * 2 != len(value):
        raise DecodeError(f"{where}: zset value repeats a member")
    return scores


_KINDS = {int(kind): kind for kind in Kind}


class _Where:
    """ "event N", formatted only when an error message needs it (decoding is hot)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __str__(self) -> str:
        return f"event {self.index}"

    def __format__(self, spec: str) -> str:
        return str(self)


def _decode_clock(raw: object, where: _Where) -> VectorClock:
    if not isinstance(raw, list) or not raw or len(raw) % 2:
        raise DecodeError(f"{where}: clock must be a non-empty array of region/ts pairs")
    entries: dict[str, int] = {}
    for i in range(0, len(raw), 2):
        region, ts = raw[i], raw[i + 1]
        if not is_valid_region_name(region):
            raise DecodeError(f"{where}: clock region {region!r} is not a valid region name")
        if type(ts) is not int or not 0 < ts <= MAX_TIMESTAMP:
            raise DecodeError(f"{where}: clock entry for {region} must be in [1, 2**53)")
        entries[region] = ts
    if len(entries) * 2 != len(raw):
        raise DecodeError(f"{where}: clock repeats a region")
    return VectorClock._trusted(entries)


def _decode_event(index: int, raw: object) -> ChangeEvent:
    if type(raw) is not list or len(raw) != 8:
        raise DecodeError(f"event {index}: must be an 8-item array")
    db, key, kind_raw, value_raw, expire_at, clock_raw, origin, digest = raw
    where = _Where(index)
    if type(db) is not int or not 0 <= db <= MAX_DB:
        raise DecodeError(f"{where}: db must be an integer in [0, {MAX_DB}]")
    if type(key) is not bytes or not key:
        raise DecodeError(f"{where}: key must be a non-empty binary string")
    if is_internal(key):
        raise DecodeError(f"{where}: key is in the reserved internal namespace")
    kind = _KINDS.get(kind_raw) if type(kind_raw) is int else None
    if kind is None:
        raise DecodeError(f"{where}: unknown value kind {kind_raw!r}")
    value = _decode_value(kind, value_raw, index)
    if type(expire_at) is not int or not 0 <= expire_at <= MAX_TIMESTAMP:
        raise DecodeError(f"{where}: expire_at_ms must be an integer in [0, 2**53)")
    if kind is Kind.NONE and expire_at:
        raise DecodeError(f"{where}: a delete has no expiry")
    clock = _decode_clock(clock_raw, where)
    if not is_valid_region_name(origin):
        raise DecodeError(f"{where}: origin is not a valid region name")
    if clock.get_count(origin) == 0:
        raise DecodeError(f"{where}: the clock has no entry for its origin {origin!r}")
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        raise DecodeError(f"{where}: digest must be {DIGEST_BYTES} bytes")
    return ChangeEvent(db, key, kind, value, expire_at, clock, origin, digest)
