"""Walking a database of a region's Redis in bounded chunks: its user keys, and every
metadata entry (key, raw record) of the per-slot metadata hashes. SCAN/HSCAN never block
Redis for long, and memory stays bounded by the chunk size."""

from __future__ import annotations

from collections.abc import AsyncIterator

from replication.keys import INTERNAL_PREFIX, is_internal
from replication.resp import RespConnection

CHUNK = 1000


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
    """Chunks of (key, raw metadata record) over every metadata hash."""
    cursor = b"0"
    while True:
        cursor, hashes = await conn.execute(
            "SCAN", cursor, "MATCH", INTERNAL_PREFIX + b"m:*", "COUNT", count
        )
        for meta_hash in hashes:
            hcursor = b"0"
            while True:
                hcursor, flat = await conn.execute("HSCAN", meta_hash, hcursor, "COUNT", count)
                if flat:
                    yield list(zip(flat[::2], flat[1::2], strict=True))
                if hcursor == b"0":
                    break
        if cursor == b"0":
            return
