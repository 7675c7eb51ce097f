"""Convergence of the resolution rule, by simulation.

Regions write one key (with skewed wall clocks) and exchange versions in random patterns,
producing a realistic causal history. Then every version is delivered to several fresh
replicas, each in its own random order. Every replica must end with the same version, its
clock the join of all clocks, its value the rule's pick (last writer wins) among the
causally latest versions; a delete is never undone by a causally older write.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from replication.model.digest import TOMBSTONE_DIGEST, string_digest
from replication.model.event import Version
from replication.model.hlc import EPOCH_MS, HybridClock
from replication.model.resolver import Outcome, resolve
from replication.model.vclock import Order, VectorClock

REGIONS = ["ap-south", "eu-west", "us-east"]


@dataclass
class Replica:
    version: Version | None = None

    def receive(self, remote: Version) -> Outcome:
        """Exactly what rr_apply does to the key's metadata."""
        result = resolve(self.version, remote)
        if result.outcome.remote_state_written:
            self.version = Version(result.clock, remote.origin, remote.digest)
        elif result.outcome is Outcome.LOCAL_WON:
            assert self.version is not None
            self.version = Version(result.clock, self.version.origin, self.version.digest)
        return result.outcome


class Wall:
    def __init__(self, offset_ms: int) -> None:
        self.t = EPOCH_MS + 1_000_000
        self.offset = offset_ms

    def __call__(self) -> int:
        return self.t + self.offset


step = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2), st.just(False)),
)


def run_history(
    steps: list[tuple[str, int, int, bool]], offsets: list[int], max_drift: int
) -> list[Version]:
    walls = [Wall(o) for o in offsets]
    hlcs = [HybridClock(wall=w, max_drift_ms=max_drift) for w in walls]
    regions = [Replica() for _ in REGIONS]
    produced: list[Version] = []
    for kind, a, b, delete in steps:
        for w in walls:
            w.t += 7
        if kind == "write":
            current = regions[a].version
            base = current.clock if current else VectorClock()
            digest = TOMBSTONE_DIGEST if delete else string_digest(b"value-%d" % b)
            v = Version(base.tick(REGIONS[a], hlcs[a].now()), REGIONS[a], digest)
            regions[a].version = v
            produced.append(v)
        elif regions[a].version is not None and a != b:
            remote = regions[a].version
            hlcs[b].observe(remote.hlc)
            regions[b].receive(remote)
    return produced


def maximal(versions: list[Version]) -> list[Version]:
    return [
        v for v in versions if not any(v.clock.compare(o.clock) is Order.BEFORE for o in versions)
    ]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(step, min_size=1, max_size=40),
    offsets=st.lists(st.integers(-50_000, 50_000), min_size=3, max_size=3),
    max_drift=st.sampled_from([100, 60_000]),
    seed=st.integers(0, 2**32 - 1),
    replicas=st.integers(2, 5),
)
def test_every_delivery_order_converges_to_the_rules_pick(
    steps: list[tuple[str, int, int, bool]],
    offsets: list[int],
    max_drift: int,
    seed: int,
    replicas: int,
) -> None:
    produced = run_history(steps, offsets, max_drift)
    if not produced:
        return
    rng = random.Random(seed)
    finals = []
    for _ in range(replicas):
        order = produced[:]
        rng.shuffle(order)
        replica = Replica()
        for v in order:
            replica.receive(v)
            replica.receive(rng.choice(produced))  # at-least-once: duplicates are harmless
        finals.append(replica.version)

    assert all(f == finals[0] for f in finals), "replicas diverged"
    final = finals[0]
    assert final is not None
    join = VectorClock()
    for v in produced:
        join = join.merge(v.clock)
    assert final.clock == join
    winner = max(maximal(produced), key=Version.lww_key)
    assert (final.origin, final.digest) == (winner.origin, winner.digest)
    # A delete is never undone by a causally older write: the winner is dominated by
    # no version at all, deletes included.
    source = next(
        v
        for v in produced
        if (v.origin, v.digest, v.hlc) == (winner.origin, winner.digest, winner.hlc)
    )
    for d in produced:
        if d.digest == TOMBSTONE_DIGEST:
            assert source.clock.compare(d.clock) is not Order.BEFORE


@given(seed=st.integers(0, 2**32 - 1))
def test_causally_later_write_wins_even_when_its_wall_clock_is_far_behind(seed: int) -> None:
    # eu-west's clock is an hour ahead; us-east writes after seeing eu-west's write.
    ahead = HybridClock(wall=lambda: EPOCH_MS + 3_600_000 + 10_000)
    behind = HybridClock(wall=lambda: EPOCH_MS + 10_000, max_drift_ms=10)
    first = Version(VectorClock().tick("eu-west", ahead.now()), "eu-west", b"a" * 16)
    behind.observe(first.hlc)  # clamped: it moves only max_drift ahead of its own wall
    second = Version(first.clock.tick("us-east", behind.now()), "us-east", b"b" * 16)
    assert second.clock.compare(first.clock) is Order.AFTER
    assert second.lww_key() > first.lww_key()
    r = Replica(first)
    assert r.receive(second) is Outcome.APPLIED
    assert r.version == second


def test_concurrent_writes_resolve_by_timestamp_then_region_name() -> None:
    a = Version(VectorClock({"eu-west": 100}), "eu-west", b"a" * 16)
    b = Version(VectorClock({"us-east": 100}), "us-east", b"b" * 16)
    c = Version(VectorClock({"ap-south": 101}), "ap-south", b"c" * 16)
    assert resolve(a, b).outcome is Outcome.REMOTE_WON  # same hlc: "us-east" > "eu-west"
    assert resolve(b, a).outcome is Outcome.LOCAL_WON
    assert resolve(a, c).outcome is Outcome.REMOTE_WON  # later hlc
    res = resolve(a, b)
    assert res.clock == VectorClock({"eu-west": 100, "us-east": 100})
    assert "region name" in res.reason


def test_stale_and_equal_versions_are_dropped() -> None:
    old = Version(VectorClock({"eu-west": 1}), "eu-west", b"a" * 16)
    new = Version(VectorClock({"eu-west": 2}), "eu-west", b"b" * 16)
    assert resolve(new, old).outcome is Outcome.STALE
    assert resolve(new, new).outcome is Outcome.STALE
    assert resolve(old, new).outcome is Outcome.APPLIED
    assert resolve(None, old).outcome is Outcome.APPLIED
