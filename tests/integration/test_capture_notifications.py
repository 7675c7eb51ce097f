"""The keyspace-notification source against real redis-server processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devcluster import RedisServer
from replication.backoff import Backoff
from replication.capture import (
    CaptureBatch,
    KeyspaceNotificationSource,
    NotificationsConfigError,
)
from replication.capture.notifications import missing_flags
from replication.redis.address import RedisAddress
from tests.integration.test_capture_stream import (
    DEADLINE_S,
    Reader,
    client,
    clients,
    key_is_gone,
    keys_of,
    poll,
    source_for,
    write_steps,
)
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def primary(redis_factory: RedisFactory) -> RedisServer:
    return redis_factory.start("primary", repl_diskless_sync_delay="0")


def notifications_for(server: RedisServer, url: str | None = None, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"backoff": Backoff(base_s=0.05, cap_s=0.5), "stats_interval_s": 0.1}
    options.update(kwargs)
    return KeyspaceNotificationSource(
        RedisAddress.from_url(url) if url else server.address, **options
    )


class Collector:
    """Takes batches from a notification source until a condition holds."""

    def __init__(self, source: KeyspaceNotificationSource) -> None:
        self.batches: list[CaptureBatch] = []
        self._iterator = source.batches()

    async def next(self) -> CaptureBatch:
        async with asyncio.timeout(DEADLINE_S):
            batch = await anext(self._iterator)
        self.batches.append(batch)
        return batch

    async def until_key(self, db: int, key: bytes) -> list[CaptureBatch]:
        got: list[CaptureBatch] = []
        while not any(key in batch.keys.get(db, ()) for batch in got):
            got.append(await self.next())
        return got

    async def until_gap(self, reason: str) -> list[CaptureBatch]:
        got: list[CaptureBatch] = []
        while not got or got[-1].gap is None or got[-1].gap.reason != reason:
            got.append(await self.next())
        return got


async def test_notifications_report_the_same_keys_as_the_stream_for_the_same_writes(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with (
        clients(primary, 0, 1, 2) as (r0, r1, r2),
        source_for(primary, tmp_path, dbs={0, 2}) as stream,
        notifications_for(primary, dbs={0, 2}) as notifications,
    ):
        reader = Reader(stream)
        await reader.next()
        collector = Collector(notifications)
        connected = await collector.next()
        assert connected.gap is not None
        assert connected.gap.reason == "notifications-disconnect"  # every connect is a gap

        for _, write, _ in write_steps(r0, r1, r2):
            await write()
        await r0.set("short-lived", "v", px=30)
        await poll(lambda: key_is_gone(r0, "short-lived"), "the key to expire")
        await r0.set("marker", "v")

        from_stream = keys_of(await reader.caught_up(r0))
        from_notifications = keys_of(await collector.until_key(0, b"marker"))
        assert from_notifications == from_stream
        assert b"short-lived" in from_stream[0]
        assert all(batch.end_offset is None for batch in collector.batches)
        assert not any(key.startswith(b"__rr:") for keys in from_stream.values() for key in keys)


async def test_a_killed_pubsub_connection_is_reported_as_gaps_then_capture_resumes(
    primary: RedisServer,
) -> None:
    async with client(primary) as redis, notifications_for(primary) as source:
        collector = Collector(source)
        await collector.next()
        await redis.set("before", "v")
        await collector.until_key(0, b"before")

        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        lost = await collector.until_gap("notifications-disconnect")
        assert lost[-1].gap is not None
        assert "lost" in lost[-1].gap.detail
        again = await collector.until_gap("notifications-disconnect")
        assert again[-1].gap is not None
        assert "subscribed" in again[-1].gap.detail
        assert source.stats.reconnects == 1

        await redis.set("after", "v")
        assert b"after" in keys_of(await collector.until_key(0, b"after"))[0]


async def test_flushes_are_reported_like_the_stream_policy(primary: RedisServer) -> None:
    async with (
        clients(primary, 0, 3) as (r0, r3),
        notifications_for(primary, dbs={0, 3}) as source,
    ):
        collector = Collector(source)
        await collector.next()
        await r0.set("a", "v")
        await r3.set("b", "v")
        await collector.until_key(3, b"b")

        await r0.flushdb()
        flush = (await collector.until_gap("flush"))[-1]
        assert flush.flushed_dbs == {0}
        await r0.set("c", "v")
        await r3.flushall()
        flush = (await collector.until_gap("flush"))[-1]
        assert flush.flushed_dbs == {0, 3}
        await r0.swapdb(0, 3)
        swap = (await collector.until_gap("swapdb"))[-1]
        assert swap.gap is not None


async def test_notifications_are_switched_on_keeping_the_flags_already_set(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory.start("r", notify_keyspace_events="Kx")
    async with notifications_for(server), client(server) as redis:
        value = (await redis.config_get("notify-keyspace-events"))["notify-keyspace-events"]
        assert missing_flags(value) == set()
        assert "K" in value  # the flag someone else set is still there


async def test_refused_config_with_notifications_off_names_the_setting(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory.start("managed", rename_command='CONFIG ""')
    source = notifications_for(server)
    with pytest.raises(NotificationsConfigError, match="notify-keyspace-events"):
        await source.start()
    await source.stop()
    await source.stop()


async def test_config_get_allowed_set_refused_explains_what_is_missing(
    primary: RedisServer,
) -> None:
    async with client(primary) as admin:
        await admin.execute_command(
            "ACL", "SETUSER", "reader", "on", ">pw", "-@all", "+config|get", "+info"
        )
    url = f"redis://reader:pw@127.0.0.1:{primary.port}/0"
    source = notifications_for(primary, url)
    with pytest.raises(NotificationsConfigError) as caught:
        await source.start()
    assert "CONFIG SET refused" in str(caught.value)
    assert "'EA'" in str(caught.value)
    await source.stop()


async def test_the_documented_notifications_acl_is_enough(primary: RedisServer) -> None:
    documented = "+psubscribe +ping +info +config|get +config|set &__keyevent@0__:*"
    async with client(primary) as admin:
        await admin.execute_command(
            "ACL", "SETUSER", "notify", "on", ">pw", "-@all", *documented.split()
        )
        url = f"redis://notify:pw@127.0.0.1:{primary.port}/0"
        async with notifications_for(primary, url) as source:
            collector = Collector(source)
            await collector.next()
            await admin.set("k", "v")
            assert b"k" in keys_of(await collector.until_key(0, b"k"))[0]


async def test_preconfigured_notifications_work_without_config_access(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory.start(
        "managed", rename_command='CONFIG ""', notify_keyspace_events="KEA"
    )
    async with client(server) as redis, notifications_for(server, verify_config=False) as source:
        collector = Collector(source)
        await collector.next()
        await redis.hset("h", "f", "v")
        assert keys_of(await collector.until_key(0, b"h")) == {0: {b"h"}}
