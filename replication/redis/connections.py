"""Connections to one region's Redis, one per database, each with the function library
loaded; a connection that broke is reopened (and the library reloaded) on next use."""

from __future__ import annotations

import asyncio

from replication.redis.address import RedisAddress
from replication.redis.library import ensure_library
from replication.redis.resp import RespConnection


class LibraryConnections:
    def __init__(self, address: RedisAddress) -> None:
        self.address = address
        self._conns: dict[int, RespConnection] = {}
        # Tasks that find the connection broken at once (a Redis restart) open one between
        # them: each opening its own, all but the last would be dropped still open.
        self._opening = asyncio.Lock()

    async def get(self, db: int) -> RespConnection:
        """The connection for `db` (opened, authenticated, library loaded)."""
        conn = self._conns.get(db)
        if conn is not None and not conn.closed:
            return conn
        async with self._opening:
            conn = self._conns.get(db)
            if conn is None or conn.closed:
                conn = await RespConnection.open(self.address.for_db(db))
                try:
                    await ensure_library(conn)
                except BaseException:
                    await conn.close()
                    raise
                self._conns[db] = conn
            return conn

    async def close(self) -> None:
        """Close every connection; safe to call twice."""
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            await conn.close()
