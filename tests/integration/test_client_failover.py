"""The failover client against three real redis-servers under continuous load.

Each test drives one client instance from 8 threads (sync) or 8 tasks of a TaskGroup
(asyncio) while real faults happen: ``kill -9`` of the home Redis, an empty restart, a TCP
proxy that drops or loses requests. The test plays each region's daemon with
:class:`tests.daemonstub.DaemonStub`.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis
from redis.exceptions import RedisError

from devcluster import RedisServer
from reconciler.client import (
    AsyncFailoverClient,
    ClientConfig,
    CommandOutcomeUnknownError,
    FailoverClient,
    PolicyConfig,
    RegionConfig,
)
from tests.daemonstub import DaemonStub
from tests.tcpproxy import Fault, TcpProxy

pytestmark = pytest.mark.integration

HOME, SECOND, THIRD = "eu-west", "us-east", "ap-south"
THREADS = 8
SLACK_S = 3.0  # generous: two cores shared with other test runs

POLICY = PolicyConfig(
    window_s=2.0,
    min_requests=20,
    error_rate_threshold=0.5,
    command_timeout_s=0.5,
    connect_timeout_s=0.5,
    probe_interval_s=0.1,
    probe_backoff_cap_s=0.4,
    failback_healthy_s=1.0,
)


def config_for(urls: dict[str, str], policy: PolicyConfig = POLICY) -> ClientConfig:
    return ClientConfig(
        regions=tuple(RegionConfig(name=name, url=url) for name, url in urls.items()),
        policy=policy,
    )


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Poll until `predicate` holds; return the time it took. Fails naming `what`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


async def await_for(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """wait_for for coroutines: polls without blocking the event loop."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def stays(predicate: Callable[[], bool], *, for_s: float) -> bool:
    """True if `predicate` holds at every poll for `for_s` seconds."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.02)
    return True


def dbsize(server: RedisServer) -> int:
    with redis.Redis.from_url(server.url, socket_timeout=2) as plain:
        size: int = plain.dbsize()
        return size


def incrs_served(server: RedisServer) -> int:
    """The sum of the workers' INCR counters on `server`: it grows with every INCR the
    region executes, however many keys already exist (a key count saturates once the
    bounded key set is written)."""
    with redis.Redis.from_url(server.url, socket_timeout=2) as plain:
        values = plain.mget([f"w{n}:n" for n in range(THREADS)])
        return sum(int(v) for v in values if v is not None)


@dataclass
class Tally:
    """What one worker saw: commands answered, INCRs acknowledged, errors by kind."""

    ok: int = 0
    incr_acked: int = 0
    incr_unknown: int = 0
    errors: list[BaseException] = field(default_factory=list)


def one_op(client: FailoverClient, worker: int, i: int, tally: Tally) -> None:
    op = i % 3
    try:
        if op == 0:
            client.set(f"w{worker}:k{i % 50}", i)
        elif op == 1:
            client.get(f"w{worker}:k{i % 50}")
        else:
            client.incr(f"w{worker}:n")
            tally.incr_acked += 1
        tally.ok += 1
    except CommandOutcomeUnknownError as exc:
        tally.incr_unknown += 1
        tally.errors.append(exc)
    except RedisError as exc:
        tally.errors.append(exc)


class ThreadLoad:
    """THREADS threads sharing one client, issuing SET/GET/INCR until stopped."""

    def __init__(self, client: FailoverClient, *, max_s: float = 60.0) -> None:
        self.client = client
        self.tallies = [Tally() for _ in range(THREADS)]
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(THREADS)
        ]

    def _run(self, worker: int) -> None:
        tally = self.tallies[worker]
        for i in itertools.count():
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            one_op(self.client, worker, i, tally)

    @property
    def ok(self) -> int:
        return sum(t.ok for t in self.tallies)

    def errors(self) -> list[BaseException]:
        return [e for t in self.tallies for e in t.errors]

    def __enter__(self) -> ThreadLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in self._threads), "a worker thread hung"


def assert_only_failures_before_the_failover(errors: list[BaseException], failures: int) -> None:
    """Until the home region fails over, a command that fails there raises redis-py's
    connection error (not sent, or its reply lost), nothing is answered from a region that
    may lack this client's latest writes; after it, commands move. So the application saw
    connection errors only, and no more than the failures that made the region fail over
    (the same command may also be counted when the reply of an INCR was lost)."""
    lost = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    assert all(isinstance(e, lost) for e in errors), errors[:3]
    assert 0 < len(errors) <= failures, (len(errors), failures)


@pytest.mark.timeout(90)
def test_sync_client_moves_on_kill9_stays_away_while_repairing_returns_when_consistent(
    three_regions: dict[str, RedisServer],
) -> None:
    home = three_regions[HOME]
    config = config_for({name: server.url for name, server in three_regions.items()})
    with (
        DaemonStub(home.url, HOME) as daemon,
        FailoverClient(config) as client,
        ThreadLoad(client) as load,
    ):
        daemon.set("consistent")
        wait_for(lambda: load.ok > 500, timeout_s=20, what="traffic on the home region")
        assert client.active_region == HOME

        daemon.set(None)  # its daemon is on the same failed machine
        home.kill9()
        moved_s = wait_for(
            lambda: client.active_region == SECOND,
            timeout_s=POLICY.window_s + SLACK_S,
            what="failover",
        )
        assert moved_s <= POLICY.window_s + SLACK_S
        before = incrs_served(three_regions[SECOND])
        served = load.ok
        wait_for(lambda: load.ok > served + 500, timeout_s=20, what="traffic after failover")
        assert incrs_served(three_regions[SECOND]) > before, "the traffic did not reach us-east"

        home.restart(keep_data=False)
        restarted_at = time.monotonic()
        daemon.set("repairing")
        # Probes succeed, the healthy time passes twice over: still away while repairing.
        assert stays(lambda: client.active_region == SECOND, for_s=2 * POLICY.failback_healthy_s)
        assert dbsize(home) == 1  # only the status record: no application traffic

        daemon.set("consistent")
        wait_for(
            lambda: client.active_region == HOME,
            timeout_s=POLICY.failback_healthy_s + SLACK_S,
            what="failback",
        )
        assert time.monotonic() - restarted_at >= POLICY.failback_healthy_s
        wait_for(lambda: dbsize(home) > 50, timeout_s=20, what="traffic back on eu-west")

    snap = client.router.snapshot()
    assert (snap.failovers, snap.failbacks) == (1, 1), snap.events
    assert_only_failures_before_the_failover(load.errors(), snap.regions[0].stats.failures_total)


@pytest.mark.timeout(90)
async def test_async_client_moves_on_kill9_stays_away_while_repairing_returns_when_consistent(
    three_regions: dict[str, RedisServer],
) -> None:
    home = three_regions[HOME]
    config = config_for({name: server.url for name, server in three_regions.items()})
    tallies = [Tally() for _ in range(THREADS)]
    stop = asyncio.Event()

    async def worker(n: int, client: AsyncFailoverClient) -> None:
        tally = tallies[n]
        deadline = time.monotonic() + 60
        for i in itertools.count():
            if stop.is_set() or time.monotonic() > deadline:
                return
            await one_async_op(client, n, i, tally)

    def ok() -> int:
        return sum(t.ok for t in tallies)

    with DaemonStub(home.url, HOME) as daemon:
        await asyncio.to_thread(daemon.set, "consistent")
        async with AsyncFailoverClient(config) as client, asyncio.TaskGroup() as group:
            for n in range(THREADS):
                group.create_task(worker(n, client))
            try:
                await await_for(lambda: ok() > 500, timeout_s=20, what="traffic on home")
                daemon.set(None)
                home.kill9()
                await await_for(
                    lambda: client.active_region == SECOND,
                    timeout_s=POLICY.window_s + SLACK_S,
                    what="failover",
                )
                served = ok()
                await await_for(lambda: ok() > served + 500, timeout_s=20, what="traffic")
                await asyncio.to_thread(home.restart, keep_data=False)
                restarted_at = time.monotonic()
                await asyncio.to_thread(daemon.set, "repairing")
                hold_until = time.monotonic() + 2 * POLICY.failback_healthy_s
                while time.monotonic() < hold_until:
                    assert client.active_region == SECOND, "failed back while repairing"
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(daemon.set, "consistent")
                await await_for(
                    lambda: client.active_region == HOME,
                    timeout_s=POLICY.failback_healthy_s + SLACK_S,
                    what="failback",
                )
                assert time.monotonic() - restarted_at >= POLICY.failback_healthy_s
                served = ok()
                await await_for(lambda: ok() > served + 300, timeout_s=20, what="traffic home")
            finally:
                stop.set()
        snap = client.router.snapshot()
    assert (snap.failovers, snap.failbacks) == (1, 1), snap.events
    assert_only_failures_before_the_failover(
        [e for t in tallies for e in t.errors], snap.regions[0].stats.failures_total
    )
    assert await asyncio.to_thread(dbsize, home) > 50


async def one_async_op(client: AsyncFailoverClient, worker: int, i: int, tally: Tally) -> None:
    op = i % 3
    try:
        if op == 0:
            await client.set(f"w{worker}:k{i % 50}", i)
        elif op == 1:
            await client.get(f"w{worker}:k{i % 50}")
        else:
            await client.incr(f"w{worker}:n")
            tally.incr_acked += 1
        tally.ok += 1
    except CommandOutcomeUnknownError as exc:
        tally.incr_unknown += 1
        tally.errors.append(exc)
    except RedisError as exc:
        tally.errors.append(exc)


def test_application_errors_never_fail_over_however_many(
    three_regions: dict[str, RedisServer],
) -> None:
    config = config_for({name: server.url for name, server in three_regions.items()})
    with FailoverClient(config) as client:
        client.set("string", "x")
        for _ in range(300):
            with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
                client.hget("string", "field")
            with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
                client.execute_command("NOSUCHCOMMAND")
        assert client.active_region == HOME
        region = client.router.snapshot().regions[0]
        assert (region.stats.app_errors, region.stats.failures) == (600, 0)
        assert client.router.failovers == 0


async def test_application_errors_never_fail_over_the_async_client(
    three_regions: dict[str, RedisServer],
) -> None:
    config = config_for({name: server.url for name, server in three_regions.items()})
    async with AsyncFailoverClient(config) as client:
        await client.set("string", "x")
        for _ in range(300):
            with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
                await client.lpush("string", "v")
        assert client.active_region == HOME
        assert client.router.failovers == 0


@dataclass
class CountedIncrs:
    acked: int = 0
    unknown: int = 0
    not_applied: int = 0
    reads_lost: int = 0  # reads whose reply was lost before the region failed over
    other: list[BaseException] = field(default_factory=list)


def counted_incr(client: FailoverClient, key: str, counts: CountedIncrs) -> None:
    try:
        client.incr(key)
        counts.acked += 1
    except CommandOutcomeUnknownError:
        counts.unknown += 1
    except redis.exceptions.ConnectionError:
        # Raised only when no attempt can have reached a server (connect/send failures).
        counts.not_applied += 1
    except RedisError as exc:
        counts.other.append(exc)


def total_across(servers: list[RedisServer], key: str) -> int:
    total = 0
    for server in servers:
        with redis.Redis.from_url(server.url, socket_timeout=2) as plain:
            total += int(plain.get(key) or 0)
    return total


@pytest.mark.timeout(60)
def test_no_incr_is_lost_or_applied_twice_when_replies_are_lost_and_traffic_fails_over(
    three_regions: dict[str, RedisServer],
) -> None:
    servers = list(three_regions.values())
    home = three_regions[HOME]
    with TcpProxy(home.port, seed=11) as proxy:
        urls = {name: server.url for name, server in three_regions.items()}
        urls[HOME] = proxy.url
        config = config_for(urls, PolicyConfig(**{**POLICY.__dict__, "error_rate_threshold": 0.2}))
        counts = [CountedIncrs() for _ in range(THREADS)]
        stop = threading.Event()
        with FailoverClient(config) as client:

            def work(n: int) -> None:
                deadline = time.monotonic() + 30
                while not stop.is_set() and time.monotonic() < deadline:
                    counted_incr(client, f"counter:{n}", counts[n])

            threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
            for thread in threads:
                thread.start()
            try:
                wait_for(
                    lambda: sum(c.acked for c in counts) > 300,
                    timeout_s=20,
                    what="INCRs on the home region",
                )
                # Replies lost after the server executed (the dangerous case), requests lost
                # before it did, and refused reconnects: all at once.
                proxy.set_fault(
                    Fault(
                        drop_request_fraction=0.5,
                        drop_after_forward=True,
                        reset_connection_fraction=0.3,
                    )
                )
                wait_for(
                    lambda: client.active_region != HOME,
                    timeout_s=POLICY.window_s + SLACK_S,
                    what="failover off the lossy region",
                )
                acked = sum(c.acked for c in counts)
                wait_for(
                    lambda: sum(c.acked for c in counts) > acked + 300,
                    timeout_s=20,
                    what="INCRs after failover",
                )
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=10)
    assert proxy.stats.dropped > 0
    assert sum(c.unknown for c in counts) > 0, "the fault never lost a reply: proves nothing"
    for n, c in enumerate(counts):
        assert c.other == []
        applied = total_across(servers, f"counter:{n}")
        # Every acknowledged INCR was applied once; an unknown one at most once; none twice.
        assert c.acked <= applied <= c.acked + c.unknown, (n, c, applied)
