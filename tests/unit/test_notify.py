"""systemd notifications sent to a real AF_UNIX datagram socket the test listens on."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.service.notify import (
    NotifySocket,
    ServiceNotifier,
    socket_address,
    watchdog_interval_s,
)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket on a filesystem path, and its $NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[str]:
    """Every datagram waiting on `sock`, without blocking."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return out


def test_a_notification_is_one_datagram_of_newline_separated_assignments(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    notify = NotifySocket(address)
    assert notify.send("READY=1", "STATUS=consistent")
    assert sock.recv(4096) == b"READY=1\nSTATUS=consistent"
    notify.close()


def test_an_abstract_namespace_address_reaches_the_listener() -> None:
    name = f"reconciler-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notify = NotifySocket.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notify.send("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"
        notify.close()
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notify = NotifySocket.from_env({})
    assert not notify.enabled
    assert not notify.send("READY=1")
    assert notify.watchdog_s is None
    notifier = ServiceNotifier(lambda: "consistent", notify)
    notifier.ready()
    notifier.stopping()
    assert notify.sent == 0


def test_a_missing_socket_is_counted_not_raised(tmp_path: Path) -> None:
    notify = NotifySocket(str(tmp_path / "nobody-listens"))
    assert not notify.send("READY=1")
    assert not notify.send("READY=1")
    assert notify.failed == 2
    notify.close()


def test_socket_address_and_watchdog_environment() -> None:
    assert socket_address("@abc") == "\0abc"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    pid = os.getpid()
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(pid)}, pid) == 4.0
    # Meant for another process (a parent that exec'd us without unsetting it).
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval_s({}, pid) is None


async def test_status_changes_are_sent_and_unchanged_status_is_not_repeated(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    state = {"text": "recovering"}
    notifier = ServiceNotifier(lambda: state["text"], NotifySocket(address))
    notifier.ready()
    assert sock.recv(4096) == b"READY=1\nSTATUS=recovering"
    notifier.status_changed()
    assert sock.recv(4096) == b"STATUS=recovering"  # forced: a state change
    notifier._send_status()
    assert drain(sock) == []  # nothing changed
    state["text"] = "consistent"
    notifier._send_status()
    assert drain(sock) == ["STATUS=consistent"]
    await notifier.close()


async def test_a_broken_status_line_does_not_stop_the_notifier(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener

    def broken() -> str:
        raise KeyError("peer")

    notifier = ServiceNotifier(broken, NotifySocket(address))
    notifier.ready()
    assert sock.recv(4096) == b"READY=1\nSTATUS=status unavailable: KeyError"
    await notifier.close()


async def test_the_watchdog_is_fed_from_the_event_loop_and_falls_silent_when_it_blocks(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    # A 0.2 s watchdog: a ping every 0.1 s while the loop runs.
    notifier = ServiceNotifier(lambda: "consistent", NotifySocket(address, watchdog_s=0.2))
    # Another thread that keeps running while the loop is blocked: if pings came from a
    # thread, they would go on.
    spinning = threading.Event()
    other = threading.Thread(target=spinning.wait, args=(5,), daemon=True)
    other.start()
    notifier.start()
    pings = 0
    for _ in range(200):  # bounded: until two pings arrived
        await asyncio.sleep(0.05)
        pings += sum(m.count("WATCHDOG=1") for m in drain(sock))
        if pings >= 2:
            break
    assert pings >= 2
    drain(sock)
    time.sleep(0.6)  # noqa: ASYNC251 - blocking the loop is the point: three ping periods
    assert [m for m in drain(sock) if "WATCHDOG=1" in m] == []
    await asyncio.sleep(0.3)  # the loop runs again, and so do the pings
    assert any("WATCHDOG=1" in m for m in drain(sock))
    spinning.set()
    other.join()
    await notifier.close()
