"""The region's status and its repair schedule, as a state machine without I/O.

The daemon feeds it what happens (a gap, a recovery pass done, a peer up or down, a session
started or finished, the repair marker written) and asks it two things: which status to
publish, and which anti-entropy sessions to run. Keeping this pure lets the unit tests walk
every order of events the daemon's loops can produce, which is where the failback bug
lived: a status that said ``consistent`` about a Redis that had just restarted empty.

The three statuses, as a failover client reads them:

``recovering``
    This region's data is not vouched for: a gap (a restart, a flush, a stream the capture
    could not follow, a first start) has not been repaired yet. A failed region is not
    failed back to. Whether a client still on it moves off depends on the repair marker
    (:mod:`reconciler.status`): a gap that may have lost data (a restart, a flush) removes
    it, and clients leave; one that only kept some local writes from being shipped (the
    capture fell off the stream's backlog) leaves the data, and the marker, in place.
``repairing``
    The data was verified since the last gap, and a routine session is running, a peer
    that came back still needs one, or the applier is behind on the peers' changes (a
    client failing back would not find what it wrote elsewhere moments ago). Clients stay,
    but do not fail back to it yet.
``consistent``
    Verified since the last gap, every reachable peer compared, nothing running, and the
    peers' changes applied up to a moment no longer ago than the configured bound.

Verified means: after the last gap, the recovery pass (index rebuild and sweep) finished
and sessions completed with the peers (every peer, or every live one if at least one
session succeeded), all within one gap *epoch*. A gap during any of it starts a new epoch
and what was in flight no longer counts. The daemon then writes the repair marker into
its Redis (see :mod:`reconciler.status`) and reports :meth:`RegionState.verified_as`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.consistency.modes import SessionMode
from replication.model.keys import STATUS_CONSISTENT, STATUS_RECOVERING, STATUS_REPAIRING

__all__ = ["RegionState", "SessionMode", "SessionRequest", "Status"]


class Status(enum.StrEnum):
    """What the status record says about this region's data."""

    RECOVERING = STATUS_RECOVERING
    REPAIRING = STATUS_REPAIRING
    CONSISTENT = STATUS_CONSISTENT


@dataclass(frozen=True)
class SessionRequest:
    """One session to run; `epoch` is the gap epoch it runs in (set when it starts)."""

    peer: str
    trigger: str
    mode: SessionMode = SessionMode.REPAIR
    operator: bool = False
    epoch: int = 0


