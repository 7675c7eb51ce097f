"""The client checks the Redis instance, not only the region: a fast restart, a restore
from disk or a forged record never lets it read data nobody vouched for.

Real redis-servers; the region's daemon is played by :class:`tests.daemonstub.DaemonStub`
(which stamps the record with the ``run_id`` of the instance holding it, as the daemon's
status script does). Every region holds the same keys, written before the client starts,
as replication would have left them; a read that returns ``None`` is a read of a Redis
that lost them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import RedisError

from devcluster import RedisServer
from reconciler.client import (
    AsyncFailoverClient,
    ClientConfig,
    FailoverClient,
    PolicyConfig,
    RegionConfig,
    Secret,
)
from reconciler.client.evidence import Finding
from tests.daemonstub import DaemonStub, Forgery
from tests.integration.test_client_failover import (
    HOME,
    POLICY,
    SECOND,
    SLACK_S,
    ThreadLoad,
    await_for,
    config_for,
    stays,
    wait_for,
)
from tests.tcpproxy import Fault, TcpProxy

pytestmark = pytest.mark.integration

KEYS = 300
READERS = 4
# The error rate can never move traffic here: only the instance checks can.
NO_ERROR_RATE = PolicyConfig(**{**POLICY.__dict__, "min_requests": 1_000_000})


def seed(servers: list[RedisServer]) -> None:
    """The keys every region holds before the test (as replication would have left them)."""
    for server in servers:
        with redis.Redis.from_url(server.url) as plain:
            plain.mset({f"paid:{i}": f"tx-{i}" for i in range(KEYS)})


def app_connections(server: RedisServer) -> list[dict[str, Any]]:
    """The failover clients' command connections (not their probes) open on `server`."""
    with redis.Redis.from_url(server.url) as plain:
        clients: list[dict[str, Any]] = plain.client_list()
    return [c for c in clients if str(c.get("name", "")).startswith("rr:")]


class Readers:
    """READERS threads reading the seeded keys through one client, counting `None`s."""

    def __init__(self, client: FailoverClient, *, max_s: float = 60.0) -> None:
        self.client = client
        self.reads = 0
        self.missing: list[str] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(READERS)
        ]

    def _run(self, worker: int) -> None:
        i = worker
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            key = f"paid:{i % KEYS}"
            i += READERS
            try:
                value = self.client.get(key)
            except RedisError as exc:
                with self._lock:
                    self.errors.append(exc)
                continue
            with self._lock:
                self.reads += 1
                if value is None:
                    self.missing.append(key)

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def replaced_reasons(client: FailoverClient | AsyncFailoverClient) -> list[str]:
    return [
        e.reason
        for e in client.router.snapshot().events
        if e.kind == "region_down" and e.region == HOME
    ]


@pytest.mark.timeout(90)
def test_a_fast_restart_of_the_active_region_moves_reads_away_before_one_reads_it_empty(
    three_regions: dict[str, RedisServer],
) -> None:
    servers = list(three_regions.values())
    home = three_regions[HOME]
    seed(servers)
    config = config_for({n: s.url for n, s in three_regions.items()}, NO_ERROR_RATE)
    with FailoverClient(config) as client, Readers(client) as readers:
        wait_for(lambda: readers.reads > 1000, timeout_s=20, what="reads on the home region")
        assert client.active_region == HOME
        assert app_connections(home), "the reads never reached the home region"
        home.restart(keep_data=False)  # kill -9, then at once an empty redis-server
        after = readers.reads
        wait_for(lambda: readers.reads > after + 2000, timeout_s=20, what="reads after it")
        assert client.active_region == SECOND
        assert app_connections(home) == [], "a command connection stayed on the new instance"
    assert readers.missing == [], f"{len(readers.missing)} reads of the empty instance"
    # Reads sent while the home Redis was down (before the new instance was noticed) raise
    # redis-py's connection error: none was answered by another region meanwhile.
    lost = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    assert all(isinstance(e, lost) for e in readers.errors), readers.errors[:3]
    reasons = replaced_reasons(client)
    assert len(reasons) == 1
    assert reasons[0].startswith("redis instance replaced: run_id "), reasons


