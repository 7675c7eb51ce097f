"""Three (or more) real regions for end-to-end tests: a redis-server and a daemon (started
through the CLI, `reconciler run`) per region, on the session's Kafka broker, each test
with its own topic prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from devcluster import KafkaBroker
from devcluster.daemons import keyring_of, wait_for
from devcluster.redis_server import RedisTls
from devcluster.regions import REGIONS, LocalRegions, merged
from tests.servers import RedisFactory, track

State = tuple[str, Any, int]  # type, value, absolute expiry ms (0 none)


def key_state(client: redis.Redis, key: bytes) -> State | None:
    kind = client.type(key).decode()  # type: ignore[union-attr]
    if kind == "none":
        return None
    value: Any
    if kind == "string":
        value = client.get(key)
    elif kind == "hash":
        value = client.hgetall(key)
    elif kind == "list":
        value = client.lrange(key, 0, -1)
    elif kind == "set":
        value = client.smembers(key)
    elif kind == "zset":
        value = client.zrange(key, 0, -1, withscores=True)
    else:
        value = kind
    expiry = client.execute_command("PEXPIRETIME", key)
    return kind, value, max(0, int(expiry))


def snapshot(client: redis.Redis) -> dict[bytes, State]:
    """Every user key's logical state (internal `__rr:` keys left out)."""
    out: dict[bytes, State] = {}
    for key in client.scan_iter(count=1000):
        if key.startswith(b"__rr:"):
            continue
        state = key_state(client, key)
        if state is not None:
            out[key] = state
    return out


class Regions(LocalRegions):
    """The suite's regions: servers from the session's factory (stopped by its fixture),
    daemons tracked for the end-of-session check, a plain redis-py client per region, and
    a fresh topic prefix per test. Servers start at construction, daemons at `start()`."""

    def __init__(
        self,
        base: Path,
        kafka: KafkaBroker,
        redis_factory: RedisFactory,
        names: tuple[str, ...] = REGIONS,
        overrides: dict[str, Any] | None = None,
        redis_config: dict[str, str] | None = None,
        daemon_user: str | None = None,
        region_overrides: dict[str, dict[str, Any]] | None = None,
        redis_tls: RedisTls | None = None,
        daemon_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """`redis_tls`: every redis-server is TLS-only, daemons and test clients connect
        with rediss:// and the client certificate."""
        if redis_tls is not None:
            tls_keys = {
                "tls_ca_file": str(redis_tls.ca.cert),
                "tls_cert_file": str(redis_tls.client.cert),
                "tls_key_file": str(redis_tls.client.key),
            }
            overrides = merged(overrides or {}, {"redis": tls_keys})
        super().__init__(
            base,
            names=names,
            broker=kafka,
            start_server=lambda n: redis_factory.start(n, tls=redis_tls, **(redis_config or {})),
            overrides=overrides,
            region_overrides=region_overrides,
            topic_prefix=f"t{uuid.uuid4().hex[:10]}",
            redis_user=daemon_user,
            start_daemons=False,
            on_daemon=track,
            daemon_env=daemon_env,
        )
        self.kafka = kafka
        self.start_servers()
        ssl_options = redis_tls.client_options.redis_py_options() if redis_tls else {}
        self.clients = {
            n: redis.Redis(
                host="127.0.0.1", port=s.port, socket_timeout=10, ssl=bool(redis_tls), **ssl_options
            )
            for n, s in self.servers.items()
        }
        self.write_configs()
        # Every region's keys: to read what the daemons put on the wire, or to sign as one.
        self.keyring = keyring_of(base / "configs")

    def start(self) -> None:
        self.start_daemons()

    def stop(self) -> None:
        """Stop the daemons and close the clients (the servers belong to the factory)."""
        self.stop_daemons()
        for client in self.clients.values():
            client.close()

    def snapshots(self) -> dict[str, dict[bytes, State]]:
        return {n: snapshot(c) for n, c in self.clients.items()}

    def converged(self) -> bool:
        snaps = list(self.snapshots().values())
        return all(s == snaps[0] for s in snaps[1:])

    def wait_converged(self, timeout_s: float = 60.0) -> dict[bytes, State]:
        """Wait until every region holds the same logical data; returns it."""
        wait_for(self.converged, timeout_s, "all regions to hold the same data", 0.25)
        return snapshot(self.clients[self.names[0]])


@contextmanager
def running_regions(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory, **kwargs: Any
) -> Iterator[Regions]:
    regions = Regions(tmp_path, kafka, redis_factory, **kwargs)
    try:
        regions.start()
        yield regions
    finally:
        regions.stop()
