"""Per-key metadata as the Lua library stores it (see replication/lua/reconciler.lua):
a cmsgpack array {digest, origin, expire_at_ms, deleted, flat clock} in the key's slot hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from replication.digest import DIGEST_BYTES, TOMBSTONE_DIGEST
from replication.errors import DecodeError
from replication.vclock import VectorClock


@dataclass(frozen=True, slots=True)
class Meta:
    """What a region knows about one key's current version."""

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
    """Decode a stored metadata record; DecodeError if it is not one."""
    try:
        fields = msgpack.unpackb(raw, raw=True, strict_map_key=True)
        digest, origin, expire_at, deleted, flat = fields
        if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
            raise DecodeError("metadata digest is not 16 bytes")
        if not isinstance(origin, bytes) or not isinstance(expire_at, int):
            raise DecodeError("metadata origin/expiry malformed")
        clock = VectorClock.from_flat(flat)
        return Meta(digest, origin.decode(), expire_at, deleted == 1, clock)
    except DecodeError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed metadata record: {exc}") from exc


def encode_meta(meta: Meta) -> bytes:
    """The stored form (what the Lua library writes), for tests and tools."""
    packed: bytes = msgpack.packb(
        [meta.digest, meta.origin.encode(), meta.expire_at_ms, int(meta.deleted), _raw_flat(meta)],
        use_bin_type=False,
    )
    return packed


def _raw_flat(meta: Meta) -> list[bytes | int]:
    return [x.encode() if isinstance(x, str) else x for x in meta.clock.to_flat()]


def tombstone_meta(origin: str, clock: VectorClock) -> Meta:
    return Meta(TOMBSTONE_DIGEST, origin, 0, True, clock)