@pytest.mark.timeout(90)
async def test_a_fast_restart_is_noticed_by_the_async_client_too(
    three_regions: dict[str, RedisServer],
) -> None:
    servers = list(three_regions.values())
    home = three_regions[HOME]
    await asyncio.to_thread(seed, servers)
    config = config_for({n: s.url for n, s in three_regions.items()}, NO_ERROR_RATE)
    counts = {"reads": 0}
    missing: list[str] = []
    stop = asyncio.Event()

    async def reader(n: int, client: AsyncFailoverClient) -> None:
        i = n
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            key = f"paid:{i % KEYS}"
            i += READERS
            try:
                value = await client.get(key)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                continue  # the home Redis down, not yet known replaced: raised, not moved
            if value is None:
                missing.append(key)
            counts["reads"] += 1

    async with AsyncFailoverClient(config) as client, asyncio.TaskGroup() as group:
        for n in range(READERS):
            group.create_task(reader(n, client))
        try:
            await await_for(lambda: counts["reads"] > 1000, timeout_s=20, what="reads")
            await asyncio.to_thread(home.restart, keep_data=False)
            after = counts["reads"]
            await await_for(lambda: counts["reads"] > after + 2000, timeout_s=20, what="reads")
            assert client.active_region == SECOND
        finally:
            stop.set()
    assert missing == [], f"{len(missing)} reads of the empty instance"
    assert replaced_reasons(client)[0].startswith("redis instance replaced: run_id ")


def hold_s() -> float:
    """Long enough that a gate that could open would have: the healthy time, thrice."""
    return 3 * POLICY.failback_healthy_s + 1.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("restore", ["rdb-backup", "aof"])
def test_a_consistent_record_left_by_the_previous_instance_never_opens_the_gate(
    three_regions: dict[str, RedisServer], tmp_path: Path, restore: str
) -> None:
    home = three_regions[HOME]
    seed(list(three_regions.values()))
    config = config_for({n: s.url for n, s in three_regions.items()})
    # A record that outlives the restart: the daemon vouched for the instance that crashed.
    with DaemonStub(home.url, HOME, ttl_ms=120_000) as daemon, FailoverClient(config) as client:
        daemon.set("consistent")
        client.get("paid:1")  # the client knows the instance
        backup = home.snapshot(tmp_path / "backup.rdb")
        daemon.set(None)  # the daemon is down with its machine
        if restore == "aof":
            home.restart(keep_data=True, crash=False)  # its AOF holds the record
        else:
            home.restart(from_snapshot=backup)
        assert client.get("paid:1") == b"tx-1"  # read elsewhere
        assert client.active_region == SECOND
        with redis.Redis.from_url(home.url) as plain:
            assert plain.exists("__rr:status") == 1, "the record did not survive: proves nothing"
        assert stays(lambda: client.active_region == SECOND, for_s=hold_s())
        home_view = client.router.snapshot().regions[0]
        assert home_view.finding is Finding.FOREIGN
        assert home_view.status is not None
        assert home_view.status.consistent
        # Its daemon repairs the new instance and vouches for it: now the gate opens.
        daemon.set("consistent")
        wait_for(
            lambda: client.active_region == HOME,
            timeout_s=POLICY.failback_healthy_s + SLACK_S,
            what="failback once the new instance is vouched for",
        )
        assert client.get("paid:2") == b"tx-2"


