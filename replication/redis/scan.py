"""Walking a database of a region's Redis in bounded chunks: its user keys, and every
metadata entry (key, raw record) of the per-slot metadata hashes. SCAN/HSCAN never block
Redis for long, and memory stays bounded by the chunk size."""

from __future__ import annotations

from collections.abc import AsyncIterator

import hiredis

from replication.model.keys import INTERNAL_PREFIX, is_internal
from replication.redis.resp import RedisCommandError, RespConnection

CHUNK = 1000
HASHES_PER_PIPELINE = 128


async def user_keys(conn: RespConnection, count: int = CHUNK) -> AsyncIterator[list[bytes]]:
    """Chunks of the user keys (internal keys left out)."""
    cursor = b"0"
    while True:
        cursor, found = await conn.execute("SCAN", cursor, "COUNT", count)
        keys = [k for k in found if not is_internal(k)]
        if keys:
            yield keys
        if cursor == b"0":
            return


async def metadata_entries(
    conn: RespConnection, count: int = CHUNK
) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """Chunks (of about `count`) of (key, raw metadata record) over every metadata hash.

    The HSCANs of the hashes one SCAN page found go out in pipelines of `HASHES_PER_PIPELINE`:
    one round trip per hash made a recovery sweep of 16,384 small slot hashes take 40 s on a
    busy machine."""
    cursor = b"0"
    pending: list[tuple[bytes, bytes]] = []
    while True:
        cursor, hashes = await conn.execute(
            "SCAN", cursor, "MATCH", INTERNAL_PREFIX + b"m:*", "COUNT", count
        )
        for i in range(0, len(hashes), HASHES_PER_PIPELINE):
            scans = [(h, b"0") for h in hashes[i : i + HASHES_PER_PIPELINE]]
            while scans:
                replies = await conn.pipeline([("HSCAN", h, c, "COUNT", count) for h, c in scans])
                following = []
                for (meta_hash, _), reply in zip(scans, replies, strict=True):
                    if isinstance(reply, hiredis.ReplyError):
                        raise RedisCommandError(f"HSCAN of {meta_hash!r} failed: {reply}", reply)
                    hcursor, flat = reply
                    pending.extend(zip(flat[::2], flat[1::2], strict=True))
                    if hcursor != b"0":
                        following.append((meta_hash, hcursor))
                scans = following
                if len(pending) >= count:
                    yield pending
                    pending = []
        if cursor == b"0":
            break
    if pending:
        yield pending
