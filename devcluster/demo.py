"""The three-region demo (`make demo`): everything real, on this machine, about a minute.

1. Three regions: a redis-server and a daemon (`reconciler run`) each, one Kafka broker.
2. A payments service writes in every region at once: its own accounts, idempotency keys
   with TTLs, and a few shared keys updated concurrently from all three (conflicts).
   The service in ap-south uses the failover client, home region ap-south.
3. ap-south fails: its Redis is killed with SIGKILL. The service there fails over.
4. ap-south comes back with its data gone. Its daemon sees the gap, the Merkle repair
   refills it from the peers, its status goes recovering -> repairing -> consistent, and
   only then does the service fail back.
5. The repair report is printed, and `reconciler verify` confirms the regions agree.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from devcluster.daemons import DaemonProcess, wait_for, write_config
from devcluster.kafka_broker import KafkaBroker
from devcluster.redis_server import RedisServer

REGIONS = ("eu-west", "us-east", "ap-south")
FAILED = "ap-south"
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


class Service(threading.Thread):
    """One region's payment service: bounded in time and in operations."""

    def __init__(self, region: str, client: Any, stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"service-{region}", daemon=True)
        self.region = region
        self.client = client
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.ops = 0
        self.errors = 0

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while not self.stop_event.is_set() and time.monotonic() < deadline and self.ops < 200_000:
            account = f"acct:{self.region}:{self.rng.randrange(500)}"
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.hset(
                        account,
                        mapping={
                            "balance": self.rng.randrange(10_000),
                            "currency": "EUR",
                            "region": self.region,
                        },
                    )
                    pipe.set(f"idem:{self.region}:{self.ops}", "done", ex=3600)
                    # A short ledger per account: replication ships a key's whole value
                    # (docs/design-notes.md), so collections are kept bounded.
                    ledger = f"ledger:{account}"
                    pipe.zadd(ledger, {f"tx{self.ops}": time.time()})
                    pipe.zremrangebyrank(ledger, 0, -21)
                    if self.ops % 5 == 0:  # shared keys, written from every region
                        pipe.set(f"fx:rate:{self.rng.randrange(20)}", f"{self.region}:{self.ops}")
                    if self.ops % 11 == 0:
                        pipe.delete(f"idem:{self.region}:{self.ops - 7}")
                    pipe.execute()
                self.ops += 1
            except (redis.RedisError, OSError):
                self.errors += 1
            time.sleep(0.01)


def keyspace(client: redis.Redis) -> int:
    return sum(1 for k in client.scan_iter(count=1000) if not k.startswith(b"__rr:"))


def run_demo() -> int:
    """Run the scenario; 0 if the regions agree at the end. Its directory (logs, configs,
    repair reports) is removed on success and kept, with its path printed, on failure."""
    base = Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    succeeded = False
    try:
        succeeded = _scenario(base)
    finally:
        if succeeded:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"logs and reports kept in {base} (configs/<region>.log, state-<region>/reports)")
    return 0 if succeeded else 1


