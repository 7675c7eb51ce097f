"""The hybrid logical clock never goes back, whatever the wall clock does, and a remote
clock far in the future moves it only up to the configured drift."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from replication.model.hlc import EPOCH_MS, MAX_TIMESTAMP, HybridClock, logical, pack, physical_ms

BASE = EPOCH_MS + 10_000_000


class FakeWall:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


steps = st.lists(
    st.tuples(st.sampled_from(["tick", "observe"]), st.integers(-5_000, 5_000)), max_size=60
)


@given(steps)
def test_timestamps_strictly_increase_under_skewed_and_backward_wall_clocks(
    ops: list[tuple[str, int]],
) -> None:
    wall = FakeWall(BASE)
    clock = HybridClock(wall=wall, max_drift_ms=1_000)
    last = 0
    for op, delta in ops:
        wall.now += delta  # the wall clock jumps forward and backward
        ts = clock.now() if op == "tick" else clock.observe(pack(wall.now + delta))
        assert ts > last
        last = ts


@given(st.integers(0, 10_000), st.integers(0, 100))
def test_observe_moves_past_a_remote_timestamp_within_drift(ahead: int, logical_: int) -> None:
    wall = FakeWall(BASE)
    clock = HybridClock(wall=wall, max_drift_ms=10_000)
    remote = pack(BASE + ahead, logical_)
    assert clock.observe(remote) > remote
    assert clock.now() > remote
    assert clock.skew_events == 0


def test_remote_clock_beyond_max_drift_is_clamped_and_counted() -> None:
    wall = FakeWall(BASE)
    clock = HybridClock(wall=wall, max_drift_ms=1_000)
    far_future = pack(BASE + 3_600_000)
    ts = clock.observe(far_future)
    assert ts < far_future
    assert physical_ms(ts) <= BASE + 1_000 + 1
    assert clock.skew_events == 1


def test_floor_survives_a_restart_with_the_wall_clock_set_back() -> None:
    wall = FakeWall(BASE)
    first = HybridClock(wall=wall)
    high = max(first.now() for _ in range(10))
    wall.now -= 60_000  # the machine's clock went back while the daemon was down
    second = HybridClock(wall=wall, floor=high)
    assert second.now() > high


def test_more_than_4096_ticks_in_one_millisecond_borrow_the_next() -> None:
    wall = FakeWall(BASE)
    clock = HybridClock(wall=wall)
    stamps = [clock.now() for _ in range(5000)]
    assert stamps == sorted(set(stamps))
    assert physical_ms(stamps[-1]) == BASE + 1
    assert logical(stamps[0]) == 0


def test_timestamps_fit_in_a_lua_double_until_the_2090s() -> None:
    year_2090 = 3_786_912_000_000
    assert pack(year_2090, 4095) < MAX_TIMESTAMP


@given(steps, st.integers(0, 59))
def test_at_dates_a_moment_above_everything_observed_before_it_and_never_after_now(
    ops: list[tuple[str, int]], pick: int
) -> None:
    """`at(w)` (a write read at w, versioned later) sorts after every remote timestamp the
    clock had observed by w and after the floor, and is never above what `now()` gives."""
    wall = FakeWall(BASE)
    floor = pack(BASE - 1_000)
    clock = HybridClock(wall=wall, max_drift_ms=1_000, floor=floor)
    history: list[tuple[int, int]] = []  # (wall at the observation, the remote timestamp)
    moments: list[int] = []
    for op, delta in ops:
        wall.now += abs(delta) // 10 if op == "tick" else delta
        moments.append(wall.now)
        if op == "observe":
            remote = pack(wall.now + delta // 5)
            clock.observe(remote)
            history.append((wall.now, min(remote, clock.ceiling())))
    moment = moments[pick % len(moments)] if moments else BASE
    stamped = clock.at(moment)
    assert stamped > floor
    if all(w <= x for (w, _), (x, _) in itertools.pairwise(history)):
        # A wall clock that never went back at an observation: `at` knows them all.
        assert all(stamped > remote for w, remote in history if w <= moment)
    assert stamped <= clock.now()


def test_at_dates_by_the_moment_when_nothing_was_observed_since() -> None:
    wall = FakeWall(BASE)
    clock = HybridClock(wall=wall)
    clock.observe(pack(BASE - 5))
    wall.now += 3_000  # the write read at BASE + 1 is versioned 3 s later
    assert clock.at(BASE + 1) == pack(BASE + 1)
    clock.observe(pack(BASE + 2_000))
    assert clock.at(BASE + 1) == pack(BASE + 1)  # observed after the moment: not above it
    assert clock.at(BASE + 3_000) > pack(BASE + 2_000)
