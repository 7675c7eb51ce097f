"""A region refuses the writes nothing would capture: its Redis enforces
``min-replicas-to-write 1`` and the daemon's capture is the acknowledging replica
(docs/capture.md, "Refusing writes nothing captures"). While the daemon is down, and after
the Redis restarted until the daemon attached again, writes are refused unexecuted
(``NOREPLICAS``); the daemon's own writes wait for its capture, and failover clients move
away and do not come back until the region captures again."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from devcluster.redis_server import CAPTURE_GUARD
from devcluster.workload import local_failover_policy
from reconciler.client import ClientConfig, FailoverClient, RegionConfig
from tests.regions import Regions, running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def guarded(tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory) -> Iterator[Regions]:
    """Two regions whose Redis refuses writes while no replica acknowledges."""
    with running_regions(
        tmp_path, kafka, redis_factory, names=("eu-west", "us-east"), redis_config=CAPTURE_GUARD
    ) as regions:
        yield regions


def refuses_writes(client: redis.Redis) -> bool:
    """Whether the Redis refuses a write for want of an acknowledging replica."""
    try:
        client.set("guard:probe", "x")
    except redis.ResponseError as exc:
        if str(exc).startswith("NOREPLICAS"):
            return True
        raise
    return False


def test_no_resurrection_when_a_restarted_redis_is_written_before_its_daemon_attaches(
    guarded: Regions,
) -> None:
    """Fault suite soak seeds 3 and 16 (`no-resurrection`): a Redis restarted while its
    daemon was down took a write and then a delete of the key. Nothing captured the
    delete, so it left no trace, and the repair brought the peers' version back: an
    acknowledged delete undone. Guarded, the region refuses writes from the moment its
    daemon dies until the capture attaches again (the restarted Redis included); the
    delete it takes after that is captured and stays."""
    regions = guarded
    west, east = regions.clients["eu-west"], regions.clients["us-east"]
    # The daemons started against Redis that took no write of theirs before the capture
    # attached (function library, status record): they got there.
    regions.wait_status("consistent", 60)
    west.set("pay:1", "v1")
    wait_for(lambda: east.get("pay:1") == b"v1", 30, "pay:1 in us-east")

    regions.daemons["eu-west"].kill9()
    wait_for(lambda: refuses_writes(west), 10, "eu-west to refuse writes")
    assert west.get("pay:1") == b"v1"  # reads are still served
    regions.servers["eu-west"].restart()  # with its data, under a new replication id
    for write in (lambda: west.set("pay:1", "v2"), lambda: west.delete("pay:1")):
        with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
            write()

    regions.daemons["eu-west"].start()
    wait_for(lambda: not refuses_writes(west), 60, "eu-west to take writes again")
    assert west.delete("pay:1") == 1
    west.set("pay:2", "b")
    regions.wait_status("consistent", 90)
    regions.wait_converged(60)
    assert {n: (c.exists("pay:1"), c.get("pay:2")) for n, c in regions.clients.items()} == (
        dict.fromkeys(regions.clients, (0, b"b"))
    )


def test_failover_client_leaves_a_region_refusing_writes_and_returns_once_it_captures(
    guarded: Regions,
) -> None:
    """The home region's daemon is killed; its Redis still answers reads, so only the
    refused writes and the probe's ``INFO replication`` show that it cannot take the
    client's writes. The policy here does not wait for a `consistent` record (which a
    dead daemon cannot refresh), so good reads alone would bring the client back: it
    fails over, stays away while the region refuses writes, and returns once the daemon
    captures again. Every acknowledged write is in both regions at the end."""
    regions = guarded
    regions.wait_status("consistent", 60)
    config = ClientConfig(
        regions=tuple(RegionConfig(name=n, url=s.url) for n, s in regions.servers.items()),
        policy=local_failover_policy(require_consistent_status=False),
        client_name="guard-test",
    )
    acked: dict[str, str] = {}
    refused = 0

    def write(i: int) -> None:
        nonlocal refused
        key, value = f"pay:{i}", f"v{i}"
        try:
            client.set(key, value)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOREPLICAS"):
                raise
            refused += 1
        else:
            acked[key] = value

    with FailoverClient(config) as client:
        assert client.active_region == "eu-west"
        regions.daemons["eu-west"].kill9()
        i = 0
        deadline = time.monotonic() + 20
        while client.active_region == "eu-west" and time.monotonic() < deadline:
            write(i := i + 1)
            time.sleep(0.02)
        assert client.active_region == "us-east", "the client did not fail over"
        assert refused > 0  # the refusals are what moved it

        # Probes read fine there; they must not bring the client back to refused writes.
        refused_before = refused
        stay_until = time.monotonic() + 8
        while time.monotonic() < stay_until:
            write(i := i + 1)
            assert client.active_region == "us-east"
            time.sleep(0.02)
        assert refused == refused_before

        regions.daemons["eu-west"].start()
        wait_for(lambda: client.active_region == "eu-west", 90, "the client to come home")
        write(i := i + 1)
        assert f"pay:{i}" in acked

    regions.wait_status("consistent", 60)
    regions.wait_converged(60)
    for name, c in regions.clients.items():
        held = {k: c.get(k) for k in acked}
        assert held == {k: v.encode() for k, v in acked.items()}, name


def test_a_guarded_region_recovers_when_its_redis_dies_under_a_write_burst(
    guarded: Regions,
) -> None:
    """Fault suite soak seed 5 (`converges`): the Redis died while the capture had batches
    waiting for the versioner. Its reader waited for the consumer and never saw the lost
    connection; the versioner retried against the restarted Redis, which refused every
    write (no replica acknowledged): stuck `recovering` for good. The capture notices a
    lost connection from its ACK timer now and attaches again."""
    regions = guarded
    west = regions.clients["eu-west"]
    regions.wait_status("consistent", 60)
    stop = threading.Event()

    def burst() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            with contextlib.suppress(redis.RedisError):
                pipe = west.pipeline(transaction=False)
                for j in range(50):
                    pipe.set(f"burst:{i}:{j}", "x" * 100)
                pipe.execute()
            i += 1

    writer = threading.Thread(target=burst, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        regions.servers["eu-west"].kill9()
        regions.servers["eu-west"].start()  # with its data
    finally:
        stop.set()
        writer.join(30)
    wait_for(lambda: not refuses_writes(west), 60, "eu-west to take writes again")
    regions.wait_status("consistent", 90)
    regions.wait_converged(60)