class RegionState:
    """Status and session bookkeeping of one region (no I/O, no asyncio)."""

    def __init__(self, peers: Iterable[str], *, automatic: bool = True) -> None:
        self.peers = tuple(peers)
        self.automatic = automatic
        self.epoch = 0
        """Bumped by every gap: work begun in an earlier epoch no longer counts."""
        self.verified = False
        """A repair completed on the current Redis instance since the last gap."""
        self.recovering = False
        """The recovery pass (index rebuild, sweep) of the current epoch has not finished."""
        self.pending: set[str] = set()
        """Peers that need a successful session (since the last gap, or since they returned)."""
        self.repaired_since_gap = False
        self.alive: frozenset[str] = frozenset()
        self.running = 0
        self.caught_up = True
        """The applier has applied the peers' changes up to a recent moment (set by the
        daemon from `reconciler.consistency.catchup`)."""
        self.applied_through_ms: int | None = 0
        """Everything the peers produced before this (our clock) is applied (None: not
        known yet). A repair's fetched keys arrive as the peer's records: the marker waits
        until they are in Redis."""
        self.repaired_at_ms = 0
        """When the last session that counts for the current epoch finished."""
        self._queued: set[tuple[str, SessionMode]] = set()

    # -- what the daemon publishes ---------------------------------------------------------

    @property
    def status(self) -> Status:
        """The status to publish now."""
        if not self.verified:
            return Status.RECOVERING
        if self.running or self._queued or not self._settled() or not self.caught_up:
            return Status.REPAIRING
        return Status.CONSISTENT

    def wants_verification(self) -> bool:
        """True when the gap's repair is complete and the marker should be written now."""
        return (
            not self.verified
            and not self.recovering
            and self.repaired_since_gap
            and not self.running
            and not self._queued
            and self._settled()
            and self.applied_through_ms is not None
            and self.applied_through_ms >= self.repaired_at_ms
        )

    def _settled(self) -> bool:
        # Peers still pending but down cannot be waited for: one good session since the gap
        # is enough (a down peer gets its session when it is heard again).
        return not self.pending or (not (self.pending & self.alive) and self.repaired_since_gap)

    # -- events ----------------------------------------------------------------------------

    def start(self, *, marker_valid: bool, sessions_on_start: bool) -> None:
        """The daemon starts. `marker_valid`: the Redis holds a repair marker of its own
        instance (a previous run verified it, and no gap was seen since)."""
        self.verified = marker_valid
        if sessions_on_start:
            self.pending = set(self.peers)
        # Without sessions at start an unverified instance stays `recovering` until a gap's
        # recovery or the operator's repair has compared it with a peer.

    def gap(self) -> int:
        """Something was missed or lost (restart, flush, stream gap). Returns the new epoch."""
        self.epoch += 1
        self.verified = False
        self.recovering = True
        self.pending = set(self.peers)
        self.repaired_since_gap = False
        self.repaired_at_ms = 0
        return self.epoch

    def recovery_done(self, epoch: int) -> list[SessionRequest]:
        """The recovery pass of `epoch` finished; returns the sessions to queue now."""
        if epoch != self.epoch:
            return []  # a later gap needs its own pass
        self.recovering = False
        return [r for peer in self.peers if (r := self.request(peer, "recovery")) is not None]

    def peers_alive(self, alive: Iterable[str]) -> None:
        """The peers whose heartbeats are current."""
        self.alive = frozenset(alive)

    def peer_up(self, peer: str, reason: str, *, first: bool) -> SessionRequest | None:
        """A peer is heard (again). A pending peer gets its session; with automatic
        sessions every return does (it may have missed our changes)."""
        self.alive = self.alive | {peer}
        if peer in self.pending or (self.automatic and not first):
            return self.request(peer, f"peer up: {reason}")
        return None

    def peer_down(self, peer: str) -> None:
        """A peer's heartbeats stopped; with automatic sessions it gets one when back."""
        self.alive = self.alive - {peer}
        if self.automatic:
            self.pending.add(peer)

    def request(
        self,
        peer: str,
        trigger: str,
        mode: SessionMode = SessionMode.REPAIR,
        *,
        operator: bool = False,
    ) -> SessionRequest | None:
        """A session to queue, or None. Automatic requests are de-duplicated and wait for a
        peer that is not alive (left pending: its next heartbeat starts it), and none runs
        while a recovery pass is pending. Operator requests always queue."""
        if not operator:
            self.pending.add(peer)
            if peer not in self.alive or self.recovering:
                return None
            if mode is SessionMode.REPAIR and (peer, mode) in self._queued:
                return None
        self._queued.add((peer, mode))
        return SessionRequest(peer, trigger, mode, operator)

    def session_started(self, request: SessionRequest) -> SessionRequest:
        """The session leaves the queue and runs; returns it stamped with the epoch it runs
        in (a session counts for the epoch it ran in, not the one it was asked in)."""
        self._queued.discard((request.peer, request.mode))
        self.running += 1
        return dataclasses.replace(request, epoch=self.epoch)

    def session_skipped(self, request: SessionRequest) -> None:
        """The session left the queue without running (its peer went away meanwhile)."""
        self._queued.discard((request.peer, request.mode))

    def session_finished(self, request: SessionRequest, *, ok: bool, at_ms: int = 0) -> bool:
        """A session ended at `at_ms` (our clock). Returns True when it should be retried."""
        self.running -= 1
        if not request.mode.repairs:
            return False
        if not ok:
            return True
        if request.epoch == self.epoch:
            self.pending.discard(request.peer)
            self.repaired_since_gap = True
            self.repaired_at_ms = max(self.repaired_at_ms, at_ms)
        elif request.peer in self.alive and not self.recovering:
            # It repaired data of an earlier epoch; the current one still needs its own.
            return True
        return False

    def verified_as(self, epoch: int) -> bool:
        """The marker for `epoch` was written; True if it still vouches (no gap since)."""
        if epoch != self.epoch or not self.wants_verification():
            return False
        self.verified = True
        return True
