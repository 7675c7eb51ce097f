"""A local multi-region cluster: N redis-servers and one Kafka broker, started detached.

`python -m devcluster up` records what it started in .devcluster/state.json so that
`down` can stop exactly those processes later.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from devcluster.kafka_broker import KafkaBroker
from devcluster.redis_server import RedisServer

DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")


@dataclass
class ClusterState:
    base_dir: str
    kafka_bootstrap: str
    kafka_pid: int
    redis: dict[str, dict[str, int | str]]  # region -> {port, pid, url}


def state_path(base_dir: Path) -> Path:
    return base_dir / "state.json"


def start_cluster(base_dir: Path, regions: tuple[str, ...] = DEFAULT_REGIONS) -> ClusterState:
    """Start one redis-server per region and one Kafka broker, detached from this process."""
    base_dir.mkdir(parents=True, exist_ok=True)
    started: list[RedisServer | KafkaBroker] = []
    try:
        broker = KafkaBroker(base_dir)
        broker.start(detach=True)
        started.append(broker)
        redis: dict[str, dict[str, int | str]] = {}
        for region in regions:
            server = RedisServer(region, base_dir)
            server.start(detach=True)
            started.append(server)
            redis[region] = {"port": server.port, "pid": server.pid or 0, "url": server.url}
    except BaseException:
        for proc in started:
            proc.stop()
        raise
    state = ClusterState(str(base_dir), broker.bootstrap, broker.pid or 0, redis)
    state_path(base_dir).write_text(json.dumps(asdict(state), indent=2) + "\n")
    return state


def load_state(base_dir: Path) -> ClusterState | None:
    path = state_path(base_dir)
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, timeout_s: float = 30.0) -> None:
    if pid <= 0 or not _alive(pid):
        return
    os.kill(pid, signal.SIGCONT)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
        _reap(pid)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_cluster(base_dir: Path) -> ClusterState | None:
    """Stop every process recorded by start_cluster; returns what was stopped."""
    state = load_state(base_dir)
    if state is None:
        return None
    for info in state.redis.values():
        _terminate(int(info["pid"]))
    _terminate(state.kafka_pid)
    state_path(base_dir).unlink(missing_ok=True)
    return state


def describe(state: ClusterState) -> str:
    lines = [f"kafka    {state.kafka_bootstrap}  (pid {state.kafka_pid})"]
    for region, info in state.redis.items():
        lines.append(f"redis    {region:<10} {info['url']}  (pid {info['pid']})")
    return "\n".join(lines)
