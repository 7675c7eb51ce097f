"""One real redis-server process on a loopback port, in its own directory."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from devcluster.certs import CertificateAuthority, KeyPair
from devcluster.ports import LOOPBACK, free_port, wait_until
from devcluster.process import ServerProcess
from replication.redis.address import RedisAddress
from replication.tls import TlsOptions

# Settings every local server gets. AOF (fsync every second) so that a kill -9 followed by
# a restart "with its data" keeps what was written up to a second before.
BASE_CONFIG: dict[str, str] = {
    "bind": LOOPBACK,
    "protected-mode": "no",
    "daemonize": "no",
    "appendonly": "yes",
    "appendfsync": "everysec",
    "save": '""',
    "dbfilename": "dump.rdb",
    "logfile": "redis.log",
    "loglevel": "notice",
    # The daemon's capture registers as a replica: a full sync must not wait 5 s (the
    # default) for other replicas to join a diskless transfer.
    "repl-diskless-sync-delay": "0",
}

CAPTURE_GUARD: dict[str, str] = {
    # A region takes no write its daemon would not capture: Redis refuses writes while no
    # replica acknowledges, and the daemon's capture is that replica (docs/capture.md,
    # "Refusing writes nothing captures"). The capture acknowledges every second.
    "min-replicas-to-write": "1",
    "min-replicas-max-lag": "3",
}


@dataclass(frozen=True)
class RedisTls:
    """A TLS-only server (``port 0``): its certificate, the CA clients must trust, and the
    certificate the suite's own connections present (``tls-auth-clients yes``)."""

    ca: CertificateAuthority
    server: KeyPair
    client: KeyPair

    @classmethod
    def make(cls, directory: Path) -> RedisTls:
        """A fresh CA with a server and a client certificate in `directory`."""
        ca = CertificateAuthority(directory)
        return cls(ca, ca.issue("redis-server"), ca.issue("redis-client", server=False))

    @property
    def client_options(self) -> TlsOptions:
        """What a client trusting the CA and presenting the client certificate uses."""
        return self.ca.client_options(self.client)


class RedisServer:
    """A redis-server with start/stop/kill -9/restart (with data, empty, or from a snapshot).

    With `tls`, it listens only on a TLS port (``self.port``) and requires a client
    certificate signed by the CA; `url` is then rediss:// and `address` carries the options.
    """

    def __init__(
        self,
        name: str,
        base_dir: Path,
        *,
        port: int | None = None,
        config: dict[str, str] | None = None,
        tls: RedisTls | None = None,
    ) -> None:
        self.name = name
        self.dir = base_dir / name
        self.port = port or free_port()
        self.tls = tls
        self.config = {**BASE_CONFIG, **(config or {})}
        self._process = ServerProcess(f"redis-{name}", self.dir / "redis.log")

    def _connect(self, timeout_s: float) -> socket.socket:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=timeout_s)
        if self.tls is None:
            return sock
        try:
            return self.tls.client_options.context().wrap_socket(sock, server_hostname=LOOPBACK)
        except BaseException:
            sock.close()
            raise

    def _ping(self) -> bool:
        """True once the server answers PING with PONG (not LOADING, not refused)."""
        try:
            with self._connect(0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except (OSError, ssl.SSLError):
            return False

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{LOOPBACK}:{self.port}/0"

    @property
    def address(self) -> RedisAddress:
        """The server's database 0, for the project's own connections and capture."""
        tls = self.tls.client_options if self.tls is not None else None
        return RedisAddress(LOOPBACK, self.port, tls=tls)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.running

    def _write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.tls is None:
            lines = [f"port {self.port}", f"dir {self.dir}"]
        else:
            lines = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server.cert}",
                f"tls-key-file {self.tls.server.key}",
                f"tls-ca-cert-file {self.tls.ca.cert}",
                "tls-auth-clients yes",
                f"dir {self.dir}",
            ]
        lines += [f"{key} {value}" for key, value in self.config.items()]
        path = self.dir / "redis.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, *, detach: bool = False, timeout_s: float = 20.0) -> None:
        """Start the server and wait until it answers PING."""
        conf = self._write_config()
        self._process.spawn(["redis-server", str(conf)], cwd=self.dir, detach=detach)
        try:
            wait_until(
                lambda: self._process.running and self._ping(),
                timeout_s=timeout_s,
                what=f"redis-server {self.name} on port {self.port}",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- log tail ---\n{self.log_tail()}") from None

    def stop(self) -> None:
        # Redis refuses a SIGTERM while it writes its first AOF (after a restore or a full
        # sync: "Writing initial AOF, can't exit") and does not try again: ask again.
        self._process.stop(term_every_s=0.5)

    def kill9(self) -> None:
        """Crash it: SIGKILL, no shutdown save."""
        self._process.kill9()

    def pause(self) -> None:
        self._process.pause()

    def resume(self) -> None:
        self._process.resume()

    def wipe_data(self) -> None:
        """Delete the RDB and AOF files (the server must be stopped)."""
        for path in (self.dir / "dump.rdb", self.dir / "appendonlydir"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def snapshot(self, dest: Path) -> Path:
        """SAVE and copy the RDB file to dest, for a later restore from an old snapshot."""
        with self._connect(30) as sock:
            sock.sendall(b"SAVE\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"SAVE on {self.name} answered {reply!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.dir / "dump.rdb", dest)
        return dest

    def restart(
        self, *, keep_data: bool = True, from_snapshot: Path | None = None, crash: bool = True
    ) -> None:
        """Restart on the same port: with its data, empty, or from an RDB snapshot.

        crash=True kills it with SIGKILL first (no final save), like a machine failure.
        """
        if crash:
            self.kill9()
        else:
            self.stop()
        if from_snapshot is not None or not keep_data:
            self.wipe_data()
        if from_snapshot is not None:
            shutil.copyfile(from_snapshot, self.dir / "dump.rdb")
            # With AOF on, redis would load the (now empty) AOF instead of the RDB:
            # start this once from the RDB alone, then turn AOF back on live.
            self.config = {**self.config, "appendonly": "no"}
            self.start()
            self._command("CONFIG", "SET", "appendonly", "yes")
            self.config = {**self.config, "appendonly": "yes"}
            self._wait_aof_written()
            return
        self.start()

    def _wait_aof_written(self, timeout_s: float = 30.0) -> None:
        # Until the first AOF is written, the restored data lives only in memory, and Redis
        # refuses SIGTERM ("Writing initial AOF, can't exit"): every later stop would
        # wait out its timeout and end in SIGKILL.
        deadline = time.monotonic() + timeout_s
        while b"aof_rewrite_in_progress:0" not in (
            info := self._command("INFO", "persistence")
        ) or (b"aof_rewrite_scheduled:0" not in info):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the first AOF after a restore was not written")
            time.sleep(0.02)

    def _command(self, *args: str) -> bytes:
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with self._connect(30) as sock:
            sock.sendall(payload)
            return sock.recv(4096)

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines)
