"""Regressions for bugs the fault suite (tests/faults) found, each named after the invariant
it broke, reproduced with the fault that exposed it on real servers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from replication.model.keys import SHIPPED_KEY
from tests.faults.harness import kafka_links, through_links
from tests.promtext import sample
from tests.regions import Regions, key_state, running_regions
from tests.servers import RedisFactory
from tests.tcpproxy import Fault

pytestmark = pytest.mark.integration


def test_regions_identical_when_a_restored_peer_holds_an_older_live_version_of_an_expired_key(
    regions: Regions, tmp_path: Path
) -> None:
    """Fault suite seed 3 (Redis restarts only): us-east, restored from a backup taken before
    a newer version arrived, held the older live value; the newer one had expired in the
    other regions. Anti-entropy found the key different and decided the peer's clock
    dominates, but the peer shipped nothing for an expired key: us-east kept the old value
    for good, while every daemon reported `consistent`."""
    west, east = regions.clients["eu-west"], regions.clients["us-east"]
    west.set("k", "old")
    wait_for(lambda: east.get("k") == b"old", 30, "the old value in us-east")
    backup = regions.servers["us-east"].snapshot(tmp_path / "us-east-before.rdb")
    west.set("k", "new", px=2_500)
    wait_for(lambda: east.get("k") == b"new", 30, "the new value in us-east")
    wait_for(
        lambda: all(c.exists("k") == 0 for c in regions.clients.values()),
        30,
        "the new value to expire everywhere",
    )

    regions.servers["us-east"].restart(from_snapshot=backup)
    assert east.get("k") == b"old"  # the backup's older, live version

    # The daemon notices the restart, repairs with its peers and says consistent; the
    # regions must then hold the same data: the expiry (a newer version) wins everywhere.
    wait_for(lambda: key_state(east, b"k") is None, 60, "us-east to drop the older version")
    regions.wait_status("consistent", 60)
    assert regions.converged()


def test_no_lost_winner_when_a_restored_backup_holds_a_write_it_had_not_versioned(
    regions: Regions, tmp_path: Path
) -> None:
    """Fault suite CI seed 101 (`no-resurrection`): us-east's Redis, restored from a backup
    taken while a write of its own was not yet versioned, brought that write back without
    metadata. The sweep after the gap dated it by the latest moment the region had shipped
    through, later than the region's own newer write of the same key: the backup's value
    won in every region. It is dated by the backup's own moment now and loses."""
    east, west = regions.clients["us-east"], regions.clients["eu-west"]
    # The dataset carries its "shipped through" moment once its daemon says consistent.
    regions.wait_status("consistent", 60)
    wait_for(lambda: east.get(SHIPPED_KEY) is not None, 30, "us-east's dataset to be stamped")

    # A write nothing has versioned yet (its daemon is down), caught by the backup.
    regions.daemons["us-east"].stop()
    east.set("pay:1", "old")
    backup = regions.servers["us-east"].snapshot(tmp_path / "us-east-unversioned.rdb")
    regions.daemons["us-east"].start()
    wait_for(lambda: west.get("pay:1") == b"old", 30, "the old value in eu-west")

    # Later, the region's own newer write, shipped; then the backup comes back.
    east.set("pay:1", "new")
    wait_for(lambda: west.get("pay:1") == b"new", 30, "the new value in eu-west")
    regions.wait_status("consistent", 60)
    regions.servers["us-east"].restart(from_snapshot=backup)
    assert east.get("pay:1") == b"old"  # the backup's value, without metadata

    regions.wait_status("consistent", 90)
    regions.wait_converged(60)
    assert {name: c.get("pay:1") for name, c in regions.clients.items()} == dict.fromkeys(
        regions.clients, b"new"
    )


def test_no_lost_winner_when_a_paused_daemon_resumes(regions: Regions) -> None:
    """Fault suite seed 5 (`no-lost-winner`): us-east's daemon was paused (SIGSTOP) while
    its Redis took a write; a later write of the same key was made on eu-west. Resumed, the
    daemon versioned the piled-up write with the clock at the resume, and the earlier write
    beat the later one in every region. It is dated as written late now, and loses."""
    east, west = regions.clients["us-east"], regions.clients["eu-west"]
    regions.wait_status("consistent", 60)
    daemon = regions.daemons["us-east"]
    daemon.pause()
    try:
        east.set("pay:2", "east")  # while us-east's daemon does not run
        time.sleep(0.3)
        west.set("pay:2", "west")  # later, on eu-west
        time.sleep(3.0)  # the pause outlasts the daemon's stall threshold (2 s)
    finally:
        daemon.resume()
    regions.wait_converged(60)
    values = {name: c.get("pay:2") for name, c in regions.clients.items()}
    assert values == dict.fromkeys(regions.clients, b"west")
    assert sample(daemon.metrics(), "reconciler_capture_late_batches_total") >= 1


def test_no_lost_winner_when_a_region_cut_off_from_kafka_ships_after_the_heal(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    """Fault suite CI seed 202 (`no-lost-winner`, `kafka-cut`): us-east's daemon was cut off
    from Kafka while its Redis kept taking writes. Its producer's buffer filled, the
    capture waited on it, and the writes it read after the heal were dated by the clock at
    the heal: a write made before a later one of the same key on eu-west won everywhere
    (the failover client read its newer write, then the older). The capture versions what
    it reads at once now, whatever Kafka does."""
    names = ("eu-west", "us-east")
    with (
        kafka_links(kafka, names, seed=5) as links,
        running_regions(
            tmp_path,
            kafka,
            redis_factory,
            names=names,
            region_overrides=through_links(links),
        ) as regions,
    ):
        east, west = regions.clients["us-east"], regions.clients["eu-west"]
        regions.wait_status("consistent", 60)
        links["us-east"].set_fault(Fault.cut_off())
        try:
            # More than the producer holds per partition while nothing reaches the broker.
            filler = east.pipeline(transaction=False)
            for i in range(4_000):
                filler.set(f"fill:{i}", "x" * 200)
            filler.execute()
            east.set("pay:3", "east")  # during the cut
            time.sleep(0.5)
            west.set("pay:3", "west")  # later, on eu-west
            time.sleep(2.0)
        finally:
            links["us-east"].set_fault(Fault.none())
        regions.wait_converged(90)
        values = {name: c.get("pay:3") for name, c in regions.clients.items()}
        assert values == dict.fromkeys(regions.clients, b"west")
