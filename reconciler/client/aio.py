"""The asyncio failover client, a drop-in for ``redis.asyncio.Redis``.

Same behaviour as :mod:`reconciler.client.sync` (same router, same error classification,
same retry rule); the I/O is redis-py's asyncio client, probes run as one task on the
client's event loop, and the optional Kafka stream is another task there. Both tasks start
with the first command (or ``async with`` / ``await client.initialize()``) and are cancelled
and awaited by :meth:`AsyncFailoverClient.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands import AsyncCoreCommands, AsyncRedisModuleCommands, AsyncSentinelCommands
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reconciler.client.config import ClientConfig, load_client_config
from reconciler.client.connections import new_client_id, region_kwargs, status_url
from reconciler.client.errors import (
    ClientClosedError,
    CommandOutcomeUnknownError,
    NoHealthyRegionError,
)
from reconciler.client.health import (
    ErrorKind,
    RetryPolicy,
    classify,
    command_name,
    failure_code,
)
from reconciler.client.metrics import ClientMetrics
from reconciler.client.probing import (
    PROBE_COMMANDS,
    Access,
    ProbeOutcome,
    admit,
    outcome_of_error,
    outcome_of_replies,
)
from reconciler.client.router import Router

__all__ = ["AsyncFailoverClient", "AsyncFailoverPipeline"]

_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_STREAM_STOP_S = 15.0

Command = tuple[tuple[Any, ...], dict[str, Any]]


class _NotSentError(Exception):
    """Internal: the command never reached the server (carries the real error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


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

    async def call(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """Run one command; a failure before the server could have it is _NotSentError."""
        pool = self.pool
        try:
            conn = await pool.get_connection()
        except _NETWORK_ERRORS as exc:
            raise _NotSentError(exc) from exc
        try:
            try:
                await conn.send_command(*args, **options)
            except _NETWORK_ERRORS as exc:
                # redis-py disconnects on a send error; an incomplete command never runs.
                raise _NotSentError(exc) from exc
            return await self.redis.parse_response(conn, args[0], **options)
        except _NETWORK_ERRORS:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def call_pipeline(
        self, stack: Sequence[Command], transaction: bool, raise_on_error: bool
    ) -> list[Any]:
        """Run a pipeline as one unit; a failure to connect is _NotSentError."""
        pool = self.pool
        try:
            conn = await pool.get_connection()
        except _NETWORK_ERRORS as exc:
            raise _NotSentError(exc) from exc
        pipe = self.redis.pipeline(transaction=transaction)
        pipe.connection = conn  # reset() hands it back to the pool
        try:
            for args, options in stack:
                pipe.pipeline_execute_command(*args, **options)
            result: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
            return result
        finally:
            await pipe.reset()

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
    AsyncRedisModuleCommands, AsyncCoreCommands, AsyncSentinelCommands
):
    """A ``redis.asyncio.Redis`` that fails over between regions and back.

    ``AsyncFailoverClient(config)`` or ``AsyncFailoverClient.from_config_file(path)``;
    extra keyword arguments go to every region's ``redis.asyncio.Redis``. Use
    ``async with`` or call :meth:`aclose`. One instance belongs to one event loop.
    """

    _is_async_client: Literal[True] = True
    _event_dispatcher: Any = None  # declared by redis-py's command protocol, unused here

    def __init__(
        self,
        config: ClientConfig,
        *,
        client_id: str | None = None,
        metrics_registry: Any = None,
        **redis_kwargs: Any,
    ) -> None:
        self.config = config
        self.instance_id = client_id or new_client_id(config.client_name)
        policy = config.policy
        self._router = Router([region.name for region in config.regions], policy)
        self._retry = RetryPolicy(policy.retry_commands)
        self._regions: list[_Region] = []
        self._access = Access()
        app_hook = redis_kwargs.pop("redis_connect_func", None)
        for index, region in enumerate(config.regions):
            kwargs = region_kwargs(region, policy, self.instance_id, redis_kwargs)
            kwargs["redis_connect_func"] = self._connect_hook(index, region.name, app_hook)
            probe = region_kwargs(region, policy, self.instance_id, redis_kwargs, probe=True)
            self._regions.append(
                _Region(
                    index,
                    region.name,
                    aioredis.Redis.from_url(region.url, **kwargs),
                    aioredis.Redis.from_url(status_url(region.url, policy.status_db), **probe),
                )
            )
        self.metrics = ClientMetrics(self.instance_id, self._router, metrics_registry)
        self._started = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._streamer: Any = None
        self._router.add_probe_wakeup(self._poke_prober)
        if config.kafka is not None:
            from reconciler.client.stream import MetricsStreamer

            self._streamer = MetricsStreamer(config.kafka, self.instance_id, self._router)

    def _connect_hook(
        self, index: int, name: str, app_hook: Callable[[Any], Any] | None
    ) -> Callable[[Any], Awaitable[None]]:
        """redis-py's ``redis_connect_func``: its handshake (or the application's hook),
        then the instance check, before the connection carries any command."""
        router, access = self._router, self._access

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

    @classmethod
    def from_config_file(cls, path: str | Path, **kwargs: Any) -> AsyncFailoverClient:
        """A client configured by a TOML file (see ``configs/client.example.toml``)."""
        return cls(load_client_config(path), **kwargs)

    def __repr__(self) -> str:
        return f"<AsyncFailoverClient {self.instance_id} active={self.active_region}>"

    # -- what the application sees ----------------------------------------------------

    @property
    def active_region(self) -> str:
        """The region that receives new commands now."""
        return self._router.active_name

    @property
    def router(self) -> Router:
        """The failover state (snapshot(), add_listener()) for monitoring and tests."""
        return self._router

    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Expose Prometheus metrics over HTTP; returns the port. Stopped by aclose()."""
        return self.metrics.serve(port, addr)

    def get_encoder(self) -> Any:
        """The encoder of the regions' connections (redis-py's command helpers use it)."""
        return self._regions[0].redis.get_encoder()

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The home region's connection settings (as redis-py's helpers expect)."""
        kwargs: dict[str, Any] = self._regions[0].redis.get_connection_kwargs()
        return kwargs

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
        outcome = ProbeOutcome(False, None, "probe interrupted")
        try:
            outcome = outcome_of_replies(await region.probe_replies())
        except (RedisError, OSError) as exc:
            outcome = outcome_of_error(exc, region.name, self._access)
        finally:
            self._router.probe_result(
                region.index, ok=outcome.ok, reading=outcome.reading, detail=outcome.detail
            )

    # -- the command path -------------------------------------------------------------

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command to the active region; fail over and retry as the policy says."""
        if not self._started:
            self._start()
        if self._closed:
            raise ClientClosedError
        index = self._router.active
        start = time.perf_counter()
        try:
            result = await self._regions[index].call(args, options)
        except (_NotSentError, RedisError, OSError) as exc:
            return await self._after_error(index, args, options, exc, start)
        self._router.record_ok(index, time.perf_counter() - start)
        return result

    async def _after_error(
        self,
        index: int,
        args: tuple[Any, ...],
        options: dict[str, Any],
        exc: BaseException,
        start: float,
    ) -> Any:
        """Account for a failed attempt, then retry elsewhere or raise."""
        router = self._router
        name = command_name(args)
        tried = [index]
        failures: list[str] = []
        while True:
            elapsed = time.perf_counter() - start
            cause = exc.cause if isinstance(exc, _NotSentError) else exc
            kind = classify(cause, sent=not isinstance(exc, _NotSentError), command=name)
            if kind is ErrorKind.APPLICATION:
                router.record_app_error(index, elapsed)
                raise cause
            if kind is ErrorKind.LOCAL:
                raise cause
            region = self._regions[index].name
            detail = f"{kind.value} {type(cause).__name__}: {cause}"
            router.record_failure(index, elapsed, detail)
            failures.append(f"{region}: {detail}")
            if kind is ErrorKind.UNKNOWN and not self._retry.allows(args):
                raise CommandOutcomeUnknownError(name, region, cause) from cause
            following = router.next_region(tried)
            if following is None:
                if len(tried) == 1:
                    raise cause
                raise NoHealthyRegionError(name, failures) from cause
            index = following
            tried.append(index)
            start = time.perf_counter()
            try:
                result = await self._regions[index].call(args, options)
            except (_NotSentError, RedisError, OSError) as again:
                exc = again
                continue
            router.record_ok(index, time.perf_counter() - start)
            return result

    async def _execute_pipeline(
        self, stack: Sequence[Command], transaction: bool, raise_on_error: bool
    ) -> list[Any]:
        """Run a queued pipeline on the active region as one unit."""
        if not self._started:
            self._start()
        if self._closed:
            raise ClientClosedError
        router = self._router
        name = "MULTI" if transaction else "PIPELINE"
        idempotent = self._retry.allows_all(args for args, _ in stack)
        index = router.active
        tried = [index]
        failures: list[str] = []
        while True:
            start = time.perf_counter()
            try:
                result = await self._regions[index].call_pipeline(
                    stack, transaction, raise_on_error
                )
            except (_NotSentError, RedisError, OSError) as exc:
                elapsed = time.perf_counter() - start
                not_sent = isinstance(exc, _NotSentError)
                cause = exc.cause if isinstance(exc, _NotSentError) else exc
                kind = classify(cause, sent=not not_sent, command=name)
                if kind is ErrorKind.APPLICATION:
                    router.record_app_error(index, elapsed)
                    raise cause from None
                if kind is ErrorKind.LOCAL:
                    raise cause from None
                region = self._regions[index].name
                detail = f"{kind.value} {type(cause).__name__}: {cause}"
                router.record_failure(index, elapsed, detail)
                failures.append(f"{region}: {detail}")
                # Part of a sent pipeline may have run even when one command was refused.
                if not not_sent and not idempotent:
                    raise CommandOutcomeUnknownError(name, region, cause) from cause
                following = router.next_region(tried)
                if following is None:
                    if len(tried) == 1:
                        raise cause from None
                    raise NoHealthyRegionError(name, failures) from cause
                index = following
                tried.append(index)
                continue
            elapsed = time.perf_counter() - start
            refused = next(
                (r for r in result if isinstance(r, Exception) and failure_code(r)), None
            )
            if refused is not None:
                router.record_failure(index, elapsed, f"in pipeline: {refused}")
            else:
                router.record_ok(index, elapsed)
            return result

    # -- pipelines, transactions, pub/sub ---------------------------------------------

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> AsyncFailoverPipeline:
        """A pipeline whose commands go to one region together when executed."""
        return AsyncFailoverPipeline(self, transaction, shard_hint)

    async def transaction(
        self,
        func: Callable[[AsyncFailoverPipeline], Any | Awaitable[Any]],
        *watches: Any,
        shard_hint: Any = None,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """redis-py's optimistic transaction helper; the transaction runs on one region."""
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

    def pubsub(self, **kwargs: Any) -> PubSub:
        """A redis-py PubSub on the region active now (subscriptions do not fail over)."""
        pubsub: PubSub = self._regions[self._router.active].redis.pubsub(**kwargs)
        return pubsub


