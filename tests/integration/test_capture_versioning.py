"""Capture and versioning together, against a real redis-server: the replication-stream
source's batches versioned by the real Versioner (wired as replication.pipeline.outbound wires them,
with a list standing in for Kafka) produce exactly the expected change events.

Every batch goes through `Pipeline.handle`, which reads the metadata of the batch's keys
before and after versioning and checks, whatever the test: a new version's clock is the
previous clock ticked once for this region at the batch's HLC tick (one bump per change,
strictly growing per key), a re-shipped version keeps its clock and metadata untouched,
and a key that yields no event keeps its metadata byte for byte (no hidden bump).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from devcluster import RedisServer
from replication.capture import CaptureBatch, Gap
from replication.capture.versioner import LATE_TICK, VersionedChange, Versioner, VersionReport
from replication.model.digest import value_digest
from replication.model.event import ChangeEvent
from replication.model.hlc import HybridClock
from replication.model.keys import INTERNAL_PREFIX
from replication.model.metadata import decode_meta
from replication.model.value import Kind, Value
from replication.model.vclock import Order, VectorClock
from replication.pipeline.outbound import Outbound
from replication.pipeline.publisher import Publisher
from replication.redis.address import RedisAddress
from replication.redis.library import apply_command, meta_key_for, parse_apply_reply
from tests.integration.test_capture_stream import (
    FUNCTION_LIBRARY,
    client,
    master_offset,
    poll,
    source_for,
)
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

REGION = "eu-west"
REMOTE = "us-east"
DEADLINE_S = 8.0

State = tuple[Kind, Value, int]
"""What an event says about its key: kind, value, absolute expiry in ms (0: none)."""


@pytest.fixture
def primary(redis_factory: RedisFactory) -> RedisServer:
    return redis_factory.start("primary", repl_diskless_sync_delay="0")


class RecordingClock(HybridClock):
    """A real hybrid clock that remembers every tick it handed out (one per version())."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[int] = []

    def now(self) -> int:
        tick = super().now()
        self.ticks.append(tick)
        return tick


@dataclass
class Versioned:
    """One batch and what versioning it produced."""

    batch: CaptureBatch
    report: VersionReport
    tick: int

    @property
    def events(self) -> list[ChangeEvent]:
        return [change.event for change in self.report.changes]


