"""Two `Daemon` objects built and run in this process against real redis-servers and the
real broker: the wiring itself (construction, start, supervision, graceful stop) under a
debugger's reach, not only through the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from devcluster import KafkaBroker
from devcluster.daemons import write_config
from reconciler.service.config import load_config
from reconciler.service.daemon import Daemon
from reconciler.service.regionstate import Status
from reconciler.status import decode_status, parse_run_id
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


@pytest.mark.timeout(180)
async def test_two_daemons_in_process_replicate_publish_a_bound_status_and_stop_cleanly(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
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
    a, b = (daemons[r] for r in REGIONS)
    runs = {r: asyncio.create_task(d.run()) for r, d in daemons.items()}
    clients = {r: aioredis.Redis.from_url(s.url) for r, s in servers.items()}
    try:
        await eventually(
            lambda: all(d.state.status == Status.CONSISTENT for d in daemons.values()),
            90,
            "both daemons consistent",
        )
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
    finally:
        for daemon in daemons.values():
            daemon.request_stop()
        codes = {}
        for region, task in runs.items():
            with contextlib.suppress(asyncio.CancelledError):
                codes[region] = await asyncio.wait_for(task, 60)
        for client in clients.values():
            await client.aclose()
    assert codes == dict.fromkeys(REGIONS, 0)
