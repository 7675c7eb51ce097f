"""How far behind its peers' changes this region's applier is, as a time.

A region that verified its data after a gap can still be behind on the changes its peers
made since: a client that fails back to it would not find what it wrote elsewhere
moments ago. The daemon says `consistent` only while this lag is small.

:class:`CatchUp` keeps samples of the peers' topics' end offsets, each with the time it
was taken. The applier has caught up through time S once it has applied every partition
up to the end offsets sampled at S: everything the peers had produced before S is in this
Redis. No clocks of other regions are compared: both times are this daemon's.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

Offsets = Mapping[str, Mapping[int, int]]  # region -> partition -> offset

__all__ = ["CatchUp"]


class CatchUp:
    """Samples of end offsets, and the latest sample the applied offsets cover."""

    def __init__(self, *, max_samples: int = 256) -> None:
        self._samples: collections.deque[tuple[int, dict[str, dict[int, int]]]] = collections.deque(
            maxlen=max_samples
        )
        self.through_ms: int | None = None
        """Everything the peers produced before this (our clock) is applied; None: not yet."""

    def sample(self, at_ms: int, end: Offsets, applied: Offsets) -> int | None:
        """Record the end offsets read at `at_ms` and the applied offsets read just after;
        returns `through_ms`."""
        self._samples.append((at_ms, {r: dict(p) for r, p in end.items()}))
        while self._samples and _covered(self._samples[0][1], applied):
            self.through_ms = self._samples.popleft()[0]
        return self.through_ms

    def lag_ms(self, now_ms: int) -> int | None:
        """How old the newest change that may still be unapplied can be (None: unknown)."""
        return None if self.through_ms is None else max(0, now_ms - self.through_ms)


def _covered(end: Mapping[str, Mapping[int, int]], applied: Offsets) -> bool:
    return all(
        applied.get(region, {}).get(partition, 0) >= offset
        for region, partitions in end.items()
        for partition, offset in partitions.items()
    )
