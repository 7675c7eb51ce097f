"""Two `Daemon` objects built and run in this process against real redis-servers and the
real broker: the wiring itself (construction, start, supervision, graceful stop) under a
debugger's reach, not only through the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from devcluster import KafkaBroker
from devcluster.daemons import write_config
from reconciler.service.config import load_config
from reconciler.service.daemon import Daemon
from reconciler.service.regionstate import Status
from reconciler.status import decode_status, parse_run_id
from replication.capture.batch import CaptureBatch
from replication.model.keys import STATUS_KEY
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

REGIONS = ("eu-west", "us-east")


async def eventually(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


class Hold:
    """Holds the calls of `owner.name` that `when(*args)` picks until `release()`;
    `reached` is set by the first one held."""

    def __init__(
        self, owner: object, name: str, when: Callable[..., bool] = lambda *args: True
    ) -> None:
        self.reached = asyncio.Event()
        self._gate = asyncio.Event()
        original = getattr(owner, name)

        async def held(*args: Any) -> Any:
            if not self._gate.is_set() and when(*args):
                self.reached.set()
                await self._gate.wait()
            return await original(*args)

        setattr(owner, name, held)

    def release(self) -> None:
        self._gate.set()


def touches(key: bytes) -> Callable[[CaptureBatch], bool]:
    """For `Hold`: a capture batch that holds a write of `key`."""
    return lambda batch: any(key in keys for keys in batch.keys.values())


@contextlib.asynccontextmanager
async def two_daemons(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> AsyncIterator[tuple[dict[str, Daemon], dict[str, aioredis.Redis]]]:
    """Two daemons run in this process, both `consistent`; (daemons, Redis clients) by
    region. On leaving, both are stopped and must exit 0."""
    servers = {r: redis_factory.start(r) for r in REGIONS}
    daemons = {}
    prefix = f"inproc{uuid.uuid4().hex[:8]}"
    for region in REGIONS:
        path = write_config(
            tmp_path / "configs",
            region,
            [p for p in REGIONS if p != region],
            servers[region].url,
            kafka.bootstrap,
            topic_prefix=prefix,
        )
        daemons[region] = Daemon(load_config(path))
    runs = {r: asyncio.create_task(d.run()) for r, d in daemons.items()}
    clients = {r: aioredis.Redis.from_url(s.url) for r, s in servers.items()}
    try:
        await eventually(
            lambda: all(d.state.status == Status.CONSISTENT for d in daemons.values()),
            90,
            "both daemons consistent",
        )
        yield daemons, clients
    finally:
        for daemon in daemons.values():
            if not daemon.stop_requested:  # a test may have stopped one already
                daemon.request_stop()
        codes = {}
        for region, task in runs.items():
            with contextlib.suppress(asyncio.CancelledError):
                codes[region] = await asyncio.wait_for(task, 60)
        for client in clients.values():
            await client.aclose()
    assert codes == dict.fromkeys(REGIONS, 0)


@pytest.mark.timeout(180)
async def test_two_daemons_in_process_replicate_publish_a_bound_status_and_stop_cleanly(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    async with two_daemons(tmp_path, kafka, redis_factory) as (daemons, clients):
        a, b = (daemons[r] for r in REGIONS)
        # The record in each Redis names that Redis's instance.
        for region, client in clients.items():
            record = decode_status(await client.hgetall(STATUS_KEY))
            assert record is not None
            assert record.region == region
            assert record.belongs_to(parse_run_id(await client.info("server")))

        await clients["eu-west"].set("payment:1", "captured")

        async def replicated() -> bool:
            return await clients["us-east"].get("payment:1") == b"captured"

        await eventually(replicated, 30, "the write to reach us-east")
        assert a.outbound.stats.changes >= 1
        assert b.inbound.stats.applied >= 1


@pytest.mark.timeout(180)
async def test_no_lost_winner_when_a_remote_write_finds_a_local_one_not_versioned_yet(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    """eu-west takes a write its capture reads but does not version yet (held here, as a
    daemon still starting holds it); us-east writes the same key later. The later write
    wins everywhere: eu-west's applier, finding its local write unversioned, waits for the
    capture to version it, dated when it was read. Versioned by the applier, dated then,
    the earlier write won in both regions (the fault suite's soak seed 3)."""
    async with two_daemons(tmp_path, kafka, redis_factory) as (daemons, clients):
        a = daemons["eu-west"]
        held = asyncio.Event()
        release = asyncio.Event()
        handle = a.outbound.handle

        async def held_handle(batch: CaptureBatch) -> None:
            if any(b"fc:1" in keys for keys in batch.keys.values()):
                held.set()
                await release.wait()
            await handle(batch)

        a.outbound.handle = held_handle  # type: ignore[method-assign]
        await clients["eu-west"].set("fc:1", "earlier")
        await eventually(held.is_set, 10, "eu-west's capture to read the write")
        await asyncio.sleep(0.2)  # the other region's write comes later, measurably
        await clients["us-east"].set("fc:1", "later")
        await eventually(
            lambda: a.inbound.stats.deferred >= 1, 30, "eu-west to defer us-east's write"
        )
        release.set()

        async def converged() -> bool:
            values = [await c.get("fc:1") for c in clients.values()]
            return values == [b"later", b"later"]

        await eventually(converged, 30, "both regions to hold the later write")
        assert a.inbound.stats.deferred_to_capture >= 1
        await asyncio.sleep(1.0)  # nothing turns it back
        assert [await c.get("fc:1") for c in clients.values()] == [b"later", b"later"]


@pytest.mark.timeout(180)
async def test_no_lost_winner_after_a_redis_restart_brings_back_a_write_nothing_versioned(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    """eu-west's Redis takes a write its capture never versions (the batch is lost here,
    as a crash loses it), is killed -9 and restarted with its data. us-east writes the
    same key later. eu-west's applier meets the restored write, the remote one deferred
    behind it, before the recovery sweep has run (held here): it dates it as the sweep
    would, found late, and the later write wins in both regions. Versioned as a new write,
    dated then, the restored one beat it (the fault suite's soak seed 18: the restarted
    Redis's small replication offset looked caught up with the capture's old one)."""
    async with two_daemons(tmp_path, kafka, redis_factory) as (daemons, clients):
        a = daemons["eu-west"]
        server = next(s for s in redis_factory.servers if s.name == "eu-west")
        await clients["eu-west"].set("fc:3", "first")

        async def holds(client: aioredis.Redis, value: bytes) -> bool:
            return bool(await client.get("fc:3") == value)

        await eventually(lambda: holds(clients["us-east"], b"first"), 30, "fc:3 replicated")

        handle = a.outbound.handle

        async def losing_handle(batch: CaptureBatch) -> None:
            if not any(b"fc:3" in keys for keys in batch.keys.values()):
                await handle(batch)

        a.outbound.handle = losing_handle  # type: ignore[method-assign]
        sweep = Hold(a.recovery, "_rebuild_and_sweep")
        await clients["eu-west"].config_set("appendfsync", "always")
        await clients["eu-west"].set("fc:3", "restored")
        server.kill9()
        server.start()
        restarted = aioredis.Redis.from_url(server.url)
        try:
            assert await restarted.get("fc:3") == b"restored"  # the AOF brought it back
            await asyncio.sleep(0.2)  # the other region's write comes later, measurably
            await clients["us-east"].set("fc:3", "later")
            await eventually(
                lambda: a.inbound.stats.deferred_found_late >= 1,
                30,
                "eu-west to meet its restored write behind us-east's",
            )
            await eventually(lambda: holds(restarted, b"later"), 30, "eu-west to take it")
            await eventually(
                lambda: holds(clients["us-east"], b"later"), 30, "us-east to keep its write"
            )
            assert sweep.reached.is_set()
            sweep.release()
            await eventually(
                lambda: a.region_state.status == Status.CONSISTENT, 60, "eu-west repaired"
            )
            assert [await c.get("fc:3") for c in (restarted, clients["us-east"])] == [
                b"later",
                b"later",
            ]
        finally:
            sweep.release()
            await restarted.aclose()


@pytest.mark.timeout(180)
async def test_monotonic_reads_when_a_write_taken_while_the_region_recovers_meets_an_older_one(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    """eu-west's Redis restarts empty; its recovery sweep is held, so the region stays
    recovering. us-east writes fc:5 twice; before eu-west applies the second (its applier
    held), eu-west takes a later write of fc:5, which its capture reads but does not
    version yet. That
    write is live, not one the Redis came back with: eu-west's applier waits for the
    capture, and the later write wins in both regions. Dated as found late, the older
    remote write won, and the failover client, which had written at the recovering region,
    read its own write, then the older value (the fault suite's soak seed 5)."""
    async with two_daemons(tmp_path, kafka, redis_factory) as (daemons, clients):
        a = daemons["eu-west"]
        server = next(s for s in redis_factory.servers if s.name == "eu-west")
        sweep = Hold(a.recovery, "_rebuild_and_sweep")
        holding = False
        apply = Hold(
            a.inbound,
            "_apply",
            lambda events, source: holding and any(e.key == b"fc:5" for e in events),
        )
        capture = Hold(a.outbound, "handle", touches(b"fc:5"))
        server.kill9()
        server.wipe_data()
        server.start()
        restarted = aioredis.Redis.from_url(server.url)
        try:
            await eventually(sweep.reached.is_set, 30, "eu-west to start recovering")
            replid = (await restarted.info("replication"))["master_replid"]
            await eventually(lambda: a.outbound.follows(replid), 30, "the capture to resync")
            # Applied at eu-west: the key's clock is known there (a write found late on it
            # would get the smallest tick after that clock, and lose to the next one).
            await clients["us-east"].set("fc:5", "first")

            async def first_applied() -> bool:
                return bool(await restarted.get("fc:5") == b"first")

            await eventually(first_applied, 30, "us-east's first write to reach eu-west")
            holding = True
            await clients["us-east"].set("fc:5", "older")
            await eventually(apply.reached.is_set, 30, "us-east's write to reach eu-west")
            await asyncio.sleep(0.2)  # the local write comes later, measurably
            await restarted.set("fc:5", "newer")
            await eventually(capture.reached.is_set, 10, "eu-west's capture to read it")
            apply.release()
            await eventually(
                lambda: a.inbound.stats.deferred >= 1, 30, "eu-west to defer us-east's write"
            )
            # Well inside the applier's wait for the capture (2 s), and long enough for a
            # versioning of its own to go first.
            await asyncio.sleep(0.5)
            capture.release()

            async def newer_everywhere() -> bool:
                values = [await c.get("fc:5") for c in (restarted, clients["us-east"])]
                return values == [b"newer", b"newer"]

            await eventually(newer_everywhere, 30, "both regions to hold the later write")
            assert a.region_state.recovering  # all of it while the region recovered
            assert a.inbound.stats.deferred_to_capture >= 1
            assert a.inbound.stats.deferred_found_late == 0
            sweep.release()
            await eventually(
                lambda: a.region_state.status == Status.CONSISTENT, 60, "eu-west repaired"
            )
            assert await newer_everywhere()
        finally:
            for hold in (sweep, apply, capture):
                hold.release()
            await restarted.aclose()


@pytest.mark.timeout(180)
async def test_no_lost_winner_when_the_recovery_sweep_meets_a_write_made_after_the_capture_resynced(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    """eu-west's Redis restarts empty; the moment it last announced shipped is from before
    (frozen here, as under a paused daemon). us-east writes fc:6 (its apply at eu-west held);
    then eu-west takes a later write of fc:6, which its capture reads but does not version
    yet (held), while the recovery sweep runs. That write is live, not one the Redis came
    back with: the sweep leaves it to the capture, dated when read, and it wins in both
    regions. Found by the sweep and dated by that old floor, it lost to the older remote
    write (the fault suite's seeds 29 and 37: a key ended deleted, or with an older value,
    after a later acknowledged write)."""
    async with two_daemons(tmp_path, kafka, redis_factory) as (daemons, clients):
        a = daemons["eu-west"]
        server = next(s for s in redis_factory.servers if s.name == "eu-west")
        shipped_through = a.heartbeats.on_shipped_through
        a.heartbeats.on_shipped_through = lambda ms: None  # the floor stays before the kill
        sweep = Hold(a.recovery, "_rebuild_and_sweep")
        apply = Hold(
            a.inbound, "_apply", lambda events, source: any(e.key == b"fc:6" for e in events)
        )
        capture = Hold(a.outbound, "handle", touches(b"fc:6"))
        server.kill9()
        server.wipe_data()
        server.start()
        restarted = aioredis.Redis.from_url(server.url)
        try:
            await eventually(sweep.reached.is_set, 30, "eu-west to start recovering")
            replid = (await restarted.info("replication"))["master_replid"]
            await eventually(lambda: a.outbound.follows(replid), 30, "the capture to resync")
            await clients["us-east"].set("fc:6", "older")
            await eventually(apply.reached.is_set, 30, "us-east's write to reach eu-west")
            await asyncio.sleep(0.2)  # the local write comes later, measurably
            await restarted.set("fc:6", "newer")
            await eventually(capture.reached.is_set, 10, "eu-west's capture to read it")
            sweep.release()
            await asyncio.sleep(0.5)  # the sweep has scanned the key meanwhile
            position = await a.heartbeats.master_position()
            assert position is not None
            capture.release()
            assert await a.outbound.versioned_through(position, 30)
            apply.release()

            async def newer_everywhere() -> bool:
                values = [await c.get("fc:6") for c in (restarted, clients["us-east"])]
                return values == [b"newer", b"newer"]

            await eventually(newer_everywhere, 30, "both regions to hold the later write")
            a.heartbeats.on_shipped_through = shipped_through
            await eventually(
                lambda: a.region_state.status == Status.CONSISTENT, 60, "eu-west repaired"
            )
            assert await newer_everywhere()
        finally:
            for hold in (sweep, apply, capture):
                hold.release()
            a.heartbeats.on_shipped_through = shipped_through
            await restarted.aclose()


@pytest.mark.timeout(180)
async def test_monotonic_reads_when_a_write_taken_while_the_daemon_starts_meets_an_older_one(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    """eu-west's daemon restarts (the same Redis: its capture continues the stream). us-east
    writes fc:9; then, while the new daemon is still starting and its capture has versioned
    nothing yet (held here, longer than the applier waits for it), eu-west takes a later
    write of fc:9. When us-east's write reaches eu-west's applier, the local write is live:
    versioned then, it wins in both regions. Judged by what the capture had versioned (no
    batch of the Redis's history yet), it was found late and lost to the older remote
    write (the fault suite's seed 23: the failover client read its write, then the older
    value)."""
    async with two_daemons(tmp_path, kafka, redis_factory) as (daemons, clients):
        west, east = clients["eu-west"], clients["us-east"]
        await east.set("fc:9", "first")

        async def holds(client: aioredis.Redis, value: bytes) -> bool:
            return bool(await client.get("fc:9") == value)

        # Applied at eu-west first: the key's clock is known there (a write found late on
        # it would get the smallest tick after that clock and lose to the next one).
        await eventually(lambda: holds(west, b"first"), 30, "fc:9 replicated")
        daemons["eu-west"].request_stop()

        async def no_capture() -> bool:
            return int((await west.info("replication"))["connected_slaves"]) == 0

        await eventually(no_capture, 30, "eu-west's daemon to stop")
        await east.set("fc:9", "older")

        restarted = Daemon(load_config(tmp_path / "configs" / "eu-west.toml"))
        capture = Hold(restarted.outbound, "handle")  # nothing versioned yet: a slow start
        apply = Hold(
            restarted.inbound,
            "_apply",
            lambda events, source: any(e.key == b"fc:9" for e in events),
        )
        run = asyncio.create_task(restarted.run())
        try:
            await eventually(apply.reached.is_set, 60, "us-east's write to reach eu-west")

            async def local_write() -> bool:
                # Refused (NOREPLICAS) until the new capture follows the Redis.
                try:
                    return bool(await west.set("fc:9", "newer"))
                except aioredis.ResponseError:
                    return False

            await eventually(local_write, 30, "eu-west to take the later write")
            apply.release()
            await eventually(
                lambda: restarted.inbound.stats.deferred >= 1, 30, "us-east's write deferred"
            )
            # The applier waits 2 s for the capture, then versions the write itself.
            await asyncio.sleep(3.0)
            capture.release()

            async def newer_everywhere() -> bool:
                return await holds(west, b"newer") and await holds(east, b"newer")

            await eventually(newer_everywhere, 30, "both regions to hold the later write")
            assert restarted.inbound.stats.deferred_found_late == 0
            await asyncio.sleep(1.0)  # nothing turns it back
            assert await newer_everywhere()
        finally:
            capture.release()
            apply.release()
            restarted.request_stop()
            code = await asyncio.wait_for(run, 60)
        assert code == 0