class Pipeline:
    """ReplicationStreamSource -> Versioner -> a list of events (Kafka's place), checked.

    Like replication.pipeline.outbound: every batch is versioned with `replay=batch.replay`, its
    events are "shipped" (appended to `shipped`), then the batch is acknowledged (unless
    the test says not to, to leave it unshipped as a crash would).
    """

    def __init__(self, server: RedisServer, state_dir: Path, *, dbs: Iterable[int] = (0,)) -> None:
        self.server = server
        self.source = source_for(server, state_dir, dbs=set(dbs), persist_interval_s=0.05)
        self.clock = RecordingClock()
        self.versioner = Versioner(RedisAddress.from_url(server.url), REGION, self.clock)
        self.shipped: list[ChangeEvent] = []
        self.handled: list[Versioned] = []
        self.history: dict[tuple[int, bytes], list[VectorClock]] = {}
        self._clients: dict[int, aioredis.Redis] = {}
        self._iterator = self.source.batches()

    async def __aenter__(self) -> Pipeline:
        await self.versioner.start()
        try:
            await self.source.start()
        except BaseException:
            await self.source.stop()
            await self.versioner.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.source.stop()
        await self.versioner.stop()
        for each in self._clients.values():
            await each.aclose()

    def redis(self, db: int = 0) -> aioredis.Redis:
        if db not in self._clients:
            self._clients[db] = client(self.server, db)
        return self._clients[db]

    async def next(self) -> CaptureBatch:
        async with asyncio.timeout(DEADLINE_S):
            return await anext(self._iterator)

    async def take_until(self, offset: int) -> list[CaptureBatch]:
        """Batches (not versioned) until one ends at or after `offset`."""
        got: list[CaptureBatch] = []
        async with asyncio.timeout(DEADLINE_S):
            while not got or (got[-1].end_offset or 0) < offset:
                got.append(await self.next())
        return got

    async def caught_up(self, *, ack: bool = True) -> list[Versioned]:
        """Version and ship every batch up to the server's current offset."""
        return [
            await self.handle(batch, ack=ack)
            for batch in await self.take_until(await master_offset(self.redis()))
        ]

    async def metadata(self, keys: Mapping[int, Iterable[bytes]]) -> dict[tuple[int, bytes], Any]:
        found = {}
        for db, db_keys in keys.items():
            for key in db_keys:
                found[db, key] = await self.redis(db).hget(meta_key_for(key), key)
        return found

    async def handle(self, batch: CaptureBatch, *, ack: bool = True) -> Versioned:
        before = await self.metadata(batch.keys)
        report = await self.versioner.version(batch.keys, replay=batch.replay)
        # A replayed batch's values are found late: dated with LATE_TICK (deletes by the
        # clock here, no shipping being announced in these tests).
        tick = self.clock.ticks[-1] if self.clock.ticks else 0
        after = await self.metadata(batch.keys)
        changed = {(c.event.db, c.event.key): c for c in report.changes}
        assert len(changed) == len(report.changes), "a key yielded two events in one batch"
        reshipped = 0
        for where, raw_before in before.items():
            change = changed.get(where)
            if change is None:
                assert after[where] == raw_before, f"{where} changed metadata, no event"
            elif after[where] == raw_before:
                reshipped += 1
                self._check_reship(batch, change, raw_before)
            else:
                # Replayed: dated by the floor (none announced in these tests: the clock).
                self._check_new_version(change, raw_before, after[where], tick)
        assert set(changed) <= set(before), "an event for a key the batch did not touch"
        assert reshipped == report.reshipped
        self.shipped += [change.event for change in report.changes]
        if ack:
            await self.source.ack(batch.end_offset)
        handled = Versioned(batch, report, tick)
        self.handled.append(handled)
        return handled

    def _check_reship(self, batch: CaptureBatch, change: VersionedChange, raw: bytes) -> None:
        event = change.event
        assert batch.replay, f"{event.key!r} re-shipped outside a replay"
        meta = decode_meta(raw)
        assert (event.clock, event.origin, event.digest) == (meta.clock, REGION, meta.digest)

    def _check_new_version(
        self, change: VersionedChange, raw_before: bytes | None, raw_after: bytes, tick: int
    ) -> None:
        event = change.event
        meta_before = decode_meta(raw_before) if raw_before else None
        previous = meta_before.clock if meta_before else VectorClock()
        # What the Merkle index is told the key's live digest was.
        live = meta_before is not None and not meta_before.deleted
        assert change.previous_digest == (meta_before.digest if live else b""), event.key
        # Exactly one bump: this region's entry ticked once, every other entry kept.
        assert event.clock == previous.tick(REGION, tick), event.key
        assert event.clock.compare(previous) is Order.AFTER
        stored = decode_meta(raw_after)
        assert (stored.clock, stored.origin, stored.digest) == (event.clock, REGION, event.digest)
        assert stored.deleted == (event.kind is Kind.NONE)
        assert event.digest == value_digest(event.kind, event.value, event.expire_at_ms)
        history = self.history.setdefault((event.db, event.key), [])
        assert all(event.clock.get_count(REGION) > old.get_count(REGION) for old in history)
        history.append(event.clock)


def events_of(handled: Iterable[Versioned]) -> list[ChangeEvent]:
    return [event for each in handled for event in each.events]


def states(events: list[ChangeEvent]) -> dict[bytes, State]:
    """key -> (kind, value, expiry); fails if a key has more than one event."""
    found = {event.key: (event.kind, event.value, event.expire_at_ms) for event in events}
    assert len(found) == len(events), f"more than one event for a key: {events}"
    return found


def gaps_of(batches: Iterable[CaptureBatch]) -> list[Gap]:
    return [batch.gap for batch in batches if batch.gap is not None]


GONE: State = (Kind.NONE, None, 0)


