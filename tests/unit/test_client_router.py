"""The failover state machine, driven by a fake clock: when traffic moves, and when not."""

from __future__ import annotations

import random

import pytest

from reconciler.client.config import PolicyConfig
from reconciler.client.evidence import Reading
from reconciler.client.router import Event, RegionState, Router
from reconciler.status import RegionStatus

REGIONS = ("eu-west", "us-east", "ap-south")
HOME, SECOND, THIRD = 0, 1, 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_router(
    names: tuple[str, ...] = REGIONS, **policy: object
) -> tuple[Router, Clock, list[Event]]:
    defaults: dict[str, object] = {
        "window_s": 10.0,
        "min_requests": 10,
        "error_rate_threshold": 0.5,
        "probe_interval_s": 1.0,
        "probe_backoff_cap_s": 4.0,
        "failback_healthy_s": 5.0,
    }
    defaults.update(policy)
    clock = Clock()
    wall = [1_700_000_000_000]

    def wall_ms() -> int:
        wall[0] += 1
        return wall[0]

    router = Router(
        names, PolicyConfig(**defaults), clock=clock, wall_ms=wall_ms, rng=random.Random(1)
    )  # type: ignore[arg-type]
    events: list[Event] = []
    router.add_listener(events.append)
    check_healthy(router)
    return router, clock, events


def check_healthy(router: Router, reading: Reading | None = None) -> list[int]:
    """Answer the checks that are due: HOME reads `reading`, the others no record."""
    due, _ = router.probes_due()
    for index in due:
        seen = reading if reading is not None and index == HOME else EMPTY
        router.probe_result(index, ok=True, reading=seen)
    return due


RUN = "a" * 40  # the instance the probes reach
OTHER_RUN = "b" * 40


def record(
    state: str,
    updated_ms: int,
    region: str = "eu-west",
    *,
    run_id: str = RUN,
    instance: str = RUN,
    pttl_ms: int = 5000,
    verified: str | None = None,
) -> Reading:
    """What a probe reads from `instance`: a record `state` written in instance `run_id`."""
    written = RegionStatus(state, region, since_ms=updated_ms, updated_ms=updated_ms, run_id=run_id)
    return Reading(instance, written, pttl_ms, verified)


EMPTY = Reading(RUN, None, -2)  # the instance answers and holds no record


def fail_region(router: Router, clock: Clock, index: int, count: int = 10) -> None:
    for _ in range(count):
        router.record_failure(index, 0.001, "test: connection refused")
        clock.advance(0.01)


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def test_failures_below_the_minimum_request_count_never_fail_over() -> None:
    router, clock, events = make_router(min_requests=10)
    fail_region(router, clock, HOME, count=9)  # 100% errors, but only 9 requests
    assert router.active == HOME
    assert events == []


def test_an_error_rate_at_the_threshold_fails_over_to_the_next_region() -> None:
    router, clock, events = make_router(min_requests=10, error_rate_threshold=0.5)
    for _ in range(10):
        router.record_ok(HOME, 0.001)
    fail_region(router, clock, HOME, count=9)  # 9/19 < 0.5
    assert router.active == HOME
    router.record_failure(HOME, 0.001, "timeout")  # 10/20 = 0.5
    assert router.active == SECOND
    assert kinds(events) == ["region_down", "failover"]
    assert events[1].from_region == "eu-west"
    assert events[1].to_region == "us-east"
    assert "error rate 0.50" in events[1].reason
    assert router.state_of(HOME) is RegionState.FAILED
    assert router.failovers == 1


def test_application_errors_never_fail_over() -> None:
    router, _, events = make_router(min_requests=5)
    for _ in range(1000):
        router.record_app_error(HOME, 0.001)
    assert router.active == HOME
    assert events == []
    snap = router.snapshot()
    assert snap.regions[HOME].stats.app_errors == 1000
    assert snap.regions[HOME].stats.error_rate == 0.0


def test_old_failures_leave_the_window() -> None:
    router, clock, _ = make_router(min_requests=10, window_s=10.0)
    fail_region(router, clock, HOME, count=6)
    clock.advance(11.0)
    for _ in range(20):
        router.record_ok(HOME, 0.001)
    fail_region(router, clock, HOME, count=4)  # 4/24 in the window
    assert router.active == HOME


def test_failback_needs_the_healthy_time_and_a_fresh_consistent_status() -> None:
    router, clock, events = make_router(failback_healthy_s=5.0)
    fail_region(router, clock, HOME)
    assert router.active == SECOND
    due, _ = router.probes_due()
    assert due == [HOME]  # probed at once
    # The Redis came back empty: no record.
    router.probe_result(HOME, ok=True, reading=EMPTY)
    for _ in range(10):
        clock.advance(1.0)
        router.probe_result(HOME, ok=True, reading=record("repairing", 10))
    assert router.active == SECOND, "must stay away while the region repairs"
    clock.advance(1.0)
    router.probe_result(HOME, ok=True, reading=record("consistent", 20))
    assert router.active == HOME
    assert kinds(events)[-2:] == ["region_up", "failback"]
    assert router.failbacks == 1


