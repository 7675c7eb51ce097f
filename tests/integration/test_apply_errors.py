"""Apply errors by kind, against three real regions: a Redis out of memory (maxmemory with
noeviction) is waited out on both paths, capture and apply, and the remote events it kept
refusing become a gap that repair fills once it has memory again: nothing is lost, nothing
is dead-lettered, the daemon never exits. A key written so often that every apply finds an
unversioned local write never holds up the other keys (against one real Redis: the race
is made certain there)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devcluster import KafkaBroker, RedisServer
from devcluster.daemons import wait_for
from replication.capture.versioner import Versioner
from replication.model.digest import value_digest
from replication.model.event import ChangeEvent
from replication.model.hlc import HybridClock, pack, wall_ms
from replication.model.metadata import decode_meta
from replication.model.value import Kind
from replication.model.vclock import VectorClock
from replication.model.wire import EventBatch, pack_event
from replication.pipeline.applier import Applier
from replication.pipeline.inbound import Inbound
from replication.pipeline.publisher import Publisher
from replication.redis.address import RedisAddress
from replication.redis.library import meta_key_for
from replication.transport.consumer import Incoming
from tests.promtext import sample
from tests.regions import Regions, running_regions
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
                sample(daemon.metrics(), "reconciler_capture_gaps_total", reason="apply-failed")
                >= 1
            ),
            60,
            "the refused events given up to a gap",
        )
        metrics = daemon.metrics()
        assert sample(metrics, "reconciler_apply_retried_total") >= 1
        assert sample(metrics, "reconciler_apply_events_total", outcome="given_up_to_gap") >= 1
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
    assert sample(metrics, "reconciler_deadletters_total", reason="redis-refused") == 0
    assert daemon.running
    regions.wait_converged()


class ListProducer:
    """Stands in for ChangeProducer: ships into a list, and Kafka acknowledges at once."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []

    async def ship(self, events: list[ChangeEvent], **_: Any) -> ListProducer:
        self.events += events
        return self

    async def wait(self) -> None:
        return None


class NoIndex:
    def update(self, db: int, key: bytes, old_digest: bytes, new_digest: bytes) -> None:
        return None


class RacingPublisher(Publisher):
    """The real publisher (versioning in the real Redis), after which the application
    writes the key again, every time: the hottest key there can be. Kafka's place is a
    list (the shipping is not what is under test)."""

    def __init__(self, versioner: Versioner, url: str) -> None:
        super().__init__(versioner, ListProducer(), NoIndex())  # type: ignore[arg-type]
        self.client = redis.Redis.from_url(url)
        self.writes = 0

    async def publish(self, keys: Any, **kwargs: Any) -> Any:
        publication = await super().publish(keys, **kwargs)
        for db_keys in keys.values():
            for key in db_keys:
                self.writes += 1
                self.client.set(key, f"local-{self.writes}")
        return publication


def remote_event(key: bytes, value: bytes, ts: int) -> ChangeEvent:
    digest = value_digest(Kind.STRING, value, 0)
    return ChangeEvent(0, key, Kind.STRING, value, 0, VectorClock({PEER: ts}), PEER, digest)


async def test_a_remote_version_racing_local_writes_is_superseded_and_the_rest_applied(
    redis_server: RedisServer,
) -> None:
    """Every apply of the remote version of `hot` finds a local write not versioned yet
    (it lands between each versioning and the next apply). After MAX_DEFER_ROUNDS the remote
    version is superseded (the local version made since it was observed has the larger
    timestamp, so it wins everywhere anyway), and the next record is applied: the hot key
    never holds the others up."""
    url = redis_server.url
    client = redis.Redis.from_url(url)
    client.set("hot", "local-0")  # written here, not versioned yet
    clock = HybridClock()
    address = RedisAddress.from_url(url)
    async with Versioner(address, HERE, clock) as versioner, Applier(address, HERE, clock) as app:
        publisher = RacingPublisher(versioner, url)
        inbound = Inbound(
            None,  # type: ignore[arg-type]  # process() reads nothing from Kafka
            app,
            publisher,
            None,  # type: ignore[arg-type]  # nothing here is a dead letter
            on_applied=lambda report: None,
            on_gap=lambda gap: asyncio.sleep(0),
        )
        now = pack(wall_ms())
        hot = remote_event(b"hot", b"remote", now)
        cold = [remote_event(f"cold:{i}".encode(), b"x", now) for i in range(20)]
        topic = f"t.changes.{PEER}"
        async with asyncio.timeout(60):  # blocking on the hot key is the failure
            report = await inbound.process(
                [
                    Incoming(topic, 0, 0, EventBatch(PEER, [hot])),
                    Incoming(topic, 0, 1, EventBatch(PEER, cold)),
                ]
            )
    assert inbound.stats.superseded == 1
    assert report.applied == 20
    assert all(client.get(f"cold:{i}") == b"x" for i in range(20))
    assert client.get("hot") == f"local-{publisher.writes}".encode()
    meta = decode_meta(client.hget(meta_key_for(b"hot"), b"hot"))
    assert meta.origin == HERE
    assert meta.hlc > hot.hlc  # the local version wins against the superseded one
    publisher.client.close()
    client.close()


class DeadLetterSink:
    """Where the dead letters of `process()` go in this test: (code, topic offset, key)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []

    async def send(self, payload: bytes, reason: str, **where: Any) -> None:
        self.sent.append((str(where["code"]), int(where["offset"]), payload))


async def test_records_applied_together_keep_each_refusal_at_its_own_records_offset(
    redis_server: RedisServer,
) -> None:
    """The records of one poll from one peer go to Redis together (one round trip, not one
    per record); an event refused for good is still a dead letter at the offset of the
    record that carried it, and every other event of the poll is applied, in order."""
    url = redis_server.url
    client = redis.Redis.from_url(url)
    clock = HybridClock()
    address = RedisAddress.from_url(url)
    sink = DeadLetterSink()
    async with Versioner(address, HERE, clock) as versioner, Applier(address, HERE, clock) as app:
        inbound = Inbound(
            None,  # type: ignore[arg-type]  # process() reads nothing from Kafka
            app,
            Publisher(versioner, ListProducer(), NoIndex()),  # type: ignore[arg-type]
            sink,  # type: ignore[arg-type]
            on_applied=lambda report: None,
            on_gap=lambda gap: asyncio.sleep(0),
        )
        now = pack(wall_ms())
        first = [remote_event(b"k", b"v1", now), remote_event(b"a", b"x", now)]
        forged = remote_event(b"bad", b"x", now)
        forged = ChangeEvent(
            0, b"bad", Kind.STRING, b"x", 0, forged.clock, PEER, b"\x00" * len(forged.digest)
        )
        second = [remote_event(b"b", b"y", now), forged]
        third = [remote_event(b"k", b"v2", now + 1)]  # the same key again, later
        topic = f"t.changes.{PEER}"
        report = await inbound.process(
            [
                Incoming(topic, 0, 10, EventBatch(PEER, first)),
                Incoming(topic, 0, 11, EventBatch(PEER, second)),
                Incoming(topic, 0, 12, EventBatch(PEER, third)),
            ]
        )
    assert [(code, offset) for code, offset, _ in sink.sent] == [("bad-digest", 11)]
    assert sink.sent[0][2] == pack_event(forged)
    assert report.applied == 4
    assert (client.get("k"), client.get("a"), client.get("b")) == (b"v2", b"x", b"y")
    assert client.exists("bad") == 0
    client.close()
