"""Apply errors by kind, against three real regions: a Redis out of memory (maxmemory with
noeviction) is waited out on both paths, capture and apply, and the remote events it kept
refusing become a gap that repair fills once it has memory again: nothing is lost, nothing
is dead-lettered, the daemon never exits. A key written so often that every apply finds an
unversioned local write never holds up the other keys."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from tests.regions import Regions, metric, running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

HERE = "eu-west"
PEER = "us-east"


@pytest.fixture
def quick_giveup(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> Iterator[Regions]:
    """Three regions whose appliers give up on a refused event after 2 s (not 30)."""
    overrides = {"apply": {"transient_retry_s": 2.0}}
    with running_regions(tmp_path, kafka, redis_factory, overrides=overrides) as running:
        yield running


@pytest.mark.timeout(240)
def test_out_of_memory_is_waited_out_and_what_it_refused_is_repaired(
    quick_giveup: Regions,
) -> None:
    regions = quick_giveup
    regions.wait_status("consistent")
    here, peer = regions.clients[HERE], regions.clients[PEER]
    peer.set("victim", "v")
    regions.wait_converged()
    daemon = regions.daemons[HERE]
    assert here.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    here.config_set("maxmemory", 1)  # every write refused with OOM from now on
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            here.set("app-write", "x")
        peer.set("during-oom", "x")  # the applier in HERE gets OOM for it
        here.delete("victim")  # allowed under OOM: the capture must version it (OOM too)
        wait_for(
            lambda: (
                metric(daemon.metrics(), "reconciler_capture_gaps_total", reason="apply-failed")
                >= 1
            ),
            60,
            "the refused events given up to a gap",
        )
        metrics = daemon.metrics()
        assert metric(metrics, "reconciler_apply_retried_total") >= 1
        assert metric(metrics, "reconciler_apply_events_total", outcome="given_up_to_gap") >= 1
        assert daemon.get("/status")["status"] == "recovering"
        assert daemon.running, daemon.log_tail()
        assert "OOM" in daemon.log_tail(400)
    finally:
        here.config_set("maxmemory", 0)
    # Memory back: the delete is versioned and shipped, the gap's repair brings the write.
    wait_for(lambda: here.get("during-oom") == b"x", 90, "the refused write repaired")
    wait_for(
        lambda: all(c.exists("victim") == 0 for c in regions.clients.values()),
        60,
        "the delete made under OOM replicated",
    )
    regions.wait_status("consistent", timeout_s=90)
    metrics = daemon.metrics()
    assert metric(metrics, "reconciler_deadletters_total", reason="redis-refused") == 0
    assert daemon.running
    regions.wait_converged()


@pytest.mark.timeout(240)
def test_a_hot_key_never_holds_up_the_other_keys(regions: Regions) -> None:
    regions.wait_status("consistent")
    stop = threading.Event()
    writes = 0

    def hammer() -> None:
        # Bounded in count and time; a local write lands between every versioning and
        # the next apply of a remote version of the key.
        nonlocal writes
        client = redis.Redis(port=regions.servers[HERE].port)
        deadline = time.monotonic() + 120
        while not stop.is_set() and writes < 2_000_000 and time.monotonic() < deadline:
            client.set("hot", f"local-{writes}")
            writes += 1
        client.close()

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_for(lambda: writes > 1000, 30, "the hot key under load")
        peer = regions.clients[PEER]
        peer.set("hot", "remote")
        for i in range(50):
            peer.set(f"cold:{i}", i)
        here = regions.clients[HERE]
        wait_for(
            lambda: all(here.get(f"cold:{i}") == str(i).encode() for i in range(50)),
            60,
            "the other keys applied while the hot key is being written",
        )
        assert thread.is_alive(), "the hot key's writer stopped before the others arrived"
        metrics = regions.daemons[HERE].metrics()
        assert metric(metrics, "reconciler_apply_deferred_total") >= 1
    finally:
        stop.set()
        thread.join(10)
    data = regions.wait_converged(timeout_s=90)
    assert data[b"hot"][1] == f"local-{writes - 1}".encode()  # the last write wins
