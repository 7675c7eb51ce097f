"""`consistent` is bound to the Redis instance a repair verified, on a real redis-server.

The status record can only say `consistent` in a Redis that holds the repair marker of its
own instance: an empty restart loses the marker, a restart from its AOF or from an older
RDB (one taken after the repair, holding the marker and a `consistent` record) is another
instance. Whatever the daemon believes, the write is refused there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from devcluster import RedisServer
from reconciler.service.instance import InstanceGuard, StatusRefusedError
from reconciler.status import RegionStatus, decode_status, parse_run_id
from replication.model.keys import STATUS_KEY, VERIFIED_KEY
from replication.redis.address import RedisAddress
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration


def consistent(region: str = "eu-west") -> RegionStatus:
    return RegionStatus.now("consistent", region, last_repair_ms=1)


def record(server: RedisServer) -> RegionStatus | None:
    with redis.Redis.from_url(server.url) as client:
        return decode_status(client.hgetall(STATUS_KEY))


def run_id_of(server: RedisServer) -> str | None:
    with redis.Redis.from_url(server.url) as client:
        return parse_run_id(client.info("server"))


async def verified_guard(server: RedisServer) -> InstanceGuard:
    guard = InstanceGuard(RedisAddress.from_url(server.url))
    await guard.observe()
    assert guard.run_id is not None
    assert await guard.mark_verified(guard.run_id)
    return guard


async def test_consistent_is_refused_until_a_repair_marks_the_instance(
    redis_server: RedisServer,
) -> None:
    guard = InstanceGuard(RedisAddress.from_url(redis_server.url))
    try:
        with pytest.raises(StatusRefusedError, match="no repair completed"):
            await guard.write_status(consistent(), ttl_ms=5_000)
        assert record(redis_server) is None
        # Any other state is written, stamped with the instance's own run_id.
        run_id = await guard.write_status(RegionStatus.now("recovering", "eu-west"), 5_000)
        assert run_id == run_id_of(redis_server)
        written = record(redis_server)
        assert written is not None
        assert written.state == "recovering"
        assert written.belongs_to(run_id)
        await guard.observe()
        assert await guard.mark_verified(run_id)
        await guard.write_status(consistent(), ttl_ms=5_000)
        written = record(redis_server)
        assert written is not None
        assert written.consistent
        assert written.belongs_to(run_id)
    finally:
        await guard.close()


@pytest.mark.parametrize("restart", ["empty", "aof", "older-rdb"])
async def test_after_a_restart_the_status_can_no_longer_say_consistent(
    redis_factory: RedisFactory, tmp_path: Path, restart: str
) -> None:
    server = redis_factory.start("eu-west")
    guard = await verified_guard(server)
    try:
        await guard.write_status(consistent(), ttl_ms=60_000)
        before = run_id_of(server)
        # A backup taken after the repair holds the marker and a `consistent` record.
        backup = server.snapshot(tmp_path / "backup.rdb")
        if restart == "empty":
            server.restart(keep_data=False)
        elif restart == "aof":
            server.restart(keep_data=True)
        else:
            server.restart(from_snapshot=backup)
        after = run_id_of(server)
        assert after is not None
        assert after != before
        left_over = record(server)
        if restart != "empty":
            # The old record came back with the data, but names the old instance.
            assert left_over is not None
            assert left_over.consistent
            assert not left_over.belongs_to(after)
            with redis.Redis.from_url(server.url) as client:
                assert client.get(VERIFIED_KEY) is not None  # the old marker, too
        # The daemon has not noticed yet and still holds its marker: refused anyway.
        with pytest.raises(StatusRefusedError):
            await guard.write_status(consistent(), ttl_ms=60_000)
        change = await guard.observe()
        assert change is not None
        assert (change.old_run_id, change.new_run_id) == (before, after)
        assert guard.marker is None
        # A marker written for the old instance is refused on the new one.
        assert before is not None
        assert not await guard.mark_verified(before)
    finally:
        await guard.close()


async def test_a_flush_removes_the_proof_without_a_restart(redis_server: RedisServer) -> None:
    guard = await verified_guard(redis_server)
    try:
        await guard.write_status(consistent(), ttl_ms=60_000)
        with redis.Redis.from_url(redis_server.url) as client:
            client.flushall()
        with pytest.raises(StatusRefusedError):
            await guard.write_status(consistent(), ttl_ms=60_000)
        assert await guard.observe() is None  # same instance: only the marker tells
    finally:
        await guard.close()


async def test_a_marker_left_by_an_earlier_run_is_adopted_only_on_its_own_instance(
    redis_server: RedisServer,
) -> None:
    first = await verified_guard(redis_server)
    await first.close()
    second = InstanceGuard(RedisAddress.from_url(redis_server.url))
    try:
        assert await second.adopt_marker()
        await second.write_status(consistent(), ttl_ms=5_000)
    finally:
        await second.close()
    redis_server.restart(keep_data=True)
    third = InstanceGuard(RedisAddress.from_url(redis_server.url))
    try:
        assert not await third.adopt_marker()
        with pytest.raises(StatusRefusedError):
            await third.write_status(consistent(), ttl_ms=5_000)
    finally:
        await third.close()
