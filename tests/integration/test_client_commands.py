"""The failover client is a drop-in for redis-py: commands, pipelines, transactions,
scripts, refusals that count as failures, and a clean lifecycle, against real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
import redis
import redis.asyncio as aioredis

from devcluster import RedisServer
from reconciler.client import (
    AsyncFailoverClient,
    ClientClosedError,
    ClientConfig,
    CommandOutcomeUnknownError,
    ConfigError,
    FailoverClient,
    PolicyConfig,
)
from tests.daemonstub import DaemonStub
from tests.integration.test_client_failover import (
    HOME,
    POLICY,
    SECOND,
    SLACK_S,
    total_across,
    wait_for,
)
from tests.integration.test_client_failover import config_for as config_with
from tests.tcpproxy import Fault, TcpProxy

pytestmark = pytest.mark.integration


def config_for(urls: dict[str, str], policy: PolicyConfig = POLICY) -> ClientConfig:
    """These tests are about what moves and how (pipelines whole, refusals, idempotency,
    closing): a failed command moves at once, before its region has failed over. The
    default waits for the failover (test_client_faults and test_client_failover)."""
    return config_with(urls, dataclasses.replace(policy, resend_before_failover=True))


def urls(regions: dict[str, RedisServer]) -> dict[str, str]:
    return {name: server.url for name, server in regions.items()}


def test_the_sync_client_answers_like_redis_py(three_regions: dict[str, RedisServer]) -> None:
    with FailoverClient(config_for(urls(three_regions))) as client:
        assert client.ping() is True
        assert client.set("s", "v", ex=100) is True
        assert client.get("s") == b"v"
        assert 0 < client.ttl("s") <= 100
        assert client.incr("n") == 1
        assert client.incrby("n", 5) == 6
        assert client.hset("h", mapping={"a": 1, "b": 2}) == 2
        assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert client.sadd("set", "x", "y") == 2
        assert client.smembers("set") == {b"x", b"y"}
        assert client.zadd("z", {"m1": 1.0, "m2": 2.0}) == 2
        assert client.zrange("z", 0, -1, withscores=True) == [(b"m1", 1.0), (b"m2", 2.0)]
        assert client.mset({"a": "1", "b": "2"}) is True
        assert client.mget("a", "b", "missing") == [b"1", b"2", None]
        assert sorted(client.scan_iter(match="[ab]")) == [b"a", b"b"]
        assert client.exists("a", "b", "missing") == 2
        assert client.delete("a", "b") == 2
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert script(keys=["scripted"], args=[3]) == 3
    with redis.Redis.from_url(three_regions[HOME].url) as home:
        assert home.get("scripted") == b"3"  # it all went to the home region


def test_redis_options_pass_through_but_owned_ones_are_refused(
    three_regions: dict[str, RedisServer],
) -> None:
    config = config_for(urls(three_regions))
    with FailoverClient(config, decode_responses=True) as client:
        client.set("k", "v")
        assert client.get("k") == "v"
    with FailoverClient(config, socket_timeout=5, client_name="checkout") as client:
        assert client.config.policy.command_timeout_s == 5.0
        assert client.client_getname() == "checkout"
    with pytest.raises(ConfigError, match="'retry' is not accepted: a retry inside redis-py"):
        FailoverClient(config, retry=object())
    with pytest.raises(ConfigError, match=r"socket_timeout.*waits forever"):
        FailoverClient(config, socket_timeout=None)


def test_pipelines_and_transactions_run_on_one_region(
    three_regions: dict[str, RedisServer],
) -> None:
    with FailoverClient(config_for(urls(three_regions))) as client:
        with client.pipeline() as pipe:
            pipe.set("p", 1).incr("p").get("p")
            assert pipe.execute() == [True, 2, b"2"]
        with client.pipeline(transaction=False) as pipe:
            pipe.set("q", "text").hget("q", "field").get("q")
            result = pipe.execute(raise_on_error=False)
        assert result[0] is True
        assert isinstance(result[1], redis.exceptions.ResponseError)  # WRONGTYPE, inline
        assert result[2] == b"text"
        assert client.router.snapshot().regions[0].stats.failures_total == 0

        # An optimistic transaction retried after a concurrent change, as in redis-py.
        attempts = []

        def double(pipe: object) -> None:
            value = int(pipe.get("counter") or 0)  # type: ignore[attr-defined]
            if not attempts:
                client.set("counter", 10)  # a concurrent writer, between WATCH and EXEC
            attempts.append(value)
            pipe.multi()  # type: ignore[attr-defined]
            pipe.set("counter", value * 2 + 1)  # type: ignore[attr-defined]

        client.set("counter", 1)
        client.transaction(double, "counter")
        assert attempts == [1, 10]
        assert client.get("counter") == b"21"


def test_an_unsent_pipeline_moves_to_the_next_region_whole_and_runs_once(
    three_regions: dict[str, RedisServer],
) -> None:
    with TcpProxy(three_regions[HOME].port) as proxy:
        regions = urls(three_regions)
        regions[HOME] = proxy.url
        with FailoverClient(config_for(regions)) as client:
            proxy.set_fault(Fault.reset_connections(1.0))  # no connection gets through
            with client.pipeline() as pipe:
                pipe.incr("pipelined").incr("pipelined")
                assert pipe.execute() == [1, 2]
    assert total_across(list(three_regions.values()), "pipelined") == 2
    with redis.Redis.from_url(three_regions[SECOND].url) as second:
        assert second.get("pipelined") == b"2"


def test_a_sent_pipeline_whose_reply_is_lost_is_resent_only_if_idempotent(
    three_regions: dict[str, RedisServer],
) -> None:
    with TcpProxy(three_regions[HOME].port) as proxy:
        regions = urls(three_regions)
        regions[HOME] = proxy.url
        with FailoverClient(config_for(regions)) as client:
            client.ping()
            proxy.set_fault(Fault.drop_requests(1.0, after_forward=True))
            with client.pipeline() as pipe:
                pipe.set("idem", "v").get("idem")
                assert pipe.execute() == [True, b"v"]  # resent to us-east
            # Reconnect cleanly first: a lost handshake would be an unsent (safe) pipeline.
            proxy.set_fault(Fault.none())
            client.ping()
            proxy.set_fault(Fault.drop_requests(1.0, after_forward=True))
            with client.pipeline() as pipe:
                pipe.set("mixed", "v").incr("once")
                with pytest.raises(CommandOutcomeUnknownError, match="MULTI"):
                    pipe.execute()
            proxy.set_fault(Fault.none())
    # The home region executed the lost pipeline; nobody executed it a second time.
    assert total_across(list(three_regions.values()), "once") == 1


def test_oom_refusals_count_as_failures_and_the_refused_write_lands_elsewhere_once(
    three_regions: dict[str, RedisServer],
) -> None:
    with redis.Redis.from_url(three_regions[HOME].url) as home:
        home.config_set("maxmemory-policy", "noeviction")
        home.config_set("maxmemory", 1)
        policy = PolicyConfig(**{**POLICY.__dict__, "min_requests": 5})
        with FailoverClient(config_for(urls(three_regions), policy)) as client:
            for _ in range(5):
                client.incr("refused")  # INCR is not idempotent, but OOM means not executed
            assert client.active_region == SECOND
        home.config_set("maxmemory", 0)
        assert home.get("refused") is None
    assert total_across(list(three_regions.values()), "refused") == 5


def test_readonly_refusals_from_a_demoted_primary_fail_over(
    three_regions: dict[str, RedisServer],
) -> None:
    third = next(s for name, s in three_regions.items() if name not in (HOME, SECOND))
    with redis.Redis.from_url(three_regions[HOME].url) as home:
        home.replicaof("127.0.0.1", third.port)  # the home Redis is now a replica
        try:
            policy = PolicyConfig(**{**POLICY.__dict__, "min_requests": 5})
            with FailoverClient(config_for(urls(three_regions), policy)) as client:
                for i in range(5):
                    assert client.set(f"w{i}", i) is True
                assert client.active_region == SECOND
                events = client.router.snapshot().events
                assert "ReadOnlyError" in events[-1].reason
        finally:
            home.replicaof("NO", "ONE")


async def test_the_async_client_answers_like_redis_asyncio(
    three_regions: dict[str, RedisServer],
) -> None:
    async with AsyncFailoverClient(config_for(urls(three_regions))) as client:
        assert await client.set("k", "v") is True
        assert await client.get("k") == b"v"
        assert await client.hset("h", "f", "1") == 1
        assert await client.hincrby("h", "f", 2) == 3
        assert [key async for key in client.scan_iter(match="k")] == [b"k"]
        assert await client.pipeline().set("a", 1).incr("a").get("a").execute() == [
            True,
            2,
            b"2",
        ]
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("a")
            pipe.lpush("k", "x")
            result = await pipe.execute(raise_on_error=False)
        assert result[0] == b"2"
        assert isinstance(result[1], redis.exceptions.ResponseError)

        async def bump(pipe: object) -> None:
            value = int(await pipe.get("a"))  # type: ignore[attr-defined]
            pipe.multi()  # type: ignore[attr-defined]
            pipe.set("a", value + 40)  # type: ignore[attr-defined]

        await client.transaction(bump, "a")
        assert await client.get("a") == b"42"
    async with aioredis.Redis.from_url(three_regions[HOME].url) as home:
        assert await home.get("a") == b"42"


def test_close_is_idempotent_stops_the_prober_and_refuses_later_commands(
    three_regions: dict[str, RedisServer],
) -> None:
    before = {t.name for t in threading.enumerate()}
    client = FailoverClient(config_for(urls(three_regions)))
    client.set("k", "v")
    prober = [t for t in threading.enumerate() if t.name.startswith("rr-probe")]
    assert prober
    client.close()
    client.close()
    assert not any(t.is_alive() for t in prober)
    assert {t.name for t in threading.enumerate()} <= before | {t.name for t in prober}
    with pytest.raises(ClientClosedError):
        client.get("k")
    with pytest.raises(redis.exceptions.ConnectionError):  # catchable as redis-py's error
        client.get("k")


async def test_aclose_cancels_and_awaits_the_probe_task_and_is_idempotent(
    three_regions: dict[str, RedisServer],
) -> None:
    regions = urls(three_regions)
    three_regions[HOME].kill9()  # a failed region is being probed when we close
    policy = PolicyConfig(**{**POLICY.__dict__, "min_requests": 5})
    client = AsyncFailoverClient(config_for(regions, policy))
    for _ in range(10):
        await client.set("k", "v")
    assert client.active_region == SECOND
    await asyncio.sleep(0.2)
    tasks = {t for t in asyncio.all_tasks() if t.get_name().startswith("rr-probe")}
    assert len(tasks) == 1
    await client.aclose()
    await client.aclose()
    assert all(t.done() for t in tasks)
    with pytest.raises(ClientClosedError):
        await client.get("k")


def test_a_sync_client_with_a_dead_region_closes_promptly(
    three_regions: dict[str, RedisServer],
) -> None:
    regions = urls(three_regions)
    three_regions[HOME].kill9()
    policy = PolicyConfig(**{**POLICY.__dict__, "min_requests": 5})
    client = FailoverClient(config_for(regions, policy))
    for _ in range(10):
        client.set("k", "v")
    wait_for(
        lambda: client.router.snapshot().regions[0].probes_failed > 0,
        timeout_s=5,
        what="probes of the dead region",
    )
    client.close()
    assert client.router.snapshot().regions[0].probes_ok == 0


def test_failback_reads_the_status_from_db_0_when_the_application_uses_another_db(
    three_regions: dict[str, RedisServer],
) -> None:
    home = three_regions[HOME]
    with TcpProxy(home.port) as proxy, DaemonStub(home.url, HOME) as daemon:
        daemon.set("consistent")  # the daemon keeps its record in db 0
        regions = {name: server.url.replace("/0", "/3") for name, server in three_regions.items()}
        regions[HOME] = proxy.url.replace("/0", "/3")
        with FailoverClient(config_for(regions)) as client:
            proxy.set_fault(Fault.cut_off())
            for i in range(POLICY.min_requests):
                client.set(f"k{i}", i)
            assert client.active_region == SECOND
            proxy.set_fault(Fault.none())
            wait_for(
                lambda: client.active_region == HOME,
                timeout_s=POLICY.failback_healthy_s + SLACK_S,
                what="failback",
            )
            client.set("back", 1)
    with redis.Redis.from_url(home.url.replace("/0", "/3")) as db3:
        assert db3.get("back") == b"1"