def _scenario(base: Path) -> bool:
    from reconciler.client import ClientConfig, FailoverClient, PolicyConfig, RegionConfig
    from reconciler.consistency.reports import RepairReport

    # The client's own log lines say what its listener prints below; keep one of each.
    logging.getLogger("reconciler.client").setLevel(logging.ERROR)

    broker = KafkaBroker(base)
    servers = {r: RedisServer(r, base) for r in REGIONS}
    daemons: dict[str, DaemonProcess] = {}
    stop = threading.Event()
    cleanup: list[Callable[[], None]] = []
    try:
        say("starting one Kafka broker (KRaft) and three redis-servers on loopback")
        broker.start()
        for server in servers.values():
            server.start()
        for region in REGIONS:
            peers = [r for r in REGIONS if r != region]
            config = write_config(
                base / "configs", region, peers, servers[region].url, broker.bootstrap
            )
            daemons[region] = DaemonProcess(region, config)
            daemons[region].start()
            say(f"{region:>8}: redis {servers[region].url}, admin {daemons[region].admin_url()}")
        wait_for(
            lambda: all(d.get("/status")["status"] == "consistent" for d in daemons.values()),
            60,
            "daemons consistent",
            0.2,
        )
        say("all three daemons report: consistent")

        clients = {r: redis.Redis(host="127.0.0.1", port=s.port) for r, s in servers.items()}
        order = [FAILED, *[r for r in REGIONS if r != FAILED]]
        app = FailoverClient(
            ClientConfig(
                regions=tuple(RegionConfig(name=r, url=servers[r].url) for r in order),
                policy=PolicyConfig(
                    window_s=2.0,
                    min_requests=5,
                    error_rate_threshold=0.5,
                    command_timeout_s=0.5,
                    connect_timeout_s=0.5,
                    probe_interval_s=0.3,
                    failback_healthy_s=2.0,
                ),
                client_name="payments-demo",
            )
        )
        cleanup.append(app.close)
        app.router.add_listener(
            lambda e: say(
                f"  client: {e.kind} {e.from_region or e.region} -> {e.to_region} ({e.reason})"
            )
        )
        services = [Service(r, clients[r], stop, i) for i, r in enumerate(REGIONS) if r != FAILED]
        services.append(Service(FAILED, app, stop, 99))
        for service in services:
            service.start()
        say("payment services write in all three regions (ap-south via the failover client)")
        time.sleep(5)
        sizes = {r: keyspace(c) for r, c in clients.items()}
        say(f"keys per region while writing: {sizes}")

        say(f"FAILURE: {FAILED}'s Redis killed with SIGKILL")
        servers[FAILED].kill9()
        wait_for(lambda: app.active_region != FAILED, 30, "the client to fail over", 0.1)
        say(f"the {FAILED} service now writes to {app.active_region}; the others carry on")
        time.sleep(4)

        since = time.time()
        say(f"RECOVERY: {FAILED}'s Redis restarts with its data gone (empty)")
        servers[FAILED].wipe_data()
        servers[FAILED].start()
        seen: list[str] = []

        def status_change() -> bool:
            status = daemons[FAILED].get("/status")["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
                say(f"  {FAILED} daemon status: {status}")
            return status == "consistent" and len(seen) > 1

        wait_for(status_change, 120, f"{FAILED} to be repaired", 0.05)
        wait_for(lambda: app.active_region == FAILED, 60, "the client to fail back", 0.1)
        say(f"the {FAILED} service is back on {FAILED}")
        time.sleep(2)

        stop.set()
        for service in services:
            service.join(10)
        total = sum(s.ops for s in services)
        failed = sum(s.errors for s in services)
        say(f"writes stopped: {total} transactions ({failed} failed in the outage)")

        def snapshot(c: redis.Redis) -> set[bytes]:
            return {k for k in c.scan_iter(count=1000) if not k.startswith(b"__rr:")}

        def equal() -> bool:
            snaps = [snapshot(c) for c in clients.values()]
            return all(s == snaps[0] for s in snaps[1:])

        try:
            wait_for(equal, 60, "all regions to converge", 0.5)
        except TimeoutError:
            snaps = {r: snapshot(c) for r, c in clients.items()}
            union = set().union(*snaps.values())
            for r, keys in snaps.items():
                missing = sorted(union - keys)
                say(f"{r} lacks {len(missing)} keys, e.g. {missing[:5]}")
            raise
        say(f"converged: every region holds {keyspace(clients['eu-west'])} keys")

        reports = []
        for path in sorted((daemons[FAILED].state_dir / "reports").glob("*.json")):
            report = RepairReport.from_json(json.loads(path.read_text()))
            if report.keys_differing and path.stat().st_mtime >= since:
                reports.append(report)
        say(f"repair sessions run by {FAILED} after the failure: {len(reports)}")
        if reports:
            biggest = max(reports, key=lambda r: r.keys_differing)
            shown = biggest.decisions[:12]
            text = biggest.to_markdown().split("## Keys that differed")[0]
            print("\n" + text.strip())
            print(f"\n## Keys that differed ({biggest.keys_differing}; first {len(shown)})\n")
            for d in shown:
                print(f"- db {d.db} `{d.key}`: {d.action}, winner {d.winner} ({d.reason})")
            print(
                f"\n(full report: reconciler report show {biggest.id} --config "
                f"{daemons[FAILED].config})\n"
            )

        verify = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler.cli",
                "verify",
                "--config",
                str(daemons[FAILED].config),
                "--peer",
                "eu-west",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        say(f"reconciler verify {FAILED} <-> eu-west: exit {verify.returncode}")
        print(verify.stdout.strip())
        conflicts = daemons["eu-west"].get("/status")
        say(f"eu-west apply counters: {conflicts['apply']}")
        return verify.returncode == 0
    finally:
        stop.set()
        for fn in cleanup:
            fn()
        for daemon in daemons.values():
            daemon.stop()
        for server in servers.values():
            server.stop()
        broker.stop()
        say("stopped everything")