@pytest.mark.timeout(90)
def test_a_record_without_expiry_or_naming_another_region_or_instance_never_opens_the_gate(
    three_regions: dict[str, RedisServer],
) -> None:
    home = three_regions[HOME]
    seed(list(three_regions.values()))
    config = config_for({n: s.url for n, s in three_regions.items()})
    forgeries = {
        Finding.NO_EXPIRY: Forgery(expiry=False),
        Finding.OTHER_REGION: Forgery(region=SECOND),
        Finding.FOREIGN: Forgery(run_id="f" * 40),
    }
    with DaemonStub(home.url, HOME) as daemon, FailoverClient(config) as client:
        client.get("paid:1")
        home.restart(keep_data=False)
        assert client.get("paid:1") == b"tx-1"
        assert client.active_region == SECOND
        for finding, forgery in forgeries.items():
            daemon.set("consistent", forgery)  # refreshed every 0.1 s: always fresh
            assert stays(lambda: client.active_region == SECOND, for_s=hold_s()), finding
            assert client.router.snapshot().regions[0].finding is finding
        daemon.set("consistent")
        wait_for(
            lambda: client.active_region == HOME,
            timeout_s=POLICY.failback_healthy_s + SLACK_S,
            what="failback with a genuine record",
        )


@pytest.mark.timeout(90)
def test_a_daemon_reporting_its_instance_not_vouched_for_moves_traffic_off_a_healthy_region(
    three_regions: dict[str, RedisServer],
) -> None:
    home = three_regions[HOME]
    config = config_for({n: s.url for n, s in three_regions.items()})
    with DaemonStub(home.url, HOME) as daemon, FailoverClient(config) as client:
        daemon.set("consistent")
        client.set("k", "v")
        # A missing record (its daemon down) is no evidence: the region keeps its traffic.
        daemon.set(None)
        with redis.Redis.from_url(home.url) as plain:
            plain.delete("__rr:status")
        assert stays(lambda: client.active_region == HOME, for_s=1.0)
        # Its daemon says the instance lost data (a FLUSHALL, a gap it cannot rule out).
        daemon.set("recovering")
        wait_for(lambda: client.active_region == SECOND, timeout_s=SLACK_S, what="failover")
        reason = replaced_reasons(client)[0]
        assert reason.startswith("status check: its daemon reports it recovering"), reason


@pytest.mark.timeout(90)
def test_a_user_without_info_never_fails_back_and_is_told_what_to_grant(
    three_regions: dict[str, RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    home = three_regions[HOME]
    with redis.Redis.from_url(home.url) as admin:
        admin.acl_setuser(
            "app", enabled=True, passwords=["+app-pw"], keys=["~*"], commands=["+@all", "-info"]
        )
    with TcpProxy(home.port) as proxy, DaemonStub(home.url, HOME) as daemon:
        regions = [RegionConfig(name=n, url=s.url) for n, s in three_regions.items()]
        regions[0] = RegionConfig(
            name=HOME, url=proxy.url, username="app", password=Secret("app-pw")
        )
        config = ClientConfig(regions=tuple(regions), policy=POLICY)
        daemon.set("consistent")
        with (
            caplog.at_level(logging.WARNING, logger="reconciler.client"),
            FailoverClient(config) as client,
            ThreadLoad(client) as load,
        ):
            wait_for(lambda: load.ok > 200, timeout_s=20, what="traffic")
            proxy.set_fault(Fault.cut_off())
            wait_for(lambda: client.active_region == SECOND, timeout_s=10, what="failover")
            proxy.set_fault(Fault.none())
            # Answers, fresh consistent record: but nothing ties it to the instance.
            assert stays(lambda: client.active_region == SECOND, for_s=hold_s())
            assert client.router.snapshot().regions[0].probes_ok > 5
            advice = [r for r in caplog.records if "+info" in r.getMessage()]
            assert len(advice) == 1, [r.getMessage() for r in advice]
            assert "ACL SETUSER <user> +info %R~__rr:*" in advice[0].getMessage()
            with redis.Redis.from_url(home.url) as admin:
                admin.acl_setuser("app", commands=["+info"])
            wait_for(
                lambda: client.active_region == HOME,
                timeout_s=POLICY.failback_healthy_s + SLACK_S,
                what="failback once +info is granted",
            )
