"""The failover decisions the sync and asyncio clients share, without any I/O.

A shell (:mod:`reconciler.client.sync`, :mod:`reconciler.client.aio`) tries a command on
a region and hands every failure to :meth:`Attempt.failed`, which does the rest in one
place: classify the error (:func:`reconciler.client.health.classify`), record it in the
router, decide whether the command may go to another region (never sent, refused
unexecuted, or idempotent), pick that region, or raise what the application gets
(the redis-py exception, :class:`CommandOutcomeUnknownError`, or
:class:`NoHealthyRegionError`). The shell's loop is then only "try, record the success, or
ask the attempt where to go next".

The shells call :meth:`Attempt.failed` after their ``except`` block, so the exception the
application sees is raised with its own traceback and cause, not chained to the client's
internal :class:`NotSentError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reconciler.client.blocking import BLOCKING, read_timeout_s
from reconciler.client.errors import CommandOutcomeUnknownError, NoHealthyRegionError
from reconciler.client.health import ErrorKind, RetryPolicy, classify, command_name, failure_code
from reconciler.client.router import RegionState, Router

__all__ = [
    "ATTEMPT_ERRORS",
    "NETWORK_ERRORS",
    "Attempt",
    "Command",
    "Done",
    "Failover",
    "NotSentError",
    "Plan",
    "Queued",
]

NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a connection raises when the network or the server fails."""

Command = tuple[tuple[Any, ...], dict[str, Any]]
"""One queued command: redis-py's ``(args, options)``."""


@dataclass(frozen=True, slots=True)
class Queued:
    """A pipeline's queue on its way to a region."""

    stack: list[Command]
    transaction: bool
    raise_on_error: bool
    scripts: frozenset[Any]
    """Registered scripts its EVALSHAs run: loaded first on the region it runs on."""
    reply_timeout: float | None
    """Its longest blocking command's (None: the connection's own timeout)."""


Done = Callable[[int, float, Any], Any]
"""Records an answer from region `index` that took since `start`; returns what the
application gets."""

Plan = tuple[Callable[[Any], Any], Done, Callable[[], "Attempt"]]
"""What a shell's loop needs for one request: what to call on a region object (its
result, or its awaitable in the asyncio shell), how to record an answer, and how to make
the :class:`Attempt` at the first failure."""


