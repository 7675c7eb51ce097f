"""Merkle anti-entropy on real regions: divergence that replication cannot fix (changes lost
from Kafka, a Redis restarted empty, a Redis restored from an older snapshot) is found and
repaired, key by key, and the reports list exactly the keys that differed."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from reconciler.consistency.reports import RepairReport
from replication.model.metadata import decode_meta
from replication.redis.library import meta_key_for
from tests.kafkatools import truncate_topic
from tests.regions import Regions, running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def reports_since(regions: Regions, since: str) -> list[RepairReport]:
    out = []
    for daemon in regions.daemons.values():
        for path in sorted((daemon.state_dir / "reports").glob("*.json")):
            report = RepairReport.from_json(json.loads(path.read_text()))
            if report.started_at >= since:
                out.append(report)
    return out


def differing_keys(reports: list[RepairReport], region: str) -> set[str]:
    """Keys that sessions involving `region` found different."""
    keys: set[str] = set()
    for r in reports:
        if region in (r.region, r.peer) and r.result == "ok" and r.mode == "repair":
            keys |= {d.key for d in r.decisions}
    return keys


def wait_shipped(regions: Regions, name: str) -> None:
    """Wait until the region's daemon has shipped (Kafka acknowledged) every write made so
    far: its acknowledged stream offset reaches the server's replication offset."""
    target = regions.clients[name].info("replication")["master_repl_offset"]
    wait_for(
        lambda: regions.daemons[name].get("/status")["capture"]["acked_offset"] >= target,
        30,
        f"{name} to ship its writes",
    )


def seed(client: redis.Redis, n: int) -> None:
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            if i % 4 == 0:
                pipe.hset(f"seed:{i}", mapping={"n": i, "tag": "x"})
            elif i % 4 == 1:
                pipe.sadd(f"seed:{i}", "a", "b", i)
            else:
                pipe.set(f"seed:{i}", f"v{i}")
        pipe.execute()


async def test_changes_lost_in_transit_are_found_and_repaired_and_reported_exactly(
    regions: Regions,
) -> None:
    a, b, c = regions.names
    ca = regions.clients[a]
    seed(ca, 200)
    regions.wait_converged()
    regions.wait_status("consistent")
    regions.daemons[b].stop()
    regions.daemons[c].stop()

    expected = set()
    for i in range(20):
        ca.set(f"seed:{i + 2}", f"updated-{i}")  # updates (strings at i%4 in (2, 3))
        expected.add(f"seed:{i + 2}")
    for i in range(100, 110):
        ca.delete(f"seed:{i}")  # deletes
        expected.add(f"seed:{i}")
    for i in range(15):
        ca.set(f"new:{i}", i, px=HOUR_MS if i < 5 else None)  # new keys, some with expiry
        expected.add(f"new:{i}")
    for i in range(3):
        ca.set(f"ephemeral:{i}", 1)
        ca.delete(f"ephemeral:{i}")  # created and deleted: the same as never there
    ca.set("short-lived", 1, px=300)  # expires during the outage: nothing to repair
    wait_shipped(regions, a)
    lost = await truncate_topic(regions.kafka.bootstrap, regions.topic(a))
    assert lost > 0
    wait_for(lambda: ca.exists("short-lived") == 0, 5, "the short-lived key to expire")

    since = now_iso()
    regions.daemons[b].start()
    regions.daemons[c].start()
    data = regions.wait_converged(timeout_s=90)
    regions.wait_status("consistent")

    assert data[b"seed:2"][1] == b"updated-0"
    assert b"seed:100" not in data
    assert data[b"new:0"][2] == ca.execute_command("PEXPIRETIME", "new:0")
    assert not any(k.startswith(b"ephemeral:") for k in data)
    reports = reports_since(regions, since)
    assert differing_keys(reports, b) == expected
    assert differing_keys(reports, c) == expected
    for report in reports:  # no session reported a key that did not differ
        assert {d.key for d in report.decisions} <= expected


def test_a_region_restarted_empty_is_refilled_from_its_peers(regions: Regions) -> None:
    a, _, c = regions.names
    seed(regions.clients[a], 300)
    regions.clients[c].zadd("from-c", {"m": 1.0})
    regions.wait_converged()
    regions.wait_status("consistent")
    since = now_iso()
    regions.servers[c].restart(keep_data=False)
    data = regions.wait_converged(timeout_s=90)
    regions.wait_status("consistent")
    assert len(data) == 301
    assert data[b"from-c"][1] == [(b"m", 1.0)]
    reports = reports_since(regions, since)
    assert differing_keys(reports, c) == {k.decode() for k in data}
    status = regions.daemons[c].get("/status")
    assert status["gaps"].get("full-resync", 0) >= 1