def test_consistent_status_alone_is_not_enough_before_the_healthy_time() -> None:
    router, clock, _ = make_router(failback_healthy_s=5.0)
    fail_region(router, clock, HOME)
    router.probe_result(HOME, ok=True, reading=EMPTY)
    clock.advance(1.0)
    router.probe_result(HOME, ok=True, reading=record("consistent", 5))
    assert router.active == SECOND
    clock.advance(4.5)
    router.probe_result(HOME, ok=True, reading=record("consistent", 6))
    assert router.active == HOME


def test_a_consistent_record_left_from_before_the_failure_does_not_vouch() -> None:
    router, clock, _ = make_router(failback_healthy_s=1.0)
    fail_region(router, clock, HOME)
    stale = record("consistent", 100)
    for _ in range(10):
        router.probe_result(HOME, ok=True, reading=stale)
        clock.advance(1.0)
    assert router.active == SECOND, "a record that never moves on is no proof"
    router.probe_result(HOME, ok=True, reading=record("consistent", 101))
    assert router.active == HOME


def test_a_failed_probe_restarts_the_healthy_clock() -> None:
    router, clock, _ = make_router(failback_healthy_s=5.0)
    fail_region(router, clock, HOME)
    router.probe_result(HOME, ok=True, reading=EMPTY)
    for updated in range(1, 5):
        clock.advance(1.0)
        router.probe_result(HOME, ok=True, reading=record("consistent", updated))
    router.probe_result(HOME, ok=False, detail="timeout")
    for updated in range(5, 9):
        clock.advance(1.0)
        router.probe_result(HOME, ok=True, reading=record("consistent", updated))
    assert router.active == SECOND  # only 3 s since the failed probe
    clock.advance(2.5)
    router.probe_result(HOME, ok=True, reading=record("consistent", 10))
    assert router.active == HOME


def test_a_status_for_another_region_is_ignored() -> None:
    router, clock, _ = make_router(failback_healthy_s=0.0)
    fail_region(router, clock, HOME)
    router.probe_result(HOME, ok=True, reading=EMPTY)
    clock.advance(1.0)
    router.probe_result(HOME, ok=True, reading=record("consistent", 5, region="us-east"))
    assert router.active == SECOND


def test_without_the_status_requirement_the_healthy_time_is_enough() -> None:
    router, clock, _ = make_router(failback_healthy_s=3.0, require_consistent_status=False)
    fail_region(router, clock, HOME)
    router.probe_result(HOME, ok=True, reading=EMPTY)
    clock.advance(3.0)
    router.probe_result(HOME, ok=True, reading=EMPTY)
    assert router.active == HOME


def test_a_region_that_fails_soon_after_recovering_must_stay_healthy_longer() -> None:
    router, clock, events = make_router(failback_healthy_s=2.0, require_consistent_status=False)
    holds = []
    for _ in range(5):
        fail_region(router, clock, HOME)
        assert router.active == SECOND
        holds.append(router.snapshot().regions[HOME].hold_s)
        router.probe_result(HOME, ok=True, reading=EMPTY)
        for _ in range(100):
            if router.active == HOME:
                break
            clock.advance(0.5)
            router.probe_result(HOME, ok=True, reading=EMPTY)
        assert router.active == HOME
    assert holds == [2.0, 4.0, 8.0, 16.0, 16.0]
    assert kinds(events).count("failover") == 5
    # After a long healthy stretch the penalty is forgiven.
    clock.advance(100.0)
    fail_region(router, clock, HOME)
    assert router.snapshot().regions[HOME].hold_s == 2.0


def test_a_failed_standby_is_skipped_and_traffic_goes_to_the_third_region() -> None:
    router, clock, events = make_router()
    fail_region(router, clock, HOME)
    fail_region(router, clock, SECOND)
    assert router.active == THIRD
    assert router.next_region([THIRD]) is None
    assert kinds(events) == ["region_down", "failover", "region_down", "failover"]


def test_failures_of_a_standby_mark_it_failed_without_moving_traffic() -> None:
    router, clock, events = make_router()
    fail_region(router, clock, SECOND)
    assert router.active == HOME
    assert kinds(events) == ["region_down"]
    assert router.next_region([HOME]) == THIRD


