"""The daemon under systemd's notification protocol, and the admin port's failure mode:
real daemons started through the CLI (`reconciler run`) against real servers, talking to a
real AF_UNIX datagram socket the test listens on."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from devcluster.ports import free_port
from tests.regions import Regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Listener:
    """The service manager's end: a datagram socket, and every message it received."""

    def __init__(self, name: str) -> None:
        self.name = name  # as $NOTIFY_SOCKET spells it: "@" is the abstract namespace
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name.removeprefix("@") if name.startswith("@") else name)
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []

    def receive(self) -> None:
        try:
            while True:
                self.messages.append(self.sock.recv(65536).decode().split("\n"))
        except TimeoutError:
            pass

    def wait(
        self, what: str, predicate: Callable[[list[str]], bool], timeout_s: float = 90.0
    ) -> None:
        def found() -> bool:
            self.receive()
            return any(predicate(m) for m in self.messages)

        wait_for(found, timeout_s, what, interval_s=0.05)

    def assignments(self, key: str) -> list[str]:
        return [a.split("=", 1)[1] for m in self.messages for a in m if a.startswith(key + "=")]


@pytest.fixture
def listener() -> Iterator[Listener]:
    # An abstract-namespace address, as systemd itself may pass ("@..." in $NOTIFY_SOCKET).
    sock = Listener(f"@reconciler-notify-{uuid.uuid4().hex}")
    try:
        yield sock
    finally:
        sock.sock.close()


def test_ready_status_watchdog_and_stopping_reach_the_notify_socket(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory, listener: Listener
) -> None:
    regions = Regions(tmp_path, kafka, redis_factory, names=("eu-west", "us-east"))
    watched = regions.daemons["eu-west"]
    watched.env = {
        "NOTIFY_SOCKET": listener.name,
        "WATCHDOG_USEC": "2000000",  # a ping at least every second
    }
    try:
        regions.start()
        listener.wait("READY=1", lambda m: "READY=1" in m)
        # Ready means the admin endpoint answers already (capture and consumers started
        # before it, in the daemon's start-up order).
        with urllib.request.urlopen(watched.admin_url() + "/health", timeout=5) as response:
            assert response.status == 200
        ready_at = next(i for i, m in enumerate(listener.messages) if "READY=1" in m)
        assert not any("STOPPING=1" in m for m in listener.messages[:ready_at])

        regions.wait_status("consistent")
        listener.wait(
            "STATUS=consistent", lambda m: any(a.startswith("STATUS=consistent") for a in m)
        )
        statuses = listener.assignments("STATUS")
        assert all("peers up" in s and "lag records" in s for s in statuses if s != "stopping")
        assert any(s.startswith("consistent; peers up 1/1") for s in statuses)

        pings_before = listener.assignments("WATCHDOG").count("1")
        listener.wait(
            "more watchdog pings",
            lambda _m: listener.assignments("WATCHDOG").count("1") >= pings_before + 2,
        )

        watched.stop()
        assert watched.returncode() == 0
        listener.receive()
        assert any("STOPPING=1" in m for m in listener.messages)
        stop_at = next(i for i, m in enumerate(listener.messages) if "STOPPING=1" in m)
        assert stop_at > ready_at
        # The stop is also one structured line in the daemon's log.
        assert "event=region.stopping" in watched.log_tail(200)
        assert "event=region.stopped" in watched.log_tail(200)
    finally:
        regions.stop()


def test_a_second_daemon_on_a_taken_admin_port_fails_with_one_line_naming_the_setting(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> None:
    port = free_port()
    # Two regions on one host, both configured with the same admin port (as both took the
    # old default before): the first runs, the second must stop at once, with no traceback.
    regions = Regions(
        tmp_path,
        kafka,
        redis_factory,
        names=("eu-west", "us-east"),
        overrides={"admin": {"port": port}},
    )
    try:
        regions.daemons["eu-west"].start()
        second = regions.daemons["us-east"]
        result = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "run", "--config", str(second.config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        output = (result.stdout + result.stderr).strip()
        assert "Traceback" not in output
        errors = [line for line in output.splitlines() if " ERROR " in line]
        assert len(errors) == 1, output
        assert f"[admin] port = {port} on 127.0.0.1 is already in use" in errors[0]
        assert "event=region.failed" in errors[0]
        # It stopped before touching anything: no status record in its Redis.
        assert regions.clients["us-east"].exists("__rr:status") == 0
        # The first daemon is unaffected.
        assert regions.daemons["eu-west"].get("/health")["ok"]
    finally:
        regions.stop()
