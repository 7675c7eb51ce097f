"""The three-region demo (`make demo`): everything real, on this machine, about a minute.

1. Three regions: a redis-server and a daemon (`reconciler run`) each, one Kafka broker.
2. A payments service writes in every region at once: its own accounts, idempotency keys
   with TTLs, and a few shared keys updated concurrently from all three (conflicts).
   The service in ap-south uses the failover client, home region ap-south.
3. ap-south fails: its Redis is killed with SIGKILL. The service there fails over.
4. ap-south comes back with its data gone. Its daemon notices the new instance at once
   (status recovering), the Merkle repair refills it from the peers, its status becomes
   consistent, and only then does the service fail back.
5. The recovery timeline, the repair report and what the service read are printed, and
   `reconciler verify` confirms the regions agree.

It fails (exit 1) when what it shows is wrong: the client failing back before the
post-repair `consistent`, a read of an acknowledged payment key coming back empty (other
than the few the kill took before they were shipped: counted and printed), or the regions
not agreeing at the end.
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

from devcluster.daemons import wait_for
from devcluster.redis_server import CAPTURE_GUARD
from devcluster.regions import LocalRegions
from devcluster.workload import IdempotencyLoad, local_failover_policy

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


def _timeline(
    killed_ms: int,
    restarting_ms: int,
    back_ms: int,
    statuses: list[tuple[int, str]],
    moves: list[tuple[float, int, str, str]],
) -> bool:
    """Print the recovery timeline; False if its order is wrong (a failback before the
    post-repair `consistent`, or a status other than `recovering` first after the restart)."""
    after = [(t, s) for t, s in statuses if t >= restarting_ms]
    failover = next((ms for _, ms, kind, _ in moves if kind == "failover"), None)
    failback = next((ms for _, ms, kind, to in moves if kind == "failback" and to == FAILED), None)
    noticed = after[0][0] if after and after[0][1] == "recovering" else None
    consistent = next((t for t, s in after if s == "consistent"), None)
    steps = [
        ("failure (Redis killed)", killed_ms),
        ("client failed over", failover),
        ("Redis answering again, empty", back_ms),
        ("daemon: recovering", noticed),
        ("daemon: consistent (repair done)", consistent),
        ("client failed back", failback),
    ]
    say("recovery timeline:")
    previous = killed_ms
    for name, at in steps:
        if at is None:
            say(f"  {name:<34} never")
            continue
        say(f"  {name:<34} +{(at - killed_ms) / 1000:6.1f}s  (+{(at - previous) / 1000:.1f}s)")
        previous = at
    ok = True
    if noticed is None:
        say(f"  WRONG: the daemon's first status after the restart was not recovering: {after}")
        ok = False
    if consistent is None or failback is None:
        say("  WRONG: no post-repair consistent, or no failback")
        ok = False
    elif failback < consistent:
        say("  WRONG: the client failed back before the repair was done")
        ok = False
    return ok


def _scenario(base: Path) -> bool:
    from reconciler.client import (
        ClientConfig,
        CommandOutcomeUnknownError,
        Event,
        FailoverClient,
        RegionConfig,
    )
    from reconciler.consistency.reports import RepairReport

    # The client's own log lines say what its listener prints below; keep one of each.
    logging.getLogger("reconciler.client").setLevel(logging.ERROR)

    regions = LocalRegions(base, names=REGIONS, redis_config=CAPTURE_GUARD)
    servers, daemons = regions.servers, regions.daemons
    stop = threading.Event()
    cleanup: list[Callable[[], None]] = []
    try:
        say(
            "starting one Kafka broker (KRaft) and three redis-servers on loopback, each "
            "refusing writes while its daemon's capture is detached (min-replicas-to-write 1)"
        )
        regions.start()
        for region in REGIONS:
            say(f"{region:>8}: redis {servers[region].url}, admin {daemons[region].admin_url()}")
        regions.wait_status("consistent", timeout_s=60, interval_s=0.2)
        say("all three daemons report: consistent")

        clients = {r: redis.Redis(host="127.0.0.1", port=s.port) for r, s in servers.items()}
        order = [FAILED, *[r for r in REGIONS if r != FAILED]]
        app = FailoverClient(
            ClientConfig(
                regions=tuple(RegionConfig(name=r, url=servers[r].url) for r in order),
                policy=local_failover_policy(),
                client_name="payments-demo",
            )
        )
        cleanup.append(app.close)
        moves: list[tuple[float, int, str, str]] = []  # monotonic, wall ms, kind, to region

        def on_event(e: Event) -> None:
            if e.kind in ("failover", "failback"):
                moves.append((time.monotonic(), e.at_ms, e.kind, e.to_region))
            say(f"  client: {e.kind} {e.from_region or e.region} -> {e.to_region} ({e.reason})")

        app.router.add_listener(on_event)
        services = [Service(r, clients[r], stop, i) for i, r in enumerate(REGIONS) if r != FAILED]
        services.append(Service(FAILED, app, stop, 99))
        for service in services:
            service.start()
        # Its idempotency keys, written once and read back 3 s later through the client.
        payments = IdempotencyLoad(
            app,
            workers=2,
            prefix=f"pay:{FAILED}",
            read_after_s=3.0,
            max_s=300,
            region_of=lambda: app.active_region,
            unknown=CommandOutcomeUnknownError,
        )
        payments.__enter__()
        cleanup.append(payments.stop)
        say("payment services write in all three regions (ap-south via the failover client)")
        time.sleep(5)
        sizes = {r: keyspace(c) for r, c in clients.items()}
        say(f"keys per region while writing: {sizes}")

        say(f"FAILURE: {FAILED}'s Redis killed with SIGKILL")
        killed_at, killed_ms = time.monotonic(), time.time_ns() // 1_000_000
        servers[FAILED].kill9()
        dead_at = time.monotonic()
        wait_for(lambda: app.active_region != FAILED, 30, "the client to fail over", 0.1)
        say(f"the {FAILED} service now writes to {app.active_region}; the others carry on")
        time.sleep(4)

        since = time.time()
        say(f"RECOVERY: {FAILED}'s Redis restarts with its data gone (empty)")
        restarting_ms = time.time_ns() // 1_000_000
        servers[FAILED].wipe_data()
        servers[FAILED].start()
        back_ms = time.time_ns() // 1_000_000
        seen: list[tuple[int, str]] = []  # (wall ms the daemon's status began, status)

        def watch() -> bool:
            status = daemons[FAILED].get("/status")
            if not seen or seen[-1] != (status["since_ms"], status["status"]):
                seen.append((status["since_ms"], status["status"]))
                say(f"  {FAILED} daemon status: {status['status']}")
            return app.active_region == FAILED

        wait_for(watch, 180, "the client to fail back", 0.05)
        say(f"the {FAILED} service is back on {FAILED}")
        time.sleep(4)  # reads of keys written during the failover, now served at home

        stop.set()
        payments.stop()
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

        ok = _timeline(killed_ms, restarting_ms, back_ms, seen, moves)
        home_again = max((t for t, _, kind, _ in moves if kind == "failback"), default=0.0)
        verdict = payments.judge_failure(
            {k.decode() for k in snapshot(clients[FAILED])},
            killed_at=killed_at,
            dead_at=dead_at,
            home_again=home_again,
            window_s=5.0,
        )
        totals = payments.totals()
        say(
            f"the {FAILED} service's payment keys: {totals['acked']} written, "
            f"{totals['reads']} read back 3 s later or more"
        )
        say(
            f"  read back as missing: {len(verdict.violations)} "
            f"(must be 0: every one would be a payment taken twice)"
        )
        say(
            f"  acknowledged by {FAILED} in the instant before the kill and never shipped, "
            f"gone with its data (asynchronous replication): {len(verdict.lost_in_window)}"
        )
        if verdict.read_before_arrival:
            say(
                f"  read on another region during the failover before replication brought "
                f"them (written in the last seconds before the kill): "
                f"{len(verdict.read_before_arrival)}"
            )
        if verdict.violations:
            for read in verdict.violations[:5]:
                say(f"  MISSING: {read.key} read on {read.region}")
            ok = False
        if verdict.lost_outside_window:
            say(f"  LOST earlier than the kill: {verdict.lost_outside_window[:5]}")
            ok = False

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
        if not ok:
            say("FAILED: what the demo showed is wrong (see above)")
        return ok and verify.returncode == 0
    finally:
        stop.set()
        for fn in cleanup:
            fn()
        regions.stop()
        say("stopped everything")
