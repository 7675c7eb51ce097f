"""Telling region failures from application errors, and the sliding window of outcomes.

Two questions are answered here, without any I/O:

* :func:`classify`: is this exception the region failing (it counts against the region's
  health and may move traffic) or the application's own error (``WRONGTYPE``, a syntax
  error: returned as redis-py would, no effect on health)? And for a failure, may the
  command have been executed (so that only an idempotent command may be sent again)?
* :class:`OutcomeWindow`: requests, failures and latencies over the last ``window_s``,
  kept in fixed time buckets so that recording one outcome is a few integer additions
  (no per-request deque to trim), with cumulative totals for the Prometheus counters.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from replication.redis.errors import UNAVAILABLE, error_code

# Error replies with which a server refuses a command without executing it because it is
# not in a state to serve (a failure of the region, not of the request): the project's one
# table of Redis error codes says which (LOADING, READONLY, MASTERDOWN, CLUSTERDOWN, OOM).
FAILURE_CODES = UNAVAILABLE

# A script may have written before it hit an error, so a refusal from inside one is not a
# proof that nothing was executed.
SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})

# Reads (never change data) and writes whose second application leaves the same data as
# the first. Replies of a repeated write may differ (DEL answers 0 the second time).
DEFAULT_RETRY_COMMANDS: tuple[str, ...] = (
    # reads
    "BITCOUNT",
    "BITPOS",
    "DBSIZE",
    "DUMP",
    "ECHO",
    "EVAL_RO",
    "EVALSHA_RO",
    "EXISTS",
    "EXPIRETIME",
    "FCALL_RO",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HSCAN",
    "HSTRLEN",
    "HVALS",
    "LINDEX",
    "LLEN",
    "LPOS",
    "LRANGE",
    "MGET",
    "PEXPIRETIME",
    "PFCOUNT",
    "PING",
    "PTTL",
    "SCAN",
    "SCARD",
    "SDIFF",
    "SINTER",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SRANDMEMBER",
    "SSCAN",
    "STRLEN",
    "SUNION",
    "TIME",
    "TTL",
    "TYPE",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
    # idempotent writes (SET only when unconditional, ZADD only without INCR: see below)
    "DEL",
    "EXPIREAT",
    "GEOADD",
    "HDEL",
    "HMSET",
    "HSET",
    "MSET",
    "PERSIST",
    "PEXPIREAT",
    "PFADD",
    "PSETEX",
    "SADD",
    "SET",
    "SETEX",
    "SREM",
    "UNLINK",
    "ZADD",
    "ZREM",
)

# Options that make an otherwise idempotent write answer differently the second time in a
# way an application acts on (SET NX is how locks are taken; a retried one would report
# "not acquired" to the holder) or change data again (ZADD INCR).
_NON_IDEMPOTENT_OPTIONS = {
    "SET": frozenset({"NX", "XX", "GET", "IFEQ", "IFNE", "IFDEQ", "IFDNE"}),
    "ZADD": frozenset({"INCR"}),
}


class ErrorKind(enum.Enum):
    """What an exception from a command means for the region and for a retry."""

    APPLICATION = "application"
    """The request's own error (WRONGTYPE, syntax, NOSCRIPT...): no effect on health."""
    LOCAL = "local"
    """A limit of this client (its connection pool is exhausted): no effect on health."""
    REJECTED = "rejected"
    """The region refused the command unexecuted (LOADING, READONLY, OOM...): a failure."""
    NOT_SENT = "not_sent"
    """Connecting or sending failed, so the server never had the command: a failure."""
    UNKNOWN = "unknown"
    """Sent, then no reply (timeout, reset): a failure, and it may have been executed."""

    @property
    def is_failure(self) -> bool:
        """True when this counts against the region's health."""
        return self in (ErrorKind.REJECTED, ErrorKind.NOT_SENT, ErrorKind.UNKNOWN)


def command_name(args: tuple[object, ...]) -> str:
    """The upper-case command name of an ``execute_command`` argument tuple."""
    if not args:
        return ""
    first = args[0]
    name = first.decode("ascii", "replace") if isinstance(first, bytes) else str(first)
    # redis-py passes some two-word commands as one argument ("SCRIPT LOAD").
    return name.split(" ", 1)[0].upper()