async def started(pipeline: Pipeline) -> None:
    """Take the initial gap batch (a first start: nothing before it was seen)."""
    first = await pipeline.handle(await pipeline.next())
    assert first.batch.gap is not None
    assert first.batch.gap.reason == "initial"
    assert first.events == []


async def expiry_of(redis: aioredis.Redis, key: str, ttl_ms: int, since_ms: int) -> int:
    """The key's absolute expiry as the server holds it, checked against the TTL set."""
    at = int(await redis.execute_command("PEXPIRETIME", key))
    assert since_ms + ttl_ms <= at <= time.time_ns() // 1_000_000 + ttl_ms
    return at


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_every_supported_write_yields_exactly_its_events_each_with_one_clock_bump(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)

        async def step(what: str, write: Callable[[], Awaitable[Any]]) -> dict[bytes, State]:
            await write()
            return states(events_of(await pipeline.caught_up()))

        assert await step("string", lambda: redis.set("s", "v")) == {b"s": (Kind.STRING, b"v", 0)}
        assert await step("hash", lambda: redis.hset("h", mapping={"f1": "1", "f2": "2"})) == {
            b"h": (Kind.HASH, {b"f1": b"1", b"f2": b"2"}, 0)
        }
        assert await step("list", lambda: redis.lpush("l", "a", "b")) == {
            b"l": (Kind.LIST, [b"b", b"a"], 0)
        }
        assert await step("set", lambda: redis.sadd("t", "m1", "m2")) == {
            b"t": (Kind.SET, {b"m1", b"m2"}, 0)
        }
        assert await step("zset", lambda: redis.zadd("z", {"a": 1.5, "b": -2.0})) == {
            b"z": (Kind.ZSET, {b"a": 1.5, b"b": -2.0}, 0)
        }

        since = now_ms()
        got = await step("expire", lambda: redis.expire("s", 100))
        assert got == {b"s": (Kind.STRING, b"v", await expiry_of(redis, "s", 100_000, since))}
        since = now_ms()
        got = await step("pexpire", lambda: redis.pexpire("h", 50_000))
        expire_at = await expiry_of(redis, "h", 50_000, since)
        assert got == {b"h": (Kind.HASH, {b"f1": b"1", b"f2": b"2"}, expire_at)}
        assert await step("persist", lambda: redis.persist("s")) == {b"s": (Kind.STRING, b"v", 0)}
        # A write that changes nothing reaches the stream, and is no change: no event, no bump.
        assert await step("same value", lambda: redis.set("s", "v")) == {}
        assert await step("del", lambda: redis.delete("l")) == {b"l": GONE}
        assert await step("unlink", lambda: redis.unlink("t")) == {b"t": GONE}
        assert await step("rename", lambda: redis.rename("z", "z2")) == {
            b"z": GONE,
            b"z2": (Kind.ZSET, {b"a": 1.5, b"b": -2.0}, 0),
        }

        async def transaction() -> None:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set("m1", "1").hset("m2", "f", "v").incr("m3")
                await pipe.execute()

        assert await step("multi/exec", transaction) == {
            b"m1": (Kind.STRING, b"1", 0),
            b"m2": (Kind.HASH, {b"f": b"v"}, 0),
            b"m3": (Kind.STRING, b"1", 0),
        }
        script = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('RPUSH', KEYS[2], 'x', 'y')"
        assert await step("eval", lambda: redis.eval(script, 2, "e1", "e2", "v")) == {
            b"e1": (Kind.STRING, b"v", 0),
            b"e2": (Kind.LIST, [b"x", b"y"], 0),
        }
        assert await step("function load", lambda: redis.function_load(FUNCTION_LIBRARY)) == {}
        assert await step("fcall", lambda: redis.fcall("write_one", 1, "f1", "v")) == {
            b"f1": (Kind.STRING, b"v", 0)
        }

        # Bumps counted per key: one per step in which the key changed, and no other.
        bumps = {key[1]: len(clocks) for key, clocks in pipeline.history.items()}
        assert bumps == {
            b"s": 3,  # set, expire, persist (not the same-value set)
            b"h": 2,
            b"l": 2,
            b"t": 2,
            b"z": 2,
            b"z2": 1,
            b"m1": 1,
            b"m2": 1,
            b"m3": 1,
            b"e1": 1,
            b"e2": 1,
            b"f1": 1,
        }
        assert pipeline.versioner.unsupported_total == 0


