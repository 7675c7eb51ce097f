"""When a tombstone may be forgotten: every region has applied the delete, and no write made
concurrently with it is still on its way here. Pure logic, fed with heartbeats.

A tombstone (key k deleted with hybrid timestamp t by origin region O) protects this region
R against a write w to k with an older or concurrent clock that arrives after the delete: with
the tombstone, w loses; without it, w brings k back here while the other regions keep the
delete. Forgetting it is safe once

(A) every region has applied the delete: then no region's Redis still holds a version of k
    that the delete does not beat, and every later write anywhere descends from the delete;
(B) every write a region made before it applied the delete has been applied here: those are
    the only writes that can be concurrent with the delete, and they are then already
    decided (they lost against the tombstone, or the delete replaced them).

Each region's times are only compared with that region's own times, and offsets on a topic
with offsets on the same topic; clock skew between regions never enters.

- **Snapshots.** Every heartbeat of a region X (ours too) carries `shipped_through_ms`, a
  moment on X's clock before which every write to X's Redis is in Kafka, and `produced`, the
  offsets on X's topic its producer has had acknowledged. Together: every write X made
  before that moment lies below those offsets. Offsets are merged (per-partition maximum)
  over the heartbeats seen, which keeps the claim true across restarts of X; the daemon seeds
  its producer's offsets with its topic's end offsets at start so that no partition is left
  out.
- **A delete lies below a snapshot.** A delete with hybrid timestamp t from O was written to
  O's Redis before O's versioner stamped it, and a hybrid clock never reads below the wall
  clock: the write happened at or before physical(t) on O's clock. So a snapshot of O with
  `shipped_through_ms > physical(t)` has the delete below its offsets.
- **Claims (condition A, and the moment for B).** A heartbeat H of a peer Q reports `applied`,
  the offsets Q had applied on every other region's topic, read before H's `at_ms` was taken.
  If `applied[O]` covers a snapshot of O, Q had applied every delete below it by `at_ms(H)`.
- **Condition B.** Q's writes that may be concurrent with a delete it applied were made
  before `at_ms(H)` (on Q's clock). The first heartbeat H' of the same daemon (epoch), H
  itself or a later one, with `shipped_through_ms(H') >= at_ms(H)` gives offsets on Q's
  topic below which all of them lie; once this region has applied Q's topic up to those,
  H's claim is *effective*.
  For the origin O itself, its writes older than the delete were made before it, so they lie
  below the same snapshot of O: this region must have applied O's topic past it.

A snapshot of O is *done* when this region has applied O's topic past it (unless O is this
region) and every peer other than O has an effective claim covering it. Done is monotone
(offsets only grow), so a frontier per origin moves forward: `safe_before_ms(O)` is the
`shipped_through_ms` of O's latest done snapshot, and every tombstone from O with
physical(t) below it passes (A) and (B). A region that has never been heard, or whose claims
do not cover, holds the frontier back (only `horizon_s` then collects); so does a forged or
skewed clock, since a far-future `at_ms` only makes B harder to meet.

A region in `recovering` (a gap: a capture that lost part of the stream, a flushed or
restarted Redis, remote writes Redis kept refusing) says nothing here until it is consistent
again: its watermark may claim writes shipped that the gap lost, and its applied offsets
may cover changes its Redis does not hold. Its heartbeats meanwhile are ignored, and the
claims and snapshots that were still waiting are dropped (frontiers already reached stay:
they were true when reached).

What it assumes: within one daemon's run its wall clock does not step back (a heartbeat
older than the last one taken is rejected by `Peers`); when an origin restarts, its frontier
starts again from its new heartbeats. Not covered: a repair shipment read from a peer's
Redis before that peer applied the delete but acknowledged by Kafka after the heartbeat
that closes (B); `tombstones.min_age_s` keeps such a window far behind.

**Refused events.** A peer's applied offsets move past an event it refused (dead-lettered:
quarantined as `clock-ahead`, refused by its Redis) as past one it applied; if that event was
a delete, the peer never had it, and forgetting the tombstone here would let an
anti-entropy session bring the peer's old value back. So heartbeats carry `refused_events`
(read after `applied`), and once that count grows, the peer's claims are capped for good at
what it had applied at its previous heartbeat (the refused events lie beyond it, on some
topic: the count does not say which). Tombstones past the cap wait for `horizon_s`; the
dead letters are counted and alert-worthy. The cap lives as long as this daemon's run (a
restart runs anti-entropy with every peer first, which finds such a key while the tombstone
still exists here).

Memory is bounded: at most `max_pending` snapshots and claims per region are kept (those
with the same offsets share one entry, so a quiet region keeps one); when a region stalls
the oldest are dropped, which can only delay collection (later snapshots and claims are
harder to satisfy, never easier).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from replication.model.keys import STATUS_CONSISTENT, STATUS_RECOVERING

Offsets = dict[int, int]  # partition -> offset after the last record

DEFAULT_MAX_PENDING = 1024

T = TypeVar("T")


def covers(applied: Mapping[int, int], target: Mapping[int, int]) -> bool:
    """Every partition of `target` is applied at least that far."""
    return all(applied.get(partition, 0) >= offset for partition, offset in target.items())


def merge_max(into: Offsets, offsets: Mapping[int, int]) -> None:
    """Raise `into` to `offsets`, partition by partition."""
    for partition, offset in offsets.items():
        if offset > into.get(partition, -1):
            into[partition] = offset


@dataclass
class _Origin:
    """One region's topic as seen through its snapshots."""

    produced: Offsets = field(default_factory=dict)  # merged over every snapshot seen
    pending: deque[tuple[int, Offsets]] = field(default_factory=deque)  # not yet done
    safe_before_ms: int = 0


