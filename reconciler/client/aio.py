"""The asyncio failover client, a drop-in for ``redis.asyncio.Redis``.

The same client as :mod:`reconciler.client.sync` (same router, same decisions in
:mod:`reconciler.client.core`, same settings in :mod:`reconciler.client.base`); the I/O is
redis-py's asyncio client, probes run as one task on the client's event loop, and the
optional Kafka stream is another task there. Both tasks start with the first command (or
``async with`` / ``await client.initialize()``) and are cancelled and awaited by
:meth:`AsyncFailoverClient.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.commands import AsyncCoreCommands, AsyncRedisModuleCommands, AsyncSentinelCommands
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError, WatchError

from reconciler.client import core
from reconciler.client.base import ClientBase, PipelineBase, SendingBase
from reconciler.client.blocking import BLOCKING, FOREVER
from reconciler.client.core import ATTEMPT_ERRORS, NETWORK_ERRORS, NotSentError
from reconciler.client.errors import ClientClosedError
from reconciler.client.probing import PROBE_COMMANDS, admit, report_probe

__all__ = ["AsyncFailoverClient", "AsyncFailoverPipeline"]

_STREAM_STOP_S = 15.0


class _AsyncSending(SendingBase):
    """The asyncio shell's view of a connection (see SendingBase)."""

    __slots__ = ()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await self._conn.send_packed_command(command, check_health)
        self.sent = True  # a request written whole; one cut short never ran

    async def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        if self._timeout is not None:
            kwargs.setdefault("timeout", self._timeout)  # math.inf: redis-py's "forever"
        return await self._conn.read_response(disable_decoding, **kwargs)


assert float("inf") == FOREVER  # what redis.asyncio's read_response takes for "no timeout"


class _Region:
    """One region's asyncio redis-py client and a one-connection probe client."""

    def __init__(
        self, index: int, name: str, client: aioredis.Redis, probe: aioredis.Redis
    ) -> None:
        self.index = index
        self.name = name
        # redis-py's connection-level API is untyped; Any keeps mypy strict elsewhere.
        self.redis: Any = client
        self.pool: Any = client.connection_pool
        self.probe: Any = probe

    async def connect(self) -> Any:
        """A connection from the pool; a failure is NotSentError (nothing was sent)."""
        try:
            return await self.pool.get_connection()
        except NETWORK_ERRORS as exc:
            raise NotSentError(exc) from exc

    async def call(
        self, args: tuple[Any, ...], options: dict[str, Any], reply_timeout: float | None
    ) -> Any:
        """Run one command; a failure before the server could have it is NotSentError."""
        pool = self.pool
        conn = await self.connect()
        try:
            try:
                await conn.send_command(*args, **options)
            except NETWORK_ERRORS as exc:
                # redis-py disconnects on a send error; an incomplete command never runs.
                raise NotSentError(exc) from exc
            reader = conn if reply_timeout is None else _AsyncSending(conn, reply_timeout)
            return await self.redis.parse_response(reader, args[0], **options)
        except NETWORK_ERRORS:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def call_pipeline(self, queued: core.Queued) -> list[Any]:
        """Run a queued pipeline as one unit on a connection of its own."""
        pipe = self.redis.pipeline(transaction=queued.transaction)
        pipe.connection = await self.connect()  # reset() hands it back to the pool
        pipe.command_stack = list(queued.stack)
        pipe.scripts = set(queued.scripts)
        try:
            return await self.run(pipe, queued.raise_on_error, queued.reply_timeout)
        finally:
            await pipe.reset()

    async def run(self, pipe: Any, raise_on_error: bool, reply_timeout: float | None) -> list[Any]:
        """Execute what `pipe` holds on its connection, its scripts loaded first; a failure
        before the request was written whole is NotSentError."""
        conn = pipe.connection
        sending = _AsyncSending(conn, reply_timeout)
        try:
            if pipe.scripts:
                await pipe.load_scripts()
            transaction = pipe.is_transaction or pipe.explicit_transaction
            run = pipe._execute_transaction if transaction else pipe._execute_pipeline
            result: list[Any] = await run(sending, pipe.command_stack, raise_on_error)
            return result
        except NETWORK_ERRORS as exc:
            await conn.disconnect()
            if not sending.sent:
                raise NotSentError(exc) from exc
            raise

    async def probe_replies(self) -> list[Any]:
        """The replies to PROBE_COMMANDS, read in one MULTI on the probe connection."""
        async with self.probe.pipeline(transaction=True) as pipe:
            for args in PROBE_COMMANDS:
                pipe.execute_command(*args)
            replies: list[Any] = await pipe.execute()
            return replies

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.probe.aclose()


