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
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from replication.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.service.daemon import Daemon

log = logging.getLogger(__name__)

SESSION_TIMEOUT_S = 24 * 3600.0


def admin_file(state_dir: Path, region: str) -> Path:
    return state_dir / f"admin-{region}.json"


class AdminServer:
    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        self.daemon = daemon
        self.host = host
        self.port = port
        self.registry = CollectorRegistry()
        self.registry.register(daemon.collector)
        ProcessCollector(registry=self.registry)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="admin", daemon=True)
        self._thread.start()
        path = admin_file(self.daemon.state_dir, self.daemon.region)
        path.write_text(json.dumps({"host": self.host, "port": self.port}) + "\n")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        admin_file(self.daemon.state_dir, self.daemon.region).unlink(missing_ok=True)

    def run_on_loop(self, coro: Any, timeout_s: float) -> Any:
        if self._loop is None:
            raise RuntimeError("admin server not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def status(self) -> dict[str, Any]:
        d = self.daemon
        return {
            "region": d.region,
            "status": d.state.status,
            "since_ms": d.state.since_ms,
            "last_repair_ms": d.state.last_repair_ms,
            "gaps": d.state.gaps,
            "pending_peers": sorted(d.state.pending_peers),
            "peers": {
                p.region: {"alive": p.alive, "status": p.status, "lag": p.lag}
                for p in d.peers.state.values()
            },
            "capture": vars(d.outbound.stats),
            "apply": vars(d.inbound.stats),
            "merkle_keys": {str(db): t.keys for db, t in d.trees.items()},
        }


def _handler_for(admin: AdminServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "reconciler-admin"

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

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                stopping = admin.daemon._stopping.is_set()
                code = HTTPStatus.SERVICE_UNAVAILABLE if stopping else HTTPStatus.OK
                self._json(code, {"ok": not stopping, "status": admin.daemon.state.status})
            elif path == "/status":
                self._json(HTTPStatus.OK, admin.status())
            elif path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(admin.registry), CONTENT_TYPE_LATEST)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path}"})

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            modes = {"/repair": "repair", "/verify": "verify", "/resync": "resync"}
            mode = modes.get(parts.path)
            if mode is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {parts.path}"})
                return
            if mode == "repair" and query.get("dry_run") in ("1", "true", "yes"):
                mode = "dry-run"
            peer = query.get("peer", "")
            try:
                report = admin.run_on_loop(
                    admin.daemon.operator_session(peer, mode, "operator command"),
                    SESSION_TIMEOUT_S,
                )
            except ReconcilerError as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            self._json(HTTPStatus.OK, report.to_json())

    return Handler
