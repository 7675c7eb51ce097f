"""The thread-safe synchronous failover client, a drop-in for ``redis.Redis``.

Every redis-py command method (``get``, ``set``, ``hset``, ``incr``...) comes from redis-py's
own command mixins and ends in :meth:`FailoverClient.execute_command`, which sends the
command to the active region through that region's redis-py connection pool. The single
command path is redis-py's own (``pool.get_connection`` / ``send_command`` /
``parse_response``) split in two so the client knows whether a failed command reached the
server: a failure while connecting or sending means it was never executed and may go to
another region whatever it is; a lost reply means it may have been executed, and only a
command of the policy's ``retry_commands`` is then sent elsewhere. What to do after a
failure is decided in :mod:`reconciler.client.core`, shared with the asyncio client.

Many threads share one instance: redis-py's pools are thread-safe, the router guards its
state with one lock, and a background thread probes the regions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import redis
from redis.commands import CoreCommands, RedisModuleCommands, SentinelCommands
from redis.commands.core import Script
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.lock import Lock
from redis.retry import Retry

from reconciler.client import core
from reconciler.client.base import ClientBase, PipelineBase, SendingBase
from reconciler.client.blocking import BLOCKING, FOREVER
from reconciler.client.core import ATTEMPT_ERRORS, NETWORK_ERRORS, NotSentError
from reconciler.client.errors import ClientClosedError
from reconciler.client.probing import PROBE_COMMANDS, admit, report_probe

__all__ = ["FailoverClient", "FailoverPipeline"]

log = logging.getLogger("reconciler.client")


class _Sending(SendingBase):
    """The sync shell's view of a connection (see SendingBase; :data:`FOREVER`: no timeout)."""

    __slots__ = ()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._conn.send_packed_command(command, check_health)
        self.sent = True  # a request written whole; one cut short never ran

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        if self._timeout is not None:
            kwargs.setdefault("timeout", None if self._timeout == FOREVER else self._timeout)
        return self._conn.read_response(disable_decoding, **kwargs)


class _Region:
    """One region's redis-py client (for commands) and a one-connection probe client."""

    def __init__(self, index: int, name: str, client: redis.Redis, probe: redis.Redis) -> None:
        self.index = index
        self.name = name
        # redis-py's connection-level API is untyped; Any keeps mypy strict elsewhere.
        self.redis: Any = client
        self.pool: Any = client.connection_pool
        self.probe: Any = probe

    def connect(self) -> Any:
        """A connection from the pool; a failure is NotSentError (nothing was sent)."""
        try:
            return self.pool.get_connection()
        except NETWORK_ERRORS as exc:
            raise NotSentError(exc) from exc

    def call(
        self, args: tuple[Any, ...], options: dict[str, Any], reply_timeout: float | None
    ) -> Any:
        """Run one command; a failure before the server could have it is NotSentError."""
        pool = self.pool
        conn = self.connect()
        try:
            try:
                conn.send_command(*args, **options)
            except NETWORK_ERRORS as exc:
                # redis-py disconnects on a send error. A single command is only executed
                # once complete, and a send that failed did not complete it.
                raise NotSentError(exc) from exc
            reader = conn if reply_timeout is None else _Sending(conn, reply_timeout)
            return self.redis.parse_response(reader, args[0], **options)
        except NETWORK_ERRORS:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def call_pipeline(self, queued: core.Queued) -> list[Any]:
        """Run a queued pipeline as one unit on a connection of its own."""
        pipe = self.redis.pipeline(transaction=queued.transaction)
        pipe.connection = self.connect()  # reset() hands it back to the pool
        pipe.command_stack = list(queued.stack)
        pipe.scripts = set(queued.scripts)
        try:
            return self.run(pipe, queued.raise_on_error, queued.reply_timeout)
        finally:
            pipe.reset()

    def run(self, pipe: Any, raise_on_error: bool, reply_timeout: float | None) -> list[Any]:
        """Execute what `pipe` holds on its connection, its scripts loaded first; a failure
        before the request was written whole is NotSentError."""
        conn = pipe.connection
        sending = _Sending(conn, reply_timeout)
        try:
            if pipe.scripts:
                pipe.load_scripts()
            transaction = pipe.transaction or pipe.explicit_transaction
            run = pipe._execute_transaction if transaction else pipe._execute_pipeline
            result: list[Any] = run(sending, pipe.command_stack, raise_on_error)
            return result
        except NETWORK_ERRORS as exc:
            conn.disconnect()
            if not sending.sent:
                raise NotSentError(exc) from exc
            raise

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
    """Probes the regions (with the router's schedule and backoff) until stopped."""

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
        replies, error = None, None
        try:
            replies = region.probe_replies()
        except (RedisError, OSError) as exc:
            error = exc
        finally:
            # Always report, or the region would wait for the router's in-flight timeout.
            report_probe(self._router, (region.index, region.name), self._access, replies, error)