async def test_a_key_written_twice_in_one_batch_yields_one_event_with_its_final_state(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)

        async with redis.pipeline(transaction=False) as pipe:  # one write to the stream
            pipe.incr("counter").incr("counter")
            await pipe.execute()
        handled = await pipeline.caught_up()
        touching = [each for each in handled if b"counter" in each.batch.keys.get(0, ())]
        assert len(touching) == 1
        assert touching[0].batch.commands >= 2  # both INCRs in that one batch
        assert states(events_of(handled)) == {b"counter": (Kind.STRING, b"2", 0)}

        since = now_ms()
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set("tx", "a").append("tx", "b").expire("tx", 60)
            await pipe.execute()
        handled = await pipeline.caught_up()
        assert sum(b"tx" in each.batch.keys.get(0, ()) for each in handled) == 1
        expire_at = await expiry_of(redis, "tx", 60_000, since)
        assert states(events_of(handled)) == {b"tx": (Kind.STRING, b"ab", expire_at)}
        assert [len(clocks) for clocks in pipeline.history.values()] == [1, 1]


def remote_event(
    key: bytes, kind: Kind, value: Value, clock: Mapping[str, int], exp: int = 0
) -> ChangeEvent:
    return ChangeEvent(
        0, key, kind, value, exp, VectorClock(clock), REMOTE, value_digest(kind, value, exp)
    )


async def test_a_write_applied_by_the_applier_script_is_an_echo_and_yields_no_event(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)
        await redis.set("local", "mine")
        (mine,) = events_of(await pipeline.caught_up())

        later = now_ms() + 3_600_000
        remote = [
            remote_event(b"r:str", Kind.STRING, b"v", {REMOTE: 7}, exp=later),
            remote_event(b"r:hash", Kind.HASH, {b"f": b"1"}, {REMOTE: 8}),
            remote_event(b"r:list", Kind.LIST, [b"x", b"y", b"x"], {REMOTE: 9}),
            remote_event(b"r:set", Kind.SET, {b"a", b"b"}, {REMOTE: 10}),
            remote_event(b"r:zset", Kind.ZSET, {b"a": 0.1, b"b": -3.0}, {REMOTE: 11}),
            # A remote delete of our key, which has seen our version: a tombstone applied.
            remote_event(b"local", Kind.NONE, None, {**mine.clock, REMOTE: 12}),
        ]
        for event in remote:  # exactly what the applier sends, on a plain client
            reply = await redis.execute_command(*apply_command(event, REGION))
            assert parse_apply_reply(reply).outcome == "applied", event.key
        assert await redis.exists("r:str", "r:hash", "r:list", "r:set", "r:zset") == 5

        handled = await pipeline.caught_up()
        touched = {key for each in handled for key in each.batch.keys.get(0, ())}
        # Each apply's effects come as one MULTI/EXEC block with its metadata write: the
        # stream parser recognises every one as an echo, so none reaches the versioner.
        assert touched == set()
        assert pipeline.source.stats.echo_keys_dropped == len(remote)
        assert events_of(handled) == []

        # A local write on top of an applied one follows it causally: one bump over its clock.
        await redis.hset("r:hash", "g", "2")
        (event,) = events_of(await pipeline.caught_up())
        assert event.value == {b"f": b"1", b"g": b"2"}
        assert event.clock.get_count(REMOTE) == 8
        assert event.clock.compare(remote[1].clock) is Order.AFTER


async def test_writes_to_an_uncaptured_db_yield_no_event(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path, dbs={0}) as pipeline:
        await started(pipeline)
        db1 = pipeline.redis(1)
        await db1.set("other", "v")
        await db1.hset("other-hash", "f", "v")
        await db1.delete("other")
        await pipeline.redis(0).set("marker", "v")  # after them in the stream
        handled = await pipeline.caught_up()
        assert all(set(each.batch.keys) <= {0} for each in handled)
        assert states(events_of(handled)) == {b"marker": (Kind.STRING, b"v", 0)}
        assert await db1.keys(INTERNAL_PREFIX + b"*") == []  # never versioned there


