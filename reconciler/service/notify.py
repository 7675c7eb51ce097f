"""systemd's notification protocol (`Type=notify`), on the socket itself.

systemd passes the address of a datagram socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract-namespace name written with a leading ``@``); a service sends newline-separated
``KEY=value`` assignments to it, one datagram per message:

    READY=1       start-up is finished (capture, consumers and the admin endpoint run)
    STATUS=...    one line shown by `systemctl status`
    WATCHDOG=1    keep-alive, expected at least every ``$WATCHDOG_USEC`` (WatchdogSec=)
    STOPPING=1    a graceful stop began

Without ``$NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same by hand, in
tests and under other supervisors. A failed send is logged once and never stops the daemon.

The watchdog is fed by a task on the daemon's event loop, never by a thread: a loop that is
blocked (a stuck call, a busy loop) stops the pings, and systemd restarts the service. The
same task refreshes ``STATUS=`` with the region's status and lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

from reconciler.service.parts import DaemonParts

log = logging.getLogger(__name__)

# STATUS= is refreshed this often when no watchdog asks for more.
STATUS_REFRESH_S = 2.0
MAX_STATUS_CHARS = 200  # one readable line in `systemctl status`


def socket_address(value: str) -> str:
    """The AF_UNIX address for a ``$NOTIFY_SOCKET`` value (``@name`` is abstract)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout in seconds, or None when this process is not watched.

    Like sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` set and ``$WATCHDOG_PID`` unset or
    naming this process.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    watched_pid = environ.get("WATCHDOG_PID", "")
    try:
        timeout = int(usec)
        if watched_pid and int(watched_pid) != pid:
            return None
    except ValueError:
        return None
    return timeout / 1_000_000 if timeout > 0 else None


class NotifySocket:
    """Sends notifications to ``$NOTIFY_SOCKET``; does nothing without it."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s if address else None
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotifySocket:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        return cls(address, watchdog_interval_s(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when it was sent."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: a full socket buffer drops the message.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, socket_address(self.address))
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("systemd notification not sent to %s: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_STATUS_CHARS]


def status_text(daemon: DaemonParts) -> str:
    """The region's status for ``STATUS=``: state, peers up, and lag both ways."""
    state = daemon.state
    peers = daemon.peers.state.values()
    alive = sum(1 for p in peers if p.alive)
    # How far peers are behind on our changes (their heartbeats), and we on theirs.
    behind_us = max((p.lag.get(daemon.region, 0) for p in peers if p.alive), default=0)
    inbound = max(state.inbound_lag.values(), default=0)
    text = f"{state.status}; peers up {alive}/{len(daemon.peers.state)}"
    text += f"; lag records: peers on ours {behind_us}, ours on peers {inbound}"
    if daemon.region_state.running:
        text += f"; sessions running {daemon.region_state.running}"
    return _one_line(text)


class ServiceNotifier:
    """What the daemon tells systemd: ready, status, watchdog pings, stopping."""

    def __init__(self, describe: Callable[[], str], sock: NotifySocket | None = None) -> None:
        self.sock = sock if sock is not None else NotifySocket.from_env()
        self._describe = describe
        self._last_status = ""
        self._task: asyncio.Task[None] | None = None

    def ready(self) -> None:
        """Start-up finished: capture, consumers and the admin endpoint run."""
        self._last_status = self._status()
        self.sock.send("READY=1", f"STATUS={self._last_status}")

    def status_changed(self) -> None:
        """Send STATUS= now (a state change), instead of at the next refresh."""
        self._send_status(force=True)

    def stopping(self, why: str = "stopping") -> None:
        self.sock.send("STOPPING=1", f"STATUS={_one_line(why)}")

    def start(self) -> None:
        """Feed the watchdog and refresh STATUS= from a task on the running loop."""
        if self.sock.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="notify")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sock.close()

    def _status(self) -> str:
        try:
            return self._describe()
        except Exception as exc:  # noqa: BLE001 - a status line must never stop the daemon
            return f"status unavailable: {type(exc).__name__}"

    def _send_status(self, *, force: bool = False) -> None:
        text = self._status()
        if force or text != self._last_status:
            self._last_status = text
            self.sock.send(f"STATUS={text}")

    async def _run(self) -> None:
        watchdog = self.sock.watchdog_s
        # Half the timeout, as sd_watchdog_enabled(3) recommends.
        period = min(STATUS_REFRESH_S, watchdog / 2) if watchdog else STATUS_REFRESH_S
        while True:
            if watchdog:
                self.sock.send("WATCHDOG=1")
            self._send_status()
            await asyncio.sleep(period)