def test_with_every_region_failed_traffic_goes_where_probes_answer() -> None:
    router, clock, _ = make_router()
    for index in (HOME, SECOND, THIRD):
        fail_region(router, clock, index)
    assert router.active == THIRD  # nothing better known yet
    router.probe_result(SECOND, ok=True, reading=EMPTY)
    assert router.active == SECOND  # degraded: it answers, it is not proven consistent
    assert router.state_of(SECOND) is RegionState.FAILED


def test_probes_back_off_after_failures_and_return_to_the_interval_on_success() -> None:
    # One region, so that the schedule seen is its own (healthy ones are checked too).
    router, clock, _ = make_router(("eu-west",), probe_interval_s=1.0, probe_backoff_cap_s=4.0)
    fail_region(router, clock, HOME)
    waits = []
    for _ in range(8):
        due, _ = router.probes_due()
        assert due == [HOME]
        router.probe_result(HOME, ok=False)
        _, wait = router.probes_due()
        assert wait is not None
        waits.append(wait)
        clock.advance(wait)
    assert all(1.0 <= w <= 1.0 + 4.0 for w in waits)
    due, _ = router.probes_due()
    router.probe_result(HOME, ok=True, reading=EMPTY)
    _, wait = router.probes_due()
    assert wait == pytest.approx(1.0)


def test_a_region_is_not_probed_twice_while_a_probe_is_in_flight() -> None:
    router, clock, _ = make_router()
    fail_region(router, clock, HOME)
    assert router.probes_due()[0] == [HOME]
    clock.advance(30.0)
    assert HOME not in router.probes_due()[0]


def test_healthy_regions_are_checked_every_probe_interval() -> None:
    router, clock, events = make_router(probe_interval_s=1.0)
    due, wait = router.probes_due()
    assert (due, wait) == ([], pytest.approx(1.0))
    clock.advance(1.0)
    assert check_healthy(router) == [HOME, SECOND, THIRD]
    assert events == []  # no record is no evidence


def test_a_broken_listener_does_not_break_the_command_path() -> None:
    router, clock, _ = make_router()

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    router.add_listener(broken)
    fail_region(router, clock, HOME)
    assert router.active == SECOND


def test_the_snapshot_carries_every_event_count() -> None:
    router, clock, _ = make_router(failback_healthy_s=0.0, require_consistent_status=False)
    fail_region(router, clock, HOME)
    router.probe_result(HOME, ok=True, reading=EMPTY)
    snap = router.snapshot()
    assert snap.active == "eu-west"
    assert snap.home == "eu-west"
    counts = {(kind, region): count for kind, region, count in snap.event_counts}
    assert counts == {
        ("region_down", "eu-west"): 1,
        ("failover", "eu-west"): 1,
        ("region_up", "eu-west"): 1,
        ("failback", "eu-west"): 1,
    }
    assert [e.kind for e in snap.events] == ["region_down", "failover", "region_up", "failback"]


# -- the failback gate checks the instance ------------------------------------------------


def probe_for(router: Router, clock: Clock, reading: Reading, seconds: float) -> None:
    """Probe HOME with `reading` every second for `seconds`."""
    for _ in range(int(seconds)):
        router.probe_result(HOME, ok=True, reading=reading)
        clock.advance(1.0)


@pytest.mark.parametrize(
    "untrusted",
    [
        pytest.param(lambda n: record("consistent", n, run_id=OTHER_RUN), id="other-instance"),
        pytest.param(lambda n: record("consistent", n, pttl_ms=-1), id="no-expiry"),
        pytest.param(lambda n: record("consistent", n, region="us-east"), id="other-region"),
        pytest.param(
            lambda n: Reading(None, record("consistent", n).status, 5000), id="info-refused"
        ),
    ],
)
def test_a_record_that_does_not_vouch_for_the_probed_instance_never_opens_the_gate(
    untrusted: object,
) -> None:
    router, clock, _ = make_router(failback_healthy_s=2.0)
    fail_region(router, clock, HOME)
    for updated in range(1, 20):  # fresh every time, and the healthy time passes many times
        router.probe_result(HOME, ok=True, reading=untrusted(updated))  # type: ignore[operator]
        clock.advance(1.0)
    assert router.active == SECOND
    assert router.state_of(HOME) is RegionState.FAILED


def test_a_left_over_record_then_the_new_instances_own_consistent_opens_the_gate() -> None:
    router, clock, events = make_router(failback_healthy_s=2.0)
    fail_region(router, clock, HOME)
    # Restarted from its AOF: the previous instance's consistent record came back with it.
    probe_for(router, clock, record("consistent", 100, run_id=OTHER_RUN), 5)
    assert router.active == SECOND
    # Its daemon noticed, repaired, and vouches for this instance.
    router.probe_result(HOME, ok=True, reading=record("recovering", 101))
    clock.advance(1.0)
    router.probe_result(HOME, ok=True, reading=record("consistent", 102))
    assert router.active == HOME
    assert "on instance aaaaaaaaaaaa" in events[-1].reason
    assert router.snapshot().regions[HOME].run_id == RUN


