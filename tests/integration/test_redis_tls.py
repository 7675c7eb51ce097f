"""Redis over TLS, against real TLS-only redis-servers (``port 0``, a client certificate
required) with certificates made by the test: daemons capture (PSYNC or keyspace
notifications) and apply through rediss://, two regions converge; the failover client (sync
and asyncio) reads and writes over rediss://; a client that does not trust the CA is
refused with a clear reason."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis

from devcluster import KafkaBroker
from devcluster.daemons import DaemonProcess, write_config
from devcluster.redis_server import RedisTls
from reconciler.client import AsyncFailoverClient, ClientConfig, FailoverClient, RegionConfig
from replication.redis.address import RedisAddress
from replication.redis.resp import RedisUnavailableError, RespConnection
from replication.tls import TlsOptions
from tests.regions import running_regions
from tests.servers import RedisFactory, track

pytestmark = pytest.mark.integration

NAMES = ("eu-west", "us-east")


@pytest.fixture
def redis_tls(tmp_path: Path) -> RedisTls:
    return RedisTls.make(tmp_path / "certs")


def region_config(name: str, url: str, tls: RedisTls | None, *, trust: bool = True) -> RegionConfig:
    if tls is None:
        return RegionConfig(name=name, url=url)
    return RegionConfig(
        name=name,
        url=url,
        tls_ca_file=str(tls.ca.cert) if trust else None,
        tls_cert_file=str(tls.client.cert),
        tls_key_file=str(tls.client.key),
    )


@pytest.mark.parametrize("capture", ["psync", "notifications"])
def test_daemons_replicate_over_rediss_and_the_failover_client_uses_it(
    tmp_path: Path,
    kafka: KafkaBroker,
    redis_factory: RedisFactory,
    redis_tls: RedisTls,
    capture: str,
) -> None:
    with running_regions(
        tmp_path,
        kafka,
        redis_factory,
        names=NAMES,
        redis_tls=redis_tls,
        overrides={"redis": {"capture": capture}},
    ) as regions:
        for server in regions.servers.values():
            assert server.url.startswith("rediss://")
            # TLS only: plain RESP on the port gets no answer.
            plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
            with pytest.raises(redis.ConnectionError):
                plain.ping()
            plain.close()
        for name, client in regions.clients.items():
            client.set(f"{name}:k", name)
            client.hset(f"{name}:h", mapping={"f": "v"})
        data = regions.wait_converged(timeout_s=60)
        assert data[b"eu-west:k"][1] == b"eu-west"
        assert data[b"us-east:k"][1] == b"us-east"
        for client in regions.clients.values():
            # The capture's PSYNC link is a replica connection, over TLS like the rest; the
            # notification source subscribes instead.
            replicas = client.info("replication")["connected_slaves"]
            assert replicas >= 1 if capture == "psync" else replicas == 0

        config = ClientConfig(
            regions=tuple(region_config(n, regions.servers[n].url, redis_tls) for n in NAMES)
        )
        with FailoverClient(config) as client:
            assert client.set("from-client", "sync")
            assert client.get("from-client") == b"sync"

        async def use_async() -> bytes | None:
            async with AsyncFailoverClient(config) as aclient:
                await aclient.set("from-aclient", "async")
                value: bytes | None = await aclient.get("from-aclient")
                return value

        assert asyncio.run(use_async()) == b"async"
        # Written through the client on the home region, replicated to the other one.
        data = regions.wait_converged(timeout_s=60)
        assert data[b"from-client"][1] == b"sync"
        assert data[b"from-aclient"][1] == b"async"


def test_a_client_that_does_not_trust_the_ca_is_refused_with_the_reason(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory, redis_tls: RedisTls
) -> None:
    server = redis_factory.start("eu-west", tls=redis_tls)
    # The daemon's own connection: system CAs only, the test CA is unknown to them.
    untrusting = RedisAddress.from_url(server.url, tls=TlsOptions())

    async def connect() -> None:
        await RespConnection.open(untrusting)

    with pytest.raises(RedisUnavailableError, match="certificate was not accepted") as info:
        asyncio.run(connect())
    assert "tls_ca_file" in str(info.value)

    # The failover client: every region refuses, and the error says why.
    config = ClientConfig(regions=(region_config("eu", server.url, redis_tls, trust=False),))
    with FailoverClient(config) as client, pytest.raises(redis.ConnectionError) as refused:
        client.get("k")
    assert "certificate verify failed" in str(refused.value)

    # A daemon without tls_ca_file stops at start, saying which key to check.
    client_cert = {
        "tls_cert_file": str(redis_tls.client.cert),
        "tls_key_file": str(redis_tls.client.key),
    }
    config = write_config(
        tmp_path / "configs",
        "eu-west",
        ["us-east"],
        server.url,
        kafka.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        overrides={"redis": client_cert},
    )
    daemon = DaemonProcess("eu-west", config)
    track(daemon)
    with pytest.raises(RuntimeError, match="exited"):
        daemon.start(wait_s=60)
    assert daemon.returncode() == 1
    assert "the server's certificate was not accepted" in daemon.log_tail(20)
    assert "check 'tls_ca_file'" in daemon.log_tail(20)

    # Trusting the CA, the same server answers: the refusal was the certificate, nothing else.
    trusted = ClientConfig(regions=(region_config("eu", server.url, redis_tls),))
    with FailoverClient(trusted) as client:
        assert client.ping()
