"""Settling before anti-entropy: wait until the changes in flight have been applied.

A key written in one region a moment ago is in another region's Redis only once that
region's capture has shipped it and the other has applied it. A session that compared the two
meanwhile would call it divergence and repair it, and the change would then arrive a second
time (counted as stale, and in the repair report as a difference that never was). So before
a session with a peer we wait, bounded by a timeout, for a watermark: for every region O, a
set of offsets `target[O]` on O's topic that covers every write O's Redis had taken when the
wait began; then until both we and the peer have applied O's topic up to `target[O]`.

- Our own target: once the capture has acknowledged the stream (shipped, and acknowledged by
  Kafka) up to the master offset our Redis reported when the wait began, the offsets our
  producer has had acknowledged.
- A live region's target comes from its heartbeats. Each carries `shipped_through_ms`, a time
  on its own clock before which every write to its Redis is in Kafka, and `produced`, its
  producer's acknowledged offsets. The first heartbeat sent after the wait began dates the
  start; the first heartbeat whose `shipped_through_ms` reaches that date gives the target.
  A region's times are only ever compared with the same region's times: clock skew between
  regions does not enter.
- A region that is down ships nothing more: its target is its topic's end offsets.

Under a steady write load this still settles (it waits for a fixed watermark, not for
silence); the timeout only matters when replication is stuck or far behind.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from reconciler.consistency.peers import Peers
from replication.capture.position import CapturePosition

Offsets = dict[int, int]  # partition -> offset after the last record


class CaptureWatermark:
    """How far the capture has shipped, as a time: every write to Redis before
    `shipped_through_ms` is in Kafka.

    Each `sample()` remembers where Redis's replication history was at a time; once the
    capture has acknowledged that history up to that offset, that time is reached. Only
    positions of one history are compared: a restarted Redis starts its offsets again, and
    the capture's acknowledged offset in the old history would pass its new marks at once.
    """

    def __init__(self, max_marks: int = 4096) -> None:
        self._marks: deque[tuple[int, CapturePosition]] = deque(maxlen=max_marks)
        self.shipped_through_ms = 0

    def sample(
        self, at_ms: int, master: CapturePosition | None, acked: CapturePosition | None
    ) -> int:
        """Record where Redis's history is at `at_ms` (`master`; None: Redis does not
        answer) and how far the capture acknowledged (`acked`; None: nothing yet);
        returns the time shipped through.

        While Redis does not answer, nothing more is claimed: a batch the capture read
        before Redis went away may still be waiting to be versioned, and a write found
        unversioned later is dated after this time (found by the fault suite: a write
        made 5 ms before a Redis was killed, versioned after the restart, was dated by a
        moment the region had claimed during the outage and beat later writes elsewhere)."""
        if master is None:
            return self.shipped_through_ms
        if self._marks and (
            master.replid != self._marks[-1][1].replid or master.offset < self._marks[-1][1].offset
        ):
            self._marks.clear()  # a new replication history (Redis restarted)
        self._marks.append((at_ms, master))
        while (
            acked is not None
            and self._marks
            and self._marks[0][1].replid == acked.replid
            and self._marks[0][1].offset <= acked.offset
        ):
            self.shipped_through_ms = self._marks.popleft()[0]
        return self.shipped_through_ms

    def caught_up(self, at_ms: int) -> int:
        """A capture without offsets (keyspace notifications): taken to be caught up, so
        the settle only waits for what Kafka already has."""
        self._marks.clear()
        self.shipped_through_ms = at_ms
        return at_ms


def covers(applied: Offsets, target: Offsets) -> bool:
    """Every partition of `target` is applied at least that far."""
    return all(applied.get(partition, 0) >= offset for partition, offset in target.items())


class Settler:
    """Waits for the watermark before a session (see the module docstring)."""

    def __init__(
        self,
        region: str,
        peers: Peers,
        *,
        master_position: Callable[[], Awaitable[CapturePosition | None]],
        capture_acked: Callable[[], CapturePosition | None] | None,
        produced: Callable[[], Offsets],
        applied: Callable[[], Awaitable[dict[str, Offsets]]],
        end_offsets: Callable[[str], Awaitable[Offsets]],
        poll_s: float = 0.05,
    ) -> None:
        self.region = region
        self.peers = peers
        self.master_position = master_position
        self.capture_acked = capture_acked
        self.produced = produced
        self.applied = applied
        self.end_offsets = end_offsets
        self.poll_s = poll_s
        self.waiting_for = ""  # what the last wait was still waiting for (for the log)

    async def wait(self, peer: str, timeout_s: float) -> bool:
        """True once settled with `peer`; False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        self.waiting_for = ""
        master0 = await self.master_position()
        beats0 = {r: s.heartbeats for r, s in self.peers.state.items()}
        started: dict[str, int] = {}
        targets: dict[str, Offsets] = {}
        while True:
            if self.region not in targets:
                acked = self.capture_acked() if self.capture_acked is not None else None
                if (
                    master0 is None
                    or self.capture_acked is None
                    or (
                        acked is not None
                        and acked.replid == master0.replid
                        and acked.offset >= master0.offset
                    )
                ):
                    targets[self.region] = dict(self.produced())
            for region, state in self.peers.state.items():
                if region in targets:
                    continue
                if not state.alive:
                    targets[region] = await self.end_offsets(region)
                    continue
                if region not in started and state.heartbeats > beats0[region]:
                    started[region] = state.at_ms
                if region in started and state.shipped_through_ms >= started[region]:
                    targets[region] = dict(state.produced)
            waiting = [f"{r}'s watermark" for r in self._regions() if r not in targets]
            if not waiting:
                waiting = self._not_applied(peer, targets, await self.applied())
            if not waiting:
                return True
            self.waiting_for = "; ".join(waiting)
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_s)

    def _regions(self) -> list[str]:
        return [self.region, *self.peers.state]

    def _not_applied(
        self, peer: str, targets: dict[str, Offsets], ours: dict[str, Offsets]
    ) -> list[str]:
        theirs = self.peers.state[peer].applied
        missing = []
        for origin, target in targets.items():
            if origin != self.region and not covers(ours.get(origin, {}), target):
                missing.append(f"{self.region} applying {origin} {ours.get(origin)} < {target}")
            if origin != peer and not covers(theirs.get(origin, {}), target):
                missing.append(f"{peer} applying {origin} {theirs.get(origin)} < {target}")
        return missing
