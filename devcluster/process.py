"""A child server process: start, readiness, kill -9, SIGSTOP/SIGCONT, log tail."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class ServerProcess:
    """Owns one server's Popen handle and its log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(
        self,
        argv: list[str],
        *,
        cwd: Path,
        detach: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start argv with stdout/stderr appended to the log file (`env`: extra variables)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
                env=None if env is None else {**os.environ, **env},
            )

    def stop(self, timeout_s: float = 10.0, *, term_every_s: float | None = None) -> None:
        """SIGTERM, wait, then SIGKILL. Safe to call twice and on a stopped process.

        `term_every_s`: send SIGTERM again at this interval while waiting, for a process
        that refuses one it cannot honour yet and does not try again by itself."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.resume()  # a stopped process cannot handle SIGTERM
        proc.terminate()
        deadline = time.monotonic() + timeout_s
        while True:
            step = max(0.0, deadline - time.monotonic())
            if term_every_s is not None:
                step = min(step, term_every_s)
            try:
                proc.wait(timeout=step)
                return
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    break
                proc.terminate()
        proc.kill()
        proc.wait(timeout=timeout_s)

    def kill9(self) -> None:
        """SIGKILL and reap: the crash case, no chance to flush anything."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing."""
        if self.running and self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running and self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"({self.name}: no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])
