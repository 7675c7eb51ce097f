"""The tombstone GC frontier (reconciler.consistency.gcwatermark): a delete is forgotten only
once every region has applied it and every write a region made before applying it has been
applied here, judged from each region's own clock and offsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.consistency.control import ControlMessage
from reconciler.consistency.gcwatermark import GcWatermark
from reconciler.consistency.peers import HEARTBEAT, Peers

US, B, C = "eu-west", "us-east", "ap-south"
PARTS = 2


def beat(
    gc: GcWatermark,
    peer: str,
    at: int,
    ship: int,
    produced: dict[int, int],
    applied: dict[str, dict[int, int]],
    epoch: int = 1,
) -> None:
    gc.observe_peer(
        peer, epoch=epoch, at_ms=at, shipped_through_ms=ship, produced=produced, applied=applied
    )


def test_a_quiet_cluster_moves_every_frontier_past_what_was_shipped() -> None:
    gc = GcWatermark(US, [B, C])
    gc.observe_own(1000, {0: 3, 1: 0}, {B: {0: 2}, C: {0: 1}})
    assert gc.frontiers() == {US: 0, B: 0, C: 0}  # nobody has said anything
    # Peers' clocks are far off ours (B 10 minutes ahead, C behind): never compared with ours.
    beat(gc, B, 601_000, 601_000, {0: 2}, {US: {0: 3, 1: 0}, C: {0: 1}})
    beat(gc, C, 500, 500, {0: 1}, {US: {0: 3, 1: 0}, B: {0: 2}})
    gc.observe_own(2000, {0: 3, 1: 0}, {B: {0: 2}, C: {0: 1}})
    assert gc.frontiers() == {US: 2000, B: 601_000, C: 500}


def test_a_peer_that_has_not_applied_our_topic_holds_our_tombstones() -> None:
    gc = GcWatermark(US, [B, C])
    gc.observe_own(1000, {0: 3}, {B: {}, C: {}})
    beat(gc, B, 50, 50, {}, {US: {0: 3}})
    beat(gc, C, 70, 70, {}, {US: {0: 2}})  # one record short
    gc.observe_own(1100, {0: 3}, {B: {}, C: {}})
    assert gc.safe_before_ms(US) == 0
    assert gc.waiting_on()[US] == [C]
    beat(gc, C, 80, 80, {}, {US: {0: 3}})
    assert gc.safe_before_ms(US) == 1100


def test_a_peer_write_still_on_its_way_here_holds_the_tombstones() -> None:
    """Condition B: C applied our delete, but C's writes from before that moment are not
    yet applied here; one of them may be a concurrent write the tombstone must beat."""
    gc = GcWatermark(US, [B, C])
    gc.observe_own(1000, {0: 3}, {B: {}, C: {0: 0}})
    beat(gc, B, 10, 10, {}, {US: {0: 3}, C: {0: 5}})
    # C applied our topic at its 500 and had shipped everything by then: its topic ends at 5.
    beat(gc, C, 500, 500, {0: 5}, {US: {0: 3}})
    gc.observe_own(1100, {0: 3}, {B: {}, C: {0: 4}})
    assert gc.safe_before_ms(US) == 0
    assert C in gc.waiting_on()[US]
    gc.observe_own(1200, {0: 3}, {B: {}, C: {0: 5}})
    assert gc.safe_before_ms(US) == 1200


def test_a_heartbeat_from_a_clock_far_ahead_unlocks_nothing() -> None:
    gc = GcWatermark(US, [B, C])
    gc.observe_own(1000, {0: 3}, {B: {}, C: {}})
    beat(gc, B, 10, 10, {}, {US: {0: 3}})
    future = 10**13
    beat(gc, C, future, future, {}, {US: {0: 1}, B: {}})  # far ahead, behind on our topic
    gc.observe_own(1100, {0: 3}, {B: {}, C: {}})
    assert gc.safe_before_ms(US) == 0


def test_claims_waiting_for_a_restarted_peers_watermark_are_dropped() -> None:
    gc = GcWatermark(US, [B])
    gc.observe_own(1000, {0: 3}, {B: {0: 9}})
    # B claims it applied our topic at 500, but its capture has only shipped through 400.
    beat(gc, B, 500, 400, {0: 9}, {US: {0: 3}}, epoch=1)
    assert gc.safe_before_ms(US) == 0
    # A new daemon of B: its watermark is a new series, the old claim cannot be closed by it.
    beat(gc, B, 450, 600, {0: 9}, {US: {0: 0}}, epoch=2)
    assert gc.safe_before_ms(US) == 0
    beat(gc, B, 700, 700, {0: 9}, {US: {0: 3}}, epoch=2)
    gc.observe_own(1100, {0: 3}, {B: {0: 9}})
    assert gc.safe_before_ms(US) == 1100


def test_a_recovering_region_says_nothing_until_it_is_consistent_again() -> None:
    gc = GcWatermark(US, [B])
    gc.observe_own(1000, {0: 3}, {B: {0: 9}})
    # B recovering (a gap): its applied offsets may cover what its Redis lost.
    gc.observe_peer(
        B,
        epoch=1,
        at_ms=10,
        shipped_through_ms=10,
        produced={0: 9},
        applied={US: {0: 3}},
        status="recovering",
    )
    gc.observe_own(1100, {0: 3}, {B: {0: 9}})
    assert gc.safe_before_ms(US) == 0
    assert gc.safe_before_ms(B) == 0
    beat(gc, B, 20, 20, {0: 9}, {US: {0: 3}})
    gc.observe_own(1200, {0: 3}, {B: {0: 9}})
    assert gc.safe_before_ms(US) == 1200
    assert gc.safe_before_ms(B) == 20
    # Our own recovery drops our snapshots still waiting; frontiers reached stay.
    gc.observe_own(1300, {0: 4}, {B: {0: 9}})
    gc.observe_own(1400, {0: 5}, {B: {0: 9}}, status="recovering")
    beat(gc, B, 30, 30, {0: 9}, {US: {0: 5}})
    assert gc.safe_before_ms(US) == 1200
    gc.observe_own(1500, {0: 5}, {B: {0: 9}})
    beat(gc, B, 40, 40, {0: 9}, {US: {0: 5}})
    assert gc.safe_before_ms(US) == 1500


def test_history_is_bounded_and_dropping_only_delays() -> None:
    gc = GcWatermark(US, [B], max_pending=8)
    for i in range(100):
        gc.observe_own(1000 + i, {0: i + 1}, {B: {}})
        beat(gc, B, i, i - 50, {}, {US: {0: 0}})  # B never applies, its capture lags
    assert gc.safe_before_ms(US) == 0
    beat(gc, B, 200, 200, {}, {US: {0: 100}})
    gc.observe_own(2000, {0: 100}, {B: {}})
    assert gc.safe_before_ms(US) == 2000


# ------------------------------------------------------------------------ the property


@dataclass
class Write:
    region: str
    real: int  # when it was written to the region's Redis (the simulation's true time)
    wall: int  # the same moment on the region's clock (= its hybrid timestamp's physical)
    delete: bool
    partition: int
    offset: int = -1  # on the region's topic, once shipped


@dataclass
class Region:
    name: str
    skew: int
    epoch: int = 1
    log: list[Write] = field(default_factory=list)  # every write, in order
    shipped: int = 0  # how many of `log` are in Kafka
    topic: dict[int, list[Write]] = field(default_factory=lambda: {p: [] for p in range(PARTS)})
    applied: dict[str, dict[int, int]] = field(default_factory=dict)
    applied_at: dict[int, int] = field(default_factory=dict)  # id(delete) -> real time


Step = tuple[str, str, int, int]  # action, region, n, milliseconds elapsed


def steps() -> st.SearchStrategy[list[Step]]:
    # Fine steps (one write, part of a topic) and coarse ones (a region ships or applies
    # everything, every region beats) so that frontiers do move within a short script.
    fine = ["write", "delete", "delete", "ship", "apply", "beat", "restart"]
    action = st.sampled_from([*fine, "ship-all", "apply-all", "beat-all", "beat-all"])
    region = st.sampled_from([US, B, C])
    return st.lists(
        st.tuples(action, region, st.integers(0, 3), st.integers(1, 5000)), min_size=30, max_size=80
    )


@settings(max_examples=400, deadline=None)
@given(
    skews=st.tuples(*[st.integers(-600_000, 600_000) for _ in range(3)]),
    script=steps(),
)
def test_no_tombstone_passes_before_every_region_applied_it_and_its_concurrent_writes(
    skews: tuple[int, int, int], script: list[Step]
) -> None:
    names = [US, B, C]
    regions = {n: Region(n, s) for n, s in zip(names, skews, strict=True)}
    for r in regions.values():
        r.applied = {o: dict.fromkeys(range(PARTS), 0) for o in names if o != r.name}
    gc = GcWatermark(US, [B, C], max_pending=16)
    now = 1_800_000_000_000

    def produced(r: Region) -> dict[int, int]:
        return {p: len(recs) for p, recs in r.topic.items()}

    def shipped_through(r: Region) -> int:
        if r.shipped < len(r.log):
            return r.log[r.shipped].wall  # every write before the first unshipped one
        return now + r.skew

    for action, name, n, dt in script:
        now += dt
        r = regions[name]
        if action in ("write", "delete"):
            r.log.append(Write(name, now, now + r.skew, action == "delete", n % PARTS))
        elif action in ("ship", "ship-all"):
            count = len(r.log) if action == "ship-all" else n + 1
            for w in r.log[r.shipped : r.shipped + count]:
                w.offset = len(r.topic[w.partition])
                r.topic[w.partition].append(w)
            r.shipped = min(len(r.log), r.shipped + count)
        elif action == "apply":
            origin = names[(names.index(name) + 1 + n % 2) % 3]
            apply(r, regions[origin], n // 2 % PARTS, 1 + n, now)
        elif action == "apply-all":
            for other in regions.values():
                if other is not r:
                    for part in range(PARTS):
                        apply(r, other, part, len(other.topic[part]), now)
        elif action == "beat":
            heartbeat(gc, r, now, shipped_through(r), produced(r))
        elif action == "beat-all":
            for q in regions.values():
                now += 1
                heartbeat(gc, q, now, shipped_through(q), produced(q))
        elif action == "restart" and name != US:
            r.epoch += 1  # offsets and Kafka survive; unshipped writes are shipped later
        check(regions, gc)


def apply(r: Region, origin: Region, part: int, count: int, now: int) -> None:
    recs = origin.topic[part]
    start = r.applied[origin.name][part]
    for w in recs[start : start + count]:
        if w.delete:
            r.applied_at[id(w)] = now
    r.applied[origin.name][part] = min(len(recs), start + count)


def heartbeat(gc: GcWatermark, r: Region, now: int, ship: int, produced: dict[int, int]) -> None:
    # `applied` is read, then the clock: as Heartbeats.body does.
    applied = {o: dict(offs) for o, offs in r.applied.items()}
    if r.name == US:
        gc.observe_own(ship, produced, applied)
    else:
        gc.observe_peer(
            r.name,
            epoch=r.epoch,
            at_ms=now + r.skew,
            shipped_through_ms=ship,
            produced=produced,
            applied=applied,
        )


def check(regions: dict[str, Region], gc: GcWatermark) -> None:
    us = regions[US]
    for origin in regions.values():
        safe = gc.safe_before_ms(origin.name)
        for d in origin.log:
            if not d.delete or d.wall >= safe:
                continue
            assert d.offset >= 0, "a delete not yet in Kafka passed"
            # (A) every region has applied it (the origin wrote it).
            for q in regions.values():
                if q.name != origin.name:
                    assert q.applied[origin.name][d.partition] > d.offset, (q.name, "lacks it")
            # (B) every write a peer made before it had the delete is applied here.
            for q in regions.values():
                if q.name == US:
                    continue
                had_it = d.real if q.name == origin.name else q.applied_at[id(d)]
                for w in q.log:
                    if w.real >= had_it:
                        break
                    assert w.offset >= 0, (q.name, "write before the delete not shipped")
                    assert us.applied[q.name][w.partition] > w.offset, (q.name, "not applied")


async def test_peers_hand_the_gc_only_the_heartbeats_they_take() -> None:
    taken: list[tuple[str, int]] = []
    peers = Peers(
        US,
        [B],
        timeout_s=60,
        on_peer_up=lambda peer, reason: None,
        on_heartbeat=lambda peer, hb: taken.append((peer, hb.at_ms)),
    )

    async def send(sender: str, **body: Any) -> None:
        body = {"epoch": 1, "at_ms": 0, "shipped_through_ms": 0} | body
        await peers.handle(ControlMessage(HEARTBEAT, sender, "*", "", body))

    await send(B, at_ms=100)
    await send(B, at_ms=90)  # older than the last one taken: a replay
    await send(B, at_ms=110, applied={US: {"x": 1}})  # malformed
    await send(C, at_ms=120)  # not a configured peer
    await send(B, at_ms=130)
    assert taken == [(B, 100), (B, 130)]


def test_a_delete_a_peer_refused_is_never_counted_as_applied_there() -> None:
    """C's applied offsets move past an event it dead-lettered (a delete quarantined as
    clock-ahead, say) as past one it applied: once its refused count grows, nothing it
    applied after its previous heartbeat counts, so our tombstones from then on wait."""
    gc = GcWatermark(US, [B, C])
    gc.observe_own(1000, {0: 3}, {B: {}, C: {}})
    beat(gc, B, 10, 10, {}, {US: {0: 3}})
    beat(gc, C, 20, 20, {}, {US: {0: 3}})
    gc.observe_own(1100, {0: 3}, {B: {}, C: {}})
    assert gc.safe_before_ms(US) == 1100  # everything up to offset 3 was applied everywhere

    # We delete a key (offset 3 -> 4); C refuses that event but its offsets move on.
    gc.observe_own(1200, {0: 4}, {B: {}, C: {}})
    beat(gc, B, 30, 30, {}, {US: {0: 4}})
    gc.observe_peer(
        C,
        epoch=1,
        at_ms=40,
        shipped_through_ms=40,
        produced={},
        applied={US: {0: 4}},
        refused_events=1,
    )
    gc.observe_own(1300, {0: 4}, {B: {}, C: {}})
    assert gc.safe_before_ms(US) == 1100
    assert gc.waiting_on()[US] == [C]
    # Later heartbeats with nothing more refused do not lift it: the hole stays behind them.
    for at in (50, 60):
        gc.observe_peer(
            C,
            epoch=1,
            at_ms=at,
            shipped_through_ms=at,
            produced={},
            applied={US: {0: 9}},
            refused_events=1,
        )
    gc.observe_own(1400, {0: 4}, {B: {}, C: {}})
    assert gc.safe_before_ms(US) == 1100
    # Nor does C's restart (a new run counts from 0).
    gc.observe_peer(
        C,
        epoch=2,
        at_ms=70,
        shipped_through_ms=70,
        produced={},
        applied={US: {0: 9}},
    )
    gc.observe_own(1500, {0: 4}, {B: {}, C: {}})
    assert gc.safe_before_ms(US) == 1100


def test_a_refusal_in_a_peers_run_before_we_heard_it_holds_everything() -> None:
    gc = GcWatermark(US, [B, C])
    gc.observe_own(1000, {0: 3}, {B: {}, C: {}})
    beat(gc, B, 10, 10, {}, {US: {0: 3}})
    gc.observe_peer(
        C,
        epoch=1,
        at_ms=20,
        shipped_through_ms=20,
        produced={},
        applied={US: {0: 3}},
        refused_events=2,
    )
    gc.observe_own(1100, {0: 3}, {B: {}, C: {}})
    assert gc.safe_before_ms(US) == 0
