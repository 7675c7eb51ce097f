"""What the sync and asyncio clients (and their pipelines) hold and answer the same way.

No I/O here: the shells (:mod:`reconciler.client.sync`, :mod:`reconciler.client.aio`) add
the region objects that talk to Redis, the prober, and the methods that must be awaited.
Everything else a redis-py application touches on a client (its settings, encoders,
response callbacks, scripts, the refusals with their reasons) is written once below.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from reconciler.client.config import ClientConfig, load_client_config
from reconciler.client.connections import (
    ClientOptions,
    client_options,
    new_client_id,
    region_kwargs,
    status_url,
)
from reconciler.client.core import Command, Failover, Queued
from reconciler.client.health import RetryPolicy, command_name
from reconciler.client.metrics import ClientMetrics
from reconciler.client.probing import Access
from reconciler.client.router import Router
from reconciler.configfile import ConfigError

__all__ = ["ClientBase", "PipelineBase", "ScriptRegistry", "SendingBase", "refuse"]

_C = TypeVar("_C", bound="ClientBase")

# Scripts are registered by application code, rarely more than a few dozen; the bound
# keeps a program that registers scripts in a loop from growing without limit.
_MAX_SCRIPTS = 4096


def _require_aiokafka() -> None:
    """A [kafka] table streams through aiokafka, the client's optional extra."""
    try:
        import aiokafka  # noqa: F401  # only to know it is there; the stream imports it
    except ImportError as exc:
        raise ConfigError(
            "[kafka] streams the client's metrics through aiokafka, which is not installed: "
            "install the client's Kafka extra (pip install 'redis-reconciler[client-kafka]') "
            "or remove the [kafka] table"
        ) from exc


def refuse(method: str, why: str) -> ConfigError:
    """The error for a redis-py method or option the failover client does not offer."""
    return ConfigError(f"{method} is not available on the failover client: {why}")


class _RegionLike(Protocol):
    index: int
    name: str
    redis: Any
    pool: Any


class _Script(Protocol):
    sha: str


class ScriptRegistry:
    """Scripts registered through the client, by SHA1, so that a pipeline that runs them
    can load them first on whichever region it runs (a failover lands exactly on the region
    that has not loaded them)."""

    __slots__ = ("_scripts",)

    def __init__(self) -> None:
        self._scripts: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def add(self, script: _Script) -> None:
        """Remember `script` (the oldest is forgotten beyond the bound)."""
        self._scripts[script.sha] = script
        self._scripts.move_to_end(script.sha)
        while len(self._scripts) > _MAX_SCRIPTS:
            self._scripts.popitem(last=False)

    def used_by(self, args: tuple[Any, ...]) -> Any:
        """The registered script an ``EVALSHA`` runs, or None."""
        if len(args) < 2 or command_name(args) not in ("EVALSHA", "EVALSHA_RO"):
            return None
        sha = args[1]
        text = sha.decode("ascii", "replace") if isinstance(sha, bytes) else str(sha)
        return self._scripts.get(text.lower())


