"""Noticing that this process did not run (SIGSTOP, a paused VM, a loop blocked for seconds),
and which part of the change stream was written meanwhile.

While the daemon does not run, its Redis keeps taking writes and the replication stream
piles up in the socket. Versioned on resuming as live writes, they would be dated by the
clock at the resume, seconds after they were made, and beat every write the other regions
acknowledged meanwhile, later ones included (found by the fault suite: an application's
later writes on another region, made while this daemon was paused, lost to its earlier one
here). Like writes replayed after a restart, they were made after the last moment this
region announced everything shipped, and are dated just after it instead (see
`replication.capture.versioner`).

`StallWatch` ticks; a tick (or a batch) that finds the last tick older than `threshold_s`
reads Redis's master offset: every batch of the stream that ends at or before it was
written before the process noticed it had been stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["StallWatch"]

log = logging.getLogger(__name__)


class StallWatch:
    """`run()` ticks until cancelled; `is_late()` before each capture batch is versioned,
    `behind()` before the applier versions a local write it found unversioned."""

    def __init__(
        self,
        master_offset: Callable[[], Awaitable[int | None]],
        *,
        threshold_s: float = 2.0,
        tick_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._master_offset = master_offset
        self.threshold_s = threshold_s
        self.tick_s = tick_s
        self._clock = clock
        self._last = clock()
        self._pending = False
        self._late_through: int | None = None
        self.stalls = 0

    def _check(self) -> None:
        now = self._clock()
        if now - self._last > self.threshold_s:
            self.stalls += 1
            self._pending = True
            log.warning(
                "this process did not run for %.1fs: what Redis took meanwhile is dated as "
                "written late",
                now - self._last,
            )
        self._last = now

    async def run(self) -> None:
        """Tick every `tick_s` (cancel to stop)."""
        self._last = self._clock()  # the time it took to start is not a stall
        while True:
            await asyncio.sleep(self.tick_s)
            self._check()

    async def _refresh(self) -> None:
        self._check()
        if self._pending:
            offset = await self._master_offset()
            if offset is not None:  # Redis not answering: ask again next time
                self._pending = False
                self._late_through = max(offset, self._late_through or 0)

    async def is_late(self, end_offset: int | None) -> bool:
        """Whether the batch ending at stream offset `end_offset` (None: a capture without
        offsets, never late here) was written while the process was stopped."""
        await self._refresh()
        if end_offset is None or self._late_through is None:
            return False
        if end_offset <= self._late_through:
            return True
        self._late_through = None  # the stream is past what piled up
        return False

    async def behind(self) -> bool:
        """Whether writes made while the process was stopped may still be unversioned: the
        applier versions a key it finds unversioned as late then, not as live."""
        await self._refresh()
        return self._late_through is not None

    def forget(self) -> None:
        """A gap (a new replication history: offsets start again): nothing is pending."""
        self._late_through = None
