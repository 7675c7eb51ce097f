"""What a drop-in for redis-py must also do across a failover: blocking commands, WATCH
transactions, locks, scripts in pipelines, and the rest of redis-py's client surface, on
real redis-servers with real network faults (tests/tcpproxy.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, LockError, WatchError

from devcluster import RedisServer
from reconciler.client import (
    AsyncFailoverClient,
    ClientConfig,
    CommandOutcomeUnknownError,
    ConfigError,
    FailoverClient,
    PolicyConfig,
    RegionConfig,
)
from tests.daemonstub import DaemonStub
from tests.integration.test_client_failover import HOME, POLICY, SECOND, SLACK_S, wait_for
from tests.tcpproxy import Fault, TcpProxy

pytestmark = pytest.mark.integration


def two_regions(home_url: str, second: RedisServer, **policy: object) -> ClientConfig:
    # These tests are about what moves and how (WATCH bound to a region, scripts loaded
    # where a pipeline lands): a failed command moves at once, before its region has
    # failed over (the default waits for the failover; test_client_faults covers it).
    moving = {"resend_before_failover": True, **policy}
    return ClientConfig(
        regions=(
            RegionConfig(name=HOME, url=home_url),
            RegionConfig(name=SECOND, url=second.url),
        ),
        policy=PolicyConfig(**{**POLICY.__dict__, **moving}),  # type: ignore[arg-type]
    )


@pytest.fixture
def proxied(three_regions: dict[str, RedisServer]) -> Iterator[tuple[TcpProxy, ClientConfig]]:
    """The home region behind a TCP proxy (faults on demand), the second one direct."""
    with TcpProxy(three_regions[HOME].port) as proxy:
        yield proxy, two_regions(proxy.url, three_regions[SECOND])


def plain(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


# -- blocking commands ------------------------------------------------------------------


def test_a_blocking_command_that_outlives_its_timeout_is_unknown_and_no_failure(
    three_regions: dict[str, RedisServer], proxied: tuple[TcpProxy, ClientConfig]
) -> None:
    proxy, config = proxied
    with FailoverClient(config) as client:
        assert client.ping()
        proxy.set_fault(Fault.blackhole())  # accepted, never answered
        with pytest.raises(CommandOutcomeUnknownError, match="BLPOP"):
            client.blpop(["queue"], timeout=0.5)  # waited 0.5 s + the command timeout
        home = client.router.snapshot().regions[0]
        assert home.stats.failures_total == 0  # an idle queue worker never fails a region
        assert client.active_region == HOME


def test_a_sent_blocking_pop_whose_reply_is_lost_is_never_resent_elsewhere(
    three_regions: dict[str, RedisServer], proxied: tuple[TcpProxy, ClientConfig]
) -> None:
    proxy, config = proxied
    with plain(three_regions[SECOND]) as second:
        second.rpush("queue", "job-in-us-east")
    with plain(three_regions[HOME]) as home:
        home.rpush("queue", "job-in-eu-west")
    with FailoverClient(config) as client:
        assert client.ping()
        proxy.set_fault(Fault.drop_requests(1.0, after_forward=True))  # executed, reply lost
        with pytest.raises(CommandOutcomeUnknownError, match="BLPOP"):
            client.blpop(["queue"], timeout=1)
    with plain(three_regions[SECOND]) as second:
        assert second.lrange("queue", 0, -1) == [b"job-in-us-east"]  # not popped twice
    with plain(three_regions[HOME]) as home:
        assert home.llen("queue") == 0  # the one pop happened where it was sent


# -- WATCH / MULTI / EXEC -----------------------------------------------------------------


def test_a_failover_during_watch_is_a_watcherror_and_the_retry_commits_once_elsewhere(
    three_regions: dict[str, RedisServer], proxied: tuple[TcpProxy, ClientConfig]
) -> None:
    proxy, config = proxied
    for server in (three_regions[HOME], three_regions[SECOND]):
        with plain(server) as direct:
            direct.set("balance", 100)
    rounds: list[str] = []

    def debit(pipe: object) -> None:
        rounds.append(pipe.bound_region)  # type: ignore[attr-defined]
        if len(rounds) == 1:
            proxy.set_fault(Fault.cut_off())  # the home region goes away while watching
        balance = int(pipe.get("balance"))  # type: ignore[attr-defined]
        pipe.multi()  # type: ignore[attr-defined]
        pipe.set("balance", balance - 30)  # type: ignore[attr-defined]

    with FailoverClient(config) as client:
        client.transaction(debit, "balance")
    assert rounds == [HOME, SECOND]
    with plain(three_regions[HOME]) as home:
        assert home.get("balance") == b"100"  # nothing committed where the watch broke
    with plain(three_regions[SECOND]) as second:
        assert second.get("balance") == b"70"  # committed once, where it was retried


def test_an_exec_whose_reply_is_lost_is_unknown_never_a_watcherror_to_retry(
    three_regions: dict[str, RedisServer], proxied: tuple[TcpProxy, ClientConfig]
) -> None:
    proxy, config = proxied
    with plain(three_regions[HOME]) as home:
        home.set("balance", 100)
    with FailoverClient(config) as client, client.pipeline() as pipe:
        pipe.watch("balance")
        balance = int(pipe.get("balance"))
        pipe.multi()
        pipe.set("balance", balance - 30)
        proxy.set_fault(Fault.drop_requests(1.0, after_forward=True))
        with pytest.raises(CommandOutcomeUnknownError, match="EXEC"):
            pipe.execute()
    with plain(three_regions[HOME]) as home:
        assert home.get("balance") == b"70"  # it did commit: a retry would debit twice


def test_a_region_failing_while_watching_aborts_the_transaction_before_exec(
    three_regions: dict[str, RedisServer],
) -> None:
    home = three_regions[HOME]
    config = two_regions(home.url, three_regions[SECOND])
    with plain(home) as direct:
        direct.set("balance", 100)
    with (
        DaemonStub(home.url, HOME) as daemon,
        FailoverClient(config) as client,
        client.pipeline() as pipe,
    ):
        pipe.watch("balance")
        balance = int(pipe.get("balance"))
        daemon.set("recovering")  # its daemon no longer vouches for the data read
        wait_for(lambda: client.active_region == SECOND, timeout_s=SLACK_S, what="failover")
        pipe.multi()
        pipe.set("balance", balance - 30)
        with pytest.raises(WatchError, match="failed over while watching"):
            pipe.execute()
    with plain(home) as direct:
        assert direct.get("balance") == b"100"


async def test_the_async_client_binds_watch_to_one_region_too(
    three_regions: dict[str, RedisServer], proxied: tuple[TcpProxy, ClientConfig]
) -> None:
    proxy, config = proxied
    for server in (three_regions[HOME], three_regions[SECOND]):
        async with aioredis.Redis.from_url(server.url) as direct:
            await direct.set("balance", 100)
    rounds: list[str | None] = []

    async def debit(pipe: object) -> None:
        rounds.append(pipe.bound_region)  # type: ignore[attr-defined]
        if len(rounds) == 1:
            proxy.set_fault(Fault.cut_off())  # the home region goes away while watching
        balance = int(await pipe.get("balance"))  # type: ignore[attr-defined]
        pipe.multi()  # type: ignore[attr-defined]
        pipe.set("balance", balance - 30)  # type: ignore[attr-defined]

    async with AsyncFailoverClient(config) as client:
        await client.transaction(debit, "balance")
    assert rounds == [HOME, SECOND]
    async with aioredis.Redis.from_url(three_regions[SECOND].url) as second:
        assert await second.get("balance") == b"70"


# -- locks --------------------------------------------------------------------------------


def test_a_lock_is_redis_pys_lock_bound_to_one_region(
    three_regions: dict[str, RedisServer], proxied: tuple[TcpProxy, ClientConfig]
) -> None:
    proxy, config = proxied
    with FailoverClient(config) as client:
        lock = client.lock("payout:42", timeout=10)
        assert lock.acquire(blocking=False)
        assert lock.owned()
        assert lock.locked()
        assert not client.lock("payout:42", timeout=10).acquire(blocking=False)
        assert lock.extend(5)
        lock.release()
        assert not lock.locked()
        with client.lock("payout:43", timeout=10, blocking_timeout=1) as held:
            assert held.owned()
        with pytest.raises(LockError):
            lock.release()  # not held any more: redis-py's LockNotOwnedError
        # The region fails while a lock is held: its commands fail there, never elsewhere.
        lock = client.lock("payout:44", timeout=10)
        assert lock.acquire(blocking=False)
        proxy.set_fault(Fault.cut_off())
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            lock.release()
    with plain(three_regions[SECOND]) as second:
        assert second.exists("payout:44") == 0
    with plain(three_regions[HOME]) as home:
        assert home.exists("payout:44") == 1  # it ends with its timeout


async def test_the_async_lock_behaves_like_redis_pys(three_regions: dict[str, RedisServer]) -> None:
    config = two_regions(three_regions[HOME].url, three_regions[SECOND])
    async with AsyncFailoverClient(config) as client:
        lock = client.lock("payout:1", timeout=10)
        assert await lock.acquire(blocking=False)
        assert await lock.owned()
        assert not await client.lock("payout:1").acquire(blocking=False)
        await lock.release()
        assert not await lock.locked()


# -- scripts in pipelines -----------------------------------------------------------------


def test_a_pipeline_loads_its_scripts_first_on_the_region_it_lands_on(
    three_regions: dict[str, RedisServer], proxied: tuple[TcpProxy, ClientConfig]
) -> None:
    proxy, config = proxied
    with FailoverClient(config) as client:
        add = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert add(keys=["n"], args=[1]) == 1  # loaded on the home region only
        proxy.set_fault(Fault.cut_off())
        with client.pipeline() as pipe:
            add(keys=["n"], args=[2], client=pipe)
            pipe.get("n")
            assert pipe.execute() == [2, b"2"]  # on us-east, where it was never loaded
    with plain(three_regions[SECOND]) as second:
        assert second.script_exists(add.sha) == [True]


async def test_an_async_pipeline_loads_its_scripts_first(
    three_regions: dict[str, RedisServer],
) -> None:
    config = two_regions(three_regions[HOME].url, three_regions[SECOND])
    async with AsyncFailoverClient(config) as client:
        add = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        async with client.pipeline() as pipe:
            await add(keys=["m"], args=[5], client=pipe)
            assert await pipe.execute() == [5]


# -- the rest of redis-py's surface ---------------------------------------------------------


def test_auth_errors_are_the_servers_answer_not_a_lost_reply(
    three_regions: dict[str, RedisServer],
) -> None:
    config = two_regions(three_regions[HOME].url, three_regions[SECOND])
    with FailoverClient(config) as client:
        with pytest.raises(AuthenticationError):
            client.auth("wrong-password", username="nobody")
        assert client.router.snapshot().regions[0].stats.failures_total == 0


def test_callbacks_pools_monitor_and_the_refused_methods(
    three_regions: dict[str, RedisServer],
) -> None:
    config = two_regions(three_regions[HOME].url, three_regions[SECOND])
    with FailoverClient(config) as client:
        client.set("k", "v")
        client.set_response_callback("GET", lambda reply, **_: f"parsed:{reply!r}")
        assert client.get("k") == "parsed:b'v'"
        assert client.response_callbacks is client._regions[1].redis.response_callbacks
        assert client.connection_pool.connection_kwargs["port"] == three_regions[HOME].port
        assert client.get_retry().get_retries() == 0
        with client.monitor() as monitor:
            assert monitor.connection_pool is client.connection_pool
        for call in (
            lambda: FailoverClient.from_url(three_regions[HOME].url),
            lambda: FailoverClient.from_pool(client.connection_pool),
            client.client,
            lambda: client.set_retry(client.get_retry()),
        ):
            with pytest.raises(ConfigError, match="not available on the failover client: "):
                call()


def test_username_and_password_options_reach_every_region_without_its_own(
    three_regions: dict[str, RedisServer],
) -> None:
    for name in (HOME, SECOND):
        with plain(three_regions[name]) as admin:
            admin.acl_setuser(
                "app", enabled=True, passwords=["+pw"], keys=["~*"], commands=["+@all"]
            )
    config = two_regions(three_regions[HOME].url, three_regions[SECOND])
    with FailoverClient(config, username="app", password="pw") as client:
        assert client.acl_whoami() == "app"


async def test_the_async_client_has_the_same_surface(
    three_regions: dict[str, RedisServer],
) -> None:
    config = two_regions(three_regions[HOME].url, three_regions[SECOND])
    async with AsyncFailoverClient(config, client_name="checkout") as client:
        assert await client.client_getname() == "checkout"
        with pytest.raises(AuthenticationError):
            await client.auth("wrong", username="nobody")
        assert client.connection_pool.connection_kwargs["port"] == three_regions[HOME].port
        await asyncio.sleep(0)