def failure_code(exc: BaseException) -> str | None:
    """The failure code (``LOADING``, ``OOM``...) of a refusal, or None for anything else."""
    if isinstance(exc, BusyLoadingError):
        return "LOADING"
    if isinstance(exc, ReadOnlyError):
        return "READONLY"
    if isinstance(exc, OutOfMemoryError):
        return "OOM"
    if isinstance(exc, ClusterDownError):
        # MasterDownError is a ClusterDownError; redis-py keeps the code it stripped.
        code = getattr(exc, "status_code", None)
        return "MASTERDOWN" if code == "MASTERDOWN" else "CLUSTERDOWN"
    if isinstance(exc, ResponseError):
        # A refusal redis-py does not map to a class keeps its code as the first word
        # (e.g. inside a script's error).
        code = error_code(exc)
        return code if code in FAILURE_CODES else None
    return None


def classify(exc: BaseException, *, sent: bool, command: str = "") -> ErrorKind:
    """Classify an exception raised while running `command` on a region.

    `sent` is False when the exception came from getting a connection or writing the
    command (the server cannot have executed it), True once it was written.
    """
    if isinstance(exc, MaxConnectionsError):
        return ErrorKind.LOCAL
    if sent and isinstance(exc, AuthenticationError):
        # The server's answer to the application's own AUTH (redis-py makes it a
        # ConnectionError): a reply, not a lost one. While connecting it is the region's
        # credentials failing, which the not-sent branch below counts as a failure.
        return ErrorKind.APPLICATION
    code = failure_code(exc)
    if code is not None:
        if command in SCRIPT_COMMANDS:
            return ErrorKind.UNKNOWN
        return ErrorKind.REJECTED
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return ErrorKind.UNKNOWN if sent else ErrorKind.NOT_SENT
    if isinstance(exc, RedisError):
        return ErrorKind.APPLICATION
    return ErrorKind.APPLICATION


class RetryPolicy:
    """Which commands may be sent again, to another region, after an unknown outcome."""

    __slots__ = ("_names",)

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(name.upper() for name in names)

    def allows(self, args: tuple[object, ...]) -> bool:
        """True when sending `args` a second time cannot change the outcome."""
        name = command_name(args)
        if name not in self._names:
            return False
        forbidden = _NON_IDEMPOTENT_OPTIONS.get(name)
        if forbidden is None:
            return True
        for arg in args[1:]:
            if isinstance(arg, bytes | str):
                word = arg.decode("ascii", "replace") if isinstance(arg, bytes) else arg
                if word.upper() in forbidden:
                    return False
        return True

    def allows_all(self, commands: Iterable[tuple[object, ...]]) -> bool:
        """True when every command of a pipeline may be sent again."""
        return all(self.allows(args) for args in commands)


# Latency histogram: 4 sub-buckets per power of two of microseconds (about 19% wide),
# from 1 us to 2**30 us (18 min); anything longer lands in the last slot.
_SUB_BITS = 2
_SUB = 1 << _SUB_BITS
LATENCY_SLOTS = 31 * _SUB


def latency_slot(seconds: float) -> int:
    """The histogram slot of a latency (cheap: integer bit operations only)."""
    micros = int(seconds * 1_000_000)
    if micros < _SUB:
        return max(micros, 0)
    exponent = micros.bit_length() - 1  # micros >= 2**exponent
    slot = (exponent << _SUB_BITS) | ((micros >> (exponent - _SUB_BITS)) & (_SUB - 1))
    return min(slot, LATENCY_SLOTS - 1)


def slot_upper_s(slot: int) -> float:
    """The upper bound (seconds) of the latencies that land in `slot`."""
    if slot < _SUB:
        return (slot + 1) / 1_000_000
    exponent, sub = slot >> _SUB_BITS, slot & (_SUB - 1)
    if exponent < _SUB_BITS:  # slots latency_slot never returns
        return _SUB / 1_000_000
    micros = (1 << exponent) + (sub + 1) * (1 << (exponent - _SUB_BITS))
    return micros / 1_000_000


OK = 0
APP_ERROR = 1
FAILURE = 2


class _Bucket:
    __slots__ = (
        "app_errors",
        "failures",
        "index",
        "latency",
        "latency_sum",
        "requests",
        "timed",
    )

    def __init__(self) -> None:
        self.index = -1
        self.requests = 0
        self.failures = 0
        self.app_errors = 0
        self.timed = 0  # requests whose latency is in the histogram
        self.latency_sum = 0.0
        self.latency = [0] * LATENCY_SLOTS

    def add_to(self, totals: _Bucket) -> None:
        totals.requests += self.requests
        totals.failures += self.failures
        totals.app_errors += self.app_errors
        totals.timed += self.timed
        totals.latency_sum += self.latency_sum
        merged = totals.latency
        for slot, count in enumerate(self.latency):
            if count:
                merged[slot] += count

    def clear(self, index: int) -> None:
        self.index = index
        self.requests = self.failures = self.app_errors = self.timed = 0
        self.latency_sum = 0.0
        self.latency = [0] * LATENCY_SLOTS


