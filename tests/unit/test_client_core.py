"""The failover core's decisions, without servers: which errors move a command, which
raise, how blocking commands are timed."""

from __future__ import annotations

import math

import pytest
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reconciler.client.blocking import FOREVER, block_s, read_timeout_s
from reconciler.client.config import PolicyConfig
from reconciler.client.core import Failover, NotSentError
from reconciler.client.errors import CommandOutcomeUnknownError, NoHealthyRegionError
from reconciler.client.health import ErrorKind, RetryPolicy, classify
from reconciler.client.router import Router

POLICY = PolicyConfig(command_timeout_s=0.5, min_requests=1000)


def failover(*, resend_before_failover: bool = True) -> Failover:
    """A core whose first region never fails over by itself (min_requests 1000): with
    `resend_before_failover` the tests see which commands may move at all."""
    router = Router(("eu-west", "us-east"), POLICY)
    return Failover(
        router,
        RetryPolicy(POLICY.retry_commands),
        POLICY.command_timeout_s,
        resend_before_failover=resend_before_failover,
    )


@pytest.mark.parametrize(
    ("args", "blocked"),
    [
        (("BLPOP", "q", 5), 5.0),
        (("BRPOPLPUSH", "a", "b", 0), 0.0),
        (("BLMOVE", "a", "b", "LEFT", "RIGHT", "1.5"), 1.5),
        (("BLMPOP", 2, 1, "q", "LEFT"), 2.0),
        (("BZMPOP", b"3", 1, "z", "MIN"), 3.0),
        (("XREAD", "COUNT", 1, "BLOCK", 2000, "STREAMS", "s", "0"), 2.0),
        (("XREADGROUP", "GROUP", "g", "c", "BLOCK", 0, "STREAMS", "s", ">"), 0.0),
        (("XREAD", "STREAMS", "block", "0"), None),  # a stream named "block" is no option
        (("WAIT", 1, 250), 0.25),
        (("WAITAOF", 1, 0, 100), 0.1),
        (("GET", "k"), None),
        (("BLPOP", "q", "soon"), None),  # malformed: the server refuses it at once
    ],
)
def test_block_times_are_read_where_each_command_has_them(
    args: tuple[object, ...], blocked: float | None
) -> None:
    assert block_s(args) == blocked


def test_the_read_timeout_is_the_block_time_plus_the_command_timeout_or_forever() -> None:
    assert read_timeout_s(("BLPOP", "q", 5), 0.5) == 5.5
    assert read_timeout_s(("BLPOP", "q", 0), 0.5) == FOREVER == math.inf
    assert read_timeout_s(("GET", "k"), 0.5) is None


def test_auth_errors_are_the_applications_when_answered_and_the_regions_when_connecting() -> None:
    assert classify(AuthenticationError("WRONGPASS"), sent=True) is ErrorKind.APPLICATION
    assert classify(AuthenticationError("WRONGPASS"), sent=False) is ErrorKind.NOT_SENT


def test_by_default_nothing_moves_while_its_region_has_not_failed_over() -> None:
    # A timeout is often a blip, and the other region may lack what this client wrote a
    # moment ago: a GET resent there would answer "missing" for an idempotency key the
    # application just stored. The application gets the error, as with plain redis-py.
    core = failover(resend_before_failover=False)
    with pytest.raises(RedisTimeoutError):
        core.command(("GET", "k")).failed(0, RedisTimeoutError("lost"), 0.01)
    with pytest.raises(TimeoutError):
        core.command(("SET", "k", "v")).failed(0, TimeoutError("timed out"), 0.01)
    # A reset (a cut link as much as a killed server) stays too: the fault suite saw a GET
    # resent on a reset answered with an older value by a region whose daemon lagged.
    with pytest.raises(RedisConnectionError):
        core.command(("GET", "k")).failed(0, RedisConnectionError("reset"), 0.01)
    # Nor does a command the region refused, or that could not be sent (a restart is a
    # blip too, and the same stale read waits elsewhere): until the region fails over.
    unsent = NotSentError(RedisConnectionError("refused"))
    with pytest.raises(RedisConnectionError):
        core.command(("GET", "k")).failed(0, unsent, 0.01)
    with pytest.raises(BusyLoadingError):
        core.command(("GET", "k")).failed(0, BusyLoadingError("loading"), 0.01)