def test_a_region_restored_from_an_old_snapshot_converges_and_deletes_stay_deleted(
    regions: Regions, tmp_path: Path
) -> None:
    a, b, c = regions.names
    seed(regions.clients[a], 100)
    regions.wait_converged()
    regions.wait_status("consistent")
    snapshot = regions.servers[c].snapshot(tmp_path / "old.rdb")

    expected = set()
    for i in range(2, 42, 2):
        regions.clients[a].set(f"seed:{i}", f"later-{i}")
        expected.add(f"seed:{i}")
    for i in range(61, 81):
        regions.clients[b].delete(f"seed:{i}")
        expected.add(f"seed:{i}")
    for i in range(30):
        regions.clients[a].hset(f"later:{i}", "f", i)
        expected.add(f"later:{i}")
    regions.wait_converged()
    regions.wait_status("consistent")

    since = now_iso()
    regions.servers[c].restart(from_snapshot=snapshot)
    data = regions.wait_converged(timeout_s=90)
    regions.wait_status("consistent")
    assert data[b"seed:2"][1] == b"later-2"
    assert not any(f"seed:{i}".encode() in data for i in range(61, 81))  # never resurrected
    assert all(f"later:{i}".encode() in data for i in range(30))
    for client in regions.clients.values():  # the tombstones won everywhere
        meta = decode_meta(client.hget(meta_key_for(b"seed:70"), b"seed:70"))  # type: ignore[arg-type]
        assert meta.deleted
    assert differing_keys(reports_since(regions, since), c) == expected


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.timeout(240)
async def test_operator_commands_verify_dry_run_repair_resync_and_reports(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    manual = {"antientropy": {"on_start": False, "automatic": False}}
    with running_regions(tmp_path, kafka, redis_factory, overrides=manual) as regions:
        a, b, c = regions.names
        seed(regions.clients[a], 50)
        regions.wait_converged()
        # The start-up gap (a fresh Redis) is repaired before anything else: a gap's sessions
        # run whatever `automatic` says, and one still pending at the restart below would
        # repair the 7 keys before the operator's verify could find them.
        regions.wait_status("consistent")
        regions.daemons[b].stop()
        regions.daemons[c].stop()
        for i in range(7):
            regions.clients[a].set(f"seed:{i * 3 + 2}", "changed")
        wait_shipped(regions, a)
        await truncate_topic(regions.kafka.bootstrap, regions.topic(a))
        regions.daemons[b].start()
        regions.daemons[c].start()
        config_b = str(regions.daemons[b].config)
        config_c = str(regions.daemons[c].config)

        verify = cli("verify", "--config", config_b, "--peer", a)
        assert verify.returncode == 1, verify.stdout + verify.stderr
        assert "keys differing: 7" in verify.stdout

        dry = cli("repair", "--config", config_b, "--peer", a, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "keys differing: 7" in dry.stdout
        assert regions.clients[b].get("seed:2") != b"changed"  # a dry run repairs nothing

        repair = cli("repair", "--config", config_b, "--peer", a, "--json")
        assert repair.returncode == 0, repair.stderr
        report = json.loads(repair.stdout)
        assert sorted(d["key"] for d in report["decisions"]) == sorted(
            f"seed:{i * 3 + 2}" for i in range(7)
        )
        assert all(d["action"] == "fetch-from-peer" for d in report["decisions"])
        wait_for(lambda: regions.clients[b].get("seed:2") == b"changed", 30, "repair applied")
        assert cli("verify", "--config", config_b, "--peer", a).returncode == 0

        listing = cli("report", "list", "--config", config_b)
        assert listing.returncode == 0
        assert report["id"] in listing.stdout
        assert "dry-run" in listing.stdout
        shown = cli("report", "show", report["id"][:-2], "--config", config_b)  # a prefix
        assert shown.returncode == 0
        assert "`seed:2`" in shown.stdout

        resync = cli("resync", "--config", config_c, "--peer", a)
        assert resync.returncode == 0, resync.stdout + resync.stderr
        data = regions.wait_converged(timeout_s=60)
        assert data[b"seed:2"][1] == b"changed"
        assert cli("verify", "--config", config_c, "--peer", b).returncode == 0

        unknown = cli("repair", "--config", config_b, "--peer", "nowhere")
        assert unknown.returncode == 2
        assert "unknown peer" in unknown.stderr
