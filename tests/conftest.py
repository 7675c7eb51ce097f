"""Fixtures that start real servers: redis-server per region, one Kafka broker per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devcluster import KafkaBroker, RedisServer
from replication.redis.library import library_source
from tests.faults.harness import broker_listeners
from tests.regions import Regions, running_regions
from tests.servers import RedisFactory, stop_all, track


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real Kafka broker (KRaft, single node) on a free loopback port, for the session."""
    # Listeners the fault suite reaches through a proxy per region (tests.faults.harness).
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), extra_listeners=broker_listeners())
    track(broker)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka(kafka_broker: KafkaBroker) -> Iterator[KafkaBroker]:
    """The session broker, guaranteed running (resumed) when a test that paused it ends."""
    try:
        yield kafka_broker
    finally:
        kafka_broker.resume()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """Start redis-servers on demand (`redis_factory.start("eu-west")`); all stop at the end."""
    factory = RedisFactory(tmp_path / "redis")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def redis_server(redis_factory: RedisFactory) -> RedisServer:
    """One real redis-server."""
    return redis_factory.start("r1")


@pytest.fixture
def three_regions(redis_factory: RedisFactory) -> dict[str, RedisServer]:
    """Three real redis-servers, one per region."""
    return {name: redis_factory.start(name) for name in ("eu-west", "us-east", "ap-south")}


@pytest.fixture
def regions(tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory) -> Iterator[Regions]:
    """Three real regions (redis-server + `reconciler run` each) on the session broker."""
    with running_regions(tmp_path, kafka, redis_factory) as running:
        yield running


@pytest.fixture(scope="module")
def library_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A sync client to a real redis-server (one per test module) with our Lua library
    loaded; for tests that call the library's functions many times (property tests)."""
    server = RedisServer("library", tmp_path_factory.mktemp("library"))
    track(server)
    server.start()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    client.function_load(library_source()[0], replace=True)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def _servers_of(item: pytest.Item) -> list[object]:
    found: list[object] = []
    for value in getattr(item, "funcargs", {}).values():
        candidates = value.values() if isinstance(value, dict) else [value]
        for candidate in candidates:
            if isinstance(candidate, RedisFactory):
                found.extend(candidate.servers)
            elif hasattr(candidate, "daemons") and hasattr(candidate, "servers"):
                found.extend(candidate.daemons.values())  # tests.regions.Regions
            elif hasattr(candidate, "log_tail"):
                found.append(candidate)
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        for server in _servers_of(item):
            name = getattr(server, "name", type(server).__name__)
            report.sections.append((f"log tail: {name}", server.log_tail(40)))  # type: ignore[attr-defined]
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftovers = stop_all()
    if leftovers:
        print(f"\nERROR: servers still running at session end (now stopped): {leftovers}")
        session.exitstatus = 1
