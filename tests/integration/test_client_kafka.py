"""Client metrics and failover events on the real Kafka broker, and `reconciler clients`."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devcluster import KafkaBroker, RedisServer
from reconciler.client import AsyncFailoverClient, FailoverClient
from reconciler.client.stream import decode
from replication.model.keys import clients_topic
from tests.integration.test_client_failover import HOME, SECOND, wait_for
from tests.tcpproxy import Fault, TcpProxy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `reconciler` command line in a fresh interpreter, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()


def write_config(path: Path, urls: dict[str, str], bootstrap: str, prefix: str) -> Path:
    regions = "".join(f'[[regions]]\nname = "{n}"\nurl = "{u}"\n\n' for n, u in urls.items())
    path.write_text(
        'client_name = "kafka-test"\n\n'
        + regions
        + "[policy]\nwindow_s = 2.0\nmin_requests = 10\ncommand_timeout_s = 0.5\n"
        "connect_timeout_s = 0.5\nprobe_interval_s = 0.1\nfailback_healthy_s = 1.0\n\n"
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\ntopic_prefix = "{prefix}"\n'
        "snapshot_interval_s = 0.3\n"
    )
    return path


async def read_until(
    bootstrap: str, topic: str, done: Any, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """Read `topic` from the start until `done(messages)` holds."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    messages: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not done(messages):
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    messages.extend(decode(record.value) for record in records)
    finally:
        await consumer.stop()
    return messages


@pytest.mark.timeout(120)
async def test_failover_events_and_snapshots_stream_to_kafka_and_the_monitor_lists_clients(
    three_regions: dict[str, RedisServer], kafka: KafkaBroker, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topic = clients_topic(prefix)
    await create_topic(kafka.bootstrap, topic)
    with TcpProxy(three_regions[HOME].port) as proxy:
        urls = {name: server.url for name, server in three_regions.items()}
        urls[HOME] = proxy.url
        path = write_config(tmp_path / "client.toml", urls, kafka.bootstrap, prefix)

        sync_client = FailoverClient.from_config_file(path)
        try:
            async with AsyncFailoverClient.from_config_file(path) as async_client:
                await async_client.set("a", 1)
                await asyncio.to_thread(sync_client.set, "s", 1)
                proxy.set_fault(Fault.cut_off())

                def fail_over() -> None:
                    for _ in range(20):
                        # Raised until the home region fails over (min_requests 10, half
                        # failing), then sent to us-east.
                        with contextlib.suppress(redis.exceptions.ConnectionError):
                            sync_client.set("s", 2)
                    wait_for(
                        lambda: sync_client.active_region == SECOND, timeout_s=5, what="failover"
                    )

                await asyncio.to_thread(fail_over)
                ids = {sync_client.instance_id, async_client.instance_id}

                def complete(messages: list[dict[str, Any]]) -> bool:
                    events = [m for m in messages if m["type"] == "event"]
                    snapshots = {m["client_id"] for m in messages if m["type"] == "snapshot"}
                    failed_over = any(
                        m["client_id"] == sync_client.instance_id and m["active"] == SECOND
                        for m in messages
                        if m["type"] == "snapshot"
                    )
                    return (
                        snapshots >= ids
                        and failed_over
                        and any(e["kind"] == "failover" for e in events)
                    )

                messages = await read_until(kafka.bootstrap, topic, complete)
        finally:
            await asyncio.to_thread(sync_client.close)

    failover = next(m for m in messages if m["type"] == "event" and m["kind"] == "failover")
    assert failover["client_id"] == sync_client.instance_id
    assert (failover["from_region"], failover["to_region"]) == (HOME, SECOND)
    assert "error rate" in failover["reason"]
    first = next(m for m in messages if m["client_id"] == sync_client.instance_id)
    assert first["type"] == "snapshot"
    assert first["active"] == HOME
    assert [r["name"] for r in first["regions"]] == list(urls)

    started = time.monotonic()
    result = await asyncio.to_thread(run_cli, "clients", "--config", str(path), "--once")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["CLIENT", "HOME", "ACTIVE"]
    sync_line = next(line for line in lines if line.startswith(sync_client.instance_id))
    async_line = next(line for line in lines if line.startswith(async_client.instance_id))
    assert sync_line.split()[2] == SECOND
    assert "failover eu-west->us-east" in sync_line
    assert async_line.split()[1] == HOME
    assert lines[-1].startswith("2 client(s)")

    # Following the stream for a bounded time prints the table periodically, then exits.
    follow = await asyncio.to_thread(
        run_cli, "clients", "--config", str(path), "--duration-s", "1.5", "--interval-s", "0.5"
    )
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout.count("CLIENT  ") >= 2
    assert sync_client.instance_id in follow.stdout


def test_the_monitor_explains_a_config_without_kafka(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('[[regions]]\nname = "eu"\nurl = "redis://127.0.0.1:6379/0"\n')
    result = run_cli("clients", "--config", str(path), "--once")
    assert result.returncode == 2
    assert "no [kafka] table" in result.stderr
