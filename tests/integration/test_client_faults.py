"""Intermittent network faults (through the TCP proxy): below the threshold nothing moves,
above it traffic moves once and does not flap, and lost replies never double a write."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis
from redis.exceptions import RedisError

from devcluster import RedisServer
from reconciler.client import (
    AsyncFailoverClient,
    CommandOutcomeUnknownError,
    FailoverClient,
    NoHealthyRegionError,
    PolicyConfig,
)
from tests.daemonstub import DaemonStub
from tests.integration.test_client_failover import (
    HOME,
    POLICY,
    SECOND,
    SLACK_S,
    THREADS,
    CountedIncrs,
    ThreadLoad,
    await_for,
    config_for,
    total_across,
    wait_for,
)
from tests.tcpproxy import Fault, TcpProxy

pytestmark = pytest.mark.integration


def urls_via_proxy(regions: dict[str, RedisServer], proxy: TcpProxy) -> dict[str, str]:
    urls = {name: server.url for name, server in regions.items()}
    urls[HOME] = proxy.url
    return urls


@pytest.mark.timeout(60)
def test_an_intermittent_fault_below_the_threshold_never_fails_over(
    three_regions: dict[str, RedisServer],
) -> None:
    with TcpProxy(three_regions[HOME].port, seed=3) as proxy:
        config = config_for(urls_via_proxy(three_regions, proxy))
        with FailoverClient(config) as client, ThreadLoad(client) as load:
            wait_for(lambda: load.ok > 300, timeout_s=20, what="traffic")
            proxy.set_fault(Fault.drop_requests(0.05))
            # Three windows of a 5% loss (the threshold is 50%): traffic must stay home.
            deadline = time.monotonic() + 3 * POLICY.window_s
            while time.monotonic() < deadline:
                assert client.active_region == HOME
                time.sleep(0.02)
            proxy.set_fault(Fault.none())
        home = client.router.snapshot().regions[0]
    assert proxy.stats.dropped > 0
    assert home.stats.failures_total > 0, "the fault never reached the client"
    assert client.router.failovers == 0
    # A command that met a reset raised redis-py's connection error (the region never
    # failed over, so nothing was resent to a region that may lack the latest writes); an
    # INCR says its outcome is unknown. Nothing else failed, and never more than the resets.
    errors = load.errors()
    lost = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    assert all(isinstance(e, lost) for e in errors), errors[:3]
    assert len(errors) <= home.stats.failures_total


@pytest.mark.timeout(90)
async def test_an_intermittent_fault_above_the_threshold_fails_over_once_and_never_flaps(
    three_regions: dict[str, RedisServer],
) -> None:
    servers = list(three_regions.values())
    counts = [CountedIncrs() for _ in range(THREADS)]
    stop = asyncio.Event()

    async def worker(n: int, client: AsyncFailoverClient) -> None:
        deadline = time.monotonic() + 60
        for i in itertools.count():
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                if i % 2:
                    try:
                        await client.get(f"k:{n}")
                    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                        # Lost before the home region failed over: raised, not resent to
                        # a region that may lack this client's latest writes.
                        counts[n].reads_lost += 1
                else:
                    await client.incr(f"counter:{n}")
                    counts[n].acked += 1
            except CommandOutcomeUnknownError:
                counts[n].unknown += 1
            except (NoHealthyRegionError, redis.exceptions.ConnectionError):
                # Never sent (a plain connection error: a lost reply would be "unknown").
                counts[n].not_applied += 1
            except RedisError as exc:
                counts[n].other.append(exc)

    with (
        TcpProxy(three_regions[HOME].port, seed=5) as proxy,
        DaemonStub(three_regions[HOME].url, HOME) as daemon,
    ):
        # The daemon keeps saying "consistent" throughout: only the network decides here.
        await asyncio.to_thread(daemon.set, "consistent")
        # A link that is cut 0.3 s out of every 0.6 s: about half the requests fail (above
        # the 20% threshold) and probes get through in every good half-period, but never
        # for the 2 s of uninterrupted health failback requires: no flapping.
        policy = PolicyConfig(
            **{**POLICY.__dict__, "error_rate_threshold": 0.2, "failback_healthy_s": 2.0}
        )
        config = config_for(urls_via_proxy(three_regions, proxy), policy)
        flapping = asyncio.Event()

        async def flap_the_link() -> None:
            for cut in itertools.islice(itertools.cycle((True, False)), 200):  # <= 60 s
                if not flapping.is_set():
                    return
                fault = Fault.cut_off() if cut else Fault.none()
                await asyncio.to_thread(proxy.set_fault, fault)
                await asyncio.sleep(0.3)

        async with AsyncFailoverClient(config) as client, asyncio.TaskGroup() as group:
            for n in range(THREADS):
                group.create_task(worker(n, client))
            try:
                await await_for(
                    lambda: sum(c.acked for c in counts) > 300, timeout_s=20, what="traffic"
                )
                flapping.set()
                flapper = group.create_task(flap_the_link())
                await await_for(
                    lambda: client.active_region == SECOND,
                    timeout_s=policy.window_s + SLACK_S,
                    what="failover",
                )
                until = time.monotonic() + 3 * policy.failback_healthy_s
                while time.monotonic() < until:
                    assert client.active_region == SECOND, client.router.snapshot().events
                    await asyncio.sleep(0.02)
                assert client.router.snapshot().regions[0].probes_ok > 0, "no probe got through"
                flapping.clear()
                await flapper
                await asyncio.to_thread(proxy.set_fault, Fault.none())
                await await_for(
                    lambda: client.active_region == HOME,
                    timeout_s=policy.failback_healthy_s + SLACK_S,
                    what="failback once the link is stable",
                )
                acked = sum(c.acked for c in counts)
                await await_for(
                    lambda: sum(c.acked for c in counts) > acked + 100,
                    timeout_s=20,
                    what="traffic after failback",
                )
            finally:
                stop.set()
        snap = client.router.snapshot()
    assert (snap.failovers, snap.failbacks) == (1, 1), snap.events
    for n, c in enumerate(counts):
        assert c.other == []
        applied = await asyncio.to_thread(total_across, servers, f"counter:{n}")
        assert c.acked <= applied <= c.acked + c.unknown, (n, c, applied)


@pytest.mark.timeout(60)
def test_a_region_that_stops_answering_times_out_and_reads_move_on(
    three_regions: dict[str, RedisServer],
) -> None:
    with TcpProxy(three_regions[HOME].port) as proxy:
        policy = PolicyConfig(**{**POLICY.__dict__, "command_timeout_s": 0.2, "min_requests": 5})
        config = config_for(urls_via_proxy(three_regions, proxy), policy)
        with FailoverClient(config) as client:
            client.set("k", "v")  # lands on the home region
            with redis.Redis.from_url(three_regions[SECOND].url) as second:
                second.set("k", "v-second")
            proxy.set_fault(Fault.blackhole())
            # While the home region has not failed over, a read that times out raises (as
            # redis-py does): us-east may not hold yet what was written here moments ago.
            # Once the timeouts cross the threshold the region is failed, and the read that
            # crossed it and every later one answer from us-east.
            timeouts: list[redis.exceptions.TimeoutError] = []
            for _ in range(10):
                try:
                    answer = client.get("k")
                except redis.exceptions.TimeoutError as exc:
                    timeouts.append(exc)
                    continue
                assert answer == b"v-second"
            assert not any(isinstance(e, CommandOutcomeUnknownError) for e in timeouts)
            assert 1 <= len(timeouts) < policy.min_requests
            wait_for(lambda: client.active_region == SECOND, timeout_s=1, what="failover")
            region = client.router.snapshot().regions[0]
            failures = region.stats.failures_total
            assert failures >= policy.min_requests * policy.error_rate_threshold
            proxy.set_fault(Fault.none())
    assert client.router.failovers == 1


def test_a_timed_out_incr_is_reported_unknown_and_never_resent(
    three_regions: dict[str, RedisServer],
) -> None:
    with TcpProxy(three_regions[HOME].port) as proxy:
        policy = PolicyConfig(**{**POLICY.__dict__, "command_timeout_s": 0.3})
        config = config_for(urls_via_proxy(three_regions, proxy), policy)
        with FailoverClient(config) as client:
            client.ping()
            proxy.set_fault(Fault.delay(600))  # the server gets it, the reply comes too late
            with pytest.raises(CommandOutcomeUnknownError) as info:
                client.incr("once")
            assert info.value.region == HOME
            assert isinstance(info.value, redis.exceptions.TimeoutError)  # drop-in handlers
            proxy.set_fault(Fault.none())
            wait_for(
                lambda: total_across(list(three_regions.values()), "once") == 1,
                timeout_s=5,
                what="the delayed INCR to land",
            )
    assert total_across(list(three_regions.values()), "once") == 1