def test_the_instance_the_gate_verified_is_the_one_connections_must_reach() -> None:
    router, clock, _ = make_router(failback_healthy_s=1.0)
    assert router.connected(HOME, RUN) is None  # the first instance seen
    fail_region(router, clock, HOME)
    # It restarted as another instance, which its daemon repaired.
    fresh = Reading(OTHER_RUN, None, -2)
    probe_for(router, clock, fresh, 1)
    router.probe_result(
        HOME, ok=True, reading=record("consistent", 5, run_id=OTHER_RUN, instance=OTHER_RUN)
    )
    assert router.active == HOME
    assert router.connected(HOME, OTHER_RUN) is None  # the verified one
    assert router.connected(HOME, RUN) is not None  # the old one is not


# -- a new connection to another instance --------------------------------------------------


def test_a_connection_to_a_replaced_instance_fails_the_region_before_it_carries_commands() -> None:
    router, _, events = make_router()
    assert router.connected(HOME, RUN) is None
    assert router.connected(HOME, RUN) is None
    assert router.connected(HOME, None) is None  # INFO refused: cannot tell, not a reason
    reason = router.connected(HOME, OTHER_RUN)
    assert reason == "redis instance replaced: run_id aaaaaaaaaaaa -> bbbbbbbbbbbb"
    assert router.state_of(HOME) is RegionState.FAILED
    assert router.active == SECOND
    assert kinds(events) == ["region_down", "failover"]
    assert events[0].reason == reason
    # Another thread's connection to the same new instance is refused too.
    assert router.connected(HOME, OTHER_RUN) == reason


def test_with_every_region_failed_the_degraded_choice_accepts_its_instance() -> None:
    router, clock, _ = make_router()
    router.connected(HOME, RUN)
    for index in (HOME, SECOND, THIRD):
        fail_region(router, clock, index)
    router.probe_result(HOME, ok=True, reading=EMPTY)
    assert router.active == HOME  # degraded: it answers, nothing better
    assert router.connected(HOME, OTHER_RUN) is None


# -- healthy regions are checked --------------------------------------------------------


@pytest.mark.parametrize(
    "evidence",
    [
        pytest.param(record("recovering", 5), id="recovering"),
        pytest.param(record("repairing", 5), id="repairing-unverified"),
        pytest.param(record("consistent", 5, run_id=OTHER_RUN), id="left-over-record"),
        pytest.param(record("consistent", 5, instance=OTHER_RUN), id="instance-replaced"),
    ],
)
def test_a_check_of_the_active_region_with_evidence_against_its_data_moves_traffic(
    evidence: Reading,
) -> None:
    router, clock, events = make_router()
    router.connected(HOME, RUN)
    clock.advance(1.0)
    check_healthy(router, evidence)
    assert router.state_of(HOME) is RegionState.FAILED
    assert router.active == SECOND
    assert kinds(events)[:2] == ["region_down", "failover"]


@pytest.mark.parametrize(
    "no_evidence",
    [
        pytest.param(EMPTY, id="daemon-down-no-record"),
        pytest.param(record("repairing", 5, verified=RUN), id="routine-session-on-verified-data"),
        pytest.param(record("consistent", 5, pttl_ms=-1), id="no-expiry"),
        pytest.param(Reading(None, None, -2, problem="NOPERM"), id="info-refused"),
    ],
)
def test_a_check_without_evidence_against_the_data_leaves_traffic_where_it_is(
    no_evidence: Reading,
) -> None:
    router, clock, events = make_router()
    router.connected(HOME, RUN)
    for _ in range(5):
        clock.advance(1.0)
        check_healthy(router, no_evidence)
    assert router.active == HOME
    assert events == []


def test_a_failed_check_of_a_healthy_region_is_left_to_the_error_rate() -> None:
    router, clock, events = make_router()
    clock.advance(1.0)
    due, _ = router.probes_due()
    for index in due:
        router.probe_result(index, ok=False, detail="connection refused")
    assert events == []
    _, wait = router.probes_due()
    assert wait is not None
    assert wait >= 1.0


def test_without_the_status_requirement_records_are_ignored_but_instances_are_not() -> None:
    router, clock, _ = make_router(require_consistent_status=False)
    router.connected(HOME, RUN)
    clock.advance(1.0)
    check_healthy(router, record("recovering", 5))
    assert router.active == HOME
    clock.advance(1.0)
    check_healthy(router, Reading(OTHER_RUN, None, -2))
    assert router.active == SECOND
