"""Per-key metadata as the Lua library stores it (see replication/redis/lua/reconciler.lua):
a cmsgpack array {digest, origin, expire_at_ms, deleted, flat clock} in the key's slot hash.

The origin is stored as its 0-based position among the clock's regions (one byte instead of
the region's name, which keeps a key's metadata near 60 bytes); records written before that
carry the name, and both forms are read.
"""

from __future__ import annotations

from typing import NamedTuple

import msgpack

from replication.errors import DecodeError
from replication.model.digest import DIGEST_BYTES, TOMBSTONE_DIGEST
from replication.model.vclock import VectorClock


class Meta(NamedTuple):
    """What a region knows about one key's current version.

    A NamedTuple rather than a dataclass: anti-entropy decodes one per entry of every
    differing slot, and tuples are built in C.
    """

    digest: bytes
    origin: str  # the region whose write this version is
    expire_at_ms: int
    deleted: bool
    clock: VectorClock

    @property
    def hlc(self) -> int:
        """The hybrid timestamp of the write (the origin's clock entry)."""
        return self.clock.get_count(self.origin)

    def is_expired(self, now_ms: int) -> bool:
        return 0 < self.expire_at_ms <= now_ms

    def is_live(self, now_ms: int) -> bool:
        """A value exists logically: not a tombstone, not past its expiry."""
        return not self.deleted and not self.is_expired(now_ms)


def decode_meta(raw: bytes) -> Meta:
    """Decode a stored metadata record; DecodeError if it is not one.

    Hot in anti-entropy (every entry of a differing slot), so it validates inline and
    builds the clock without the generic constructor's checks.
    """
    try:
        fields = msgpack.unpackb(raw, raw=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed metadata record: {exc}") from exc
    if type(fields) is not list or len(fields) != 5:
        raise DecodeError("metadata record is not a 5-item array")
    digest, origin, expire_at, deleted, flat = fields
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        raise DecodeError("metadata digest is not 16 bytes")
    if type(expire_at) is not int or type(flat) is not list:
        raise DecodeError("metadata origin/expiry/clock malformed")
    if len(flat) % 2:
        raise DecodeError("metadata clock has an odd number of items")
    if type(origin) is int:
        if not 0 <= origin < len(flat) // 2:
            raise DecodeError("metadata origin is not a position in its clock")
        origin = flat[2 * origin]
    if type(origin) is not bytes:
        raise DecodeError("metadata origin/expiry/clock malformed")
    entries: dict[str, int] = {}
    try:
        for i in range(0, len(flat), 2):
            count = flat[i + 1]
            if type(count) is not int or count < 0:
                raise DecodeError("metadata clock entry is not a non-negative integer")
            if count:
                entries[flat[i].decode()] = count
        return Meta(digest, origin.decode(), expire_at, deleted == 1, VectorClock._trusted(entries))
    except (AttributeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed metadata record: {exc}") from exc


def encode_meta(meta: Meta) -> bytes:
    """The stored form (what the Lua library writes), for tests and tools."""
    flat = _raw_flat(meta)
    origin = meta.origin.encode()
    stored: bytes | int = flat.index(origin) // 2 if origin in flat[::2] else origin
    packed: bytes = msgpack.packb(
        [meta.digest, stored, meta.expire_at_ms, int(meta.deleted), flat], use_bin_type=False
    )
    return packed


def _raw_flat(meta: Meta) -> list[bytes | int]:
    return [x.encode() if isinstance(x, str) else x for x in meta.clock.to_flat()]


def tombstone_meta(origin: str, clock: VectorClock) -> Meta:
    return Meta(TOMBSTONE_DIGEST, origin, 0, True, clock)
