"""Garbage collection of metadata that no longer protects anything.

- A tombstone (a delete's metadata) must outlive every stale write that could still arrive,
  or that write would bring the key back. It is removed once it is older than `min_age_s`
  and the delete lies below its origin's GC frontier (`safe_before`, one time per origin
  region on that region's own clock, from `reconciler.consistency.gcwatermark`): every
  region has applied it, and every write a region made before applying it has been applied
  here. Whatever the peers say, it is removed once older than `horizon_s` (a region down
  for longer than the horizon must be rebuilt with a full resync).
- The metadata of an expired key is removed `min_age_s` after the expiry: the value is gone
  in every region at the same absolute time, and any newer write carries a newer clock.

Each removal is a compare-and-delete (`rr_forget`): an entry that changed meanwhile stays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.consistency.merkle import MerkleTree, leaf_entries
from replication.model.hlc import physical_ms
from replication.model.metadata import Meta
from replication.redis.library import forget_command
from replication.redis.resp import RespConnection
from replication.redis.scan import metadata_entries

log = logging.getLogger(__name__)


@dataclass
class GcResult:
    scanned: int = 0
    tombstones_removed: int = 0
    expired_removed: int = 0
    tombstones_held: int = 0  # past min_age, kept: a region has not applied past the delete


def removable(
    meta: Meta, now: int, *, safe_before: Mapping[str, int], min_age_ms: int, horizon_ms: int
) -> bool:
    """Whether a metadata entry may be forgotten now (see the module doc). `safe_before`
    maps an origin region to its GC frontier (its clock); a region missing from it has none."""
    if meta.deleted:
        written = physical_ms(meta.hlc)
        age = now - written
        if age > horizon_ms:
            return True
        return age > min_age_ms and written < safe_before.get(meta.origin, 0)
    return meta.is_expired(now) and now - meta.expire_at_ms > min_age_ms


def held_back(meta: Meta, now: int, *, min_age_ms: int) -> bool:
    """A tombstone old enough to go that `removable` keeps because a region lags."""
    return meta.deleted and now - physical_ms(meta.hlc) > min_age_ms


async def collect(
    conn: RespConnection,
    tree: MerkleTree,
    now: int,
    *,
    safe_before: Mapping[str, int],
    min_age_ms: int,
    horizon_ms: int,
) -> GcResult:
    """One pass over every metadata hash of the connection's database."""
    result = GcResult()
    async for chunk in metadata_entries(conn):
        raw = dict(chunk)
        entries = leaf_entries([x for pair in chunk for x in pair])
        result.scanned += len(entries)
        doomed = []
        for key, meta in entries.items():
            if removable(
                meta, now, safe_before=safe_before, min_age_ms=min_age_ms, horizon_ms=horizon_ms
            ):
                doomed.append((key, meta))
            elif held_back(meta, now, min_age_ms=min_age_ms):
                result.tombstones_held += 1
        if not doomed:
            continue
        replies = await conn.pipeline([forget_command(k, raw[k]) for k, _ in doomed])
        for (key, meta), removed in zip(doomed, replies, strict=True):
            if removed != 1:
                continue
            if meta.deleted:
                result.tombstones_removed += 1
            else:
                result.expired_removed += 1
                tree.update(key, meta.digest, b"")
    if result.tombstones_removed or result.expired_removed or result.tombstones_held:
        log.info(
            "metadata gc: scanned=%d tombstones_removed=%d expired_removed=%d tombstones_held=%d",
            result.scanned,
            result.tombstones_removed,
            result.expired_removed,
            result.tombstones_held,
        )
    return result
