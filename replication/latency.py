"""Where replication lag comes from: a latency histogram per pipeline stage.

    origin:  captured -> versioned -> acknowledged by Kafka
    peer:    produced -> consumed -> applied   (and produced -> applied, end to end)

The hot paths observe once per batch or record, weighted by the number of changes in it, so
the histograms count changes (what an operator means by lag) at the cost of a bisect per
batch. Times within one daemon are monotonic; the peer stages start at the Kafka record's
timestamp (the producer's wall clock when it queued the record), so across machines they
include the clock offset between the two hosts (NTP keeps it to milliseconds).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Upper bounds in seconds; the last bucket (+Inf) is implicit.
BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)

ORIGIN_STAGES = ("captured_to_versioned", "versioned_to_acked")
PEER_STAGES = ("produced_to_consumed", "consumed_to_applied", "produced_to_applied")


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative), their sum, and the total of observed values."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float, weight: int = 1) -> None:
        """Record `weight` changes that each took `seconds` (negative clamps to 0)."""
        if weight <= 0:
            return
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += weight
        self.total_s += seconds * weight

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, changes at or below it) per bucket, +Inf last (Prometheus form)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*BUCKETS_S, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(slots=True)
class StageLatency:
    """One histogram per stage name."""

    stages: dict[str, Histogram]

    @classmethod
    def of(cls, names: tuple[str, ...]) -> StageLatency:
        return cls({name: Histogram() for name in names})

    def observe(self, stage: str, seconds: float, weight: int = 1) -> None:
        self.stages[stage].observe(seconds, weight)