class FailoverClient(ClientBase, RedisModuleCommands, CoreCommands, SentinelCommands):
    """A thread-safe ``redis.Redis`` that fails over between regions and back.

    ``FailoverClient(config)`` or ``FailoverClient.from_config_file("client.toml")``;
    extra keyword arguments go to every region's ``redis.Redis`` (``decode_responses``,
    ``protocol``, TLS options; see docs/client.md for the few that are refused). Use it
    as a context manager or call :meth:`close`.
    """

    _is_async_client: Literal[False] = False
    _SHELL = (redis.Redis, _Region, Retry)  # its redis-py client, region and retry classes

    def _start_shell(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()
        self._prober = _Prober(self)
        self._router.add_probe_wakeup(self._prober.wake)
        self._prober.start()
        self._stream: Any = None
        if self.config.kafka is not None:
            from reconciler.client.stream import StreamThread

            self._stream = StreamThread(self.config.kafka, self.instance_id, self._router)
            self._stream.start()

    def _connect_hook(
        self, index: int, app_hook: Callable[[Any], None] | None
    ) -> Callable[[Any], None]:
        """redis-py's ``redis_connect_func``: its handshake (or the application's hook),
        then the instance check, before the connection carries any command."""
        router, access = self._router, self._access
        name = self.config.regions[index].name

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

    # -- the command path -------------------------------------------------------------

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command to the active region; fail over and retry as the policy says."""
        if self._closed or args[0] in BLOCKING:
            return self._command(self._router.active, args, options, pinned=False)
        # The common case, without the general loop's closures: one region, one answer.
        index = self._router.active
        start = time.perf_counter()
        try:
            result = self._regions[index].call(args, options, None)
        except ATTEMPT_ERRORS as exc:
            error = exc
        else:
            self._router.record_ok(index, time.perf_counter() - start)
            return result
        return self._resume(index, (args, options), (error, start))

    def _resume(self, index: int, command: core.Command, failed: tuple[Any, float]) -> Any:
        """The rest of a command whose first attempt on region `index` failed."""
        plan = self._failover.plan(*command, pinned=False)
        index, attempt = self._failover.next(None, plan[2], index, *failed)
        return self._run(index, plan, attempt)

    def _command(
        self, index: int, args: tuple[Any, ...], options: dict[str, Any], *, pinned: bool
    ) -> Any:
        """One command from region `index` on (`pinned`: there only; see _RegionView)."""
        if self._closed:
            raise ClientClosedError
        return self._run(index, self._failover.plan(args, options, pinned=pinned))

    def _run(self, index: int, plan: core.Plan, attempt: core.Attempt | None = None) -> Any:
        """Run `call` of the plan on region `index`, then wherever the core sends it."""
        call, done, attempt_of = plan
        while True:
            start = time.perf_counter()
            try:
                result = call(self._regions[index])
            except ATTEMPT_ERRORS as exc:
                error = exc
            else:
                return done(index, start, result)
            index, attempt = self._failover.next(attempt, attempt_of, index, error, start)

    def _execute_pipeline(self, queued: core.Queued) -> list[Any]:
        """Run a queued pipeline on the active region as one unit."""
        if self._closed:
            raise ClientClosedError
        result: list[Any] = self._run(self._router.active, self._failover.pipeline_plan(queued))
        return result

    def _bind(self) -> tuple[Any, int]:
        """A connection of the active region for a WATCH (elsewhere if it cannot connect:
        nothing is watched yet)."""
        bound: tuple[Any, int] = self._run(self._router.active, self._failover.binding())
        return bound

    # -- pipelines, transactions, locks, pub/sub --------------------------------------

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> FailoverPipeline:
        """A pipeline whose commands go to one region together when executed."""
        pipe: FailoverPipeline = self._pipeline(transaction, shard_hint)
        return pipe

    def transaction(
        self,
        func: Callable[[FailoverPipeline], Any],
        *watches: Any,
        shard_hint: Any = None,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """redis-py's optimistic transaction helper: WATCH, call `func`, EXEC; repeat on a
        concurrent change, or when the region failed while watching (the next round runs
        on the region active then)."""
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

    _LOCK = Lock
    _SCRIPT = Script

    def _view(self, index: int) -> _RegionView:
        return _RegionView(self, index)

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


class _RegionView(RedisModuleCommands, CoreCommands, SentinelCommands):
    """The client's commands on one region, never failing over: what a lock is bound to
    (its token exists in one Redis). Outcomes still count for the region's health."""

    _is_async_client: Literal[False] = False
    _event_dispatcher: Any = None

    def __init__(self, client: FailoverClient, index: int) -> None:
        self._client = client
        self._index = index

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run on this view's region; its errors are redis-py's own."""
        return self._client._command(self._index, args, options, pinned=True)

    def get_encoder(self) -> Any:
        """The client's encoder."""
        return self._client.get_encoder()

    def register_script(self, script: Any) -> Script:
        """A ``Script`` whose commands run on this region."""
        return Script(self, script)  # type: ignore[arg-type]  # duck-typed as redis-py's


class FailoverPipeline(PipelineBase, RedisModuleCommands, CoreCommands, SentinelCommands):
    """Commands queued here run on one region together at :meth:`execute`.

    If the region fails before the pipeline reached it, the whole pipeline goes to the
    next region. If it was sent and the reply was lost, it is resent elsewhere only when
    every command in it is in ``retry_commands``; otherwise
    :class:`CommandOutcomeUnknownError` is raised. Scripts it runs are loaded first on the
    region it runs on. ``watch()`` binds the pipeline to the region active at that moment
    (an optimistic lock only means something on one server): see docs/client.md for what
    a failover during a WATCH transaction does.
    """

    _is_async_client: Literal[False] = False

    def __init__(self, client: FailoverClient, transaction: bool, shard_hint: Any) -> None:
        self._init_queue(client, transaction, shard_hint)

    def __enter__(self) -> FailoverPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reset()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue a command (or, on a pipeline bound by WATCH, do what redis-py does)."""
        if self._bound is None:
            if not self._binds(args):
                return self._queue(args, options)
            self._bind()
        if not self._immediate(args):
            self._bound.pipeline_execute_command(*args, **options)
            return self
        return self._now(args, options)

    def _bind(self) -> None:
        client: FailoverClient = self._client
        conn, index = client._bind()
        bound = client._regions[index].redis.pipeline(self.transaction, self.shard_hint)
        bound.connection = conn  # reset() hands it back to the pool
        self._bound_to(bound, index)

    def _now(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """A command of a WATCH transaction before MULTI, on its region's connection."""
        bound, index = self._bound, self._bound_index
        failover = self._client._failover
        self._check_bound()
        start = time.perf_counter()
        try:
            result = bound.immediate_execute_command(*args, **options)
        except (RedisError, OSError) as exc:
            failover.bound_failed(index, exc, time.perf_counter() - start)
            if not bound.watching:
                self._unbind()
            raise
        return failover.ok(index, start, result)

    def _check_bound(self) -> None:
        lost = self._client._failover.lost_watch(self._bound_index)
        if lost is not None and self._bound.watching:
            self._unbind()
            raise lost

    def watch(self, *names: Any) -> Any:
        """WATCH keys: binds the pipeline to the active region (see the class doc)."""
        bound_multi = self._bound is not None and self._bound.explicit_transaction
        if self.explicit_transaction or bound_multi:
            raise RedisError("Cannot issue a WATCH after a MULTI")
        return self.execute_command("WATCH", *names)

    def unwatch(self) -> Any:
        """UNWATCH (only meaningful on a pipeline bound by WATCH)."""
        if not self.watching:
            return True
        return self.execute_command("UNWATCH")

    def multi(self) -> None:
        """Start the transactional block (after WATCH, as in redis-py)."""
        self._multi()

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run every queued command on one region; returns their replies in order."""
        if self._bound is not None:
            return self._execute_bound(raise_on_error)
        queued = self._take(raise_on_error)
        if queued is None:
            return []
        result: list[Any] = self._client._execute_pipeline(queued)
        return result

    def _execute_bound(self, raise_on_error: bool) -> list[Any]:
        bound, index = self._bound, self._bound_index
        client: FailoverClient = self._client
        failover = client._failover
        self._check_bound()
        watching = bool(bound.watching)
        timeout = failover.pipeline_read_timeout(
            bound.command_stack, bound.transaction or bound.explicit_transaction
        )
        start = time.perf_counter()
        try:
            result = client._regions[index].run(bound, raise_on_error, timeout)
            return failover.pipeline_done(index, start, result)
        except ATTEMPT_ERRORS as exc:
            error = exc
        finally:
            self._unbind()
        raise failover.bound_execute_error(index, watching, error, start)

    def _unbind(self) -> None:
        bound, self._bound, self._bound_index = self._bound, None, -1
        if bound is not None:
            bound.reset()

    def reset(self) -> None:  # type: ignore[override]  # as redis-py's Pipeline.reset
        """Drop queued commands and release a WATCH binding."""
        self.command_stack = []
        self.scripts = set()
        self.explicit_transaction = False
        self._unbind()

    def close(self) -> None:
        """Same as reset()."""
        self.reset()


FailoverClient._PIPELINE = FailoverPipeline  # defined after the client it belongs to
