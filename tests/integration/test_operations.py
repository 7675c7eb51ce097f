"""What an operator sees during a real failure and recovery: `reconciler status` (table and
JSON) against a real three-region cluster with a failover client, and the structured
state-change log lines (`event=...`) of the daemons and the client.

The failure is the demo's: ap-south's Redis killed with SIGKILL (its application, through
the failover client, fails over to eu-west), then restarted with its data gone (a gap: the
daemon recovers, repairs, reports consistent, the client fails back). A peer's daemon is
also stopped and started, for the peer events."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from devcluster import KafkaBroker
from devcluster.daemons import wait_for, write_config
from devcluster.ports import free_port
from reconciler.client import FailoverClient
from reconciler.client.config import ClientConfig, KafkaConfig, PolicyConfig, RegionConfig
from tests.regions import Regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HOME, SECOND, THIRD = "ap-south", "eu-west", "us-east"


def status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def status_json(config: Path) -> dict[str, Any]:
    result = status(config, "--json", "--clients-lookback-s", "5")
    assert result.returncode == 0, result.stderr
    view: dict[str, Any] = json.loads(result.stdout)
    return view


def rows(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in view["regions"]}


@pytest.mark.timeout(300)
def test_status_table_and_state_change_events_through_a_failure_and_recovery(
    tmp_path: Path,
    kafka: KafkaBroker,
    redis_factory: RedisFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    regions = Regions(tmp_path, kafka, redis_factory, names=(SECOND, THIRD, HOME))
    captures: list[str] = []
    stop = threading.Event()
    app: FailoverClient | None = None
    writer: threading.Thread | None = None
    try:
        regions.start()
        regions.wait_status("consistent", timeout_s=90)
        app = FailoverClient(
            ClientConfig(
                regions=tuple(
                    RegionConfig(name=r, url=regions.servers[r].url) for r in (HOME, SECOND, THIRD)
                ),
                policy=PolicyConfig(
                    window_s=2.0,
                    min_requests=5,
                    error_rate_threshold=0.5,
                    command_timeout_s=0.5,
                    connect_timeout_s=0.5,
                    probe_interval_s=0.3,
                    failback_healthy_s=2.0,
                ),
                client_name="payments-ops",
                kafka=KafkaConfig(
                    bootstrap_servers=kafka.bootstrap,
                    topic_prefix=regions.prefix,
                    snapshot_interval_s=0.3,
                ),
            )
        )
        client = app

        def write() -> None:
            i = 0
            while not stop.is_set() and i < 200_000:  # bounded
                with contextlib.suppress(Exception):  # the outage: the client fails over
                    client.set(f"pay:{i % 500}", i)
                i += 1
                stop.wait(0.005)

        caplog.set_level(logging.INFO, logger="reconciler.client")
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        home_config = regions.daemons[HOME].config
        second_config = regions.daemons[SECOND].config

        # Healthy: every region consistent and heard, the client at home.
        def healthy_view() -> bool:
            view = status_json(home_config)
            by_name = rows(view)
            return all(r["status"] == "consistent" and r["heard"] for r in by_name.values()) and [
                (c["home"], c["active"]) for c in view["clients"]
            ] == [(HOME, HOME)]

        wait_for(healthy_view, 60, "status: all consistent, the client at home", 0.5)
        captures.append(status(home_config, "--clients-lookback-s", "5").stdout)
        view = status_json(home_config)
        assert view["region"] == HOME
        assert [r["name"] for r in view["regions"]] == [HOME, SECOND, THIRD]
        assert rows(view)[HOME]["this"]
        assert rows(view)[HOME]["clients_here"] == 1
        assert rows(view)[HOME]["capture_offset"] > 0
        assert all(r["last_repair_ms"] > 0 for r in view["regions"])  # start-up sessions

        # Failure: ap-south's Redis killed; the client fails over to eu-west.
        regions.servers[HOME].kill9()
        wait_for(lambda: app.active_region == SECOND, 30, "the client to fail over", 0.1)

        def failed_over_view() -> bool:
            view = status_json(second_config)
            return [(c["home"], c["active"]) for c in view["clients"]] == [(HOME, SECOND)]

        wait_for(failed_over_view, 30, "status: the client failed over", 0.5)
        during = status(second_config, "--clients-lookback-s", "5").stdout
        captures.append(during)
        assert "(failed over)" in during
        view = status_json(second_config)
        assert rows(view)[SECOND]["clients_here"] == 1
        assert rows(view)[HOME]["clients_away"] == 1

        # Recovery: back empty: gap, repair, consistent, failback.
        regions.servers[HOME].wipe_data()
        regions.servers[HOME].start()
        seen: list[str] = []

        def repaired() -> bool:
            state = rows(status_json(home_config))[HOME]["status"]
            if not seen or seen[-1] != state:
                seen.append(state)
                if state != "consistent":
                    captures.append(status(home_config, "--clients-lookback-s", "5").stdout)
            return state == "consistent" and len(seen) > 1

        wait_for(repaired, 120, "ap-south to be repaired", 0.2)
        wait_for(lambda: app.active_region == HOME, 60, "the client to fail back", 0.1)
        wait_for(healthy_view, 60, "status: healthy again", 0.5)
        captures.append(status(home_config, "--clients-lookback-s", "5").stdout)

        # A peer's daemon stopped and started: the others log it down, then up.
        regions.daemons[THIRD].stop()
        wait_for(
            lambda: not rows(status_json(home_config))[THIRD]["heard"], 30, "us-east down", 0.5
        )
        down = status(home_config, "--no-clients").stdout
        line = next(line for line in down.splitlines() if line.startswith(THIRD))
        assert line.split()[1:3] == ["DOWN", "last:"], down
        captures.append(down)
        regions.daemons[THIRD].start()
        regions.wait_status("consistent", timeout_s=90)

        # --watch: bounded by --count, one table per refresh.
        watched = status(home_config, "--watch", "--count", "2", "--interval-s", "0.5")
        assert watched.returncode == 0, watched.stderr
        assert watched.stdout.count("REGION  ") == 2
    finally:
        stop.set()
        if writer is not None:
            writer.join(30)
        if app is not None:
            app.close()
        regions.stop()
        out = os.environ.get("RR_STATUS_CAPTURE")  # where a maintainer wants the capture
        if out:
            Path(out).write_text("\n\n".join(captures))

    home_log = regions.daemons[HOME].log_tail(100_000)
    # In order: the recovery (whether it passes through `repairing` is the daemon's
    # business), then the peer stopped and back, then the stop.
    position = 0
    for line in (
        "event=region.starting",
        "event=region.ready",
        "event=region.gap reason=initial",
    ):
        found = home_log.find(line, position)
        assert found >= 0, (line, home_log[position:])
        position = found + len(line)
    # Redis killed and back empty: the instance check and the capture each see it, in
    # either order (the applier's lag may show as `repairing` first); the region is
    # `recovering` and a gap is logged, both before it is `consistent` again.
    recovering = home_log.find(" to=recovering", position)
    gap = home_log.find("event=region.gap reason=", position)
    assert recovering >= 0, home_log[position:]
    assert gap >= 0, home_log[position:]
    position = max(recovering, gap)
    for line in (
        " to=consistent",
        f"event=peer.down peer={THIRD} reason=stopped",
        f"event=peer.up peer={THIRD}",
        "event=region.stopping",
        "event=region.stopped",
    ):
        found = home_log.find(line, position)
        assert found >= 0, (line, home_log[position:])
        position = found + len(line)
    assert 'event=region.stopping reason="stop signal"' in regions.daemons[THIRD].log_tail(5000)
    client_lines = [r.getMessage() for r in caplog.records if "event=client." in r.getMessage()]
    for expected in (
        f"event=client.region_down region={HOME}",
        f"event=client.failover region={HOME} from={HOME} to={SECOND}",
        f"event=client.region_up region={HOME}",
        f"event=client.failback region={HOME} from={SECOND} to={HOME}",
    ):
        assert any(line.startswith(expected) for line in client_lines), (expected, client_lines)


def test_status_says_so_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        SECOND,
        [THIRD],
        "redis://127.0.0.1:1/0",
        "127.0.0.1:1",
        overrides={"admin": {"port": free_port()}},  # nobody listens there
    )
    result = status(config, "--no-clients")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"cannot reach the {SECOND} daemon at http://127.0.0.1:")
    assert "Traceback" not in result.stderr
