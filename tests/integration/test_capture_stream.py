"""The replication-stream source against real redis-server processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from devcluster import RedisServer
from replication.backoff import Backoff
from replication.capture import (
    CaptureAuthError,
    CaptureBatch,
    CaptureConnectionError,
    PsyncRefusedError,
    ReplicationStreamSource,
)
from replication.redis.address import RedisAddress
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

DEADLINE_S = 20.0


@pytest.fixture
def primary(redis_factory: RedisFactory) -> RedisServer:
    """A real redis-server that starts a full sync at once (Redis 7 waits 5 s by default
    for more replicas before a diskless sync)."""
    return redis_factory.start("primary", repl_diskless_sync_delay="0")


def client(server: RedisServer, db: int = 0, **kwargs: Any) -> aioredis.Redis:
    return aioredis.Redis.from_url(f"redis://127.0.0.1:{server.port}/{db}", **kwargs)


def source_for(server: RedisServer, state: Path, **kwargs: Any) -> ReplicationStreamSource:
    options: dict[str, Any] = {
        "state_dir": state,
        "backoff": Backoff(base_s=0.05, cap_s=0.5),
        "ack_interval_s": 0.2,
    }
    options.update(kwargs)
    return ReplicationStreamSource(server.address, **options)


def address(user: str, password: str, port: int) -> RedisAddress:
    """The loopback server on `port`, as `user`."""
    return RedisAddress("127.0.0.1", port, username=user, password=password)


async def master_offset(redis: aioredis.Redis) -> int:
    info = await redis.info("replication")
    return int(info["master_repl_offset"])


class Reader:
    """Pulls batches from a source, acking them (or not), and remembers them."""

    def __init__(self, source: ReplicationStreamSource, *, ack: bool = True) -> None:
        self.source = source
        self.ack = ack
        self.batches: list[CaptureBatch] = []
        self._iterator = source.batches()

    async def next(self, timeout_s: float = DEADLINE_S) -> CaptureBatch:
        async with asyncio.timeout(timeout_s):
            batch = await anext(self._iterator)
        self.batches.append(batch)
        if self.ack:
            await self.source.ack(batch.end_offset)
        return batch

    async def until_offset(self, offset: int) -> list[CaptureBatch]:
        """Batches until one ends at or after `offset` (the stream is caught up there)."""
        got: list[CaptureBatch] = []
        async with asyncio.timeout(DEADLINE_S):
            while self.offset < offset:
                got.append(await self.next())
        return got

    @property
    def offset(self) -> int:
        """End offset of the last batch taken."""
        ends = [batch.end_offset for batch in self.batches if batch.end_offset is not None]
        return ends[-1] if ends else -1

    async def caught_up(self, redis: aioredis.Redis) -> list[CaptureBatch]:
        return await self.until_offset(await master_offset(redis))


def keys_of(batches: list[CaptureBatch]) -> dict[int, set[bytes]]:
    found: dict[int, set[bytes]] = {}
    for batch in batches:
        for db, keys in batch.keys.items():
            found.setdefault(db, set()).update(keys)
    return found


def gaps_of(batches: list[CaptureBatch]) -> list[str]:
    return [batch.gap.reason for batch in batches if batch.gap is not None]


async def poll(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def clients(server: RedisServer, *dbs: int) -> AsyncIterator[list[aioredis.Redis]]:
    opened = [client(server, db) for db in dbs]
    try:
        yield opened
    finally:
        for each in opened:
            await each.aclose()


FUNCTION_LIBRARY = """#!lua name=capturelib
redis.register_function('write_one', function(keys, args)
  return redis.call('SET', keys[1], args[1])
end)
"""


def write_steps(
    r0: aioredis.Redis, r1: aioredis.Redis, r2: aioredis.Redis
) -> list[tuple[str, Callable[[], Awaitable[Any]], dict[int, set[bytes]]]]:
    """(what, the write, the keys it must touch per captured db {0, 2})."""

    async def transaction() -> None:
        async with r0.pipeline(transaction=True) as pipe:
            pipe.set("m1", "1").incr("m2")
            await pipe.execute()

    return [
        ("string", lambda: r0.set("s", "v"), {0: {b"s"}}),
        ("hash", lambda: r0.hset("h", "f", "v"), {0: {b"h"}}),
        ("list", lambda: r0.lpush("l", "a", "b"), {0: {b"l"}}),
        ("set", lambda: r0.sadd("set", "m"), {0: {b"set"}}),
        ("zset", lambda: r0.zadd("z", {"m": 1.0}), {0: {b"z"}}),
        ("expire", lambda: r0.expire("s", 100), {0: {b"s"}}),
        ("persist", lambda: r0.persist("s"), {0: {b"s"}}),
        ("del", lambda: r0.delete("l"), {0: {b"l"}}),
        ("rename", lambda: r0.rename("set", "set2"), {0: {b"set", b"set2"}}),
        ("multi/exec", transaction, {0: {b"m1", b"m2"}}),
        (
            "eval",
            lambda: r0.eval(
                "redis.call('SET', KEYS[1], ARGV[1]); redis.call('HSET', KEYS[2], 'f', ARGV[1])",
                2,
                "e1",
                "e2",
                "v",
            ),
            {0: {b"e1", b"e2"}},
        ),
        ("function load", lambda: r0.function_load(FUNCTION_LIBRARY), {}),
        ("fcall", lambda: r0.fcall("write_one", 1, "f1", "v"), {0: {b"f1"}}),
        ("uncaptured db", lambda: r1.set("in-db1", "v"), {}),
        ("captured db 2", lambda: r2.set("d2", "v"), {2: {b"d2"}}),
        ("move", lambda: r0.move("s", 2), {0: {b"s"}, 2: {b"s"}}),
        ("copy to db 2", lambda: r0.copy("h", "hcopy", destination_db=2), {2: {b"hcopy"}}),
        ("internal key", lambda: r0.hset("__rr:meta:1", "k", "v"), {}),
        ("sunionstore", lambda: r0.sunionstore("union", ["set2", "nothing"]), {0: {b"union"}}),
    ]


@pytest.mark.parametrize("diskless", ["no", "yes"])
async def test_initial_sync_skips_the_rdb_then_every_write_yields_exactly_its_keys(
    redis_factory: RedisFactory, tmp_path: Path, diskless: str
) -> None:
    server = redis_factory.start(
        "primary", repl_diskless_sync=diskless, repl_diskless_sync_delay="0"
    )
    async with clients(server, 0, 1, 2) as (r0, r1, r2):
        # Data already there goes into the RDB, which the source must skip unread.
        async with r0.pipeline(transaction=False) as pipe:
            for i in range(2000):
                pipe.set(f"pre:{i}", "x" * 100)
            await pipe.execute()
        async with source_for(server, tmp_path, dbs={0, 2}) as source:
            reader = Reader(source)
            first = await reader.next()
            assert first.gap is not None
            assert first.gap.reason == "initial"
            assert first.keys == {}
            for what, write, expected in write_steps(r0, r1, r2):
                await write()
                batches = await reader.caught_up(r0)
                assert keys_of(batches) == expected, what
                assert gaps_of(batches) == [], what
                assert not any(batch.flushed_dbs for batch in batches), what

            # An expiry reaches the stream as a DEL of the key: it is touched.
            await r0.set("short-lived", "v", px=30)
            assert keys_of(await reader.caught_up(r0)) == {0: {b"short-lived"}}
            await poll(lambda: key_is_gone(r0, "short-lived"), "the key to expire")
            assert keys_of(await reader.caught_up(r0)) == {0: {b"short-lived"}}

            # FLUSHDB: not replicated, reported as a flushed db and a "flush" gap.
            await r0.flushdb()
            await r0.set("after-flush", "v")
            batches = await reader.caught_up(r0)
            assert gaps_of(batches) == ["flush"]
            assert [b.flushed_dbs for b in batches if b.flushed_dbs] == [{0}]
            assert keys_of(batches) == {0: {b"after-flush"}}

            assert source.stats.rdb_bytes > 2000 * 100 // 10  # compressed, but there
            assert source.stats.full_resyncs == 1
            assert source.stats.parsed_offset == await master_offset(r0)
            assert source.stats.unknown_commands == 0
            assert not any(
                key.startswith(b"pre:") for b in reader.batches for key in b.keys.get(0, ())
            )


async def key_is_gone(redis: aioredis.Redis, key: str) -> bool:
    return await redis.get(key) is None  # a read also triggers the lazy expiry


async def test_acked_offset_not_parsed_offset_is_reported_and_wait_sees_it(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with client(primary) as redis, source_for(primary, tmp_path) as source:
        reader = Reader(source, ack=False)
        gap = await reader.next()
        for i in range(25):
            await redis.set(f"k{i}", i)
        middle = (await reader.caught_up(redis))[-1].end_offset
        assert middle is not None
        for i in range(25, 50):
            await redis.set(f"k{i}", i)
        target = await master_offset(redis)
        await reader.until_offset(target)
        assert source.stats.parsed_offset == target

        # Nothing acknowledged: WAIT's GETACK gets an answer, but not enough offset.
        assert await redis.execute_command("WAIT", 1, 300) == 0
        assert (await redis.info("replication"))["slave0"]["offset"] == 0

        await source.ack(gap.end_offset)
        await source.ack(middle)

        async def replica_offset_is(offset: int) -> bool:
            return (await redis.info("replication"))["slave0"]["offset"] == offset

        await poll(lambda: replica_offset_is(middle), "the partial ack to reach Redis")
        assert source.stats.acked_offset == middle < target

        await source.ack(reader.batches[-1].end_offset)
        await poll(lambda: replica_offset_is(target), "the full ack to reach Redis")
        # The first WAIT's GETACK is in the stream too (and in this client's write offset
        # in Redis 7.0): a consumer that keeps up hands it on as well, then WAIT succeeds.
        reader.ack = True
        await reader.caught_up(redis)
        assert await redis.execute_command("WAIT", 1, 1000) == 1
        # Master PINGs and GETACKs count in the offset: still equal to the master's.
        await reader.caught_up(redis)
        assert source.stats.parsed_offset == await master_offset(redis)
        assert source.stats.acked_offset == source.stats.parsed_offset


async def test_restart_from_the_persisted_position_continues_and_marks_the_replay(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with client(primary) as redis:
        async with source_for(primary, tmp_path) as first:
            reader = Reader(first, ack=False)
            await first.ack((await reader.next()).end_offset)
            for i in range(10):
                await redis.set(f"acked:{i}", i)
            acked = await reader.caught_up(redis)
            await first.ack(acked[-1].end_offset)
            for i in range(10):
                await redis.set(f"parsed:{i}", i)
            await reader.caught_up(redis)  # parsed, not acknowledged: must come again
            replid = first.position.replid if first.position else None
        for i in range(10):
            await redis.set(f"while-stopped:{i}", i)
        stop_offset = await master_offset(redis)

        async with source_for(primary, tmp_path) as second:
            assert second.position is not None
            assert second.position.offset == acked[-1].end_offset
            assert second.stats.master_offset_at_connect == stop_offset
            reader = Reader(second)
            replayed = await reader.until_offset(stop_offset)
            assert gaps_of(replayed) == []
            assert second.stats.full_resyncs == 0
            assert all(batch.replay for batch in replayed)
            assert all(batch.replid == replid for batch in replayed)
            expected = {f"parsed:{i}".encode() for i in range(10)}
            expected |= {f"while-stopped:{i}".encode() for i in range(10)}
            assert keys_of(replayed) == {0: expected}

            await redis.set("live", "v")
            live = await reader.caught_up(redis)
            assert keys_of(live) == {0: {b"live"}}
            assert not any(batch.replay for batch in live)


async def test_acks_are_persisted_while_running_not_only_at_stop(
    primary: RedisServer, tmp_path: Path
) -> None:
    # A daemon killed -9 replays only from the last save: saves must happen while running.
    async with client(primary) as redis, source_for(primary, tmp_path) as source:
        reader = Reader(source)
        await reader.next()
        store = source.position_store
        assert store is not None
        for round_ in range(3):
            await redis.set(f"k{round_}", "v")
            acked = (await reader.caught_up(redis))[-1].end_offset

            async def saved(offset: int | None = acked) -> bool:
                position = store.load()
                return position is not None and position.offset == offset

            await poll(saved, f"position {acked} on disk")
        assert source.position == store.load()


async def test_a_redis_killed_and_restarted_is_a_full_resync_gap(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with source_for(primary, tmp_path) as source:
        reader = Reader(source)
        await reader.next()
        async with client(primary) as redis:
            await redis.set("before", "v")
            await reader.caught_up(redis)
        old_replid = source.position.replid if source.position else ""

        primary.kill9()
        primary.restart(keep_data=True, crash=False)

        gap = await reader.next()
        assert gap.gap is not None
        assert gap.gap.reason == "full-resync"
        assert old_replid in gap.gap.detail
        assert "different replication history" in gap.gap.detail
        assert gap.replid != old_replid
        assert source.stats.reconnects >= 1
        async with client(primary) as redis:
            await redis.set("after", "v")
            assert keys_of(await reader.caught_up(redis)) == {0: {b"after"}}


async def test_writing_past_a_shrunk_backlog_while_stopped_is_a_full_resync_gap(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with client(primary) as redis:
        async with source_for(primary, tmp_path) as first:
            reader = Reader(first)
            await reader.next()
            await redis.set("k", "v")
            await reader.caught_up(redis)
            replid = first.position.replid if first.position else ""
        await redis.config_set("repl-backlog-size", "16kb")
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(200):
                pipe.set(f"filler:{i}", "x" * 1000)
            await pipe.execute()

        async with source_for(primary, tmp_path) as second:
            gap = await Reader(second).next()
            assert gap.gap is not None
            assert gap.gap.reason == "full-resync"
            assert gap.replid == replid  # same history, the offset just fell out of it
            assert "backlog" in gap.gap.detail


async def test_a_slow_consumer_stops_the_reads_and_loses_nothing(
    primary: RedisServer, tmp_path: Path
) -> None:
    count = 30_000
    async with (
        client(primary) as redis,
        source_for(
            primary,
            tmp_path,
            max_pending_batches=2,
            max_batch_commands=100,
            read_high_water_bytes=64 << 10,
        ) as source,
    ):
        reader = Reader(source)
        await reader.next()
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(count):
                pipe.set(f"bp:{i}", "x" * 200)
            await pipe.execute()

        async def server_buffers_for_us() -> bool:
            replicas = await redis.client_list(_type="replica")
            return any(int(entry["omem"]) > 0 for entry in replicas)

        # Nobody consumes: the queue fills, we stop reading, Redis holds the rest.
        await poll(server_buffers_for_us, "Redis to buffer the stream for us")
        assert source.stats.parsed_offset < await master_offset(redis)

        batches = await reader.caught_up(redis)
        assert keys_of(batches) == {0: {f"bp:{i}".encode() for i in range(count)}}
        assert max(batch.commands for batch in batches) <= 100


async def test_psync_refused_is_an_error_that_names_the_notifications_fallback(
    redis_factory: RedisFactory, tmp_path: Path
) -> None:
    server = redis_factory.start("managed", rename_command='PSYNC ""')
    source = source_for(server, tmp_path)
    with pytest.raises(PsyncRefusedError, match="notification"):
        await source.start()
    await source.stop()
    await source.stop()


async def test_the_documented_acl_is_enough_and_less_is_refused(
    primary: RedisServer, tmp_path: Path
) -> None:
    documented = "+psync +replconf +sync +ping +info +command +select"
    async with client(primary) as admin:
        await admin.execute_command(
            "ACL", "SETUSER", "capture", "on", ">pw", "-@all", *documented.split()
        )
        await admin.execute_command(
            "ACL", "SETUSER", "weak", "on", ">pw", "-@all", "+info", "+command"
        )
    port = primary.port
    good = ReplicationStreamSource(address("capture", "pw", port), state_dir=tmp_path)
    async with good:
        assert (await Reader(good).next()).gap is not None
    weak = ReplicationStreamSource(address("weak", "pw", port), state_dir=tmp_path / "w")
    with pytest.raises(PsyncRefusedError, match=r"\+psync"):
        await weak.start()
    await weak.stop()
    wrong = ReplicationStreamSource(address("capture", "nope", port), state_dir=tmp_path)
    with pytest.raises(CaptureAuthError) as caught:
        await wrong.start()
    assert "nope" not in str(caught.value)
    assert "nope" not in repr(wrong)
    await wrong.stop()


async def test_stop_is_safe_twice_and_after_a_failed_start(
    redis_factory: RedisFactory, tmp_path: Path
) -> None:
    server = redis_factory.start("gone")
    server.stop()  # nothing listens on its port now
    source = source_for(server, tmp_path, connect_timeout_s=2.0)
    with pytest.raises(CaptureConnectionError):
        await source.start()
    await source.stop()
    await source.stop()
    with pytest.raises(RuntimeError):
        await source.start()