async def test_stream_writes_are_counted_as_unsupported_and_never_shipped(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)
        await redis.xadd("events", {"f": "1"})
        await redis.xadd("events", {"f": "2"})
        await redis.set("plain", "v")
        handled = await pipeline.caught_up()
        assert {key for each in handled for key in each.batch.keys.get(0, ())} == {
            b"events",
            b"plain",
        }
        assert states(events_of(handled)) == {b"plain": (Kind.STRING, b"v", 0)}
        unsupported = [item for each in handled for item in each.report.unsupported]
        assert unsupported == [(0, b"events", "stream")] * len(unsupported)
        assert pipeline.versioner.unsupported_total == len(unsupported) >= 1
        assert await redis.hget(meta_key_for(b"events"), b"events") is None


async def test_an_expiry_yields_no_event(primary: RedisServer, tmp_path: Path) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)
        since = now_ms()
        await redis.set("brief", "v", px=300)
        (event,) = events_of(await pipeline.caught_up())
        assert event.expire_at_ms >= since + 300

        async def expired() -> bool:
            return await redis.get("brief") is None  # a read also triggers the lazy expiry

        await poll(expired, "the key to expire")
        handled = await pipeline.caught_up()
        assert any(b"brief" in each.batch.keys.get(0, ()) for each in handled)  # its DEL
        assert events_of(handled) == []


async def test_flushdb_is_a_flush_gap_and_no_delete_is_shipped_for_the_flushed_keys(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)
        await redis.set("a", "1")
        await redis.hset("b", "f", "1")
        assert set(states(events_of(await pipeline.caught_up()))) == {b"a", b"b"}

        # The race docs/capture.md names: a batch written before the flush, versioned after
        # it, finds its keys missing. It must not ship them as deletes.
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set("a", "2").flushdb().set("after", "v")
            await pipe.execute()
        batches = await pipeline.take_until(await master_offset(redis))
        handled = [await pipeline.handle(batch) for batch in batches]
        assert [gap.reason for gap in gaps_of(batches)] == ["flush"]
        assert [batch.flushed_dbs for batch in batches if batch.flushed_dbs] == [{0}]
        flush_at = next(i for i, batch in enumerate(batches) if batch.gap is not None)
        assert any(b"a" in batch.keys.get(0, ()) for batch in batches[:flush_at])
        assert states(events_of(handled)) == {b"after": (Kind.STRING, b"v", 0)}

        # A flush on its own, and the recovery sweep the daemon runs for its gap: nothing.
        await redis.flushdb()
        handled = await pipeline.caught_up()
        assert [gap.reason for gap in gaps_of(each.batch for each in handled)] == ["flush"]
        assert events_of(handled) == []
        swept = [
            change async for report in pipeline.versioner.sweep(0) for change in report.changes
        ]
        assert swept == []
        assert not any(event.kind is Kind.NONE for event in pipeline.shipped)


