"""The daemon's wall clock, read in one place.

Every wall-clock reading of the daemon (the hybrid clock's physical part, status and
heartbeat times, tombstone ages, gap and report moments) is :func:`wall_ms`. Timers and
timeouts use the monotonic clock and are not affected by anything here.

For fault testing only: when the environment names a file in
``RECONCILER_FAKE_CLOCK_OFFSET_FILE``, the file's content (a signed whole number of
milliseconds) is added to every reading, re-read every 100 ms by a background thread, so a
test can skew one region's clock by seconds while its daemon runs, without touching the
host's clock (libfaketime would, but it breaks Python's sleeps). A missing or unreadable
file means no offset; offsets are bounded to a day. Unset, as in production, the offset
is 0 and no thread runs. Standard library only (the failover client imports it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

__all__ = ["FAKE_OFFSET_ENV", "offset_ms", "wall_ms"]

FAKE_OFFSET_ENV = "RECONCILER_FAKE_CLOCK_OFFSET_FILE"
_MAX_OFFSET_MS = 86_400_000
_REREAD_S = 0.1

log = logging.getLogger("replication.clock")


class _Fake:
    offset_ms = 0


def wall_ms() -> int:
    """Milliseconds since the Unix epoch, by this process's clock."""
    return time.time_ns() // 1_000_000 + _Fake.offset_ms


def offset_ms() -> int:
    """The fake offset in force (0 unless the fault-testing variable is set)."""
    return _Fake.offset_ms


def _read_offset(path: Path) -> int:
    try:
        value = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return 0
    return max(-_MAX_OFFSET_MS, min(_MAX_OFFSET_MS, value))


def _follow(path: Path) -> None:
    while True:
        value = _read_offset(path)
        if value != _Fake.offset_ms:
            log.warning("fake clock offset %+d ms (%s, fault testing only)", value, FAKE_OFFSET_ENV)
            _Fake.offset_ms = value
        time.sleep(_REREAD_S)


def _start_following() -> None:
    name = os.environ.get(FAKE_OFFSET_ENV)
    if not name:
        return
    path = Path(name)
    _Fake.offset_ms = _read_offset(path)
    if _Fake.offset_ms:
        log.warning(
            "fake clock offset %+d ms (%s, fault testing only)", _Fake.offset_ms, FAKE_OFFSET_ENV
        )
    threading.Thread(target=_follow, args=(path,), name="fake-clock", daemon=True).start()


_start_following()
