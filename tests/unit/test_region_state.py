"""The region's status machine: `consistent` only for a Redis a completed repair verified."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.service.regionstate import (
    RegionState,
    SessionMode,
    SessionRequest,
    Status,
)

PEERS = ("us-east", "ap-south")


def running_region(*, verified: bool = True) -> RegionState:
    state = RegionState(PEERS)
    state.start(marker_valid=verified, sessions_on_start=False)
    state.peers_alive(PEERS)
    return state


def repair(state: RegionState, request: SessionRequest | None, *, ok: bool = True) -> bool:
    assert request is not None
    started = state.session_started(request)
    return state.session_finished(started, ok=ok)


def verify(state: RegionState) -> bool:
    return state.wants_verification() and state.verified_as(state.epoch)


def test_a_verified_instance_without_sessions_at_start_is_consistent_at_once() -> None:
    assert running_region().status is Status.CONSISTENT


def test_an_unverified_instance_is_recovering_until_a_repair_completes() -> None:
    state = RegionState(PEERS)
    state.start(marker_valid=False, sessions_on_start=True)
    assert state.status is Status.RECOVERING
    first = state.peer_up("us-east", "first heartbeat", first=True)
    assert state.status is Status.RECOVERING
    repair(state, first)
    assert state.status is Status.RECOVERING  # no marker yet
    assert state.peer_up("ap-south", "first heartbeat", first=True) is not None
    assert not state.wants_verification()  # a live peer is still pending and queued


def test_a_restart_is_recovering_at_once_and_consistent_only_after_its_repair() -> None:
    state = running_region()
    epoch = state.gap()
    assert state.status is Status.RECOVERING
    assert not state.wants_verification()
    requests = state.recovery_done(epoch)
    assert sorted(r.peer for r in requests) == sorted(PEERS)
    for request in requests:
        assert state.status is Status.RECOVERING
        repair(state, request)
    assert state.status is Status.RECOVERING  # the marker is written first
    assert verify(state)
    assert state.status is Status.CONSISTENT


def test_a_session_that_began_before_a_gap_does_not_vouch_for_the_data_after_it() -> None:
    state = running_region()
    epoch = state.gap()
    first, _ = state.recovery_done(epoch)
    started = state.session_started(first)
    state.gap()  # the Redis restarted again while the session ran
    # Not retried by itself: the new recovery pass queues every peer again.
    assert state.session_finished(started, ok=True) is False
    assert first.peer in state.pending
    assert not state.repaired_since_gap
    assert state.status is Status.RECOVERING
    assert not state.wants_verification()


def test_a_marker_written_for_an_earlier_epoch_is_not_taken() -> None:
    state = running_region()
    epoch = state.gap()
    for request in state.recovery_done(epoch):
        repair(state, request)
    assert state.wants_verification()
    state.gap()  # between the marker write and its confirmation
    assert not state.verified_as(epoch)
    assert state.status is Status.RECOVERING


def test_no_automatic_session_runs_while_the_recovery_pass_is_pending() -> None:
    state = running_region()
    state.gap()
    assert state.peer_up("us-east", "heard again", first=False) is None
    assert state.request("us-east", "retry") is None
    operator = state.request("us-east", "operator", SessionMode.RESYNC, operator=True)
    assert operator is not None


def test_automatic_requests_are_deduplicated_and_wait_for_a_live_peer() -> None:
    state = running_region()
    assert state.request("us-east", "a") is not None
    assert state.request("us-east", "b") is None
    state.peer_down("ap-south")
    assert state.request("ap-south", "c") is None
    assert "ap-south" in state.pending
    assert state.status is Status.REPAIRING
    again = state.peer_up("ap-south", "heard again", first=False)
    assert again is not None


def test_one_good_session_is_enough_when_the_other_peers_are_down() -> None:
    state = running_region()
    epoch = state.gap()
    state.peer_down("ap-south")
    state.peers_alive(["us-east"])
    requests = state.recovery_done(epoch)
    assert [r.peer for r in requests] == ["us-east"]
    repair(state, requests[0])
    assert verify(state)
    assert state.status is Status.CONSISTENT
    # When the other peer returns it gets its session: repairing, not recovering.
    back = state.peer_up("ap-south", "heard again", first=False)
    assert state.status is Status.REPAIRING
    repair(state, back)
    assert state.status is Status.CONSISTENT


def test_a_failed_session_is_retried_and_a_dry_run_never_counts_as_a_repair() -> None:
    state = running_region()
    epoch = state.gap()
    request, _ = state.recovery_done(epoch)
    assert repair(state, request, ok=False) is True
    dry = state.request("us-east", "operator", SessionMode.DRY_RUN, operator=True)
    assert repair(state, dry) is False
    assert not state.repaired_since_gap
    assert state.status is Status.RECOVERING


# --- any order of events ------------------------------------------------------------------

EVENTS = st.lists(
    st.one_of(
        st.just(("gap",)),
        st.just(("recovery_done",)),
        st.tuples(st.just("peer_up"), st.sampled_from(PEERS), st.booleans()),
        st.tuples(st.just("peer_down"), st.sampled_from(PEERS)),
        st.tuples(st.just("request"), st.sampled_from(PEERS), st.sampled_from(list(SessionMode))),
        st.tuples(st.just("start_session"), st.integers(0, 5)),
        st.tuples(st.just("finish_session"), st.integers(0, 5), st.booleans()),
        st.just(("verify",)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(marker_valid=st.booleans(), on_start=st.booleans(), events=EVENTS)
def test_consistent_only_after_a_repair_completed_in_the_epoch_of_the_last_gap(
    marker_valid: bool, on_start: bool, events: list[tuple[object, ...]]
) -> None:
    state = RegionState(PEERS)
    state.start(marker_valid=marker_valid, sessions_on_start=on_start)
    queued: list[SessionRequest] = []
    running: list[SessionRequest] = []
    # Ground truth kept by the test: a successful repair session that ran wholly inside
    # the current epoch, after its recovery pass, and a marker confirmed in that epoch.
    gaps = 0
    repaired_in_epoch = False
    confirmed_in_epoch = marker_valid
    for event in events:
        kind = event[0]
        if kind == "gap":
            state.gap()
            gaps += 1
            repaired_in_epoch = confirmed_in_epoch = False
        elif kind == "recovery_done":
            queued += state.recovery_done(state.epoch)
        elif kind == "peer_up":
            request = state.peer_up(str(event[1]), "up", first=bool(event[2]))
            queued += [request] if request else []
        elif kind == "peer_down":
            state.peer_down(str(event[1]))
        elif kind == "request":
            request = state.request(str(event[1]), "t", SessionMode(event[2]))
            queued += [request] if request else []
        elif kind == "start_session" and queued:
            index = int(str(event[1])) % len(queued)
            if not state.recovering:  # the daemon waits for the recovery pass
                running.append(state.session_started(queued.pop(index)))
        elif kind == "finish_session" and running:
            index = int(str(event[1])) % len(running)
            session = running.pop(index)
            ok = bool(event[2])
            state.session_finished(session, ok=ok)
            if ok and session.mode.repairs and session.epoch == state.epoch:
                repaired_in_epoch = True
        elif kind == "verify" and state.wants_verification():
            assert repaired_in_epoch
            if state.verified_as(state.epoch):
                confirmed_in_epoch = True
        if state.status is Status.CONSISTENT:
            assert confirmed_in_epoch
            assert not state.running
        if gaps and not confirmed_in_epoch:
            assert state.status is Status.RECOVERING
        assert state.running == len(running)


def test_the_marker_waits_until_the_keys_a_repair_fetched_are_applied() -> None:
    # A session's fetched keys come back as the peer's change records: the session is over
    # when the peer has shipped them, the data is in Redis only once they are applied.
    state = running_region()
    epoch = state.gap()
    state.applied_through_ms = 500
    for request in state.recovery_done(epoch):
        started = state.session_started(request)
        state.session_finished(started, ok=True, at_ms=1_000)
    assert not state.wants_verification()
    state.applied_through_ms = 999
    assert not state.wants_verification()
    state.applied_through_ms = 1_000
    assert state.wants_verification()
    assert state.verified_as(state.epoch)
    assert state.status is Status.CONSISTENT
