"""Daemon processes for local regions: write a region's config, run `reconciler run`."""

from __future__ import annotations

import json
import secrets
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

from devcluster.ports import wait_until
from devcluster.process import ServerProcess
from replication.model.auth import Keyring

KEYS_FILE = "keys"

# Faster timings than production defaults, so tests and the demo move quickly.
FAST = {
    "heartbeat": {"interval_s": 0.5, "peer_timeout_s": 3.0},
    "status": {"refresh_s": 0.5, "ttl_s": 3.0},
    "antientropy": {"retry_interval_s": 2.0, "request_timeout_s": 20.0},
    "admin": {"port": 0},
    "kafka": {"partitions": 4, "linger_ms": 2},
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def render_toml(data: dict[str, Any]) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{name}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in table.items())
        for name, table in data.items()
        if isinstance(table, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def write_config(
    directory: Path,
    region: str,
    peers: list[str],
    redis_url: str,
    bootstrap: str,
    *,
    topic_prefix: str = "reconciler",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """A daemon config for a local region (fast test timings); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "region": region,
        "peers": peers,
        "state_dir": str(directory / f"state-{region}"),
        "redis": {"url": redis_url},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": topic_prefix},
        "auth": {"keys_file": str(ensure_keys(directory, [region, *peers]))},
    }
    # Operator commands (POST) need the admin endpoint's bearer token: one per region.
    token = directory / f"admin-token-{region}"
    if not token.exists():
        token.write_text(secrets.token_hex(24) + "\n")
        token.chmod(0o600)
    data["admin"] = {"token_file": str(token)}
    data = _merge(_merge(data, FAST), overrides or {})
    path = directory / f"{region}.toml"
    path.write_text(render_toml(data))
    return path


def ensure_keys(directory: Path, regions: list[str]) -> Path:
    """The keyring every region configured in `directory` shares (created with a random key
    per region, regions added as they appear; readable by the owner only)."""
    path = directory / KEYS_FILE
    text = path.read_text() if path.exists() else ""
    known = Keyring.parse(text).regions()
    missing = [r for r in regions if r not in known]
    if missing:
        path.touch(mode=0o600)
        with path.open("a") as f:
            f.write(Keyring.generate_text(missing))
    return path


def keyring_of(directory: Path) -> Keyring:
    """The keyring of the regions configured in `directory` (to sign or verify in tests)."""
    return Keyring.parse((directory / KEYS_FILE).read_text())


class DaemonProcess:
    """`reconciler run --config FILE` as a child process."""

    def __init__(self, region: str, config: Path) -> None:
        self.name = f"daemon-{region}"
        self.region = region
        self.config = config
        self.state_dir = config.parent / f"state-{region}"
        self.env: dict[str, str] = {}
        """Extra environment for the daemon (e.g. NOTIFY_SOCKET), set before start()."""
        self._process = ServerProcess(self.name, config.parent / f"{region}.log")

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, *, wait_s: float = 60.0) -> None:
        """Start and wait until the admin endpoint answers /health."""
        admin = self.state_dir / f"admin-{self.region}.json"
        admin.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "reconciler.cli", "run", "--config", str(self.config)]
        env_cwd = Path(__file__).resolve().parent.parent
        self._process.spawn(argv, cwd=env_cwd, env=self.env or None)
        try:
            wait_until(lambda: self._healthy(admin), timeout_s=wait_s, what=f"{self.name} health")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- log tail ---\n{self.log_tail()}") from None

    def _healthy(self, admin: Path) -> bool:
        if not self._process.running:
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
        try:
            return bool(self.get("/health")["ok"])
        except (OSError, ValueError, KeyError):
            return False

    def admin_url(self) -> str:
        data = json.loads((self.state_dir / f"admin-{self.region}.json").read_text())
        return f"http://{data['host']}:{data['port']}"

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.admin_url() + path, timeout=5) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read())
            return result

    def admin_token(self) -> str | None:
        """The bearer token of the daemon's admin endpoint, from its config."""
        admin = tomllib.loads(self.config.read_text()).get("admin", {})
        file = admin.get("token_file")
        return Path(file).read_text().strip() if file else None

    def post(self, path: str, timeout_s: float = 600) -> dict[str, Any]:
        request = urllib.request.Request(self.admin_url() + path, method="POST")  # noqa: S310
        token = self.admin_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read())
            return result

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin_url() + "/metrics", timeout=5) as response:  # noqa: S310
            return str(response.read().decode())

    def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM and wait (graceful: flush, ack, commit)."""
        self._process.stop(timeout_s=timeout_s)

    def kill9(self) -> None:
        self._process.kill9()

    def pause(self) -> None:
        self._process.pause()

    def resume(self) -> None:
        self._process.resume()

    def returncode(self) -> int | None:
        proc = self._process.proc
        return None if proc is None else proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines)


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll until predicate() is truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - "not yet"
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")
