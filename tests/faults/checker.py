"""The invariants, checked from the history, the nemesis's failure windows and the data
every region holds once the system healed. Nothing here excuses a violation that no
classified failure window explains; what a window explains is counted and reported.

- identical: every region holds the same keys, each with the same type and value and an
  expiry within 1 s.
- resolution: a key's final state is the effect of a write that no later acknowledged
  write of the same region, or of the same client (it had seen the first acknowledged),
  superseded (for a key one region writes: its last acknowledged write, or a later one
  whose outcome is unknown). Superseded by a write lost inside a data-loss window of its
  region (a Redis killed, restarted empty or from an older RDB, `window_s` before the kill
  and while its region's shipping was impaired), or made while its Redis was coming back
  from a copy (its own AOF, an older RDB) or within `window_s` after, before its daemon
  captured again, or made while its region's daemon was paused (dated from the pause's
  start, it may lose to a write made elsewhere meanwhile), or a delete its region answered
  0 to (it deleted nothing) while the region was without its data (from such a fault until
  `after_s` after it healed): counted
  as lost, not a violation. A key present whose superseding write was a delete:
  resurrected.
- application: through the failover client no read returns a value older than one the
  same client read before, nor older than (or missing instead of) a write acknowledged more
  than `window_s` before, except when that write was in flight inside a failure window of
  its region (read elsewhere before it arrived), made less than `window_s` before in
  another region (asynchronous replication across a failover), or lost. A command the
  failover client moved while it was in flight may have been served by any region.
- untouched: nothing the forged/unsigned/undecodable records carried is anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.faults.history import ACKED, FAILED, History, Op
from tests.faults.nemesis import DATA_LOSS_KINDS, RESTORED_KINDS, SHIPPING_KINDS, FaultRecord
from tests.faults.workload import writer_of
from tests.regions import State

EXPIRY_SLOP_MS = 1_000
EXPIRING_MS = 1_500  # an expiry this close to the snapshot may or may not have fired


@dataclass
class Violation:
    invariant: str
    message: str
    ops: list[Op] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)

    def render(self, seed: int) -> str:
        lines = [f"VIOLATION seed={seed} [{self.invariant}] {self.message}"]
        lines += ["    op " + op.describe() for op in self.ops[-12:]]
        lines += ["    fault " + f.describe() for f in self.faults]
        return "\n".join(lines)


@dataclass
class Verdict:
    violations: list[Violation] = field(default_factory=list)
    lost_in_window: list[Op] = field(default_factory=list)
    """Acknowledged writes gone inside a data-loss window (async replication). A write
    superseded by a later one that was lost too counts: its key ends older than both."""
    keys_lost_newest: int = 0
    """Keys among those whose newest acknowledged write is one of `lost_in_window`."""
    reads_excused: dict[str, int] = field(default_factory=dict)
    keys_checked: int = 0
    reads_checked: int = 0


class Windows:
    """The nemesis's faults as the intervals the invariants refer to."""

    def __init__(
        self,
        faults: list[FaultRecord],
        window_s: float,
        after_s: float,
        names: tuple[str, ...] = ("eu-west", "us-east", "ap-south"),
    ) -> None:
        self.faults = faults
        self.names = names
        self.window_s = window_s
        self.after_s = after_s

    def _shipping(self, region: str) -> list[FaultRecord]:
        return [
            f for f in self.faults if f.kind in SHIPPING_KINDS and f.target in (region, "broker")
        ]

    def loss(self, op: Op, key: bytes | None = None) -> FaultRecord | None:
        """The data-loss fault that may have taken `op` (its effect on `key`) with it."""
        for fault in self.faults:
            if fault.kind not in DATA_LOSS_KINDS or fault.target not in self.where(op):
                continue
            risk_start = fault.start - self.window_s
            for other in self._shipping(fault.target):
                if other.start <= fault.start <= (other.end or fault.start) + self.window_s:
                    risk_start = min(risk_start, other.start - self.window_s)
            if risk_start <= op.end and op.start <= fault.start:
                return fault
        for fault in self.faults:
            # Written to a Redis restarted from a copy before its daemon captured again:
            # the sweep finds it unversioned like the copy's own old writes and dates it
            # by the copy's stamp, so it loses to what the region shipped after the copy.
            # From the fault's start: a write acknowledged while it lasted was taken by the
            # restarted Redis (it answers before the nemesis records the heal, which waits
            # for its first AOF).
            if (
                fault.kind in RESTORED_KINDS
                and fault.target in self.where(op)
                and fault.end
                and fault.start <= op.start <= fault.end + self.window_s
            ):
                return fault
            # Taken while its region's daemon was stopped (SIGSTOP), before Redis noticed
            # (min-replicas-max-lag) and refused writes: the daemon finds it when it runs
            # again and can only date it from the moment it stopped (replication/pipeline
            # /stall.py), so it may lose to a write made elsewhere in the meantime.
            if (
                fault.kind == "daemon-pause"
                and fault.target in self.where(op)
                and fault.start <= op.start <= (fault.end or op.start)
            ):
                return fault
            # A delete its region answered 0 to while it was without its data (restarted
            # without it, not repaired yet): it deleted nothing, so nothing was captured,
            # and the repair brings back what the peers hold. The failure took the delete;
            # the failover client never sends one there (the region is not `consistent`).
            if (
                fault.kind in DATA_LOSS_KINDS
                and key is not None
                and deleted_nothing(op, key)
                and fault.target in self.where(op)
                and fault.start <= op.start <= (fault.end or op.start) + self.after_s
            ):
                return fault
        return None

    def where(self, op: Op) -> set[str]:
        return op.regions(self.names)

    def in_flight(self, op: Op, read: Op) -> FaultRecord | None:
        """A fault during which `op` may not have reached the region that served `read`:
        its own region could not ship, or the reader's could not apply."""
        writers, readers = self.where(op), self.where(read)
        if readers <= writers and len(writers) == 1:
            return None
        elsewhere = readers - writers or readers
        for region in writers:
            for fault in self._shipping(region):
                end = fault.end or read.end
                if (
                    fault.start - self.window_s <= op.end <= end
                    and read.start <= end + self.after_s
                ):
                    return fault
        for region in elsewhere:
            for fault in self._shipping(region):
                end = fault.end or read.end
                if (
                    fault.start <= read.start
                    and end >= op.start - self.window_s
                    and (read.start <= end + self.after_s)
                ):
                    return fault
        return None


def deleted_nothing(op: Op, key: bytes) -> bool:
    """Whether `op` deleted `key` and Redis answered that there was nothing to delete (a
    DEL, or a DEL inside a MULTI, whose reply is 0)."""
    if op.effects.get(key, ()) is not None:
        return False
    if op.kind == "del":
        return bool(op.result == 0)
    if op.kind == "multi" and isinstance(op.result, list | tuple):
        replies = list(op.result)
        index = list(op.effects).index(key)
        return index < len(replies) and replies[index] == 0
    return False


def _expected_expiry(op: Op, ttl: tuple[str, int] | None) -> tuple[int, int] | None:
    if ttl is None:
        return None
    if ttl[0] == "abs":
        return ttl[1], ttl[1]
    return op.start_wall_ms + ttl[1], op.end_wall_ms + ttl[1]


def _allows(op: Op, key: bytes, state: State | None, at_ms: int) -> bool:
    """Whether `op`'s effect on `key`, seen at wall time `at_ms`, can be `state`."""
    effect = op.effects[key]
    if effect is None:
        return state is None
    kind, value, ttl = effect
    expiry = _expected_expiry(op, ttl)
    if state is None:
        return expiry is not None and expiry[0] <= at_ms + EXPIRING_MS
    if state[0] != kind or state[1] != value:
        return False
    if expiry is None:
        return state[2] == 0
    if expiry[1] < at_ms - EXPIRING_MS:
        return False
    return expiry[0] - EXPIRY_SLOP_MS <= state[2] <= expiry[1] + EXPIRY_SLOP_MS


def check_identical(snapshots: dict[str, dict[bytes, State]], at_ms: int) -> list[Violation]:
    """Every region holds the same data (expiry within 1 s; a key about to expire may
    already be gone in one region)."""
    out: list[Violation] = []
    names = list(snapshots)
    first = snapshots[names[0]]
    keys = set().union(*(set(s) for s in snapshots.values()))
    for key in sorted(keys):
        states = {n: snapshots[n].get(key) for n in names}
        present = [s for s in states.values() if s is not None]
        if len(present) < len(names):
            if all(s[2] and s[2] <= at_ms + EXPIRING_MS for s in present):
                continue
            out.append(Violation("identical", f"{key!r} present only in some regions: {states}"))
            continue
        base = present[0]
        for name, state in states.items():
            assert state is not None
            same = state[0] == base[0] and state[1] == base[1]
            close = (state[2] == 0) == (base[2] == 0) and abs(state[2] - base[2]) <= 1_000
            if not (same and close):
                out.append(
                    Violation(
                        "identical",
                        f"{key!r} differs: {names[0]}={first.get(key)} {name}={state}",
                    )
                )
                break
    return out


