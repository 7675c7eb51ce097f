"""Conflict resolution: given the local and the remote version of a key, what happens.

- remote dominates local (or there is no local version): apply the remote state;
- local dominates or they are equal: drop the remote (stale);
- concurrent: the deterministic rule every region evaluates identically: last writer wins
  by hybrid timestamp, ties broken by region name, then by digest (bytewise). The result
  carries the merged clock; the conflict is recorded.

The Lua library (`rr_apply`) implements the same rule where it writes; this module is the
reference used by anti-entropy, reports and the property tests, which check both agree.

Why no type-aware merge (set union, hash field union) is offered: a merge over whole states
is not convergent once one of the merged versions is later superseded causally. With
versions a (has x), b (concurrent), and c (causally after a, removed x): a replica that
merged a+b and then meets c keeps x; one that meets c then b never has it. Convergent
merges need per-element causal metadata (an OR-set), multiplying metadata per key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from replication.model.event import Version
from replication.model.vclock import Order, VectorClock


class Outcome(enum.Enum):
    APPLIED = "applied"
    STALE = "stale"
    REMOTE_WON = "conflict-remote-won"
    LOCAL_WON = "conflict-local-won"

    @property
    def is_conflict(self) -> bool:
        return self in (Outcome.REMOTE_WON, Outcome.LOCAL_WON)

    @property
    def remote_state_written(self) -> bool:
        return self in (Outcome.APPLIED, Outcome.REMOTE_WON)


@dataclass(frozen=True, slots=True)
class Resolution:
    outcome: Outcome
    clock: VectorClock  # the clock the local side holds afterwards
    winner: Version
    reason: str  # why, in words, for reports


def resolve(
    local: Version | None, remote: Version, retired: frozenset[str] = frozenset()
) -> Resolution:
    """Decide what a region holding `local` does with `remote`."""
    if local is None:
        return Resolution(Outcome.APPLIED, remote.clock, remote, "no local version")
    order = remote.clock.compare(local.clock, retired)
    if order is Order.AFTER:
        return Resolution(Outcome.APPLIED, remote.clock, remote, "remote clock dominates")
    if order is Order.EQUAL:
        return Resolution(Outcome.STALE, local.clock, local, "clocks equal")
    if order is Order.BEFORE:
        return Resolution(Outcome.STALE, local.clock, local, "local clock dominates")
    merged = remote.clock.merge(local.clock)
    if remote.lww_key() > local.lww_key():
        return Resolution(Outcome.REMOTE_WON, merged, remote, _why(remote, local))
    return Resolution(Outcome.LOCAL_WON, merged, local, _why(local, remote))


def _why(winner: Version, loser: Version) -> str:
    if winner.hlc != loser.hlc:
        return (
            f"concurrent; last writer wins: {winner.origin} at hlc {winner.hlc} "
            f"> {loser.origin} at hlc {loser.hlc}"
        )
    if winner.origin != loser.origin:
        return f"concurrent, same hlc {winner.hlc}; region name {winner.origin} > {loser.origin}"
    return f"concurrent, same hlc and region {winner.origin}; larger digest wins"
