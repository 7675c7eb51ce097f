"""Tombstone GC against real redis-servers, daemons and Kafka (three regions, GC every
0.3 s, no minimum age): a tombstone is kept while a write concurrent with its delete is
still on its way, so that write loses everywhere; it is collected once every region has
applied past the delete; and a heartbeat from a clock far ahead unlocks nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from devcluster import KafkaBroker
from devcluster.daemons import DaemonProcess, wait_for
from reconciler.consistency.peers import HEARTBEAT
from replication.model.metadata import Meta, decode_meta
from replication.redis.library import meta_key_for
from tests.impostor import Impostor
from tests.promtext import metric
from tests.regions import running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

GC = {"tombstones": {"min_age_s": 0.0, "gc_interval_s": 0.3, "horizon_s": 3600.0}}
KEY = b"acct:gc"
ONE_PER_RECORD = {"kafka": {"record_max_events": 1}}


def meta_of(client: redis.Redis, key: bytes) -> Meta | None:
    raw = client.hget(meta_key_for(key), key)
    return None if raw is None else decode_meta(raw)  # type: ignore[arg-type]


def removed(daemon: DaemonProcess) -> float:
    return metric(daemon, "reconciler_gc_tombstones_removed_total")


@pytest.mark.timeout(300)
def test_a_write_concurrent_with_a_delete_still_in_flight_keeps_the_tombstone(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    # C ships one change per Kafka record and A applies a few records per poll: C's backlog
    # keeps A's applier busy for seconds while everything else flows.
    slow = {"eu-west": {"apply": {"max_records_per_poll": 5}}, "ap-south": ONE_PER_RECORD}
    with running_regions(
        tmp_path, kafka, redis_factory, overrides=GC, region_overrides=slow
    ) as regions:
        a, b, c = regions.names
        assert (a, c) == ("eu-west", "ap-south")
        ca, cb, cc = (regions.clients[n] for n in (a, b, c))
        da = regions.daemons[a]
        regions.wait_status("consistent")
        ca.set(KEY, "v0")
        regions.wait_converged()
        conflicts_before = metric(da, "reconciler_conflicts_won_total")
        # A's daemon stops reading; C writes a backlog and then the key (versioned and
        # shipped by C, applied by B), while A, not having seen it, deletes the key.
        da.pause()
        try:
            fillers = 10_000
            pipe = cc.pipeline(transaction=False)
            for i in range(fillers):
                pipe.set(f"fill:{i}", i)
            pipe.execute()
            cc.set(KEY, "from-c")
            wait_for(
                lambda: cb.get(KEY) == b"from-c" and cb.exists(f"fill:{fillers - 1}") == 1,
                120,
                "B to apply C's backlog and C's write",
                0.25,
            )
            ca.delete(KEY)
        finally:
            da.resume()
        # A versions its delete at once; C's write reaches A's applier only after the
        # backlog. B and C apply the delete (newer) quickly: a GC that only asked whether
        # the peers had caught up on A's topic would now drop A's tombstone, and C's write
        # would then bring the key back in A.
        data = regions.wait_converged(timeout_s=180)
        assert KEY not in data, "the delete must win everywhere (it is the newer write)"
        assert len(data) == fillers
        # C's write met A's tombstone (a conflict A's delete won), so it was still there.
        assert metric(da, "reconciler_conflicts_won_total") >= conflicts_before + 1
        meta = meta_of(ca, KEY)
        assert meta is None or meta.deleted
        # Once every region has applied past the delete, A collects the tombstone.
        wait_for(lambda: meta_of(ca, KEY) is None, 120, "A to collect the tombstone", 0.25)
        assert removed(da) >= 1
        assert KEY not in regions.wait_converged()


@pytest.mark.timeout(240)
def test_a_heartbeat_from_a_clock_far_ahead_does_not_unlock_the_gc(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    with running_regions(tmp_path, kafka, redis_factory, overrides=GC) as regions:
        a, b, c = regions.names
        ca = regions.clients[a]
        da, dc = regions.daemons[a], regions.daemons[c]
        regions.wait_status("consistent")
        ca.set(KEY, "v0")
        regions.wait_converged()
        # C's daemon stops: it never applies the delete.
        dc.pause()
        try:
            ca.delete(KEY)
            wait_for(lambda: regions.clients[b].exists(KEY) == 0, 60, "B to apply the delete")
            ahead_ms = 10 * 60_000
            with Impostor(kafka.bootstrap, regions.prefix, c, regions.keyring, [a, b]) as fake:
                # Heartbeats signed with C's key from a clock 10 minutes ahead: "no lag on
                # anyone's topic", applied offsets honest (C has applied nothing new).
                def body() -> dict[str, Any]:
                    now = time.time_ns() // 1_000_000 + ahead_ms
                    return {
                        "epoch": fake.epoch,
                        "status": "consistent",
                        "at_ms": now,
                        "shipped_through_ms": now,
                        "lag": {a: 0, b: 0},
                        "produced": {},
                        "applied": {},
                    }

                def taken() -> bool:
                    fake.send(HEARTBEAT, "*", **body())
                    heard = da.get("/status")["peers"][c]["heard_ms"]
                    return bool(heard > time.time_ns() // 1_000_000 + ahead_ms // 2)

                wait_for(taken, 60, "A to take the heartbeat from a clock ahead", 0.3)
                # A's GC passes see the tombstone old enough and keep it: C lags.
                wait_for(
                    lambda: metric(da, "reconciler_gc_tombstones_held") >= 1,
                    60,
                    "A's GC to report the tombstone held back",
                )
                for _ in range(10):  # a few more GC passes, the forged clock still ahead
                    fake.send(HEARTBEAT, "*", **body())
                    time.sleep(0.3)
                meta = meta_of(ca, KEY)
                assert meta is not None
                assert meta.deleted
                assert removed(da) == 0
        finally:
            dc.resume()
        # The real C comes back (once A has timed out the impostor's epoch), applies the
        # delete, and its heartbeats let the GC go.
        wait_for(lambda: meta_of(ca, KEY) is None, 120, "A to collect the tombstone", 0.25)
        assert removed(da) >= 1
        assert KEY not in regions.wait_converged()
