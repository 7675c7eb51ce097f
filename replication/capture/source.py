"""What both capture sources share: the lifecycle, the reconnect loop, the bounded queue
of batches and its iterator.

A source (:class:`CaptureSource`) is started once: ``start()`` connects (raising if the
server cannot be used at all), then a background task serves the session and, when the
connection is lost, reconnects with capped exponential backoff and full jitter
(:mod:`replication.backoff`), resetting the backoff once a session lived
``healthy_session_s``. An error that is not a connection problem (credentials, a refused
PSYNC) ends the iteration of :meth:`CaptureSource.batches` with that error; ``stop()`` is
safe twice and after a failed start.

The subclasses say how to connect (:meth:`CaptureSource._connect`), how to serve one
session (:meth:`CaptureSource._serve`) and what a queued item is: the PSYNC source
(:mod:`replication.capture.stream`) and the keyspace-notification source
(:mod:`replication.capture.notifications`).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypedDict, TypeVar, Unpack

from replication.backoff import Backoff
from replication.capture.batch import CaptureBatch, CaptureConnectionError, CaptureStats
from replication.errors import ReconcilerError
from replication.redis.address import RedisAddress

T = TypeVar("T")


class BatchChannel(Generic[T]):
    """A bounded queue between the parser (producers) and the one consumer, closable.

    ``put`` waits while the queue is full: that wait is the backpressure. ``close(error)``
    wakes everyone; the consumer then gets the remaining items (unless dropped) and then
    the error, or None for a clean end.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._maxsize = max(1, maxsize)
        self._closed = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, item: T) -> bool:
        """Queue `item`, waiting for room; False if the channel is closed (item dropped)."""
        while len(self._items) >= self._maxsize and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._items.append(item)
        self._readable.set()
        return True

    async def get(self) -> T | None:
        """The next item; None once closed cleanly; raises the error it was closed with."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item

    def close(self, error: BaseException | None = None, *, drop: bool = False) -> None:
        """No more items; `drop` discards those not yet taken."""
        if not self._closed:
            self._closed = True
            self._error = error
        if drop:
            self._items.clear()
        self._readable.set()
        self._writable.set()


async def run_together(*coros: Any) -> None:
    """Run coroutines as tasks until the first one ends; cancel and await the others.

    Re-raises the first exception (or returns when one finishes cleanly). Used for the
    parts of one session (reader and ACK timer) so that no task outlives its connection.
    """
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SourceState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


class Session(Protocol):
    """The connection(s) of one session of a source."""

    @property
    def started(self) -> float:
        """`time.monotonic()` when the session was established."""
        ...

    async def close(self) -> None:
        """Close every connection of the session."""
        ...


class SourceOptions(TypedDict, total=False):
    """The settings every source takes, as keyword arguments of its constructor."""

    name: str
    """In log lines and task names (and the stream source's position file)."""
    dbs: Iterable[int]
    """The databases captured (default: 0 alone)."""
    max_pending_batches: int
    """Batches waiting for the consumer before reading stops (backpressure; default 8)."""
    read_high_water_bytes: int
    """Bytes buffered unread before the socket is no longer read (default 4 MiB)."""
    read_timeout_s: float
    """Silence on a connection after which it counts as lost (the subclass's default)."""
    connect_timeout_s: float
    """Default 10 s."""
    healthy_session_s: float
    """A session that lived this long resets the reconnect backoff (default 10 s)."""
    backoff: Backoff | None
    """Between reconnects (default: 50 ms doubling up to 2 s, full jitter: a restarted
    Redis is noticed soon)."""


ItemT = TypeVar("ItemT")
SessionT = TypeVar("SessionT", bound=Session)


class CaptureSource(abc.ABC, Generic[ItemT, SessionT]):
    """A change source's lifecycle and reconnect loop (see module doc).

    Satisfies :class:`~replication.capture.batch.ChangeSource` together with the
    subclass's :meth:`ack`.
    """

    kind: ClassVar[str]
    """How its log lines start ("capture", "notifications")."""
    task_name: ClassVar[str]
    """The suffix of the background task's name."""
    default_read_timeout_s: ClassVar[float]

    def __init__(self, address: RedisAddress, **options: Unpack[SourceOptions]) -> None:
        self.address = address
        self.name = options.get("name", self.kind)
        self.dbs = frozenset(options.get("dbs", (0,)))
        if not self.dbs:
            raise ValueError("capture needs at least one db")
        self.read_high_water_bytes = options.get("read_high_water_bytes", 4 << 20)
        self.read_timeout_s = options.get("read_timeout_s", self.default_read_timeout_s)
        self.connect_timeout_s = options.get("connect_timeout_s", 10.0)
        self.healthy_session_s = options.get("healthy_session_s", 10.0)
        self.backoff = options.get("backoff") or Backoff(base_s=0.05, cap_s=2.0)
        self.stats = CaptureStats()
        self._state = SourceState.NEW
        self._channel: BatchChannel[ItemT] = BatchChannel(options.get("max_pending_batches", 8))
        self._tasks: list[asyncio.Task[None]] = []
        # Log lines carry the subclass's logger name (replication.capture.stream...).
        self._log = logging.getLogger(type(self).__module__)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, address={self.address!r}, "
            f"dbs={sorted(self.dbs)}, state={self._state.value})"
        )

    # lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect and begin capturing in the background (see the subclass for what it
        raises when the server cannot be used)."""
        if self._state is not SourceState.NEW:
            raise RuntimeError(f"{self!r} cannot start twice")
        self._state = SourceState.RUNNING
        try:
            await self._prepare()
            session = await self._connect()
        except BaseException:
            self._state = SourceState.FAILED
            self._channel.close(drop=True)
            raise
        self._tasks.append(
            asyncio.create_task(self._run(session), name=f"{self.name}-{self.task_name}")
        )
        for suffix, job in self._background():
            self._tasks.append(asyncio.create_task(job, name=f"{self.name}-{suffix}"))

    async def stop(self) -> None:
        """Stop capturing and close the connection. Safe to call twice and after a failed
        start. Batches not yet taken are dropped."""
        if self._state is SourceState.STOPPED:
            return
        self._state = SourceState.STOPPED
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._channel.close(drop=True)
        await self._stopped()
        self.stats.connected = False

    def batches(self) -> AsyncIterator[CaptureBatch]:
        """Batches in order; ends after stop(), raises a fatal source error."""
        return _BatchIterator(self._next_batch)

    @abc.abstractmethod
    async def ack(self, offset: int | None) -> None:
        """The consumer durably handed on the batch ending at `offset` and all before it."""

    # what a subclass provides ----------------------------------------------------------
    async def _prepare(self) -> None:
        """Before the first connection (e.g. load a stored position)."""

    @abc.abstractmethod
    async def _connect(self) -> SessionT:
        """Open a session; CaptureConnectionError or OSError if it may work later."""

    @abc.abstractmethod
    async def _serve(self, session: SessionT) -> None:
        """Read the session until its connection is lost (raises) or the task is cancelled."""

    async def _lost(self, exc: Exception) -> None:
        """The connection of a session was lost (before it is closed)."""

    def _position_text(self) -> str:
        """Where the source was, for the log line of a lost connection ("" if nowhere)."""
        return ""

    async def _close_session(self, session: SessionT) -> None:
        await session.close()

    def _background(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """Other jobs to run beside the session loop: (task name suffix, coroutine)."""
        return []

    async def _stopped(self) -> None:
        """After stop() cancelled everything (e.g. persist the position)."""

    @abc.abstractmethod
    def _taken(self, item: ItemT) -> CaptureBatch:
        """The batch of a queued item, now handed to the consumer."""

    # the session loop -------------------------------------------------------------------
    async def _run(self, session: SessionT | None) -> None:
        log = self._log
        try:
            while True:
                if session is None:
                    session = await self._reconnect()
                try:
                    await self._serve(session)
                except (CaptureConnectionError, OSError) as exc:
                    self.stats.reconnects += 1
                    log.warning(
                        "%s connection lost source=%s endpoint=%s%s error=%s",
                        self.kind,
                        self.name,
                        self.address,
                        self._position_text(),
                        exc,
                    )
                    await self._lost(exc)
                finally:
                    self.stats.connected = False
                    await self._close_session(session)
                    if time.monotonic() - session.started >= self.healthy_session_s:
                        self.backoff.reset()
                    session = None
        except ReconcilerError as exc:
            # Not retriable (credentials, PSYNC refused): the consumer sees it in batches().
            log.error("%s stopped source=%s error=%s", self.kind, self.name, exc)  # noqa: TRY400
            self._channel.close(exc)
        except Exception as exc:
            # A bug must end the consumer's iteration loudly rather than leave it waiting.
            log.exception("%s failed source=%s", self.kind, self.name)
            self._channel.close(exc)
            raise

    async def _reconnect(self) -> SessionT:
        while True:
            delay = await self.backoff.sleep()
            try:
                return await self._connect()
            except (CaptureConnectionError, OSError) as exc:
                self._log.warning(
                    "%s reconnect failed source=%s endpoint=%s after_s=%.2f error=%s",
                    self.kind,
                    self.name,
                    self.address,
                    delay,
                    exc,
                )

    async def _next_batch(self) -> CaptureBatch | None:
        item = await self._channel.get()
        if item is None:
            return None
        batch = self._taken(item)
        self.stats.batches += 1
        self.stats.keys += batch.key_count
        return batch


class _BatchIterator:
    """``async for batch in source.batches()`` (a plain iterator: nothing to finalise)."""

    def __init__(self, next_batch: Callable[[], Awaitable[CaptureBatch | None]]) -> None:
        self._next_batch = next_batch

    def __aiter__(self) -> _BatchIterator:
        return self

    async def __anext__(self) -> CaptureBatch:
        batch = await self._next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch
