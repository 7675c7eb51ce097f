"""The thread-safe synchronous failover client, a drop-in for ``redis.Redis``.

Every redis-py command method (``get``, ``set``, ``hset``, ``incr``...) comes from redis-py's
own command mixins and ends in :meth:`FailoverClient.execute_command`, which sends the
command to the active region through that region's redis-py connection pool. The single
command path is redis-py's own (``pool.get_connection`` / ``send_command`` /
``parse_response``) split in two so the client knows whether a failed command reached the
server: a failure while connecting or sending means it was never executed and may go to
another region whatever it is; a lost reply means it may have been executed, and only a
command of the policy's ``retry_commands`` is then sent elsewhere.

Many threads share one instance: redis-py's pools are thread-safe, the router guards its
state with one lock, and a background thread probes failed regions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import redis
from redis.client import PubSub
from redis.commands import CoreCommands, RedisModuleCommands, SentinelCommands
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

__all__ = ["FailoverClient", "FailoverPipeline"]

log = logging.getLogger("reconciler.client")

_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

Command = tuple[tuple[Any, ...], dict[str, Any]]


class _NotSentError(Exception):
    """Internal: the command never reached the server (carries the real error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Region:
    """One region's redis-py client (for commands) and a one-connection probe client."""

    def __init__(
        self,
        index: int,
        name: str,
        redis_client: redis.Redis,
        probe_client: redis.Redis,
    ) -> None:
        self.index = index
        self.name = name
        # redis-py's connection-level API is untyped; Any keeps mypy strict elsewhere.
        self.redis: Any = redis_client
        self.pool: Any = redis_client.connection_pool
        self.probe: Any = probe_client

    def call(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """Run one command; a failure before the server could have it is _NotSentError."""
        pool = self.pool
        try:
            conn = pool.get_connection()
        except _NETWORK_ERRORS as exc:
            raise _NotSentError(exc) from exc
        try:
            try:
                conn.send_command(*args, **options)
            except _NETWORK_ERRORS as exc:
                # redis-py disconnects on a send error. A single command is only executed
                # once complete, and a send that failed did not complete it.
                raise _NotSentError(exc) from exc
            return self.redis.parse_response(conn, args[0], **options)
        except _NETWORK_ERRORS:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def call_pipeline(
        self, stack: Sequence[Command], transaction: bool, raise_on_error: bool
    ) -> list[Any]:
        """Run a pipeline as one unit; a failure to connect is _NotSentError."""
        pool = self.pool
        try:
            conn = pool.get_connection()
        except _NETWORK_ERRORS as exc:
            raise _NotSentError(exc) from exc
        pipe = self.redis.pipeline(transaction=transaction)
        pipe.connection = conn  # reset() hands it back to the pool
        try:
            for args, options in stack:
                pipe.pipeline_execute_command(*args, **options)
            result: list[Any] = pipe.execute(raise_on_error=raise_on_error)
            return result
        finally:
            pipe.reset()

    def probe_replies(self) -> list[Any]:
        """The replies to PROBE_COMMANDS, read in one MULTI on the probe connection."""
        with self.probe.pipeline(transaction=True) as pipe:
            for args in PROBE_COMMANDS:
                pipe.execute_command(*args)
            replies: list[Any] = pipe.execute()
            return replies

    def close(self) -> None:
        self.redis.close()
        self.probe.close()


class _Prober(threading.Thread):
    """Probes failed regions (with the router's schedule and backoff) until stopped."""

    def __init__(self, client: FailoverClient) -> None:
        super().__init__(name=f"rr-probe {client.instance_id}", daemon=True)
        self._router = client._router
        self._regions = client._regions
        self._access = client._access
        self._cond = threading.Condition()
        self._kicked = False
        self._stopping = False

    def wake(self) -> None:
        """A region just failed: look at the schedule now."""
        with self._cond:
            self._kicked = True
            self._cond.notify()

    def stop(self) -> None:
        """Stop and wait for the thread (a probe in flight ends within its timeouts)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive():
            self.join(timeout=30)

    def run(self) -> None:
        while True:
            due, wait_s = self._router.probes_due()
            for index in due:
                if self._stopping:
                    return
                self._probe(self._regions[index])
            with self._cond:
                if self._stopping:
                    return
                if due:
                    continue
                if not self._kicked:
                    self._cond.wait(timeout=wait_s)
                self._kicked = False

    def _probe(self, region: _Region) -> None:
        outcome = ProbeOutcome(False, None, "probe interrupted")
        try:
            outcome = outcome_of_replies(region.probe_replies())
        except (RedisError, OSError) as exc:
            outcome = outcome_of_error(exc, region.name, self._access)
        finally:
            # Always report, or the region would wait for the router's in-flight timeout.
            self._router.probe_result(
                region.index, ok=outcome.ok, reading=outcome.reading, detail=outcome.detail
            )


class FailoverClient(RedisModuleCommands, CoreCommands, SentinelCommands):
    """A thread-safe ``redis.Redis`` that fails over between regions and back.

    ``FailoverClient(config)`` or ``FailoverClient.from_config_file("client.toml")``;
    extra keyword arguments go to every region's ``redis.Redis`` (``decode_responses``,
    ``protocol``, TLS options). Use it as a context manager or call :meth:`close`.
    """

    _is_async_client: Literal[False] = False
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
        self._closed = False
        self._close_lock = threading.Lock()
        app_hook = redis_kwargs.pop("redis_connect_func", None)
        for index, region in enumerate(config.regions):
            kwargs = region_kwargs(region, policy, self.instance_id, redis_kwargs)
            kwargs["redis_connect_func"] = self._connect_hook(index, region.name, app_hook)
            probe = region_kwargs(region, policy, self.instance_id, redis_kwargs, probe=True)
            self._regions.append(
                _Region(
                    index,
                    region.name,
                    redis.Redis.from_url(region.url, **kwargs),
                    redis.Redis.from_url(status_url(region.url, policy.status_db), **probe),
                )
            )
        self.metrics = ClientMetrics(self.instance_id, self._router, metrics_registry)
        self._prober = _Prober(self)
        self._router.add_probe_wakeup(self._prober.wake)
        self._prober.start()
        self._stream: Any = None
        if config.kafka is not None:
            from reconciler.client.stream import StreamThread

            self._stream = StreamThread(config.kafka, self.instance_id, self._router)
            self._stream.start()

    def _connect_hook(
        self, index: int, name: str, app_hook: Callable[[Any], None] | None
    ) -> Callable[[Any], None]:
        """redis-py's ``redis_connect_func``: its handshake (or the application's hook),
        then the instance check, before the connection carries any command."""
        router, access = self._router, self._access

        def on_connect(conn: Any) -> None:
            if app_hook is None:
                conn.on_connect()
            else:
                app_hook(conn)
            conn.send_command("INFO", "server")
            try:
                info: object = conn.read_response()
            except ResponseError as exc:
                info = exc
            admit(router, index, name, info, access)

        return on_connect

    @classmethod
    def from_config_file(cls, path: str | Path, **kwargs: Any) -> FailoverClient:
        """A client configured by a TOML file (see ``configs/client.example.toml``)."""
        return cls(load_client_config(path), **kwargs)

    def __repr__(self) -> str:
        return f"<FailoverClient {self.instance_id} active={self.active_region}>"

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
        """Expose Prometheus metrics over HTTP; returns the port. Stopped by close()."""
        return self.metrics.serve(port, addr)

    def get_encoder(self) -> Any:
        """The encoder of the regions' connections (redis-py's command helpers use it)."""
        return self._regions[0].redis.get_encoder()

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The home region's connection settings (as redis-py's helpers expect)."""
        kwargs: dict[str, Any] = self._regions[0].redis.get_connection_kwargs()
        return kwargs

    # -- the command path -------------------------------------------------------------

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command to the active region; fail over and retry as the policy says."""
        if self._closed:
            raise ClientClosedError
        index = self._router.active
        start = time.perf_counter()
        try:
            result = self._regions[index].call(args, options)
        except (_NotSentError, RedisError, OSError) as exc:
            return self._after_error(index, args, options, exc, start)
        self._router.record_ok(index, time.perf_counter() - start)
        return result

    def _after_error(
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
                result = self._regions[index].call(args, options)
            except (_NotSentError, RedisError, OSError) as again:
                exc = again
                continue
            router.record_ok(index, time.perf_counter() - start)
            return result

    def _execute_pipeline(
        self, stack: Sequence[Command], transaction: bool, raise_on_error: bool
    ) -> list[Any]:
        """Run a queued pipeline on the active region as one unit (see FailoverPipeline)."""
        if self._closed:
            raise ClientClosedError
        router = self._router
        commands = [args for args, _ in stack]
        name = "MULTI" if transaction else "PIPELINE"
        idempotent = self._retry.allows_all(commands)
        index = router.active
        tried = [index]
        failures: list[str] = []
        while True:
            start = time.perf_counter()
            try:
                result = self._regions[index].call_pipeline(stack, transaction, raise_on_error)
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
                # raise_on_error=False hands refusals back in the results; the application
                # sees them as redis-py would show them, and the region's health counts them.
                router.record_failure(index, elapsed, f"in pipeline: {refused}")
            else:
                router.record_ok(index, elapsed)
            return result

    # -- pipelines, transactions, pub/sub ---------------------------------------------

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> FailoverPipeline:
        """A pipeline whose commands go to one region together when executed."""
        return FailoverPipeline(self, transaction, shard_hint)

    def transaction(
        self,
        func: Callable[[FailoverPipeline], Any],
        *watches: Any,
        shard_hint: Any = None,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """redis-py's optimistic transaction helper: WATCH, call `func`, EXEC; repeat on
        a concurrent change. The whole transaction runs on one region."""
        with self.pipeline(True, shard_hint) as pipe:
            while True:
                try:
                    if watches:
                        pipe.watch(*watches)
                    func_value = func(pipe)
                    exec_value = pipe.execute()
                    return func_value if value_from_callable else exec_value
                except WatchError:
                    if watch_delay is not None and watch_delay > 0:
                        time.sleep(watch_delay)
                    continue

    def pubsub(self, **kwargs: Any) -> PubSub:
        """A redis-py PubSub on the region active now (subscriptions do not fail over)."""
        pubsub: PubSub = self._regions[self._router.active].redis.pubsub(**kwargs)
        return pubsub

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Stop probing and streaming, close every connection. Safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._prober.stop()
        if self._stream is not None:
            self._stream.stop()
        self.metrics.close()
        for region in self._regions:
            region.close()

    def __enter__(self) -> FailoverClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FailoverPipeline(RedisModuleCommands, CoreCommands, SentinelCommands):
    """Commands queued here run on one region together at :meth:`execute`.

    If the region fails before the pipeline reached it, the whole pipeline goes to the
    next region. If it was sent and the reply was lost, it is resent elsewhere only when
    every command in it is in ``retry_commands``; otherwise
    :class:`CommandOutcomeUnknownError` is raised. Once :meth:`watch` is called the
    pipeline is bound to the region active at that moment (an optimistic lock only means
    something on one server) and behaves exactly as a redis-py pipeline there.
    """

    _is_async_client: Literal[False] = False
    _event_dispatcher: Any = None  # declared by redis-py's command protocol, unused here

    def __init__(self, client: FailoverClient, transaction: bool, shard_hint: Any) -> None:
        self._client = client
        self.transaction = transaction
        self.shard_hint = shard_hint
        self.command_stack: list[Command] = []
        self._bound: Any = None  # a redis-py Pipeline once WATCH binds it (untyped API)
        self._bound_index = -1

    def __enter__(self) -> FailoverPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reset()

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
        """Queue a command (or, on a pipeline bound by WATCH, do what redis-py does)."""
        if self._bound is None and command_name(args) == "WATCH":
            self._bind()
        if self._bound is not None:
            return self._bound.execute_command(*args, **options)
        self.command_stack.append((args, options))
        return self

    def _bind(self) -> None:
        client = self._client
        index = client._router.active
        bound = client._regions[index].redis.pipeline(self.transaction, self.shard_hint)
        for args, options in self.command_stack:
            bound.pipeline_execute_command(*args, **options)
        self.command_stack = []
        self._bound, self._bound_index = bound, index

    def watch(self, *names: Any) -> Any:
        """WATCH keys: binds the pipeline to the active region (see the class doc)."""
        return self.execute_command("WATCH", *names)

    def unwatch(self) -> Any:
        """UNWATCH (only meaningful on a pipeline bound by WATCH)."""
        if self._bound is None:
            return True
        return self._bound.unwatch()

    def multi(self) -> None:
        """Start the transactional block after WATCH, as in redis-py."""
        if self._bound is None:
            self._bind()
        assert self._bound is not None
        self._bound.multi()

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run every queued command on one region; returns their replies in order."""
        if self._bound is not None:
            return self._execute_bound(raise_on_error)
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return []
        return self._client._execute_pipeline(stack, self.transaction, raise_on_error)

    def _execute_bound(self, raise_on_error: bool) -> list[Any]:
        bound, index = self._bound, self._bound_index
        assert bound is not None
        router = self._client._router
        start = time.perf_counter()
        try:
            result: list[Any] = bound.execute(raise_on_error=raise_on_error)
        except (RedisError, OSError) as exc:
            elapsed = time.perf_counter() - start
            kind = classify(exc, sent=True, command="EXEC")
            if kind.is_failure:
                router.record_failure(index, elapsed, f"{type(exc).__name__}: {exc}")
            elif kind is ErrorKind.APPLICATION:
                router.record_app_error(index, elapsed)
            raise
        finally:
            self._unbind()
        router.record_ok(index, time.perf_counter() - start)
        return result

    def _unbind(self) -> None:
        bound, self._bound, self._bound_index = self._bound, None, -1
        if bound is not None:
            bound.reset()

    def reset(self) -> None:  # type: ignore[override]  # as redis-py's Pipeline.reset
        """Drop queued commands and release a WATCH binding."""
        self.command_stack = []
        self._unbind()

    def close(self) -> None:
        """Same as reset()."""
        self.reset()
