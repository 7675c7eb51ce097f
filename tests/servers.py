"""Bookkeeping for the real servers the suite starts: every one is stopped at the end,
and a failing test shows the last lines of the logs of the servers it used."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from devcluster import RedisServer
from devcluster.redis_server import RedisTls


class Server(Protocol):
    @property
    def running(self) -> bool: ...

    def stop(self) -> None: ...

    def log_tail(self, lines: int = 30) -> str: ...


STARTED: list[Server] = []


def track(server: Server) -> None:
    STARTED.append(server)


def stop_all() -> list[str]:
    """Stop every tracked server; return the names of those that were still running."""
    leftovers = []
    for server in STARTED:
        if server.running:
            leftovers.append(getattr(server, "name", type(server).__name__))
            server.stop()
    return leftovers


class RedisFactory:
    """Starts redis-servers for one test; all are stopped when the test ends."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.servers: list[RedisServer] = []

    def start(self, name: str, *, tls: RedisTls | None = None, **config: str) -> RedisServer:
        """Start a redis-server named `name` (TLS-only with `tls`); extra redis.conf
        settings as keyword args (underscores become dashes: repl_backlog_size="16kb")."""
        conf = {key.replace("_", "-"): value for key, value in config.items()}
        server = RedisServer(name, self.base_dir, config=conf, tls=tls)
        track(server)
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
