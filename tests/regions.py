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
from devcluster.daemons import DaemonProcess, keyring_of, wait_for, write_config
from devcluster.redis_server import RedisTls
from tests.servers import RedisFactory, track

REGIONS = ("eu-west", "us-east", "ap-south")

State = tuple[str, Any, int]  # type, value, absolute expiry ms (0 none)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition (0.0 if absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return 0.0


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


class Regions:
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
    ) -> None:
        """`redis_tls`: every redis-server is TLS-only, daemons and test clients connect
        with rediss:// and the client certificate."""
        self.base = base
        self.kafka = kafka
        self.names = names
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.servers = {
            n: redis_factory.start(n, tls=redis_tls, **(redis_config or {})) for n in names
        }
        self.daemons: dict[str, DaemonProcess] = {}
        ssl_options = redis_tls.client_options.redis_py_options() if redis_tls else {}
        self.clients = {
            n: redis.Redis(
                host="127.0.0.1", port=s.port, socket_timeout=10, ssl=bool(redis_tls), **ssl_options
            )
            for n, s in self.servers.items()
        }
        if redis_tls is not None:
            tls_keys = {
                "tls_ca_file": str(redis_tls.ca.cert),
                "tls_cert_file": str(redis_tls.client.cert),
                "tls_key_file": str(redis_tls.client.key),
            }
            overrides = _merged(overrides or {}, {"redis": tls_keys})
        for name in names:
            url = self.servers[name].url
            if daemon_user:
                url = url.replace("redis://", f"redis://{daemon_user}@")
            config = write_config(
                base / "configs",
                name,
                [p for p in names if p != name],
                url,
                kafka.bootstrap,
                topic_prefix=self.prefix,
                overrides=_merged(overrides or {}, (region_overrides or {}).get(name, {})),
            )
            daemon = DaemonProcess(name, config)
            track(daemon)
            self.daemons[name] = daemon
        # Every region's keys: to read what the daemons put on the wire, or to sign as one.
        self.keyring = keyring_of(base / "configs")

    def start(self) -> None:
        for daemon in self.daemons.values():
            daemon.start()

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()
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

    def wait_status(self, status: str = "consistent", timeout_s: float = 60.0) -> None:
        wait_for(
            lambda: all(d.get("/status")["status"] == status for d in self.daemons.values()),
            timeout_s,
            f"every daemon to report {status}",
            0.25,
        )

    def topic(self, region: str) -> str:
        return f"{self.prefix}.changes.{region}"


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with the tables of `extra` merged in (one level: [admin] port, ...)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


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