@dataclass(frozen=True)
class WindowStats:
    """Outcomes over the window, and cumulative totals since the client started."""

    requests: int
    failures: int
    app_errors: int
    error_rate: float
    p50_s: float | None
    p99_s: float | None
    requests_total: int
    failures_total: int
    app_errors_total: int
    latency_sum_s: float
    latency_buckets: tuple[tuple[float, int], ...]
    """Cumulative (upper bound seconds, count of latencies <= bound), ascending."""
    latency_count_total: int = 0
    """Requests whose latency is in the histogram (blocking commands are not)."""


class OutcomeWindow:
    """Outcomes over the last `window_s` seconds in `buckets` fixed time buckets.

    The window is the current bucket plus the `buckets - 1` before it, so it spans between
    ``window_s * (1 - 1/buckets)`` and ``window_s``. When a bucket is reused its counts are
    folded into the cumulative totals, so the hot path only touches the current bucket.
    Not thread-safe: the owner (the router) holds a lock.
    """

    __slots__ = ("_bucket_s", "_buckets", "_current", "_n", "_totals")

    def __init__(self, window_s: float, buckets: int = 10) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("window_s must be positive and buckets at least 1")
        self._n = buckets
        self._bucket_s = window_s / buckets
        self._buckets = [_Bucket() for _ in range(buckets)]
        self._totals = _Bucket()
        self._current = self._buckets[0]

    def _bucket_at(self, now: float) -> _Bucket:
        index = int(now / self._bucket_s)
        current = self._current
        if index <= current.index:
            # A late arrival (its clock was read before another thread moved on): count
            # it where it belongs if that bucket is still live, else in the current one.
            if index == current.index:
                return current
            earlier = self._buckets[index % self._n]
            return earlier if earlier.index == index else current
        bucket = self._buckets[index % self._n]
        if bucket.index != index:
            if bucket.index >= 0:
                bucket.add_to(self._totals)
            bucket.clear(index)
        self._current = bucket
        return bucket

    def record(self, now: float, outcome: int, latency_s: float | None) -> None:
        """Count one request that ended at `now` (monotonic seconds) with `outcome`;
        `latency_s` None leaves the latencies alone (a blocking command's wait is not the
        region's latency)."""
        bucket = self._bucket_at(now)
        bucket.requests += 1
        if outcome == FAILURE:
            bucket.failures += 1
        elif outcome == APP_ERROR:
            bucket.app_errors += 1
        if latency_s is not None:
            bucket.timed += 1
            bucket.latency_sum += latency_s
            bucket.latency[latency_slot(latency_s)] += 1

    def _live(self, now: float) -> list[_Bucket]:
        newest = int(now / self._bucket_s)
        oldest = newest - self._n + 1
        return [b for b in self._buckets if oldest <= b.index <= newest]

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, failures) over the window ending at `now`."""
        requests = failures = 0
        for bucket in self._live(now):
            requests += bucket.requests
            failures += bucket.failures
        return requests, failures

    def reset(self, now: float) -> None:
        """Forget the window (not the totals): a region starts afresh after a state change."""
        for bucket in self._buckets:
            if bucket.index >= 0:
                bucket.add_to(self._totals)
            bucket.clear(-1)
        self._current = self._bucket_at(now)

    def stats(self, now: float) -> WindowStats:
        """A consistent view of the window and the totals."""
        window = _Bucket()
        for bucket in self._live(now):
            bucket.add_to(window)
        totals = _Bucket()
        self._totals.add_to(totals)
        for bucket in self._buckets:
            if bucket.index >= 0:
                bucket.add_to(totals)
        cumulative: list[tuple[float, int]] = []
        running = 0
        for slot, count in enumerate(totals.latency):
            if count:
                running += count
                cumulative.append((slot_upper_s(slot), running))
        return WindowStats(
            requests=window.requests,
            failures=window.failures,
            app_errors=window.app_errors,
            error_rate=window.failures / window.requests if window.requests else 0.0,
            p50_s=_quantile(window.latency, window.timed, 0.50),
            p99_s=_quantile(window.latency, window.timed, 0.99),
            requests_total=totals.requests,
            failures_total=totals.failures,
            app_errors_total=totals.app_errors,
            latency_sum_s=totals.latency_sum,
            latency_buckets=tuple(cumulative),
            latency_count_total=totals.timed,
        )


def _quantile(histogram: list[int], total: int, q: float) -> float | None:
    """The upper bound of the slot holding the q-quantile (None without samples)."""
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for slot, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return slot_upper_s(slot)
    return slot_upper_s(len(histogram) - 1)
