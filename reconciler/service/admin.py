"""The admin endpoint: health, Prometheus metrics, status, and the operator's commands.

    GET  /health            200 while running (503 once stopping), with the status
    GET  /status            JSON: status, peers, gaps, capture and apply counters
    GET  /metrics           Prometheus exposition
    POST /repair?peer=R[&dry_run=1]    run an anti-entropy session, answer its report
    POST /verify?peer=R                compare data and metadata with a peer, no repair
    POST /resync?peer=R                full resync from the peer, then a repair session

A small stdlib HTTP server in a thread; requests that need the daemon are run on its event
loop. It listens on loopback by default: it can trigger repairs, so keep it private. The
address it bound is written to <state_dir>/admin-<region>.json for the CLI.

Access: every POST needs `Authorization: Bearer <token>`, the token read from
`[admin] token_file` (without one configured, operator commands are refused); when the
endpoint is bound to a non-loopback address every request needs it (the config refuses such
a bind without a token). Operator sessions are de-duplicated (a second identical request
waits for the first one's report) and bounded (`MAX_OPERATOR_SESSIONS` distinct sessions,
`MAX_WAITING` requests waiting at once; beyond that: 429). Refused requests are counted by
reason (`reconciler_admin_refused_total`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import hmac
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from reconciler.configfile import Secret
from reconciler.consistency.modes import SessionMode
from reconciler.consistency.reports import RepairReport
from reconciler.service.config import is_loopback
from reconciler.service.parts import DaemonParts
from reconciler.service.state import now_ms
from replication.errors import ReconcilerError

OperatorSession = Callable[[str, SessionMode, str], Coroutine[Any, Any, "RepairReport"]]
"""Runs a session (peer, mode, trigger) for the operator and returns its report."""

log = logging.getLogger(__name__)

SESSION_TIMEOUT_S = 24 * 3600.0
MAX_OPERATOR_SESSIONS = 4  # distinct (peer, mode) sessions queued or running for operators
MAX_WAITING = 16  # HTTP requests waiting for a session's report at once (one thread each)
REQUEST_READ_TIMEOUT_S = 30.0  # a client that sends its request slower than this is dropped


class BusyError(ReconcilerError):
    """Too many operator requests at once (answered 429)."""

    retriable = True


class OperatorSessions:
    """Operator sessions by (peer, mode): identical requests share one session and its
    report; at most `max_sessions` distinct ones and `max_waiting` waiting requests."""

    def __init__(self, max_sessions: int = MAX_OPERATOR_SESSIONS, max_waiting: int = MAX_WAITING):
        self.max_sessions = max_sessions
        self.max_waiting = max_waiting
        self._lock = threading.RLock()  # a done callback may run inside run()
        self._running: dict[tuple[str, str], concurrent.futures.Future[Any]] = {}
        self._waiting = 0
        self.joined = 0  # requests that shared a session already queued

    def run(
        self,
        key: tuple[str, str],
        start: Callable[[], concurrent.futures.Future[Any]],
        timeout_s: float,
    ) -> Any:
        """The report of the session `key`, starting it with `start()` unless one is
        already queued or running. Raises BusyError when over the bounds."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise BusyError(
                    f"{self._waiting} operator requests are already waiting; retry later"
                )
            future = self._running.get(key)
            if future is None:
                if len(self._running) >= self.max_sessions:
                    raise BusyError(
                        f"{len(self._running)} operator sessions are already queued or running "
                        f"({', '.join(f'{m} {p}' for p, m in sorted(self._running))}); retry later"
                    )
                future = start()
                self._running[key] = future
                future.add_done_callback(functools.partial(self._finished, key))
            else:
                self.joined += 1
            self._waiting += 1
        try:
            return future.result(timeout_s)
        finally:
            with self._lock:
                self._waiting -= 1

    def _finished(self, key: tuple[str, str], future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._running)


def admin_file(state_dir: Path, region: str) -> Path:
    return state_dir / f"admin-{region}.json"