class SendingBase:
    """A redis-py connection as redis-py's pipeline code sees it, which tells whether the
    whole request was written (``sent``: a request cut short never ran) and reads replies
    with another timeout (None: the connection's own). The shells add the two methods."""

    __slots__ = ("_conn", "_timeout", "sent")

    def __init__(self, conn: Any, timeout: float | None) -> None:
        self._conn = conn
        self._timeout = timeout
        self.sent = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class ClientBase:
    """The part of a failover client that does no I/O."""

    _regions: list[Any]
    _event_dispatcher: Any = None  # declared by redis-py's command protocol, unused here
    _SHELL: tuple[Any, Any, Any]
    """The shell's redis-py client class, region class and redis-py Retry class."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        client_id: str | None = None,
        metrics_registry: Any = None,
        **redis_kwargs: Any,
    ) -> None:
        """`config` (or ``from_config_file(path)``); `client_id` names this instance in
        metrics (default ``<client_name>@<host>:<pid>/<n>``); `metrics_registry` is a
        prometheus-client registry to share; extra keyword arguments go to every region's
        redis-py client (``decode_responses``, ``protocol``, TLS options; see
        docs/client.md for the few that are taken differently or refused)."""
        options = self._setup(config, client_id, metrics_registry, redis_kwargs)
        self._build_regions(options)
        self._start_shell()

    def _start_shell(self) -> None:
        """What the shell adds once the regions exist (prober, stream)."""
        raise NotImplementedError

    def _setup(
        self,
        config: ClientConfig,
        client_id: str | None,
        metrics_registry: Any,
        redis_kwargs: dict[str, Any],
    ) -> ClientOptions:
        """Build the router and everything around it; returns the settings of the regions'
        redis-py clients."""
        options = client_options(config, redis_kwargs)
        if config.kafka is not None:
            _require_aiokafka()
        self.config = options.config
        self.instance_id = client_id or new_client_id(self.config.client_name)
        policy = self.config.policy
        self._router = Router([region.name for region in self.config.regions], policy)
        self._failover = Failover(
            self._router,
            RetryPolicy(policy.retry_commands),
            policy.command_timeout_s,
            resend_before_failover=policy.resend_before_failover,
        )
        self._access = Access()
        self._scripts = ScriptRegistry()
        self._regions = []
        self.metrics = ClientMetrics(self.instance_id, self._router, metrics_registry)
        return options

    def _build_regions(self, options: ClientOptions) -> None:
        """One region object per configured region: a redis-py client for commands, whose
        new connections check the instance, and a one-connection client for probes, on the
        database of the status record."""
        redis_class, region_class, retry_class = self._SHELL
        policy = self.config.policy
        for index, region in enumerate(self.config.regions):
            kwargs = region_kwargs(
                region, policy, self.instance_id, options.redis_kwargs, retry_class=retry_class
            )
            kwargs["redis_connect_func"] = self._connect_hook(index, options.connect_hook)
            probe = region_kwargs(
                region,
                policy,
                self.instance_id,
                options.redis_kwargs,
                probe=True,
                retry_class=retry_class,
            )
            self._regions.append(
                region_class(
                    index,
                    region.name,
                    redis_class.from_url(region.url, **kwargs),
                    redis_class.from_url(status_url(region.url, policy.status_db), **probe),
                )
            )
        # One dict for all regions: set_response_callback and edits of response_callbacks
        # then apply wherever a command runs.
        shared = self._regions[0].redis.response_callbacks
        for region in self._regions[1:]:
            region.redis.response_callbacks = shared

    def _connect_hook(self, index: int, app_hook: Any) -> Any:
        """redis-py's ``redis_connect_func`` for region `index` (the shell's)."""
        raise NotImplementedError

    @classmethod
    def from_config_file(cls: type[_C], path: str | Path, **kwargs: Any) -> _C:
        """A client configured by a TOML file (see ``configs/client.example.toml``)."""
        return cls(load_client_config(path), **kwargs)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        """Refused: one URL names one Redis."""
        raise refuse(
            "from_url",
            "one URL names one Redis, and failing over needs every region and its policy; "
            "build the client from a ClientConfig or from_config_file(path)",
        )

    @classmethod
    def from_pool(cls, connection_pool: Any) -> Any:
        """Refused: one pool reaches one Redis."""
        raise refuse(
            "from_pool",
            "a pool reaches one Redis; the failover client builds one pool per region",
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.instance_id} active={self.active_region}>"

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
        """Expose Prometheus metrics over HTTP; returns the port. Stopped when closed."""
        return self.metrics.serve(port, addr)

    def get_encoder(self) -> Any:
        """The encoder of the regions' connections (redis-py's command helpers use it)."""
        return self._regions[0].redis.get_encoder()

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The home region's connection settings (as redis-py's helpers expect)."""
        kwargs: dict[str, Any] = self._regions[0].redis.get_connection_kwargs()
        return kwargs

    @property
    def connection_pool(self) -> Any:
        """The redis-py pool of the region active now (each region has its own; commands
        taken from it directly do not fail over)."""
        return self._regions[self._router.active].pool

    @property
    def response_callbacks(self) -> Any:
        """redis-py's response callbacks, one dict shared by every region."""
        return self._regions[0].redis.response_callbacks

    def set_response_callback(self, command: str, callback: Callable[..., Any]) -> None:
        """Parse `command`'s replies with `callback`, on every region."""
        self.response_callbacks[command] = callback

    def get_retry(self) -> Any:
        """redis-py's retry object of the regions' connections: no retries (see docs)."""
        return self.get_connection_kwargs().get("retry")

    def set_retry(self, retry: Any) -> None:
        """Refused: the client decides about every resend itself."""
        raise refuse(
            "set_retry",
            "a retry inside redis-py would resend a command whose reply was lost (an INCR "
            "applied twice) and hide failures from the health window; the failover client "
            "resends only what [policy] retry_commands allows",
        )

    def load_external_module(self, funcname: str, func: Any) -> None:
        """As redis-py: make `func` available as ``client.<funcname>``."""
        setattr(self, funcname, func)

    def client(self) -> Any:
        """Refused: redis-py's single-connection client."""
        raise refuse(
            "client()",
            "it makes a client bound to one connection; use pipeline() for commands that "
            "must share a connection, lock() for a lock bound to one region",
        )

    _LOCK: Any  # redis-py's Lock class of the shell (sync or asyncio)
    _PIPELINE: Any  # the shell's pipeline class

    def _pipeline(self, transaction: bool, shard_hint: Any) -> Any:
        return self._PIPELINE(self, transaction, shard_hint)

    def _view(self, index: int) -> Any:
        """The client's commands bound to region `index` (the shell's region view)."""
        raise NotImplementedError

    def lock(  # noqa: PLR0917  # redis-py's signature, positional arguments included
        self,
        name: Any,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        lock_class: Any = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> Any:
        """redis-py's ``Lock``, bound to the region active now: acquire, extend and release
        all run there, never elsewhere (a lock's token lives in one Redis). If that region
        fails while the lock is held, they raise redis-py's errors and the lock ends with
        its timeout; see docs/client.md."""
        cls = lock_class or self._LOCK
        return cls(
            self._view(self._router.active),
            name,
            timeout=timeout,
            sleep=sleep,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            thread_local=thread_local,
            raise_on_release_error=raise_on_release_error,
        )

    _SCRIPT: Any  # redis-py's Script class of the shell (sync or asyncio)

    def register_script(self, script: Any) -> Any:
        """A redis-py ``Script`` on this client; a pipeline that runs it loads it first on
        the region the pipeline runs on."""
        registered = self._SCRIPT(self, script)
        self._scripts.add(registered)
        return registered

    def pubsub(self, **kwargs: Any) -> Any:
        """A redis-py PubSub on the region active now (subscriptions do not fail over)."""
        return self._regions[self._router.active].redis.pubsub(**kwargs)

    def monitor(self) -> Any:
        """A redis-py Monitor of the region active now (it does not fail over)."""
        return self._regions[self._router.active].redis.monitor()

    def keyspace_notifications(self, *args: Any, **kwargs: Any) -> Any:
        """redis-py's keyspace notifications, from the region active now."""
        return self._regions[self._router.active].redis.keyspace_notifications(*args, **kwargs)


class PipelineBase:
    """The part of a failover pipeline that does no I/O: the queue, the flags, the scripts.

    Until WATCH, commands are queued here and run on one region together at ``execute``.
    WATCH binds the pipeline to the region active then: from that moment ``_bound`` is a
    redis-py pipeline on one of its connections, and commands go to it.
    """

    _client: Any
    _event_dispatcher: Any = None  # declared by redis-py's command protocol, unused here

    def _init_queue(self, client: Any, transaction: bool, shard_hint: Any) -> None:
        self._client = client
        self.transaction = transaction
        self.shard_hint = shard_hint
        self.command_stack: list[Command] = []
        self.scripts: set[Any] = set()
        self.explicit_transaction = False
        self._bound: Any = None  # a redis-py Pipeline once WATCH binds it (untyped API)
        self._bound_index = -1

    def __len__(self) -> int:
        return len(self.command_stack) if self._bound is None else len(self._bound)

    def __bool__(self) -> bool:
        return True

    @property
    def watching(self) -> bool:
        """True after WATCH, until EXEC, UNWATCH or reset (as redis-py's attribute)."""
        return self._bound is not None and bool(self._bound.watching)

    @property
    def bound_region(self) -> str | None:
        """The region a WATCH bound this pipeline to (None: not bound)."""
        if self._bound is None:
            return None
        return str(self._client._router.names[self._bound_index])

    def get_encoder(self) -> Any:
        """The client's encoder (redis-py's command helpers use it)."""
        return self._client.get_encoder()

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The client's connection settings (redis-py's command helpers use them)."""
        kwargs: dict[str, Any] = self._client.get_connection_kwargs()
        return kwargs

    def _queue(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        script = self._client._scripts.used_by(args)
        if script is not None:
            self.scripts.add(script)
        self.command_stack.append((args, options))
        return self

    def _binds(self, args: tuple[Any, ...]) -> bool:
        """Whether `args` binds a pipeline that is not bound yet (WATCH before MULTI)."""
        return not self.explicit_transaction and command_name(args) == "WATCH"

    def _immediate(self, args: tuple[Any, ...]) -> bool:
        """On a bound pipeline: run now (WATCH and the reads after it) or queue (after
        MULTI), as redis-py decides."""
        bound = self._bound
        return (bool(bound.watching) or command_name(args) == "WATCH") and not (
            bound.explicit_transaction
        )

    def _multi(self) -> None:
        """MULTI: what follows is queued for one transaction (checks as redis-py's)."""
        bound = self._bound
        if bound is not None:
            bound.multi()
            return
        if self.explicit_transaction:
            raise RedisError("Cannot issue nested calls to MULTI")
        if self.command_stack:
            raise RedisError("Commands without an initial WATCH have already been issued")
        self.explicit_transaction = True

    def _take(self, raise_on_error: bool) -> Queued | None:
        """The queue on its way to a region (None: nothing queued); the pipeline is empty
        after."""
        stack, self.command_stack = self.command_stack, []
        scripts, self.scripts = self.scripts, set()
        transaction = self.transaction or self.explicit_transaction
        self.explicit_transaction = False
        if not stack:
            return None
        queued: Queued = self._client._failover.queued(stack, transaction, raise_on_error, scripts)
        return queued

    def _bound_to(self, bound: Any, index: int) -> None:
        for args, options in self.command_stack:
            bound.pipeline_execute_command(*args, **options)
        bound.scripts = set(self.scripts)
        self.command_stack, self.scripts = [], set()
        self._bound, self._bound_index = bound, index
