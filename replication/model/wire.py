"""The wire format of change records: msgpack, many events per Kafka record, signed.

    record = [2, source_region, key_id, target, events_bin, mac]
    events_bin = msgpack bytes of [event, ...]
    event = [db, key, kind, value, expire_at_ms, clock, origin, digest]

`mac` is the source region's HMAC-SHA256 (`replication.model.auth`, domain
`DOMAIN_CHANGES`) over the target and `events_bin`, with the source and key id bound in:
nothing inside a record is read before its signature checks out. `target` is "" for live
changes (every peer applies them) or the one region a repair or resync is meant for.

`clock` is the flat [region, ts, ...] form, every entry in [1, MAX_CLOCK_ENTRY];
`kind` a `replication.model.value.Kind` number, and `value` by kind: string -> bin;
list, set -> [bin, ...]; hash -> [field, value, ...]; zset -> [member, score (float64),
...]; none (a delete) -> nil.

`decode_batch` takes untrusted bytes: anything malformed, truncated, oversized, unsigned,
badly signed, of the wrong type or of an unknown schema raises `DecodeError` (an
`AuthError` for signatures) with a reason code and a message, never anything else (the
fuzz tests hold it to that). One malformed event does not take its record's other events
down with it: it is returned in `EventBatch.invalid`, the others decode.

Schema 1 (unsigned, `[1, source, [event, ...]]`) is refused with reason `unsigned`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from replication.errors import DecodeError, ReconcilerError
from replication.model.auth import DOMAIN_CHANGES, AuthError, Keyring, Signature, Signer
from replication.model.digest import DIGEST_BYTES
from replication.model.event import ChangeEvent
from replication.model.hlc import MAX_TIMESTAMP
from replication.model.keys import is_internal, is_valid_region_name
from replication.model.value import Kind, Value
from replication.model.vclock import MAX_CLOCK_ENTRY, VectorClock

SCHEMA_VERSION = 2
UNSIGNED_SCHEMA_VERSION = 1
DEFAULT_MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_DB = 1 << 16


class ClockRangeError(ReconcilerError):
    """A version whose clock has an entry above MAX_CLOCK_ENTRY: refused at the source
    (every decoder would refuse it, and the next tick could not be represented)."""


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """An event of a validly signed record that does not decode (or is not admitted)."""

    index: int
    raw: object  # as unpacked, for the dead-letter topic
    reason: str  # a short fixed code (metrics label)
    message: str

    def payload(self) -> bytes:
        """The event's bytes for the dead-letter topic (re-packed as received)."""
        try:
            packed: bytes = msgpack.packb(self.raw, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return b""
        return packed


@dataclass(frozen=True, slots=True)
class EventBatch:
    source: str  # the region that sent (and signed) the batch
    events: list[ChangeEvent]
    target: str = ""  # "" = every peer; else the one region meant to apply it
    invalid: list[InvalidEvent] = field(default_factory=list)


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
    """One event's bytes; batches are assembled from these without re-packing.

    Raises ClockRangeError for a clock entry above MAX_CLOCK_ENTRY (the bound every
    decoder and the Lua library enforce)."""
    if event.clock.top() > MAX_CLOCK_ENTRY:
        raise ClockRangeError(
            f"a version of a key in db {event.db} has a clock entry of {event.clock.top()}, "
            f"above the limit {MAX_CLOCK_ENTRY}: not shipped (its metadata was written with "
            "a forged or corrupt clock; see README, security)"
        )
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


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def seal_body(signer: Signer, body: bytes, target: str = "") -> bytes:
    """A signed record around `body` (the msgpack bytes of an events array)."""
    signature = signer.sign(DOMAIN_CHANGES, target.encode(), body)
    return b"".join(
        (
            _PACKER.pack_array_header(6),
            _PACKER.pack(SCHEMA_VERSION),
            _PACKER.pack(signer.region),
            _PACKER.pack(signature.key_id),
            _PACKER.pack(target),
            _bin_header(len(body)),
            body,
            _PACKER.pack(signature.mac),
        )
    )


def assemble_batch(signer: Signer, packed_events: Sequence[bytes], target: str = "") -> bytes:
    """A signed record from events already packed with `pack_event`."""
    body = _PACKER.pack_array_header(len(packed_events)) + b"".join(packed_events)
    return seal_body(signer, body, target)


def encode_batch(signer: Signer, events: Sequence[ChangeEvent], target: str = "") -> bytes:
    return assemble_batch(signer, [pack_event(e) for e in events], target)


def _unpack(data: bytes) -> object:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # UnicodeDecodeError (a bad str) is a ValueError; ExtraData, FormatError and
        # StackError are UnpackException or ValueError subclasses.
        raise DecodeError(
            f"not a msgpack document: {type(exc).__name__}: {exc}", reason="undecodable"
        ) from None


def decode_batch(
    data: bytes,
    keyring: Keyring,
    *,
    expected_source: str | None = None,
    max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> EventBatch:
    """Verify and decode a record: DecodeError (reason, message) if the record as a whole
    is unusable; events that do not decode are in `invalid`, the others in `events`.

    With `expected_source` (the region whose topic it came from) a record claiming another
    source is refused before its signature is even looked at."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}", reason="undecodable")
    if len(data) > max_bytes:
        raise DecodeError(
            f"record of {len(data)} bytes exceeds the {max_bytes}-byte limit", reason="oversized"
        )
    raw = _unpack(data)
    if isinstance(raw, list) and raw and raw[0] == UNSIGNED_SCHEMA_VERSION:
        raise AuthError(
            "unsigned",
            "a schema 1 record carries no signature; every daemon must run schema "
            f"{SCHEMA_VERSION} (README, security: upgrading)",
        )
    if not isinstance(raw, list) or len(raw) != 6:
        raise DecodeError(
            "record must be a 6-item array [schema, source, key_id, target, events, mac]",
            reason="undecodable",
        )
    schema, source, key_id, target, body, mac = raw
    if type(schema) is not int or schema != SCHEMA_VERSION:
        raise DecodeError(
            f"unknown schema version {schema!r} (this daemon reads {SCHEMA_VERSION})",
            reason="unknown-schema",
        )
    if not is_valid_region_name(source):
        raise DecodeError("record source is not a valid region name", reason="undecodable")
    if expected_source is not None and source != expected_source:
        raise AuthError(
            "wrong-source", f"record claims source {source!r} on {expected_source}'s topic"
        )
    if type(target) is not str or (target and not is_valid_region_name(target)):
        raise DecodeError("record target must be '' or a region name", reason="undecodable")
    if type(key_id) is not str or type(body) is not bytes or type(mac) is not bytes:
        raise DecodeError("record key id, events or MAC of the wrong type", reason="undecodable")
    keyring.verify(source, DOMAIN_CHANGES, Signature(key_id, mac), target.encode(), body)
    events, invalid = decode_events(body)
    return EventBatch(source, events, target, invalid)


def decode_events(body: bytes) -> tuple[list[ChangeEvent], list[InvalidEvent]]:
    """The events of a record body: those that decode, and those that do not (each with
    its reason). DecodeError only if the body is not an array at all."""
    raw = _unpack(body)
    if not isinstance(raw, list):
        raise DecodeError("record events must be an array", reason="malformed")
    events: list[ChangeEvent] = []
    invalid: list[InvalidEvent] = []
    for i, item in enumerate(raw):
        try:
            events.append(_decode_event(i, item))
        except DecodeError as exc:
            invalid.append(InvalidEvent(i, item, exc.reason, str(exc)))
    return events, invalid


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
        if type(ts) is not int:
            raise DecodeError(f"{where}: clock entry for {region} must be an integer")
        if not 0 < ts <= MAX_CLOCK_ENTRY:
            raise DecodeError(
                f"{where}: clock entry for {region} must be an integer in "
                f"[1, {MAX_CLOCK_ENTRY}] (MAX_CLOCK_ENTRY)",
                reason="clock-range",
            )
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