class NotSentError(Exception):
    """Internal: the command never reached the server (carries the real error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


ATTEMPT_ERRORS = (NotSentError, RedisError, OSError)
"""What a shell catches around one attempt and hands to :meth:`Attempt.failed`."""


class Failover:
    """Everything the shells decide the same way; one per client."""

    __slots__ = ("command_timeout_s", "resend_before_failover", "retry", "router")

    def __init__(
        self,
        router: Router,
        retry: RetryPolicy,
        command_timeout_s: float,
        *,
        resend_before_failover: bool = False,
    ) -> None:
        self.router = router
        self.retry = retry
        self.command_timeout_s = command_timeout_s
        self.resend_before_failover = resend_before_failover

    def read_timeout(self, args: tuple[Any, ...]) -> float | None:
        """How long to wait for the reply of a blocking command (None: not blocking)."""
        return read_timeout_s(args, self.command_timeout_s)

    def command(self, args: tuple[Any, ...], *, pinned: bool = False) -> Attempt:
        """The attempt of one command; `pinned`: bound to its region (a lock's commands)."""
        name = command_name(args)
        blocking = self.read_timeout(args) is not None
        return Attempt(
            self,
            name,
            # A refusal was not executed, blocking or not; a lost reply of a blocking
            # command may have popped an element.
            resend_sent=not blocking and self.retry.allows(args),
            resend_refused=True,
            blocking=blocking,
            pinned=pinned,
        )

    def pipeline(self, queued: Queued) -> Attempt:
        """The attempt of a pipeline: once sent, part of it may have run even if one
        command was refused, so only a pipeline of idempotent commands goes elsewhere."""
        stack = queued.stack
        idempotent = self.retry.allows_all(args for args, _ in stack) and not any(
            self.read_timeout(args) is not None for args, _ in stack
        )
        return Attempt(
            self,
            "MULTI" if queued.transaction else "PIPELINE",
            resend_sent=idempotent,
            resend_refused=idempotent,
            blocking=False,
            pinned=False,
        )

    def queued(
        self, stack: list[Command], transaction: bool, raise_on_error: bool, scripts: set[Any]
    ) -> Queued:
        """A pipeline's queue, with the reply timeout it needs."""
        return Queued(
            stack,
            transaction,
            raise_on_error,
            frozenset(scripts),
            self.pipeline_read_timeout(stack, transaction),
        )

    def pipeline_read_timeout(self, stack: Iterable[Command], transaction: bool) -> float | None:
        """A pipeline (not a transaction: inside MULTI nothing blocks) waits for its longest
        blocking command."""
        if transaction:
            return None
        timeouts = [t for args, _ in stack if (t := self.read_timeout(args)) is not None]
        return max(timeouts) if timeouts else None

    def plan(self, args: tuple[Any, ...], options: dict[str, Any], *, pinned: bool) -> Plan:
        """How a shell runs one command (`pinned`: on its first region only)."""
        reply_timeout = self.read_timeout(args) if args[0] in BLOCKING else None
        return (
            lambda region: region.call(args, options, reply_timeout),
            self.ok if reply_timeout is None else self.ok_blocking,
            lambda: self.command(args, pinned=pinned),
        )

    def pipeline_plan(self, queued: Queued) -> Plan:
        """How a shell runs a queued pipeline."""
        return (
            lambda region: region.call_pipeline(queued),
            self.pipeline_done,
            lambda: self.pipeline(queued),
        )

    def binding(self) -> Plan:
        """How a shell binds a pipeline for WATCH: a connection of a region (any, while
        nothing is watched), handed back as (connection, region index)."""

        def bound(index: int, start: float, conn: Any) -> tuple[Any, int]:
            return conn, index

        return (lambda region: region.connect()), bound, lambda: self.command(("WATCH",))

    def ok(self, index: int, start: float, result: Any) -> Any:
        """Record a command that answered and hand its reply through."""
        self.router.record_ok(index, time.perf_counter() - start)
        return result

    def ok_blocking(self, index: int, start: float, result: Any) -> Any:
        """:meth:`ok` for a blocking command: its wait is not the region's latency."""
        self.router.record_ok(index, None)
        return result

    def next(
        self,
        attempt: Attempt | None,
        attempt_of: Callable[[], Attempt],
        index: int,
        error: BaseException,
        start: float,
    ) -> tuple[int, Attempt]:
        """After `error` from region `index`: the region to try next (and the attempt
        that remembers the others, made by `attempt_of` at the first failure), or raise
        what the application gets."""
        if attempt is None:
            attempt = attempt_of()
        return attempt.failed(index, error, time.perf_counter() - start), attempt

    def pipeline_done(self, index: int, start: float, result: list[Any]) -> list[Any]:
        """Record a pipeline that answered; refusals handed back inline still count."""
        elapsed = time.perf_counter() - start
        refused = next((r for r in result if isinstance(r, Exception) and failure_code(r)), None)
        if refused is not None:
            self.router.record_failure(index, elapsed, f"in pipeline: {refused}")
        else:
            self.router.record_ok(index, elapsed)
        return result

    # -- WATCH transactions (bound to one region) ---------------------------------------

    def bound_failed(self, index: int, exc: BaseException, elapsed: float) -> None:
        """Record an error of a pipeline bound to region `index` by WATCH (it never moves:
        the application retries the transaction, on the region active then)."""
        cause = exc
        if isinstance(exc, WatchError) and isinstance(exc.__context__, NETWORK_ERRORS):
            cause = exc.__context__  # redis-py's WatchError for a connection lost while watching
        elif isinstance(exc, NotSentError):
            cause = exc.cause
        kind = classify(cause, sent=not isinstance(exc, NotSentError))
        if kind.is_failure:
            self.router.record_failure(index, elapsed, f"{type(cause).__name__}: {cause}")
        elif kind is ErrorKind.APPLICATION:
            self.router.record_app_error(index, elapsed)

    def bound_execute_error(
        self, index: int, watching: bool, error: BaseException, start: float
    ) -> BaseException:
        """EXEC (or the queue) of a pipeline bound by WATCH failed: record it; returns what
        the shell raises: a WatchError when nothing ran (retry: on the region active
        then), :class:`CommandOutcomeUnknownError` when the request reached the server and
        its reply was lost (it may have committed: retrying could apply it twice)."""
        self.bound_failed(index, error, time.perf_counter() - start)
        region = self.router.names[index]
        if isinstance(error, NotSentError):
            if not watching:
                return error.cause
            lost = WatchError(
                f"region {region} failed before the transaction was sent "
                f"({type(error.cause).__name__}: {error.cause}); nothing was executed"
            )
            lost.__cause__ = error.cause
            return lost
        if isinstance(error, NETWORK_ERRORS):
            unknown = CommandOutcomeUnknownError("EXEC", region, error)
            unknown.__cause__ = error
            return unknown
        return error

    def lost_watch(self, index: int) -> WatchError | None:
        """The WatchError for a transaction bound to region `index` once that region has
        failed (None while it serves): a transaction must not commit on data the client
        no longer vouches for, and nothing ran yet."""
        if self.router.state_of(index) is RegionState.HEALTHY:
            return None
        return WatchError(
            f"region {self.router.names[index]} failed over while watching; nothing was "
            "executed (retry: it runs on the region active now)"
        )


class Attempt:
    """One command (or pipeline) on its way through the regions: the regions tried and
    what each said."""

    __slots__ = (
        "_blocking",
        "_failover",
        "_pinned",
        "_resend_refused",
        "_resend_sent",
        "failures",
        "name",
        "tried",
    )

    def __init__(
        self,
        failover: Failover,
        name: str,
        *,
        resend_sent: bool,
        resend_refused: bool,
        blocking: bool,
        pinned: bool,
    ) -> None:
        self._failover = failover
        self.name = name
        self._resend_sent = resend_sent
        self._resend_refused = resend_refused
        self._blocking = blocking
        self._pinned = pinned
        self.tried: list[int] = []
        self.failures: list[str] = []

    def failed(self, index: int, exc: BaseException, elapsed: float) -> int:
        """Account for `exc` from region `index`; return the region to try next, or raise
        what the application gets."""
        router = self._failover.router
        if not self.tried:
            self.tried.append(index)
        not_sent = isinstance(exc, NotSentError)
        cause = exc.cause if isinstance(exc, NotSentError) else exc
        kind = classify(cause, sent=not not_sent, command=self.name)
        if kind is ErrorKind.APPLICATION:
            router.record_app_error(index, elapsed)
            raise cause
        if kind is ErrorKind.LOCAL:
            raise cause
        region = router.names[index]
        if self._blocking and kind is ErrorKind.UNKNOWN and isinstance(cause, RedisTimeoutError):
            # Blocked past its own timeout plus the command timeout: the region is slow or
            # stuck, but an idle queue worker must not fail it over. The outcome is unknown.
            raise CommandOutcomeUnknownError(self.name, region, cause) from cause
        detail = f"{kind.value} {type(cause).__name__}: {cause}"
        router.record_failure(index, elapsed, detail)
        self.failures.append(f"{region}: {detail}")
        if self._pinned:
            raise cause
        if kind is ErrorKind.UNKNOWN and not self._resend_sent:
            raise CommandOutcomeUnknownError(self.name, region, cause) from cause
        if kind is ErrorKind.REJECTED and not self._resend_refused:
            raise CommandOutcomeUnknownError(self.name, region, cause) from cause
        if (
            not self._failover.resend_before_failover
            and router.state_of(index) is RegionState.HEALTHY
        ):
            # The region has not failed over (this failure did not cross the threshold):
            # often a blip (a SAVE, a pause, a cut link, a restart), and another region may
            # lack what this client wrote moments ago: it would answer a read of it with
            # "missing" or an older value. Commands go elsewhere once the region is failed
            # over; until then the application gets the error, as with redis-py.
            raise cause
        following = router.next_region(self.tried)
        if following is None:
            self._exhausted(cause)
        self.tried.append(following)
        return following

    def _exhausted(self, cause: BaseException) -> NoReturn:
        if len(self.tried) == 1:
            raise cause
        raise NoHealthyRegionError(self.name, self.failures) from cause