# redis-py's asyncio mixins disagree with each other about command_info's type; its own
# redis.asyncio.Redis combines them the same way.
class AsyncFailoverClient(  # type: ignore[misc]
    ClientBase, AsyncRedisModuleCommands, AsyncCoreCommands, AsyncSentinelCommands
):
    """A ``redis.asyncio.Redis`` that fails over between regions and back.

    ``AsyncFailoverClient(config)`` or ``AsyncFailoverClient.from_config_file(path)``;
    extra keyword arguments go to every region's ``redis.asyncio.Redis``. Use
    ``async with`` or call :meth:`aclose`. One instance belongs to one event loop.
    """

    _is_async_client: Literal[True] = True
    _SHELL = (aioredis.Redis, _Region, Retry)  # its redis-py client, region and retry classes

    def _start_shell(self) -> None:
        self._started = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._streamer: Any = None
        self._router.add_probe_wakeup(self._poke_prober)
        if self.config.kafka is not None:
            from reconciler.client.stream import MetricsStreamer

            self._streamer = MetricsStreamer(self.config.kafka, self.instance_id, self._router)

    def _connect_hook(
        self, index: int, app_hook: Callable[[Any], Any] | None
    ) -> Callable[[Any], Awaitable[None]]:
        """redis-py's ``redis_connect_func``: its handshake (or the application's hook),
        then the instance check, before the connection carries any command."""
        router, access = self._router, self._access
        name = self.config.regions[index].name

        async def on_connect(conn: Any) -> None:
            if app_hook is None:
                await conn.on_connect()
            else:
                done = app_hook(conn)
                if inspect.isawaitable(done):
                    await done
            await conn.send_command("INFO", "server")
            try:
                info: object = await conn.read_response()
            except ResponseError as exc:
                info = exc
            admit(router, index, name, info, access)

        return on_connect

    # -- lifecycle --------------------------------------------------------------------

    async def initialize(self) -> AsyncFailoverClient:
        """Start the background tasks on the running loop (done by the first command)."""
        self._start()
        return self

    def __await__(self) -> Generator[Any, None, AsyncFailoverClient]:
        return self.initialize().__await__()

    def _start(self) -> None:
        if self._closed:
            raise ClientClosedError
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._probe_task = loop.create_task(self._probe_loop(), name=f"rr-probe {self.instance_id}")
        if self._streamer is not None:
            self._stream_task = loop.create_task(
                self._streamer.run(), name=f"rr-metrics {self.instance_id}"
            )

    async def aclose(self) -> None:
        """Cancel and await the background tasks, close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self._stream_task is not None:
            self._streamer.request_stop()
            # The streamer bounds its own final flush; this bounds a broker that hangs stop().
            try:
                await asyncio.wait_for(asyncio.shield(self._stream_task), _STREAM_STOP_S)
            except TimeoutError:
                self._stream_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stream_task
        self.metrics.close()
        for region in self._regions:
            await region.aclose()

    async def close(self) -> None:
        """Same as :meth:`aclose` (redis-py's older name)."""
        await self.aclose()

    async def __aenter__(self) -> AsyncFailoverClient:
        return await self.initialize()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- probing ----------------------------------------------------------------------

    def _poke_prober(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        # The router calls this with its lock held, possibly from another thread.
        with contextlib.suppress(RuntimeError):  # loop already closed: nothing to wake
            loop.call_soon_threadsafe(wake.set)

    async def _probe_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            due, wait_s = self._router.probes_due()
            if due:
                await asyncio.gather(*(self._probe(self._regions[i]) for i in due))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await wake.wait()
            wake.clear()

    async def _probe(self, region: _Region) -> None:
        replies, error = None, None
        try:
            replies = await region.probe_replies()
        except (RedisError, OSError) as exc:
            error = exc
        finally:
            # Always report, or the region would wait for the router's in-flight timeout.
            report_probe(self._router, (region.index, region.name), self._access, replies, error)

    # -- the command path -------------------------------------------------------------

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command to the active region; fail over and retry as the policy says."""
        if not self._started or self._closed or args[0] in BLOCKING:
            return await self._command(self._router.active, args, options, pinned=False)
        # The common case, without the general loop's closures: one region, one answer.
        index = self._router.active
        start = time.perf_counter()
        try:
            result = await self._regions[index].call(args, options, None)
        except ATTEMPT_ERRORS as exc:
            error = exc
        else:
            self._router.record_ok(index, time.perf_counter() - start)
            return result
        return await self._resume(index, (args, options), (error, start))

    async def _resume(self, index: int, command: core.Command, failed: tuple[Any, float]) -> Any:
        """The rest of a command whose first attempt on region `index` failed."""
        plan = self._failover.plan(*command, pinned=False)
        index, attempt = self._failover.next(None, plan[2], index, *failed)
        return await self._run(index, plan, attempt)

    async def _command(
        self, index: int, args: tuple[Any, ...], options: dict[str, Any], *, pinned: bool
    ) -> Any:
        """One command from region `index` on (`pinned`: there only)."""
        if not self._started:
            self._start()
        if self._closed:
            raise ClientClosedError
        return await self._run(index, self._failover.plan(args, options, pinned=pinned))

    async def _run(self, index: int, plan: core.Plan, attempt: core.Attempt | None = None) -> Any:
        """Await `call` of the plan on region `index`, then wherever the core sends it."""
        call, done, attempt_of = plan
        while True:
            start = time.perf_counter()
            try:
                result = await call(self._regions[index])
            except ATTEMPT_ERRORS as exc:
                error = exc
            else:
                return done(index, start, result)
            index, attempt = self._failover.next(attempt, attempt_of, index, error, start)

    async def _execute_pipeline(self, queued: core.Queued) -> list[Any]:
        """Run a queued pipeline on the active region as one unit."""
        if not self._started:
            self._start()
        if self._closed:
            raise ClientClosedError
        result: list[Any] = await self._run(
            self._router.active, self._failover.pipeline_plan(queued)
        )
        return result

    async def _bind(self) -> tuple[Any, int]:
        """A connection of the active region for a WATCH (elsewhere if it cannot connect:
        nothing is watched yet)."""
        if not self._started:
            self._start()
        bound: tuple[Any, int] = await self._run(self._router.active, self._failover.binding())
        return bound

    # -- pipelines, transactions, locks, pub/sub --------------------------------------

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> AsyncFailoverPipeline:
        """A pipeline whose commands go to one region together when executed."""
        pipe: AsyncFailoverPipeline = self._pipeline(transaction, shard_hint)
        return pipe

    async def transaction(
        self,
        func: Callable[[AsyncFailoverPipeline], Any | Awaitable[Any]],
        *watches: Any,
        shard_hint: Any = None,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """redis-py's optimistic transaction helper; a WatchError (a concurrent change, or
        the region failing while watching) runs it again, on the region active then."""
        async with self.pipeline(True, shard_hint) as pipe:
            while True:
                try:
                    if watches:
                        await pipe.watch(*watches)
                    func_value = func(pipe)
                    if inspect.isawaitable(func_value):
                        func_value = await func_value
                    exec_value = await pipe.execute()
                    return func_value if value_from_callable else exec_value
                except WatchError:
                    if watch_delay is not None and watch_delay > 0:
                        await asyncio.sleep(watch_delay)
                    continue

    _LOCK = Lock
    _SCRIPT = AsyncScript

    def _view(self, index: int) -> _AsyncRegionView:
        return _AsyncRegionView(self, index)


class _AsyncRegionView(  # type: ignore[misc]  # see AsyncFailoverClient
    AsyncRedisModuleCommands, AsyncCoreCommands, AsyncSentinelCommands
):
    """The client's commands on one region, never failing over: what a lock is bound to."""

    _is_async_client: Literal[True] = True
    _event_dispatcher: Any = None

    def __init__(self, client: AsyncFailoverClient, index: int) -> None:
        self._client = client
        self._index = index

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run on this view's region; its errors are redis-py's own."""
        return await self._client._command(self._index, args, options, pinned=True)

    def get_encoder(self) -> Any:
        """The client's encoder."""
        return self._client.get_encoder()

    @property
    def connection_pool(self) -> Any:
        """The pool of this view's region (AsyncScript reads its encoder there)."""
        return self._client._regions[self._index].pool

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        """An ``AsyncScript`` whose commands run on this region."""
        return AsyncScript(self, script)  # type: ignore[arg-type]  # duck-typed as redis-py's


class AsyncFailoverPipeline(  # type: ignore[misc]  # see AsyncFailoverClient
    PipelineBase, AsyncRedisModuleCommands, AsyncCoreCommands, AsyncSentinelCommands
):
    """The asyncio twin of :class:`reconciler.client.sync.FailoverPipeline`.

    Commands are queued (``pipe.set(...)`` returns the pipeline, so calls chain) and run on
    one region at ``await pipe.execute()``; ``await pipe.watch(...)`` binds the pipeline to
    the region active then, and the reads after it are awaited, as in redis-py.
    """

    _is_async_client: Literal[True] = True

    def __init__(self, client: AsyncFailoverClient, transaction: bool, shard_hint: Any) -> None:
        self._init_queue(client, transaction, shard_hint)

    async def __aenter__(self) -> AsyncFailoverPipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.reset()

    def __await__(self) -> Generator[Any, None, AsyncFailoverPipeline]:
        return self._self().__await__()

    async def _self(self) -> AsyncFailoverPipeline:
        return self

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue a command and return the pipeline; on a pipeline bound by WATCH (and for
        WATCH itself) a coroutine, as redis-py's asyncio pipeline."""
        if self._bound is None:
            if not self._binds(args):
                return self._queue(args, options)
            return self._now(args, options)
        if not self._immediate(args):
            self._bound.pipeline_execute_command(*args, **options)
            return self
        return self._now(args, options)

    async def _bind(self) -> None:
        client: AsyncFailoverClient = self._client
        conn, index = await client._bind()
        bound = client._regions[index].redis.pipeline(self.transaction, self.shard_hint)
        bound.connection = conn  # reset() hands it back to the pool
        self._bound_to(bound, index)

    def _now(self, args: tuple[Any, ...], options: dict[str, Any]) -> Coroutine[Any, Any, Any]:
        return self._run_now(args, options)

    async def _run_now(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """WATCH, or a command of a WATCH transaction before MULTI, on its connection."""
        if self._bound is None:
            await self._bind()
        bound, index = self._bound, self._bound_index
        failover = self._client._failover
        await self._check_bound()
        start = time.perf_counter()
        try:
            result = await bound.immediate_execute_command(*args, **options)
        except (RedisError, OSError) as exc:
            failover.bound_failed(index, exc, time.perf_counter() - start)
            if not bound.watching:
                await self._unbind()
            raise
        return failover.ok(index, start, result)

    async def _check_bound(self) -> None:
        lost = self._client._failover.lost_watch(self._bound_index)
        if lost is not None and self._bound.watching:
            await self._unbind()
            raise lost

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]  # as redis-py's
        """WATCH keys: binds the pipeline to the active region."""
        bound_multi = self._bound is not None and self._bound.explicit_transaction
        if self.explicit_transaction or bound_multi:
            raise RedisError("Cannot issue a WATCH after a MULTI")
        return await self.execute_command("WATCH", *names)

    async def unwatch(self) -> Any:  # type: ignore[override]  # as redis-py's Pipeline
        """UNWATCH (only meaningful on a pipeline bound by WATCH)."""
        if not self.watching:
            return True
        return await self.execute_command("UNWATCH")

    def multi(self) -> None:
        """Start the transactional block (after WATCH, as in redis-py)."""
        self._multi()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run every queued command on one region; returns their replies in order."""
        if self._bound is not None:
            return await self._execute_bound(raise_on_error)
        queued = self._take(raise_on_error)
        if queued is None:
            return []
        result: list[Any] = await self._client._execute_pipeline(queued)
        return result

    async def _execute_bound(self, raise_on_error: bool) -> list[Any]:
        bound, index = self._bound, self._bound_index
        client: AsyncFailoverClient = self._client
        failover = client._failover
        await self._check_bound()
        watching = bool(bound.watching)
        timeout = failover.pipeline_read_timeout(
            bound.command_stack, bound.is_transaction or bound.explicit_transaction
        )
        start = time.perf_counter()
        try:
            result = await client._regions[index].run(bound, raise_on_error, timeout)
            return failover.pipeline_done(index, start, result)
        except ATTEMPT_ERRORS as exc:
            error = exc
        finally:
            await self._unbind()
        raise failover.bound_execute_error(index, watching, error, start)

    async def _unbind(self) -> None:
        bound, self._bound, self._bound_index = self._bound, None, -1
        if bound is not None:
            await bound.reset()

    async def reset(self) -> None:  # type: ignore[override]  # as redis-py's Pipeline
        """Drop queued commands and release a WATCH binding."""
        self.command_stack = []
        self.scripts = set()
        self.explicit_transaction = False
        await self._unbind()

    async def aclose(self) -> None:
        """Same as reset()."""
        await self.reset()


AsyncFailoverClient._PIPELINE = AsyncFailoverPipeline  # defined after the client
