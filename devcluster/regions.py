"""Local regions: a redis-server and a `reconciler run` daemon per region, on one broker.

The one set-up of servers and daemons, shared by the demo, the benchmarks and the tests
(`tests/regions.py` adds the suite's bookkeeping on top). Used as a context manager it
starts everything and stops it in reverse order, whatever happened in between:

    with LocalRegions(base, names=("eu-west", "us-east")) as regions:
        regions.wait_status("consistent")
        regions.servers["eu-west"].kill9()

Callers that must do something between the servers and the daemons (load keys, say) pass
`start_daemons=False` and call :meth:`start_daemons` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from devcluster.daemons import DaemonProcess, wait_for, write_config
from devcluster.kafka_broker import KafkaBroker
from devcluster.redis_server import RedisServer

REGIONS = ("eu-west", "us-east", "ap-south")

ServerStarter = Callable[[str], RedisServer]
"""Starts (and returns) the redis-server of a region, by its name."""


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with the tables of `extra` merged in (one level: [admin] port, ...)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


class LocalRegions:
    """Regions on loopback: servers, daemons (configs under `base/configs`), one broker."""

    def __init__(
        self,
        base: Path,
        *,
        names: tuple[str, ...] = REGIONS,
        broker: KafkaBroker | None = None,
        broker_heap_mb: int | None = None,  # None: the broker's default (512)
        redis_config: dict[str, str] | None = None,
        start_server: ServerStarter | None = None,
        overrides: dict[str, Any] | None = None,
        region_overrides: dict[str, dict[str, Any]] | None = None,
        topic_prefix: str = "reconciler",
        redis_user: str | None = None,
        start_daemons: bool = True,
        daemon_start_s: float = 60.0,
        on_daemon: Callable[[DaemonProcess], None] | None = None,
        daemon_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """`broker`: a running broker to use (else one of our own is started and stopped);
        `start_server`: how a region's redis-server is started (default: a `RedisServer`
        with `redis_config` under `base`); `overrides` / `region_overrides`: daemon config
        tables merged over the fast local defaults; `redis_user`: the ACL user the daemons
        connect as; `on_daemon`: called with each daemon before it starts; `daemon_env`:
        extra environment variables of each region's daemon."""
        self.base = base
        self.names = names
        self.prefix = topic_prefix
        self._own_broker = broker is None
        if broker is None:
            broker = KafkaBroker(base, heap_mb=broker_heap_mb or 512)
        self.broker = broker
        self._redis_config = redis_config or {}
        self._start_server = start_server or self._default_server
        self._overrides = overrides or {}
        self._region_overrides = region_overrides or {}
        self._redis_user = redis_user
        self._start_daemons = start_daemons
        self._daemon_start_s = daemon_start_s
        self._on_daemon = on_daemon
        self._daemon_env = daemon_env or {}
        self.servers: dict[str, RedisServer] = {}
        self.daemons: dict[str, DaemonProcess] = {}

    def _default_server(self, name: str) -> RedisServer:
        server = RedisServer(name, self.base, config=self._redis_config)
        server.start()
        return server

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalRegions:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the broker (if ours), the servers, and unless told not to the daemons."""
        if self._own_broker:
            self.broker.start()
        self.start_servers()
        self.write_configs()
        if self._start_daemons:
            self.start_daemons()

    def start_servers(self) -> None:
        """Start the redis-server of every region not started yet."""
        for name in self.names:
            if name not in self.servers:
                self.servers[name] = self._start_server(name)

    def write_configs(self) -> None:
        """A config per region (idempotent); the daemons are created, not started."""
        for name in self.names:
            if name in self.daemons:
                continue
            url = self.servers[name].url
            if self._redis_user:
                url = url.replace("://", f"://{self._redis_user}@", 1)
            config = write_config(
                self.base / "configs",
                name,
                [p for p in self.names if p != name],
                url,
                self.broker.bootstrap,
                topic_prefix=self.prefix,
                overrides=merged(self._overrides, self._region_overrides.get(name, {})),
            )
            daemon = DaemonProcess(name, config)
            daemon.env.update(self._daemon_env.get(name, {}))
            if self._on_daemon is not None:
                self._on_daemon(daemon)
            self.daemons[name] = daemon

    def start_daemons(self) -> None:
        """Start every daemon and wait for each one's health endpoint."""
        self.write_configs()
        for daemon in self.daemons.values():
            daemon.start(wait_s=self._daemon_start_s)

    def stop_daemons(self) -> None:
        """SIGTERM every daemon that runs and wait (graceful)."""
        for daemon in self.daemons.values():
            if daemon.running:
                daemon.stop()

    def stop(self) -> None:
        """Stop daemons, then servers, then the broker if it is ours."""
        self.stop_daemons()
        for server in self.servers.values():
            server.stop()
        if self._own_broker:
            self.broker.stop()

    # -- waiting ----------------------------------------------------------------------------

    def statuses(self) -> dict[str, str]:
        """Each daemon's status from its admin endpoint."""
        return {n: d.get("/status")["status"] for n, d in self.daemons.items()}

    def wait_status(
        self, status: str = "consistent", timeout_s: float = 60.0, interval_s: float = 0.25
    ) -> None:
        """Wait until every daemon reports `status`."""
        wait_for(
            lambda: all(s == status for s in self.statuses().values()),
            timeout_s,
            f"every daemon to report {status}",
            interval_s,
        )

    def topic(self, region: str) -> str:
        """The change topic of `region`."""
        return f"{self.prefix}.changes.{region}"