def check_resolution(
    history: History, final: dict[bytes, State], at_ms: int, windows: Windows, verdict: Verdict
) -> None:
    """Each key's final state against what its writes allow (see the module doc)."""
    by_key: dict[bytes, list[Op]] = {}
    for op in history.writes():
        if op.outcome == FAILED:
            continue
        for key in op.effects:
            by_key.setdefault(key, []).append(op)
    for key in sorted(set(by_key) | set(final)):
        ops = sorted(by_key.get(key, []), key=lambda o: o.start)
        state = final.get(key)
        verdict.keys_checked += 1
        if not ops:
            verdict.violations.append(
                Violation("resolution", f"{key!r} = {state} was never written by the workload")
            )
            continue

        def superseders(op: Op, ops: list[Op] = ops) -> list[Op]:
            return [
                o
                for o in ops
                if o.outcome == ACKED
                and (o.region == op.region or o.client == op.client)
                and o.start > op.end
            ]

        matching = [o for o in ops if _allows(o, key, state, at_ms)]
        if state is None and all(o.outcome != ACKED for o in ops):
            continue  # nothing acknowledged: never having happened is allowed
        if any(not superseders(o) for o in matching):
            continue
        # A final state older than a write of its own region: only a loss explains it.
        lost: list[Op] = []
        explained = False
        candidates = matching or []
        if state is None and not matching:
            acked = [o for o in ops if o.outcome == ACKED]
            if all(windows.loss(o, key) for o in acked):
                lost, explained = acked, True
        for candidate in candidates:
            later = superseders(candidate)
            if all(windows.loss(o, key) for o in later):
                lost, explained = later, True
                break
        if explained:
            verdict.lost_in_window.extend(lost)
            verdict.keys_lost_newest += bool(lost)
            continue
        writer = writer_of(key) or "several regions"
        deleted = [o for o in ops if o.outcome == ACKED and o.effects[key] is None]
        invariant = (
            (
                "no-resurrection"
                if state is not None
                and deleted
                and deleted[-1].start > max(o.end for o in matching)
                else "no-lost-winner"
            )
            if matching
            else "allowed-value"
        )
        faults = [f for f in windows.faults if f.target in (writer, "broker", "client")]
        verdict.violations.append(
            Violation(
                invariant,
                f"{key!r} (written by {writer}) ends as {state}; no write that was not "
                f"superseded in its region allows it",
                ops,
                faults if writer != "several regions" else windows.faults,
            )
        )


def _seq(value: Any) -> int:
    return int(value) if value is not None else -1


def check_application(history: History, windows: Windows, verdict: Verdict) -> None:
    """Monotonic reads and no acknowledged write missing, through the failover client."""
    writes = [o for o in history.writes() if o.client == "application"]
    by_value: dict[tuple[bytes, bytes], Op] = {}
    for op in writes:
        for key, effect in op.effects.items():
            assert effect is not None
            by_value[(key, effect[1])] = op
    reads = sorted(
        (o for o in history.reads() if o.outcome == ACKED and o.client == "application"),
        key=lambda o: o.start,
    )
    seen: dict[bytes, list[tuple[float, int, Op]]] = {}  # key -> (read end, seq, read)
    for read in reads:
        verdict.reads_checked += 1
        got = _seq(read.result)
        needed: list[tuple[str, Op]] = []
        earlier = [(seq, r) for end, seq, r in seen.get(read.key, []) if end < read.start]
        if earlier:
            seq, prior = max(earlier, key=lambda item: item[0])
            source = by_value.get((read.key, prior.result))
            if got < seq and source is not None:
                needed.append(("monotonic-reads", source))
        old = [
            o
            for o in writes
            if o.outcome == ACKED
            and read.key in o.effects
            and o.end < read.start - windows.window_s
        ]
        if old:
            last = max(old, key=lambda o: o.end)
            effect = last.effects[read.key]
            assert effect is not None
            if got < int(effect[1]):
                needed.append(("no-missing-read" if got < 0 else "no-stale-read", last))
        seen.setdefault(read.key, []).append((read.end, got, read))
        for invariant, write in needed:
            reason = _excuse(write, read, windows)
            if reason:
                verdict.reads_excused[reason] = verdict.reads_excused.get(reason, 0) + 1
                continue
            verdict.violations.append(
                Violation(
                    invariant,
                    f"the application read {read.key!r} = {read.result!r} at {read.region} "
                    f"after {write.describe()}",
                    [write, read],
                    [f for f in windows.faults if f.start <= read.end and f.end >= write.start],
                )
            )


def _excuse(write: Op, read: Op, windows: Windows) -> str:
    loss = windows.loss(write)
    if loss is not None and read.start >= loss.start:  # a read before the crash saw no loss
        return "in-data-loss-window"
    if windows.in_flight(write, read) is not None:
        return "in-flight-during-fault"
    moved = windows.where(read) - windows.where(write)
    if moved and write.end >= read.start - windows.window_s:
        return "replication-lag-across-failover"
    return ""


def check(
    history: History,
    faults: list[FaultRecord],
    snapshots: dict[str, dict[bytes, State]],
    at_ms: int,
    *,
    window_s: float,
    after_s: float,
) -> Verdict:
    """Every invariant; `snapshots` taken at wall time `at_ms` after the heal."""
    verdict = Verdict()
    windows = Windows(faults, window_s, after_s, tuple(snapshots))
    verdict.violations += check_identical(snapshots, at_ms)
    final = next(iter(snapshots.values()))
    check_resolution(history, final, at_ms, windows, verdict)
    check_application(history, windows, verdict)
    return verdict