class AsyncFailoverPipeline(  # type: ignore[misc]  # see AsyncFailoverClient
    AsyncRedisModuleCommands, AsyncCoreCommands, AsyncSentinelCommands
):
    """The asyncio twin of :class:`reconciler.client.sync.FailoverPipeline`.

    Commands are queued (``pipe.set(...)`` returns the pipeline, so calls chain) and run on
    one region at ``await pipe.execute()``; after ``await pipe.watch(...)`` the pipeline is
    bound to the region active then and behaves as a redis-py pipeline there.
    """

    _is_async_client: Literal[True] = True
    _event_dispatcher: Any = None  # declared by redis-py's command protocol, unused here

    def __init__(self, client: AsyncFailoverClient, transaction: bool, shard_hint: Any) -> None:
        self._client = client
        self.transaction = transaction
        self.shard_hint = shard_hint
        self.command_stack: list[Command] = []
        self._bound: Any = None  # a redis-py Pipeline once WATCH binds it (untyped API)
        self._bound_index = -1

    async def __aenter__(self) -> AsyncFailoverPipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.reset()

    def __await__(self) -> Generator[Any, None, AsyncFailoverPipeline]:
        return self._self().__await__()

    async def _self(self) -> AsyncFailoverPipeline:
        return self

    def __len__(self) -> int:
        return len(self.command_stack) if self._bound is None else len(self._bound)

    def __bool__(self) -> bool:
        return True

    def get_encoder(self) -> Any:
        """The client's encoder (redis-py's command helpers use it)."""
        return self._client.get_encoder()

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The client's connection settings (redis-py's command helpers use them)."""
        return self._client.get_connection_kwargs()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue a command (or, bound by WATCH, do what a redis-py pipeline does)."""
        if self._bound is not None:
            return self._bound.execute_command(*args, **options)
        self.command_stack.append((args, options))
        return self

    def _bind(self) -> Any:
        client = self._client
        index = client._router.active
        bound = client._regions[index].redis.pipeline(self.transaction, self.shard_hint)
        for args, options in self.command_stack:
            bound.pipeline_execute_command(*args, **options)
        self.command_stack = []
        self._bound, self._bound_index = bound, index
        return bound

    async def watch(self, *names: Any) -> Any:  # type: ignore[override]  # as redis-py's
        """WATCH keys: binds the pipeline to the active region."""
        bound = self._bound if self._bound is not None else self._bind()
        return await bound.watch(*names)

    async def unwatch(self) -> Any:  # type: ignore[override]  # as redis-py's Pipeline
        """UNWATCH (only meaningful on a pipeline bound by WATCH)."""
        if self._bound is None:
            return True
        return await self._bound.unwatch()

    def multi(self) -> None:
        """Start the transactional block after WATCH, as in redis-py."""
        bound = self._bound if self._bound is not None else self._bind()
        bound.multi()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run every queued command on one region; returns their replies in order."""
        if self._bound is not None:
            return await self._execute_bound(raise_on_error)
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return []
        return await self._client._execute_pipeline(stack, self.transaction, raise_on_error)

    async def _execute_bound(self, raise_on_error: bool) -> list[Any]:
        bound, index = self._bound, self._bound_index
        assert bound is not None
        router = self._client._router
        start = time.perf_counter()
        try:
            result: list[Any] = await bound.execute(raise_on_error=raise_on_error)
        except (RedisError, OSError) as exc:
            elapsed = time.perf_counter() - start
            kind = classify(exc, sent=True, command="EXEC")
            if kind.is_failure:
                router.record_failure(index, elapsed, f"{type(exc).__name__}: {exc}")
            elif kind is ErrorKind.APPLICATION:
                router.record_app_error(index, elapsed)
            raise
        finally:
            await self._unbind()
        router.record_ok(index, time.perf_counter() - start)
        return result

    async def _unbind(self) -> None:
        bound, self._bound, self._bound_index = self._bound, None, -1
        if bound is not None:
            await bound.reset()

    async def reset(self) -> None:  # type: ignore[override]  # as redis-py's Pipeline
        """Drop queued commands and release a WATCH binding."""
        self.command_stack = []
        await self._unbind()

    async def aclose(self) -> None:
        """Same as reset()."""
        await self.reset()