class ListProducer:
    """Stands in for ChangeProducer: ships into a list, and Kafka acknowledges at once."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []

    async def ship(self, events: list[ChangeEvent]) -> ListProducer:
        self.events += events
        return self

    async def wait(self) -> None:
        return None


class NoIndex:
    """The outbound test keeps no Merkle index."""

    def update(self, db: int, key: bytes, old_digest: bytes, new_digest: bytes) -> None:
        return None


async def test_a_gap_while_stopped_triggers_a_sweep_that_finds_exactly_the_missed_changes(
    primary: RedisServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with Pipeline(primary, state) as first:
        redis = first.redis()
        await started(first)
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(5):
                pipe.set(f"keep:{i}", i).set(f"gone:{i}", i)
            pipe.hset("changed", "f", "1")
            await pipe.execute()
        before = {event.key: event.clock for event in events_of(await first.caught_up())}
        assert len(before) == 11

    async with client(primary) as redis:
        await redis.config_set("repl-backlog-size", "16kb")
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(100):  # ~100 KB of stream: far past the 16 KB backlog
                pipe.set(f"stopped:{i}", "x" * 1000)
            pipe.hset("changed", "f", "2")
            pipe.delete("gone:0", "gone:1")
            pipe.unlink("gone:2")
            await pipe.execute()

        # The daemon's wiring: Outbound calls on_gap, whose recovery sweeps the db.
        clock = RecordingClock()
        source = source_for(primary, state)
        versioner = Versioner(RedisAddress.from_url(primary.url), REGION, clock)
        gaps: list[Gap] = []
        swept: list[ChangeEvent] = []
        sweep_ticks: list[int] = []
        recovered = asyncio.Event()

        async def on_gap(gap: Gap) -> None:
            gaps.append(gap)
            first_tick = len(clock.ticks)
            async for report in versioner.sweep(0):
                swept.extend(change.event for change in report.changes)
            sweep_ticks.extend(clock.ticks[first_tick:])
            recovered.set()

        async def on_flush(dbs: frozenset[int]) -> None:
            raise AssertionError(f"no flush here, got {dbs}")

        producer = ListProducer()
        outbound = Outbound(
            source,
            Publisher(versioner, producer, NoIndex()),  # type: ignore[arg-type]
            on_gap=on_gap,
            on_flush=on_flush,
        )
        async with versioner, source:
            running = asyncio.create_task(outbound.run())
            try:
                async with asyncio.timeout(DEADLINE_S):
                    await recovered.wait()
            finally:
                outbound.stop()
                await running

        assert [gap.reason for gap in gaps] == ["full-resync"]
        assert "backlog" in gaps[0].detail
        expected = {f"stopped:{i}".encode(): (Kind.STRING, b"x" * 1000, 0) for i in range(100)}
        expected[b"changed"] = (Kind.HASH, {b"f": b"2"}, 0)
        expected.update({f"gone:{i}".encode(): GONE for i in range(3)})
        assert states(swept) == expected
        assert producer.events == []  # the stream after the resync had no user writes
        for event in swept:
            previous = before.get(event.key, VectorClock())
            # A value found late on a key with a clock gets the smallest tick after it
            # (LATE_TICK); a delete or a key without metadata the clock's time (no shipping
            # announced in this test: no floor to date them by).
            known = event.key in before and event.kind is not Kind.NONE
            ticks = [LATE_TICK, *sweep_ticks] if known else sweep_ticks
            assert any(event.clock == previous.tick(REGION, tick) for tick in ticks)
            assert event.digest == value_digest(event.kind, event.value, event.expire_at_ms)
            meta = decode_meta(await redis.hget(meta_key_for(event.key), event.key))
            assert (meta.clock, meta.deleted) == (event.clock, event.kind is Kind.NONE)

        # The sweep versioned each missed change once: a second one finds nothing.
        async with Versioner(RedisAddress.from_url(primary.url), REGION, HybridClock()) as again:
            assert [report.changes async for report in again.sweep(0) if report.changes] == []


async def test_a_restart_replays_unacked_batches_and_reships_them_with_the_same_clocks(
    primary: RedisServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with Pipeline(primary, state) as first:
        redis = first.redis()
        await started(first)
        for i in range(5):
            await redis.set(f"a:{i}", i)
        await redis.set("both", "1")
        acked = await first.caught_up(ack=True)
        acked_offset = acked[-1].batch.end_offset

        for i in range(5):
            await redis.set(f"b:{i}", i)
        await redis.set("both", "2")
        await redis.delete("a:0")
        unacked = await first.caught_up(ack=False)  # versioned and shipped, never acked
        shipped = {event.key: event for event in events_of(unacked)}
        assert set(shipped) == {*(f"b:{i}".encode() for i in range(5)), b"both", b"a:0"}
        assert shipped[b"a:0"].kind is Kind.NONE

        # What a kill -9 leaves on disk: the last acked position, persisted while running.
        store = first.source.position_store
        assert store is not None

        async def acked_position_on_disk() -> bool:
            position = store.load()
            return position is not None and position.offset == acked_offset

        await poll(acked_position_on_disk, "the acked position on disk")
    position = store.load()  # stop() did not move it past what was acked
    assert position is not None
    assert position.offset == acked_offset

    async with client(primary) as redis:
        await redis.set("while-stopped", "v")

    async with Pipeline(primary, state) as second:  # a new process: new clock, new versioner
        redis = second.redis()
        replay_end = second.source.stats.master_offset_at_connect
        batches = await second.take_until(replay_end)
        assert gaps_of(batches) == []
        assert all(batch.replay for batch in batches)
        replayed = [await second.handle(batch) for batch in batches]
        events = {event.key: event for event in events_of(replayed)}
        assert set(events) == set(shipped) | {b"while-stopped"}
        for key, event in shipped.items():  # the same version again: no second bump
            assert (events[key].clock, events[key].digest) == (event.clock, event.digest), key
        assert sum(each.report.reshipped for each in replayed) == len(shipped)
        # Written while stopped: a new version (one bump, checked by handle), newer than all.
        # Written while stopped on a key without metadata: dated by the floor (none known
        # in this test: by the clock), newer than every version this region made.
        newest = max(event.clock.get_count(REGION) for event in shipped.values())
        assert events[b"while-stopped"].clock.get_count(REGION) > newest
        # Acked before the crash and not written since: neither replayed nor re-shipped.
        acked_only = {f"a:{i}".encode() for i in range(1, 5)}
        assert not acked_only & {key for batch in batches for key in batch.keys.get(0, ())}
        assert not acked_only & set(events)

        await redis.set("live", "v")
        live = await second.caught_up()
        assert not any(each.batch.replay for each in live)
        assert states(events_of(live)) == {b"live": (Kind.STRING, b"v", 0)}


async def test_a_versioned_key_replaced_by_a_stream_is_a_delete_whatever_the_batching(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)
        await redis.set("split", "v")
        await redis.set("together", "v")
        assert set(states(events_of(await pipeline.caught_up()))) == {b"split", b"together"}

        # Split over two batches: the delete is versioned before the stream appears.
        await redis.delete("split")
        assert states(events_of(await pipeline.caught_up())) == {b"split": GONE}
        await redis.xadd("split", {"f": "v"})
        assert events_of(await pipeline.caught_up()) == []

        # The same writes in one transaction (one batch): the delete must not vanish.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete("together").xadd("together", {"f": "v"})
            await pipe.execute()
        assert states(events_of(await pipeline.caught_up())) == {b"together": GONE}


async def test_a_remote_write_to_a_key_holding_a_stream_is_not_deferred_forever(
    primary: RedisServer, tmp_path: Path
) -> None:
    async with Pipeline(primary, tmp_path) as pipeline:
        redis = pipeline.redis()
        await started(pipeline)
        await redis.xadd("shared-name", {"f": "v"})
        handled = await pipeline.caught_up()
        assert [item for each in handled for item in each.report.unsupported] == [
            (0, b"shared-name", "stream")
        ]
        event = remote_event(b"shared-name", Kind.STRING, b"theirs", {REMOTE: 5})
        outcomes = []
        for _ in range(3):  # what Inbound does with a deferred event: version, apply again
            reply = await redis.execute_command(*apply_command(event, REGION))
            outcomes.append(parse_apply_reply(reply).outcome)
            await pipeline.versioner.version({0: [b"shared-name"]})
        assert outcomes[-1] != "deferred", outcomes


async def test_writes_found_late_are_dated_when_they_can_have_happened_at_the_earliest(
    primary: RedisServer,
) -> None:
    """Writes made while nothing captured (replayed at restart, swept after a gap; or a
    Redis restored from an older backup, whose writes may have shipped long ago) are not
    dated now: dated now they would beat writes the other regions acknowledged meanwhile.
    On a key with a clock, the smallest tick after it; on a key without metadata and for a
    delete, just after the last moment the region announced everything shipped."""
    from replication.model.hlc import pack, physical_ms

    redis = aioredis.from_url(primary.url)
    clock = HybridClock()
    floor_ms = int(time.time() * 1000) - 60_000  # shipped through a minute ago
    async with Versioner(RedisAddress.from_url(primary.url), REGION, clock) as versioner:
        versioner.late_floor_ms = floor_ms
        await redis.set("late:replayed", "v")
        await redis.set("late:swept", "v")
        replayed = await versioner.version({0: [b"late:replayed"]}, replay=True)
        swept = [r async for r in versioner.sweep(0)]
        # Keys without metadata (a Redis restarted empty): dated by the floor, so they
        # beat this region's own earlier versions, which lost metadata no longer shows.
        (late,) = [c.event for c in replayed.changes]
        assert late.clock.get_count(REGION) == pack(floor_ms)
        dated = {c.event.key: c.event for report in swept for c in report.changes}
        assert dated[b"late:swept"].clock.get_count(REGION) == pack(floor_ms)
        # Replayed again (the same instance's stream): after the floor, above its clock.
        await redis.set("late:replayed", "w")
        again = await versioner.version({0: [b"late:replayed"]}, replay=True)
        (second,) = [c.event for c in again.changes]
        assert second.clock.get_count(REGION) == pack(floor_ms) + 1
        assert second.clock.compare(late.clock) is Order.AFTER
        # Swept after a gap, on a key with a clock (perhaps a restored backup's old write):
        # just above what that clock holds, so it loses every concurrent write elsewhere.
        await redis.set("late:replayed", "x")
        swept_again = [r async for r in versioner.sweep(0)]
        (third,) = [
            c.event for r in swept_again for c in r.changes if c.event.key == b"late:replayed"
        ]
        assert third.clock.get_count(REGION) == pack(floor_ms) + 2

        await redis.set("live", "v")
        live = await versioner.version({0: [b"live"]})
        (now,) = [c.event for c in live.changes]
        assert physical_ms(now.clock.get_count(REGION)) >= floor_ms + 59_000
        # A delete found late: dated after the last announced shipping, not at its clock.
        await redis.delete("live")
        gone = await versioner.version({0: [b"live"]}, late=True)
        (tombstone,) = [c.event for c in gone.changes]
        assert tombstone.kind is Kind.NONE
        assert tombstone.clock.get_count(REGION) == max(
            pack(floor_ms), now.clock.get_count(REGION) + 1
        )
    await redis.aclose()


async def test_monotonic_reads_a_live_write_versioned_late_is_dated_when_the_capture_read_it(
    primary: RedisServer, tmp_path: Path
) -> None:
    """A write the capture read while the daemon was still starting (or queued behind a
    slow versioning) is dated by the read, not by its versioning seconds later: dated
    late, it beat a write made elsewhere meanwhile and a client read the older value
    after the newer one (fault suite, soak seed 3). Never before the moment this region
    last announced everything shipped."""
    from replication.model.hlc import pack, physical_ms

    async with Pipeline(primary, tmp_path) as pipeline:
        await started(pipeline)
        written_ms = now_ms()
        await pipeline.redis().set("fc:1", "local")
        (batch,) = [
            b for b in await pipeline.take_until(await master_offset(pipeline.redis())) if b.keys
        ]
        assert written_ms <= batch.read_ms <= now_ms()
        await asyncio.sleep(1.5)  # the rest of the startup: nothing versions meanwhile
        report = await pipeline.versioner.version(batch.keys, read_ms=batch.read_ms)
        (event,) = [c.event for c in report.changes]
        assert event.clock.get_count(REGION) == pack(batch.read_ms)
        assert physical_ms(event.clock.get_count(REGION)) < now_ms() - 1_000

        # Read before the last announced shipping (it cannot have been, but the floor
        # is what the tombstone GC relies on): dated at the floor.
        await pipeline.redis().set("fc:1", "again")
        (again,) = [
            b for b in await pipeline.take_until(await master_offset(pipeline.redis())) if b.keys
        ]
        pipeline.versioner.late_floor_ms = again.read_ms + 500
        second = await pipeline.versioner.version(again.keys, read_ms=again.read_ms)
        (later,) = [c.event for c in second.changes]
        assert later.clock.get_count(REGION) == pack(again.read_ms + 500)
        assert later.clock.compare(event.clock) is Order.AFTER