def test_by_default_commands_move_once_their_region_has_failed_over() -> None:
    policy = PolicyConfig(command_timeout_s=0.5, min_requests=1, error_rate_threshold=0.5)
    router = Router(("eu-west", "us-east"), policy)
    core = Failover(router, RetryPolicy(policy.retry_commands), policy.command_timeout_s)
    # This failure crosses the threshold: the region fails over, the read follows it.
    assert core.command(("GET", "k")).failed(0, RedisTimeoutError("lost"), 0.01) == 1
    assert router.active_name == "us-east"


def test_an_unsent_command_moves_whatever_it_is_and_a_lost_reply_only_if_idempotent() -> None:
    core = failover()
    refused = RedisConnectionError("refused")
    assert core.command(("INCR", "n")).failed(0, NotSentError(refused), 0.01) == 1
    assert core.command(("GET", "k")).failed(0, RedisTimeoutError("lost"), 0.01) == 1
    with pytest.raises(CommandOutcomeUnknownError, match="INCR"):
        core.command(("INCR", "n")).failed(0, RedisTimeoutError("lost"), 0.01)


def test_a_blocking_command_is_never_resent_once_sent_and_its_late_reply_is_no_failure() -> None:
    core = failover()
    with pytest.raises(CommandOutcomeUnknownError, match="BLPOP"):
        core.command(("BLPOP", "q", 1)).failed(0, RedisTimeoutError("late"), 1.6)
    assert core.router.snapshot().regions[0].stats.failures_total == 0
    with pytest.raises(CommandOutcomeUnknownError, match="BLPOP"):
        core.command(("BLPOP", "q", 1)).failed(0, RedisConnectionError("reset"), 0.1)
    assert core.router.snapshot().regions[0].stats.failures_total == 1
    # Refused unexecuted (LOADING), or never sent: it may go elsewhere like any command.
    assert core.command(("BLPOP", "q", 1)).failed(0, BusyLoadingError("loading"), 0.0) == 1


def test_application_errors_are_raised_unchanged_and_exhaustion_lists_every_region() -> None:
    core = failover()
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    with pytest.raises(ResponseError) as raised:
        core.command(("GET", "k")).failed(0, wrongtype, 0.0)
    assert raised.value is wrongtype
    attempt = core.command(("GET", "k"))
    assert attempt.failed(0, NotSentError(RedisConnectionError("a down")), 0.0) == 1
    with pytest.raises(NoHealthyRegionError, match=r"eu-west: .*us-east: "):
        attempt.failed(1, NotSentError(RedisConnectionError("b down")), 0.0)


def test_a_pinned_command_never_moves() -> None:
    core = failover()
    refused = RedisConnectionError("refused")
    with pytest.raises(RedisConnectionError) as raised:
        core.command(("SET", "lock", "t"), pinned=True).failed(0, NotSentError(refused), 0.0)
    assert raised.value is refused


def test_a_pipeline_moves_when_unsent_but_once_sent_only_if_all_of_it_is_idempotent() -> None:
    core = failover()
    mixed = core.queued([(("SET", "a", 1), {}), (("INCR", "n"), {})], True, True, set())
    assert core.pipeline(mixed).failed(0, NotSentError(RedisConnectionError("x")), 0.0) == 1
    with pytest.raises(CommandOutcomeUnknownError, match="MULTI"):
        core.pipeline(mixed).failed(0, RedisTimeoutError("lost"), 0.0)
    reads = core.queued([(("GET", "a"), {}), (("MGET", "b"), {})], False, True, set())
    assert core.pipeline(reads).failed(0, RedisTimeoutError("lost"), 0.0) == 1
    blocking = core.queued([(("BLPOP", "q", 2), {})], False, True, set())
    assert blocking.reply_timeout == 2.5
