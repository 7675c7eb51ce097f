"""MTTR: from a restarted Redis answering again to `consistent`, and to clients home.

    .venv/bin/python -m benchmarks.mttr [--keys 10000,100000] [--kinds empty,older-rdb]

Three real regions (redis-server + `reconciler run` each, one Kafka broker), loaded with N
keys of 32-byte values, as replication would have left them. A failover client (home
eu-west) reads and writes a few hundred commands a second. Each round kills eu-west's
Redis with SIGKILL, waits for the client to fail over, and restarts the Redis 2 s later,
either empty or from an RDB backup taken before 1% of the keys changed. Measured from the
moment the Redis answers PING: the daemon's `recovering` (it noticed the new instance),
its `consistent` (the repair completed), and the client's failback; and the keys the
repair sessions copied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import redis

from benchmarks.report import table, write_section
from devcluster import RedisServer
from devcluster.daemons import DaemonProcess, wait_for
from devcluster.regions import LocalRegions
from devcluster.workload import local_failover_policy
from reconciler.client import ClientConfig, FailoverClient, RegionConfig
from reconciler.consistency.reports import RepairReport
from replication.model.digest import string_digest
from replication.model.event import ChangeEvent
from replication.model.value import Kind
from replication.model.vclock import VectorClock
from replication.redis.address import RedisAddress
from replication.redis.library import apply_command, ensure_library
from replication.redis.resp import RespConnection

REGIONS = ("eu-west", "us-east", "ap-south")
HOME = REGIONS[0]
VALUE_BYTES = 32
POLICY = local_failover_policy()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def seed(port: int, n: int, local: str) -> None:
    """N keys written by the home region, as its peers would hold them after replication."""
    rng = random.Random(7)
    conn = await RespConnection.open(RedisAddress("127.0.0.1", port))
    try:
        await ensure_library(conn)
        for start in range(0, n, 2000):
            events = []
            for i in range(start, min(n, start + 2000)):
                value = rng.randbytes(VALUE_BYTES)
                events.append(
                    ChangeEvent(
                        0,
                        b"acct:%09d" % i,
                        Kind.STRING,
                        value,
                        0,
                        VectorClock({HOME: 1}),
                        HOME,
                        string_digest(value),
                    )
                )
            replies = await conn.pipeline([apply_command(e, local) for e in events])
            bad = [r for r in replies if not (isinstance(r, list) and r[0] == b"applied")]
            if bad:
                raise RuntimeError(f"seeding failed: {bad[:3]}")
    finally:
        await conn.close()


class Traffic(threading.Thread):
    """A few hundred reads and writes a second through the client (bounded in time)."""

    def __init__(self, client: FailoverClient, n: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.n = n
        self.stop_event = threading.Event()

    def run(self) -> None:
        rng = random.Random(3)
        deadline = time.monotonic() + 900
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                self.client.get(b"acct:%09d" % rng.randrange(self.n))
            time.sleep(0.003)


def round_(
    base: Path,
    servers: dict[str, RedisServer],
    daemons: dict[str, DaemonProcess],
    client: FailoverClient,
    n: int,
    kind: str,
    moves: list[tuple[int, str, str]],
) -> list[str]:
    home = servers[HOME]
    backup = home.snapshot(base / f"backup-{n}.rdb")
    if kind == "older-rdb":
        # 1% of the keys change after the backup (written at home, replicated).
        with redis.Redis(host="127.0.0.1", port=home.port) as plain:
            for start in range(0, n // 100, 500):
                with plain.pipeline(transaction=False) as pipe:
                    for i in range(start, min(n // 100, start + 500)):
                        pipe.set(b"acct:%09d" % (i * 100), b"changed-after-the-backup")
                    pipe.execute()
        wait_for(lambda: converged(servers, n), 120, "the changes to replicate", 0.5)
    wait_for(lambda: client.active_region == HOME, 60, "the client at home", 0.1)
    reports_before = set((daemons[HOME].state_dir / "reports").glob("*.json"))
    home.kill9()
    wait_for(lambda: client.active_region != HOME, 30, "the client to fail over", 0.05)
    time.sleep(2)
    if kind == "empty":
        home.restart(keep_data=False)
    else:
        home.restart(from_snapshot=backup)
    back = now_ms()
    seen: list[tuple[int, str]] = []

    def watch() -> bool:
        status = daemons[HOME].get("/status")
        if not seen or seen[-1] != (status["since_ms"], status["status"]):
            seen.append((status["since_ms"], status["status"]))
        return client.active_region == HOME

    wait_for(watch, 900, "the client to fail back", 0.05)
    after = [(t, s) for t, s in seen if t >= back - 1000]
    recovering = next((t for t, s in after if s == "recovering"), None)
    consistent = next((t for t, s in after if s == "consistent"), None)
    failback = max((t for t, kind_, to in moves if kind_ == "failback" and to == HOME), default=0)
    if recovering is None or consistent is None or failback < consistent:
        raise RuntimeError(f"wrong order: statuses {after}, client moves {moves}")
    repaired = 0
    for path in set((daemons[HOME].state_dir / "reports").glob("*.json")) - reports_before:
        report = RepairReport.from_json(json.loads(path.read_text()))
        repaired += report.repaired.get("fetched", 0)
    wait_for(lambda: converged(servers, n), 300, "every region to hold the keys", 0.5)
    return [
        f"{n:,}",
        kind,
        f"{(recovering - back) / 1000:.2f}",
        f"{(consistent - back) / 1000:.1f}",
        f"{(failback - back) / 1000:.1f}",
        f"{repaired:,}",
    ]


def converged(servers: dict[str, RedisServer], n: int) -> bool:
    sizes = []
    for server in servers.values():
        with redis.Redis(host="127.0.0.1", port=server.port) as plain:
            sizes.append(sum(1 for _ in plain.scan_iter(match="acct:*", count=5000)))
    return all(size == n for size in sizes)


def rounds_with(n: int, kinds: list[str]) -> list[list[str]]:
    """One cluster loaded with n keys; one round per restart kind."""
    rows: list[list[str]] = []
    base = Path(tempfile.mkdtemp(prefix="bench-mttr-"))
    regions = LocalRegions(
        base, names=REGIONS, redis_config={"repl-backlog-size": "256mb"}, start_daemons=False
    )
    servers, daemons = regions.servers, regions.daemons
    client: FailoverClient | None = None
    traffic: Traffic | None = None
    ok = False
    try:
        regions.start()
        for region, server in servers.items():
            asyncio.run(seed(server.port, n, region))
        regions.start_daemons()
        regions.wait_status("consistent", timeout_s=600, interval_s=0.5)
        moves: list[tuple[int, str, str]] = []
        client = FailoverClient(
            ClientConfig(
                regions=tuple(RegionConfig(name=r, url=servers[r].url) for r in REGIONS),
                policy=POLICY,
            )
        )
        client.router.add_listener(lambda e: moves.append((e.at_ms, e.kind, e.to_region)))
        traffic = Traffic(client, n)
        traffic.start()
        for kind in kinds:
            row = round_(base, servers, daemons, client, n, kind, moves)
            print(" | ".join(row), flush=True)
            rows.append(row)
        ok = True
    finally:
        if traffic is not None:
            traffic.stop_event.set()
            traffic.join(10)
        if client is not None:
            client.close()
        regions.stop()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"logs kept in {base}")
    return rows


def run(sizes: list[int], kinds: list[str]) -> None:
    rows = [row for n in sizes for row in rounds_with(n, kinds)]
    body = (
        "Three regions, N keys each; eu-west's Redis is killed with SIGKILL and restarted 2 s "
        "after the client failed over, empty or from an RDB backup taken before 1% of the keys "
        "changed. Seconds from the Redis answering PING again; a failover client (home eu-west, "
        "failback after 2 s of good probes and a trusted `consistent`) reads a few hundred "
        "keys a second throughout.\n\n"
        + table(
            [
                "keys",
                "restart",
                "-> recovering (s)",
                "-> consistent (s)",
                "-> client home (s)",
                "keys fetched by the repair",
            ],
            rows,
        )
    )
    write_section("MTTR: restarted Redis to consistent to clients home", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", default="10000,100000")
    parser.add_argument("--kinds", default="empty,older-rdb")
    args = parser.parse_args()
    run([int(x) for x in args.keys.split(",")], args.kinds.split(","))


if __name__ == "__main__":
    main()