@dataclass
class _Claim:
    at_ms: int
    applied: dict[str, Offsets]


@dataclass
class _Peer:
    """A peer's claims of what it had applied, until they are effective here."""

    epoch: int = 0
    refused: int = 0  # its refused-events count at its last heartbeat (of this epoch)
    last_applied: dict[str, Offsets] = field(default_factory=dict)  # at its last heartbeat
    cap: dict[str, Offsets] | None = None  # claims never count beyond this (see doc)
    unresolved: deque[_Claim] = field(default_factory=deque)  # waiting for its watermark
    resolved: deque[tuple[Offsets, dict[str, Offsets]]] = field(default_factory=deque)
    effective: dict[str, Offsets] = field(default_factory=dict)  # per origin region


class GcWatermark:
    """Per origin region, the time on that region's clock before which its tombstones may
    be forgotten here (see the module docstring)."""

    def __init__(
        self, region: str, peers: Iterable[str], *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        self.region = region
        self.peers = [p for p in peers if p != region]
        self.max_pending = max_pending
        self._origins = {r: _Origin() for r in [region, *self.peers]}
        self._claims = {p: _Peer() for p in self.peers}
        self._applied: dict[str, Offsets] = {}  # ours, merged: we applied at least this

    # ------------------------------------------------------------------------- input
    def observe_own(
        self,
        shipped_through_ms: int,
        produced: Mapping[int, int],
        applied: Mapping[str, Mapping[int, int]],
        *,
        status: str = STATUS_CONSISTENT,
    ) -> None:
        """Our own heartbeat: our snapshot, and how far we have applied each peer's topic."""
        if status == STATUS_RECOVERING:
            self._origins[self.region].pending.clear()
            return
        for origin, offsets in applied.items():
            if origin in self._origins and origin != self.region:
                merge_max(self._applied.setdefault(origin, {}), offsets)
        self._snapshot(self._origins[self.region], shipped_through_ms, produced)
        self._advance()

    def observe_peer(
        self,
        peer: str,
        *,
        epoch: int,
        at_ms: int,
        shipped_through_ms: int,
        produced: Mapping[int, int],
        applied: Mapping[str, Mapping[int, int]],
        status: str = STATUS_CONSISTENT,
        refused_events: int = 0,
    ) -> None:
        """A heartbeat `Peers` accepted from `peer` (times on its clock)."""
        claims = self._claims.get(peer)
        if claims is None:
            return  # not a configured peer
        origin = self._origins[peer]
        if epoch != claims.epoch:
            # Another daemon of that region: its watermark starts again, so claims waiting
            # for the old one's can never be closed, and its times are a new series.
            claims.epoch = epoch
            claims.refused = 0  # a new run counts from 0
            claims.unresolved.clear()
            origin.pending.clear()
            origin.safe_before_ms = 0
        if refused_events > claims.refused:
            # Refused since its last heartbeat, hence beyond what that one had applied.
            claims.cap = _lowest(claims.cap, claims.last_applied)
        claims.refused = refused_events
        now = {o: dict(offs) for o, offs in applied.items() if o in self._origins}
        claims.last_applied = now
        if status == STATUS_RECOVERING:
            claims.unresolved.clear()
            origin.pending.clear()
            return
        _bounded_append(
            claims.unresolved, _Claim(at_ms, _capped(now, claims.cap)), self.max_pending
        )
        self._snapshot(origin, shipped_through_ms, produced)
        while claims.unresolved and claims.unresolved[0].at_ms <= shipped_through_ms:
            claim = claims.unresolved.popleft()
            if claims.resolved and claims.resolved[-1][0] == origin.produced:
                # The same target: one entry, effective when this one would be.
                for region, offsets in claim.applied.items():
                    merge_max(claims.resolved[-1][1].setdefault(region, {}), offsets)
                continue
            _bounded_append(
                claims.resolved, (dict(origin.produced), claim.applied), self.max_pending
            )
        self._advance()

    def _snapshot(
        self, origin: _Origin, shipped_through_ms: int, produced: Mapping[int, int]
    ) -> None:
        merge_max(origin.produced, produced)
        last = origin.pending[-1][0] if origin.pending else origin.safe_before_ms
        if shipped_through_ms <= last:
            return
        if origin.pending and origin.pending[-1][1] == origin.produced:
            # Nothing shipped since: the later moment is as true of the same offsets (and a
            # quiet region keeps one entry).
            origin.pending[-1] = (shipped_through_ms, origin.pending[-1][1])
            return
        _bounded_append(
            origin.pending, (shipped_through_ms, dict(origin.produced)), self.max_pending
        )

    # ------------------------------------------------------------------------ output
    def _advance(self) -> None:
        for peer, claims in self._claims.items():
            ours = self._applied.get(peer, {})
            while claims.resolved and covers(ours, claims.resolved[0][0]):
                _, applied = claims.resolved.popleft()
                for region, offsets in applied.items():
                    merge_max(claims.effective.setdefault(region, {}), offsets)
        for name, state in self._origins.items():
            while state.pending and not self.holding_back(name, state.pending[0][1]):
                state.safe_before_ms = state.pending.popleft()[0]

    def holding_back(self, origin: str, target: Mapping[int, int]) -> list[str]:
        """The regions that have not (provably) applied `origin`'s topic up to `target`."""
        held = []
        if origin != self.region and not covers(self._applied.get(origin, {}), target):
            held.append(self.region)
        for peer, claims in self._claims.items():
            if peer != origin and not covers(claims.effective.get(origin, {}), target):
                held.append(peer)
        return held

    def safe_before_ms(self, origin: str) -> int:
        """Tombstones from `origin` whose hybrid timestamp's physical time is below this
        (on `origin`'s clock) may be forgotten here; 0 for none (or an unknown region)."""
        state = self._origins.get(origin)
        return 0 if state is None else state.safe_before_ms

    def frontiers(self) -> dict[str, int]:
        """`safe_before_ms` of every region."""
        return {name: origin.safe_before_ms for name, origin in self._origins.items()}

    def waiting_on(self) -> dict[str, list[str]]:
        """Per origin with snapshots not yet done, the regions holding the oldest back."""
        return {
            name: self.holding_back(name, origin.pending[0][1])
            for name, origin in self._origins.items()
            if origin.pending
        }


def _capped(applied: dict[str, Offsets], cap: dict[str, Offsets] | None) -> dict[str, Offsets]:
    """`applied`, no partition beyond `cap` (a region or partition the cap lacks: 0)."""
    if cap is None:
        return applied
    return {
        region: {p: min(o, cap.get(region, {}).get(p, 0)) for p, o in offsets.items()}
        for region, offsets in applied.items()
    }


def _lowest(cap: dict[str, Offsets] | None, applied: dict[str, Offsets]) -> dict[str, Offsets]:
    """The lower of an existing cap and `applied` (the first cap is `applied` itself)."""
    return {k: dict(v) for k, v in applied.items()} if cap is None else _capped(cap, applied)


def _bounded_append(queue: deque[T], item: T, limit: int) -> None:
    """Append, dropping the oldest entries beyond `limit` (only ever delays collection)."""
    queue.append(item)
    while len(queue) > limit:
        queue.popleft()
