"""The fault proxy injects exactly the faults it is asked for, against a real Redis."""

from __future__ import annotations

import contextlib
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devcluster import RedisServer
from tests.tcpproxy import Fault, TcpProxy

pytestmark = pytest.mark.integration


def plain_client(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A redis-py client that never retries, so every injected fault is visible."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


def test_pass_through_forwards_commands_and_replies(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url) as client:
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert proxy.stats.forwarded >= 2
        assert proxy.stats.dropped == 0


def test_delay_adds_latency_to_every_request(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url) as client:
        client.ping()  # connect outside the measurement
        proxy.set_fault(Fault.delay(150))
        start = time.monotonic()
        client.ping()
        assert time.monotonic() - start >= 0.15
        proxy.set_fault(Fault.none())


def test_a_delay_longer_than_the_timeout_is_a_client_timeout(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url, timeout_s=0.2) as client:
        client.ping()
        proxy.set_fault(Fault.delay(600))
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()


def test_dropped_requests_never_reach_the_server(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url) as client:
        client.ping()
        proxy.set_fault(Fault.drop_requests(1.0))
        with pytest.raises(redis.exceptions.ConnectionError):
            client.incr("n")
        proxy.set_fault(Fault.none())
        assert client.get("n") is None
        assert proxy.stats.dropped == 1


def test_dropped_after_forward_requests_execute_but_lose_their_reply(
    redis_server: RedisServer,
) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url) as client:
        client.ping()
        proxy.set_fault(Fault.drop_requests(1.0, after_forward=True))
        with pytest.raises(redis.exceptions.ConnectionError):
            client.incr("n")
        proxy.set_fault(Fault.none())
        assert client.get("n") == b"1"


def test_a_fraction_of_requests_is_dropped(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port, seed=7) as proxy, plain_client(proxy.url) as client:
        proxy.set_fault(Fault.drop_requests(0.25))
        for _ in range(200):
            # About a quarter of the requests fail: that is the fault under test.
            with contextlib.suppress(redis.exceptions.ConnectionError):
                client.ping()
        # Reconnect handshakes are requests too, so count at the proxy. At least 200 draws
        # at p=0.25: 0.15..0.35 holds with overwhelming odds (and the seed is fixed).
        stats = proxy.stats
        assert stats.requests >= 200
        assert 0.15 <= stats.dropped / stats.requests <= 0.35


def test_cut_off_resets_open_connections_and_refuses_new_ones(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url) as client:
        client.ping()
        proxy.set_fault(Fault.cut_off())
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        with pytest.raises(redis.exceptions.ConnectionError), plain_client(proxy.url) as fresh:
            fresh.ping()
        proxy.set_fault(Fault.none())
        assert client.ping() is True


def test_reset_connections_refuses_new_connections_only(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url) as client:
        client.ping()
        proxy.set_fault(Fault.reset_connections(1.0))
        assert client.ping() is True  # an open connection is untouched
        with pytest.raises(redis.exceptions.ConnectionError), plain_client(proxy.url) as fresh:
            fresh.ping()


def test_blackhole_accepts_and_never_answers(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy, plain_client(proxy.url, timeout_s=0.3) as client:
        proxy.set_fault(Fault.blackhole())
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
        assert proxy.stats.swallowed >= 1


def test_a_fault_rejects_fractions_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="drop_request_fraction"):
        Fault.drop_requests(1.5)
    with pytest.raises(ValueError, match="delay_ms"):
        Fault.delay(-1)
