"""Failures are told from application errors, and the window counts what it should."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    DataError,
    MasterDownError,
    MaxConnectionsError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reconciler.client.config import PolicyConfig
from reconciler.client.health import (
    APP_ERROR,
    FAILURE,
    LATENCY_SLOTS,
    OK,
    ErrorKind,
    OutcomeWindow,
    RetryPolicy,
    classify,
    command_name,
    latency_slot,
    slot_upper_s,
)


@pytest.mark.parametrize(
    ("exc", "sent", "kind"),
    [
        (RedisConnectionError("refused"), False, ErrorKind.NOT_SENT),
        (RedisConnectionError("reset"), True, ErrorKind.UNKNOWN),
        (RedisTimeoutError("read timeout"), True, ErrorKind.UNKNOWN),
        (RedisTimeoutError("connect timeout"), False, ErrorKind.NOT_SENT),
        (OSError("broken pipe"), True, ErrorKind.UNKNOWN),
        (AuthenticationError("WRONGPASS"), False, ErrorKind.NOT_SENT),
        (BusyLoadingError("Redis is loading the dataset in memory"), True, ErrorKind.REJECTED),
        (ReadOnlyError("You can't write against a read only replica."), True, ErrorKind.REJECTED),
        (
            OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
            True,
            ErrorKind.REJECTED,
        ),
        (ClusterDownError("The cluster is down"), True, ErrorKind.REJECTED),
        (
            MasterDownError("Link with MASTER is down", status_code="MASTERDOWN"),
            True,
            ErrorKind.REJECTED,
        ),
        (ResponseError("MASTERDOWN Link with MASTER is down"), True, ErrorKind.REJECTED),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), True, ErrorKind.REJECTED),
        (
            ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            True,
            ErrorKind.APPLICATION,
        ),
        (ResponseError("ERR syntax error"), True, ErrorKind.APPLICATION),
        (ResponseError("ERR value is not an integer or out of range"), True, ErrorKind.APPLICATION),
        (NoScriptError("No matching script"), True, ErrorKind.APPLICATION),
        (NoPermissionError("this user has no permissions"), True, ErrorKind.APPLICATION),
        (WatchError("Watched variable changed"), True, ErrorKind.APPLICATION),
        (DataError("Invalid input of type: 'dict'"), False, ErrorKind.APPLICATION),
        (MaxConnectionsError("Too many connections"), False, ErrorKind.LOCAL),
    ],
)
def test_errors_are_classified_as_region_failures_or_application_errors(
    exc: Exception, sent: bool, kind: ErrorKind
) -> None:
    assert classify(exc, sent=sent, command="SET") is kind


def test_only_failures_count_against_health() -> None:
    assert {k for k in ErrorKind if k.is_failure} == {
        ErrorKind.REJECTED,
        ErrorKind.NOT_SENT,
        ErrorKind.UNKNOWN,
    }


def test_a_refusal_inside_a_script_is_an_unknown_outcome_since_it_may_have_written() -> None:
    oom = OutOfMemoryError("command not allowed")
    assert classify(oom, sent=True, command="EVALSHA") is ErrorKind.UNKNOWN
    assert classify(oom, sent=True, command="FCALL") is ErrorKind.UNKNOWN


def test_command_name_handles_bytes_lower_case_and_two_word_commands() -> None:
    assert command_name(("get", "k")) == "GET"
    assert command_name((b"incrby", b"k", 1)) == "INCRBY"
    assert command_name(("SCRIPT LOAD", "return 1")) == "SCRIPT"
    assert command_name(()) == ""


def test_the_default_retry_policy_resends_reads_and_idempotent_writes_only() -> None:
    policy = RetryPolicy(PolicyConfig().retry_commands)
    resendable: list[tuple[object, ...]] = [
        ("GET", "k"),
        ("MGET", "a", "b"),
        ("SET", "k", "v"),
        ("SET", "k", "v", "EX", 5),
        ("HSET", "h", "f", "v"),
        ("DEL", "k"),
        ("ZADD", "z", 1, "m"),
        ("ping",),
    ]
    never: list[tuple[object, ...]] = [
        ("INCR", "k"),
        ("INCRBY", "k", 2),
        ("LPUSH", "l", "x"),
        ("APPEND", "k", "x"),
        ("SET", "lock", "me", "NX"),
        ("SET", "k", "v", b"xx"),
        ("SET", "k", "v", "GET"),
        ("ZADD", "z", "INCR", 1, "m"),
        ("EVAL", "return 1", 0),
        ("EXPIRE", "k", 10),
        ("GETDEL", "k"),
        ("HINCRBY", "h", "f", 1),
    ]
    for args in resendable:
        assert policy.allows(args), args
    for args in never:
        assert not policy.allows(args), args


def test_a_pipeline_is_resent_only_when_every_command_may_be() -> None:
    policy = RetryPolicy(["get", "set"])
    assert policy.allows_all([("GET", "a"), ("SET", "b", 1)])
    assert not policy.allows_all([("GET", "a"), ("INCR", "b")])


@given(st.floats(min_value=0.0, max_value=3600.0, allow_nan=False))
def test_a_latency_lands_in_a_slot_whose_upper_bound_is_above_it(seconds: float) -> None:
    slot = latency_slot(seconds)
    assert 0 <= slot < LATENCY_SLOTS
    assert seconds < slot_upper_s(slot) or slot == LATENCY_SLOTS - 1
    # Slots are about 19% wide: the bound is never far above the value.
    if seconds >= 1e-5:
        assert slot_upper_s(slot) <= seconds * 1.26 + 1e-6


def test_latency_slots_are_monotonic() -> None:
    samples = [i / 1e6 for i in range(0, 5000, 7)] + [0.01 * i for i in range(1, 500)]
    slots = [latency_slot(s) for s in samples]
    assert slots == sorted(slots)


def test_the_window_counts_only_the_last_window_s_and_totals_keep_everything() -> None:
    window = OutcomeWindow(window_s=10.0, buckets=10)
    for i in range(10):
        window.record(100.0 + i * 0.1, FAILURE, 0.001)
    for i in range(30):
        window.record(101.0 + i * 0.1, OK, 0.002)
    window.record(104.0, APP_ERROR, 0.003)
    assert window.counts(105.0) == (41, 10)
    # 11 s later the failures (t=100..101) have left the window, not the totals.
    requests, failures = window.counts(111.5)
    assert failures == 0
    assert 0 < requests < 41
    stats = window.stats(111.5)
    assert (stats.requests_total, stats.failures_total, stats.app_errors_total) == (41, 10, 1)
    assert window.counts(200.0) == (0, 0)
    assert window.stats(200.0).requests_total == 41


def test_window_stats_give_the_error_rate_and_latency_quantiles() -> None:
    window = OutcomeWindow(window_s=5.0)
    for i in range(99):
        window.record(10.0 + i * 0.01, OK, 0.001)
    window.record(11.0, FAILURE, 0.5)
    stats = window.stats(11.0)
    assert stats.requests == 100
    assert stats.error_rate == pytest.approx(0.01)
    assert stats.p50_s is not None
    assert 0.001 <= stats.p50_s < 0.0013
    assert stats.p99_s is not None
    assert 0.001 <= stats.p99_s < 0.0013
    window.record(11.0, FAILURE, 0.5)
    assert window.stats(11.0).p99_s == pytest.approx(slot_upper_s(latency_slot(0.5)))
    empty = OutcomeWindow(window_s=5.0).stats(0.0)
    assert (empty.p50_s, empty.p99_s, empty.error_rate) == (None, None, 0.0)


def test_a_late_outcome_never_erases_a_newer_bucket() -> None:
    window = OutcomeWindow(window_s=1.0, buckets=10)
    window.record(5.05, OK, 0.001)
    # A thread that read the clock long ago reports now: it must not recycle a live bucket.
    window.record(3.05, FAILURE, 0.001)
    assert window.counts(5.05) == (2, 1)


def test_reset_forgets_the_window_but_keeps_the_totals() -> None:
    window = OutcomeWindow(window_s=10.0)
    for _ in range(5):
        window.record(1.0, FAILURE, 0.001)
    window.reset(1.5)
    assert window.counts(1.5) == (0, 0)
    assert window.stats(1.5).failures_total == 5
