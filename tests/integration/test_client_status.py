"""The status record in a real Redis: atomic replace, and it vanishes when not refreshed."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis

from devcluster import RedisServer
from reconciler.status import RegionStatus, read_status, read_status_sync, write_status
from replication.model.keys import STATUS_KEY

pytestmark = pytest.mark.integration


async def test_written_status_is_read_back_by_async_and_sync_readers(
    redis_server: RedisServer,
) -> None:
    status = RegionStatus.now("repairing", "eu-west", last_repair_ms=3)
    async with aioredis.Redis.from_url(redis_server.url) as client:
        assert await read_status(client) is None
        await write_status(client, status, ttl_ms=60_000)
        assert await read_status(client) == status
        assert 0 < await client.pttl(STATUS_KEY) <= 60_000
        newer = RegionStatus.now("consistent", "eu-west", last_repair_ms=9)
        await write_status(client, newer, ttl_ms=60_000)
        assert await read_status(client) == newer
    with redis.Redis.from_url(redis_server.url) as sync_client:
        assert read_status_sync(sync_client) == newer


async def test_a_status_that_is_not_refreshed_expires_so_a_dead_daemon_is_unknown(
    redis_server: RedisServer,
) -> None:
    async with aioredis.Redis.from_url(redis_server.url) as client:
        await write_status(client, RegionStatus.now("consistent", "eu-west"), ttl_ms=200)
        assert await read_status(client) is not None
        deadline = time.monotonic() + 10
        while await read_status(client) is not None:
            assert time.monotonic() < deadline, "status record never expired"
            await asyncio.sleep(0.02)
        assert await client.exists(STATUS_KEY) == 0


async def test_write_status_refuses_a_record_without_expiry(redis_server: RedisServer) -> None:
    async with aioredis.Redis.from_url(redis_server.url) as client:
        with pytest.raises(ValueError, match="ttl_ms"):
            await write_status(client, RegionStatus.now("consistent", "a"), ttl_ms=0)
        assert await client.exists(STATUS_KEY) == 0
