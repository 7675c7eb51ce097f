"""What the daemon knows about itself, as plain values: published status, gaps seen,
counters. Written by the daemon's parts, read by the admin endpoint, metrics and systemd."""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.service.regionstate import Status
from replication.clock import wall_ms

__all__ = ["DaemonState", "now_ms"]


now_ms = wall_ms  # the daemon's one wall clock (replication.clock), by its old name here


@dataclass
class DaemonState:
    """The daemon's own facts (not its peers'), mutated only on the event loop."""

    status: str = Status.RECOVERING
    """The status last published (`RegionState.status` decides it)."""
    since_ms: int = 0
    last_repair_ms: int = 0
    gaps: dict[str, int] = field(default_factory=dict)
    started_ms: int = 0
    rebuild_progress: float = 0.0
    gc_tombstones_removed: int = 0
    gc_expired_removed: int = 0
    gc_tombstones_held: int = 0  # in the last pass: old enough, kept as a region lags
    conflicts_won: int = 0
    conflicts_lost: int = 0
    inbound_lag: dict[str, int] = field(default_factory=dict)  # ours on each peer's topic
    status_written_ms: int = 0  # last successful write of the status record, 0 never