class AdminPortError(ReconcilerError):
    """The admin endpoint's address cannot be bound (in use, or not on this host)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        if cause.errno == errno.EADDRINUSE:
            why = "is already in use (another daemon on this host?)"
        else:
            why = f"cannot be bound ({cause.strerror or cause})"
        super().__init__(
            f"[admin] port = {port} on {host} {why}: give each region's daemon on a host its "
            "own [admin] port (0 picks a free one)"
        )


class AdminServer:
    """The admin endpoint: health, status and metrics for anyone on the bind address;
    operator sessions (POST) for holders of the bearer token."""

    def __init__(
        self,
        parts: DaemonParts,
        host: str,
        port: int,
        token: Secret | None,
        *,
        state_dir: Path,
        peers: tuple[str, ...],
        collector: Collector,
        operator_session: OperatorSession,
        stopping: Callable[[], bool],
    ) -> None:
        self.parts = parts
        self.host = host
        self.port = port
        self.token = token
        self.state_dir = state_dir
        self.peers = peers
        self.operator_session = operator_session
        self.stopping = stopping
        if self.token is None and not is_loopback(host):
            # The config refuses this too; a server built in code must not bypass it.
            raise ReconcilerError(
                f"admin endpoint on non-loopback {host!r} without a bearer token: "
                "set [admin] token_file"
            )
        self.sessions = OperatorSessions()
        self.refused: Counter[str] = Counter()  # refused requests by reason
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self.registry.register(_AdminCollector(self))
        ProcessCollector(registry=self.registry)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> ThreadingHTTPServer:
        """Take the configured address now (before the daemon connects to anything), so a
        port in use stops the daemon at once with a message naming the setting."""
        if self._server is not None:
            return self._server
        try:
            server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        except OSError as exc:
            raise AdminPortError(self.host, self.port, exc) from None
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        return server

    def start(self) -> None:
        """Serve requests (binding first if `bind` was not called) and record the address."""
        self._loop = asyncio.get_running_loop()
        server = self.bind()
        self._thread = threading.Thread(target=server.serve_forever, name="admin", daemon=True)
        self._thread.start()
        path = admin_file(self.state_dir, self.parts.region)
        path.write_text(json.dumps({"host": self.host, "port": self.port}) + "\n")

    def stop(self) -> None:
        """Stop serving and release the port; safe after a failed start and twice."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            if thread is not None:
                server.shutdown()  # waits for serve_forever: only when it runs
            server.server_close()
        admin_file(self.state_dir, self.parts.region).unlink(missing_ok=True)

    def run_on_loop(self, coro: Any, timeout_s: float) -> Any:
        return self.submit(coro).result(timeout_s)

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        if self._loop is None:
            coro.close()
            raise RuntimeError("admin server not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries the configured bearer token."""
        if self.token is None or not header:
            return False
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time: the comparison must not tell how much of a guess was right.
        return hmac.compare_digest(presented.strip().encode(), self.token.reveal().encode())

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def status(self) -> dict[str, Any]:
        """The body of `GET /status`."""
        d = self.parts
        return {
            "region": d.region,
            "status": d.state.status,
            "since_ms": d.state.since_ms,
            "last_repair_ms": d.state.last_repair_ms,
            "gaps": d.state.gaps,
            "pending_peers": sorted(d.region_state.pending),
            # Why the status is what it is: `consistent` needs verified, no session running
            # or queued, and the applier within status.consistent_max_lag_s of the peers.
            "verified": d.region_state.verified,
            "sessions_running": d.region_state.running,
            "caught_up": d.region_state.caught_up,
            "applied_behind_ms": d.catch_up.lag_ms(now_ms()),
            "deadletters": d.dead_letters.count,
            "inbound_lag": d.state.inbound_lag,
            "peers": {
                p.region: {
                    "alive": p.alive,
                    "status": p.status,
                    "lag": p.lag,
                    "since_ms": p.since_ms,
                    "last_repair_ms": p.last_repair_ms,
                    "capture_offset": p.capture_offset,
                    "deadletters": p.deadletters,
                    "heard_ms": p.at_ms,
                }
                for p in d.peers.state.values()
            },
            "capture": vars(d.outbound.stats),
            "apply": vars(d.inbound.stats),
            "merkle_keys": {str(db): t.keys for db, t in d.trees.items()},
        }


def _handler_for(admin: AdminServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "reconciler-admin"
        timeout = REQUEST_READ_TIMEOUT_S  # socket timeout: a stalled client frees its thread

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("admin: %s", format % args)

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: Any) -> None:
            self._send(code, (json.dumps(data, indent=1) + "\n").encode())

        def _refuse(self, code: int, reason: str, message: str) -> None:
            admin.refused[reason] += 1
            log.warning(
                "admin request refused: reason=%s path=%s", reason, urlsplit(self.path).path
            )
            if code == HTTPStatus.UNAUTHORIZED:
                self.send_response(code)
                body = (json.dumps({"error": message}) + "\n").encode()
                self.send_header("WWW-Authenticate", 'Bearer realm="reconciler"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self._json(code, {"error": message})

        def _allowed(self, *, operator: bool) -> bool:
            """Check the bearer token where one is needed; answers the refusal itself."""
            if not operator and admin.loopback:
                return True
            if admin.token is None:
                self._refuse(
                    HTTPStatus.FORBIDDEN,
                    "no_token_configured",
                    "operator commands need a bearer token: set [admin] token_file in this "
                    "daemon's config (the CLI reads it from the same file)",
                )
                return False
            if not admin.authorized(self.headers.get("Authorization")):
                self._refuse(
                    HTTPStatus.UNAUTHORIZED,
                    "bad_token",
                    "missing or wrong bearer token (Authorization: Bearer <[admin] token_file>)",
                )
                return False
            return True

        def do_GET(self) -> None:
            if not self._allowed(operator=False):
                return
            path = urlsplit(self.path).path
            if path == "/health":
                stopping = admin.stopping()
                code = HTTPStatus.SERVICE_UNAVAILABLE if stopping else HTTPStatus.OK
                self._json(code, {"ok": not stopping, "status": admin.parts.state.status})
            elif path == "/status":
                self._json(HTTPStatus.OK, admin.status())
            elif path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(admin.registry), CONTENT_TYPE_LATEST)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path}"})

        def do_POST(self) -> None:
            if not self._allowed(operator=True):
                return
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            modes = {
                "/repair": SessionMode.REPAIR,
                "/verify": SessionMode.VERIFY,
                "/resync": SessionMode.RESYNC,
            }
            mode = modes.get(parts.path)
            if mode is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {parts.path}"})
                return
            if mode == "repair" and query.get("dry_run") in ("1", "true", "yes"):
                mode = SessionMode.DRY_RUN
            peer = query.get("peer", "")
            peers = list(admin.peers)
            if peer not in peers:
                self._refuse(
                    HTTPStatus.BAD_REQUEST,
                    "unknown_peer",
                    f"unknown peer {peer!r} (peers: {peers})",
                )
                return
            try:
                report = admin.sessions.run(
                    (peer, mode),
                    lambda: admin.submit(admin.operator_session(peer, mode, "operator command")),
                    SESSION_TIMEOUT_S,
                )
            except BusyError as exc:
                self._refuse(HTTPStatus.TOO_MANY_REQUESTS, "busy", str(exc))
                return
            except ReconcilerError as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            self._json(HTTPStatus.OK, report.to_json())

    return Handler


class _AdminCollector(Collector):
    """The endpoint's own metrics: refusals by reason, operator sessions in the queue."""

    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin

    def collect(self) -> Iterator[Metric]:
        region = self.admin.parts.region
        refused = CounterMetricFamily(
            "reconciler_admin_refused",
            "Admin requests refused, by reason (token, unknown peer, busy)",
            labels=["region", "reason"],
        )
        for reason, n in sorted(self.admin.refused.items()):
            refused.add_metric([region, reason], n)
        yield refused
        sessions = GaugeMetricFamily(
            "reconciler_admin_operator_sessions",
            "Operator sessions queued or running",
            labels=["region"],
        )
        sessions.add_metric([region], self.admin.sessions.queued)
        yield sessions
