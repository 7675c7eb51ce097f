"""What a daemon lets in: the checks on each event of a record whose signature held.

A signature says which region sent a record; these rules say what that region may send:

- a live record (no target: every peer applies it) carries only the sender's own writes:
  every event's `origin` is the sender (its topic's region). An event claiming another
  origin, this region's included, is refused (`origin-mismatch`).
- a repair or resync record (targeted at this region) refills versions this region lost,
  which may be any region's, this region's own included (a Redis restored from an old
  snapshot gets its own latest writes back from its peers); its origins must be configured
  regions (`unknown-origin`).
- every clock entry names a configured region (this one, a peer, a retired one;
  `unknown-clock-region`): a clock can never grow entries nobody ticks.
- every clock entry is at most `max_drift_ms` ahead of this region's wall clock
  (`clock-ahead`): a far-future timestamp would win every conflict for good. Such an event
  is quarantined: dead-lettered and counted, never applied.
- the event's database is one this daemon replicates (`db-not-replicated`).

Pure logic; the consumer applies it to every record (replication.transport.consumer).
"""

from __future__ import annotations

from dataclasses import dataclass

from replication.model.event import ChangeEvent
from replication.model.hlc import physical_ms

QUARANTINE_REASON = "clock-ahead"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # a short fixed code (metrics label)
    message: str


@dataclass(frozen=True)
class Admission:
    region: str
    peers: frozenset[str]
    retired: frozenset[str] = frozenset()
    dbs: frozenset[int] = frozenset({0})

    @property
    def known(self) -> frozenset[str]:
        return self.peers | self.retired | {self.region}

    def check(
        self, event: ChangeEvent, *, source: str, targeted: bool, ceiling: int
    ) -> Refusal | None:
        """Why `event` (in a record signed by `source`) may not be applied, or None.

        `ceiling` is the largest timestamp accepted now (`replication.model.hlc.ceiling`)."""
        if event.db not in self.dbs:
            return Refusal(
                "db-not-replicated",
                f"event for db {event.db}, which this daemon does not replicate "
                f"(redis.dbs = {sorted(self.dbs)})",
            )
        origin = event.origin
        if not targeted and origin != source:
            return Refusal(
                "origin-mismatch",
                f"a live record from {source} carries a write claiming origin {origin!r}",
            )
        known = self.known
        if origin not in known:
            return Refusal("unknown-origin", f"origin {origin!r} is not a configured region")
        for region, ts in event.clock.items():
            if region not in known:
                return Refusal(
                    "unknown-clock-region",
                    f"the clock has an entry for {region!r}, which is not a configured region",
                )
            if ts > ceiling:
                ahead_s = (physical_ms(ts) - physical_ms(ceiling)) / 1000
                return Refusal(
                    QUARANTINE_REASON,
                    f"the clock entry of {region} is {ahead_s:.0f}s beyond the drift bound "
                    "(clock.max_drift_ms) ahead of this region's clock: quarantined",
                )
        return None
