"""Hybrid logical clock: wall-clock milliseconds plus a logical counter, never going back.

A timestamp is one integer: (ms since 2025-01-01 UTC) << 12 | logical. It stays below 2**53
until the 2090s so Redis's Lua (whose numbers are doubles) handles it exactly; the scripts
compare and store these timestamps. 12 logical bits allow 4096 ticks per millisecond; beyond
that the clock borrows the next millisecond (and stays monotonic).

Skew: on receiving a remote timestamp the clock moves past it (the HLC rule), unless it lies
more than `max_drift_ms` ahead of our wall clock: then we move only to wall + max_drift and
count the skew, so one region with a clock set in the future cannot drag every region's
timestamps with it.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable

from replication.clock import wall_ms

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
LOGICAL_BITS = 12
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_TIMESTAMP = (1 << 53) - 1
OBSERVED_KEPT = 1024
"""Observations `HybridClock.at` remembers (one per applied poll): many seconds' worth."""


def pack(physical_ms: int, logical: int = 0) -> int:
    """Timestamp from a wall-clock ms value (Unix epoch) and a logical counter."""
    return ((physical_ms - EPOCH_MS) << LOGICAL_BITS) | logical


def physical_ms(ts: int) -> int:
    """The wall-clock part of a timestamp, as Unix epoch milliseconds."""
    return (ts >> LOGICAL_BITS) + EPOCH_MS


def logical(ts: int) -> int:
    return ts & LOGICAL_MASK


def ceiling(max_drift_ms: int, wall: int | None = None) -> int:
    """The largest timestamp a remote region may hand us: `max_drift_ms` ahead of our wall
    clock (`wall`, default now). Beyond it the clock is not followed (`observe`) and an
    event carrying it is quarantined, never applied (replication.model.admission)."""
    return pack((wall_ms() if wall is None else wall) + max_drift_ms, LOGICAL_MASK)


class HybridClock:
    """A monotonic hybrid logical clock for one region's daemon.

    `floor` is a timestamp the clock must stay above (e.g. a persisted high-water mark, so a
    restarted daemon never reuses a timestamp even if the wall clock went back).
    """

    def __init__(
        self,
        *,
        wall: Callable[[], int] = wall_ms,
        max_drift_ms: int = 60_000,
        floor: int = 0,
    ) -> None:
        self._wall = wall
        self.max_drift_ms = max_drift_ms
        self._last = floor
        self.skew_events = 0
        # (wall ms, clock after it) of the floor and each observation, for `at`.
        self._observed: deque[tuple[int, int]] = deque([(0, floor)], maxlen=OBSERVED_KEPT)

    @property
    def last(self) -> int:
        """The latest timestamp handed out or observed."""
        return self._last

    def now(self) -> int:
        """A new timestamp for a local event: greater than every earlier one."""
        candidate = pack(self._wall())
        self._last = candidate if candidate > self._last else self._last + 1
        return self._last

    def at(self, wall: int) -> int:
        """A timestamp for a local event that happened at wall-clock ms `wall` (a write the
        capture read then, versioned later): `wall` itself, but above the floor and every
        remote timestamp observed before that moment, as `now()` would have been then;
        never above `now()`, and `now()` if that moment is older than what this clock
        remembers."""
        observed = self._observed
        i = bisect.bisect_right(observed, wall, key=lambda entry: entry[0])
        now = self.now()  # the cap: a moment before a backward step of the wall clock
        if i == 0:
            return now
        return min(now, max(pack(wall), observed[i - 1][1] + 1))

    def ceiling(self) -> int:
        """The largest remote timestamp this clock follows now (see `ceiling()`)."""
        return ceiling(self.max_drift_ms, self._wall())

    def observe(self, remote: int) -> int:
        """Merge a remote timestamp (HLC receive rule): the result is above it and above
        everything this clock handed out before."""
        top = ceiling(self.max_drift_ms, self._wall())
        if remote > top:
            self.skew_events += 1
            remote = top
        wall = self._wall()
        self._last = max(pack(wall), remote + 1, self._last + 1)
        if self._observed and wall < self._observed[-1][0]:
            # The wall clock went back: `at` cannot tell which side of the step a moment
            # was on, so it forgets what came before (and answers `now()` for it).
            self._observed.clear()
        self._observed.append((wall, self._last))
        return self._last
