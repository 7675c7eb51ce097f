"""Vector clocks: merge is a join (commutative, associative, idempotent), compare is a
consistent partial order, tick dominates, and the compact encoding round-trips."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.model.vclock import Order, VectorClock

REGIONS = ["eu-west", "us-east", "ap-south", "sa-east"]
clocks = st.dictionaries(st.sampled_from(REGIONS), st.integers(0, 20), max_size=4).map(VectorClock)
OPPOSITE = {
    Order.BEFORE: Order.AFTER,
    Order.AFTER: Order.BEFORE,
    Order.EQUAL: Order.EQUAL,
    Order.CONCURRENT: Order.CONCURRENT,
}


@given(clocks, clocks)
def test_merge_is_commutative(a: VectorClock, b: VectorClock) -> None:
    assert a.merge(b) == b.merge(a)


@given(clocks, clocks, clocks)
def test_merge_is_associative(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(clocks)
def test_merge_is_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a


@given(clocks, clocks)
def test_merge_dominates_or_equals_both_inputs(a: VectorClock, b: VectorClock) -> None:
    m = a.merge(b)
    assert m.compare(a) in (Order.AFTER, Order.EQUAL)
    assert m.compare(b) in (Order.AFTER, Order.EQUAL)


@given(clocks, clocks)
def test_compare_is_antisymmetric(a: VectorClock, b: VectorClock) -> None:
    assert b.compare(a) is OPPOSITE[a.compare(b)]


@given(clocks, clocks)
def test_equal_compare_means_equal_clocks(a: VectorClock, b: VectorClock) -> None:
    assert (a.compare(b) is Order.EQUAL) == (a == b)


@given(clocks, clocks, clocks)
def test_before_is_transitive(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    if a.compare(b) is Order.BEFORE and b.compare(c) is Order.BEFORE:
        assert a.compare(c) is Order.BEFORE


@given(clocks, st.sampled_from(REGIONS), st.integers(0, 100))
def test_tick_strictly_dominates_and_tops_every_entry(a: VectorClock, region: str, ts: int) -> None:
    t = a.tick(region, ts)
    assert t.compare(a) is Order.AFTER
    assert t[region] >= ts
    assert all(t[region] > a[r] for r in a)


@given(clocks)
def test_flat_encoding_round_trips_through_msgpack(a: VectorClock) -> None:
    flat = msgpack.unpackb(msgpack.packb(a.to_flat()))
    assert VectorClock.from_flat(flat) == a


@given(clocks)
def test_flat_encoding_is_deterministic(a: VectorClock) -> None:
    shuffled = VectorClock(dict(reversed(list(a.items()))))
    assert msgpack.packb(shuffled.to_flat()) == msgpack.packb(a.to_flat())


def test_flat_encoding_is_sorted_bytewise() -> None:
    clock = VectorClock({"b": 1, "B": 2, "a-1": 3})
    assert clock.to_flat() == ["B", 2, "a-1", 3, "b", 1]


@pytest.mark.parametrize(
    "flat", [["a"], ["a", -1], ["a", 1.5], [1, 1], ["", 1], ["a", 1, "a", 2], ["a", True]]
)
def test_malformed_flat_clocks_are_rejected(flat: list[object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        VectorClock.from_flat(flat)


def test_pruning_retired_regions_applies_to_both_sides_of_a_comparison() -> None:
    a = VectorClock({"old": 5, "eu-west": 1})
    b = VectorClock({"eu-west": 2})
    assert a.compare(b) is Order.CONCURRENT
    retired = frozenset({"old"})
    assert a.compare(b, retired) is Order.BEFORE
    assert a.pruned(retired).compare(b.pruned(retired)) is Order.BEFORE
    assert "old" not in a.pruned(retired)


def test_zero_entries_are_absent() -> None:
    assert VectorClock({"a": 0}) == VectorClock()
    assert VectorClock({"a": 0}).compare(VectorClock()) is Order.EQUAL
