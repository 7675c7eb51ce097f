"""How a region's redis-py client is built, shared by the sync and asyncio clients.

redis-py's own retries are turned off (``Retry(NoBackoff(), 0)``): a retry inside redis-py
would resend a command whose reply was lost, possibly applying a non-idempotent write
twice, and it would hide failures from the health window. The failover client decides
about every resend itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.backoff import NoBackoff
from redis.retry import Retry

from reconciler.client.config import ClientConfig, PolicyConfig, RegionConfig
from reconciler.configfile import ConfigError, Secret

__all__ = [
    "PROBE_CONNECTIONS",
    "ClientOptions",
    "client_options",
    "new_client_id",
    "region_kwargs",
    "status_url",
]

# Options of redis.Redis the failover client cannot take, and why (the error names both).
_REFUSED = {
    "connection_pool": "the failover client builds one pool per region from its config",
    "host": "regions are given by [[regions]] url",
    "port": "regions are given by [[regions]] url",
    "unix_socket_path": "regions are given by [[regions]] url (unix:///path)",
    "url": "regions are given by [[regions]] url",
    "db": "the database is part of each region's url",
    "max_connections": "set [[regions]] max_connections per region",
    "single_connection_client": "one connection cannot fail over; use pipeline() or lock()",
    "retry": (
        "a retry inside redis-py would resend a command whose reply was lost (an INCR "
        "applied twice) and hide failures from the health window; the client resends only "
        "what [policy] retry_commands allows"
    ),
    "retry_on_error": "see retry: the client decides about every resend itself",
    "retry_on_timeout": "see retry: the client decides about every resend itself",
    "credential_provider": "set [[regions]] username and password_env / password_file",
    "cache": "a client-side cache filled in one region is not invalidated by another",
    "cache_config": "a client-side cache filled in one region is not invalidated by another",
}
# Options taken in place of a policy setting, for this client only.
_POLICY_OPTIONS = {
    "socket_timeout": "command_timeout_s",
    "socket_connect_timeout": "connect_timeout_s",
}

PROBE_CONNECTIONS = 1

_ids = itertools.count(1)


def new_client_id(client_name: str) -> str:
    """``<client_name>@<host>:<pid>/<n>``: unique per client instance, readable in tables."""
    return f"{client_name}@{socket.gethostname()}:{os.getpid()}/{next(_ids)}"


def status_url(url: str, db: int) -> str:
    """`url` pointing at database `db`: where the region's daemon keeps its status record,
    whichever database the application itself uses (a URL's db wins over keywords)."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "db"]
    if parts.scheme == "unix":  # the path is the socket; the db goes in the query
        path, query = parts.path, [*query, ("db", str(db))]
    else:
        path = f"/{db}"
    # Built by hand: urlunsplit would drop the empty host of unix:///path.
    encoded = urlencode(query)
    return f"{parts.scheme}://{parts.netloc}{path}" + (f"?{encoded}" if encoded else "")


@dataclass(frozen=True)
class ClientOptions:
    """A client's config with the constructor's overrides applied, and what goes on to
    every region's redis-py client."""

    config: ClientConfig
    redis_kwargs: dict[str, Any]
    """The application's extra redis-py options (``decode_responses``, TLS...)."""
    connect_hook: Callable[..., Any] | None
    """The application's own ``redis_connect_func``, run before the instance check."""


def client_options(config: ClientConfig, redis_kwargs: dict[str, Any]) -> ClientOptions:
    """Check the constructor's redis-py options against what the failover client owns.

    ``socket_timeout`` and ``socket_connect_timeout`` replace the policy's command and
    connect timeouts (positive numbers: a client that waits forever never fails over);
    ``username`` and ``password`` apply to every region whose config sets none; options
    the client cannot honour are refused with the reason.
    """
    kwargs = dict(redis_kwargs)
    refused = sorted(_REFUSED.keys() & kwargs.keys())
    if refused:
        raise ConfigError(
            "; ".join(
                f"redis option {name!r} is not accepted: {_REFUSED[name]}" for name in refused
            )
        )
    policy_changes: dict[str, Any] = {}
    for option, field_name in _POLICY_OPTIONS.items():
        if option not in kwargs:
            continue
        value = kwargs.pop(option)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(
                f"redis option {option!r} = {value!r}: expected a number of seconds > 0 "
                f"(it replaces [policy] {field_name}; a client that waits forever for a "
                "region never fails over)"
            )
        policy_changes[field_name] = float(value)
    username = kwargs.pop("username", None)
    password = kwargs.pop("password", None)
    regions = tuple(
        dataclasses.replace(
            region,
            username=region.username if region.username is not None else username,
            password=region.password
            if region.password is not None or password is None
            else Secret(str(password)),
        )
        for region in config.regions
    )
    config = dataclasses.replace(
        config, regions=regions, policy=dataclasses.replace(config.policy, **policy_changes)
    )
    hook = kwargs.pop("redis_connect_func", None)
    return ClientOptions(config, kwargs, hook)


def region_kwargs(
    region: RegionConfig,
    policy: PolicyConfig,
    client_id: str,
    redis_kwargs: dict[str, Any],
    *,
    probe: bool = False,
    retry_class: type[Any] = Retry,
) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url(region.url, **kwargs)`` (or asyncio's:
    `retry_class` is then ``redis.asyncio.retry.Retry``; the sync one would not await
    redis-py's failure handlers, which turn a connection lost while watching into a
    WatchError).

    `redis_kwargs` are the application's extra redis-py options, already checked by
    :func:`client_options`. The application's ``client_name`` is kept on its connections;
    without one they are named ``rr:<client id>`` (``CLIENT LIST`` then shows which
    application a connection belongs to); probes are always ``rr-probe:<client id>``.
    """
    kwargs = dict(redis_kwargs)
    kwargs.update(
        socket_timeout=policy.command_timeout_s,
        socket_connect_timeout=policy.connect_timeout_s,
        retry=retry_class(NoBackoff(), 0),
    )
    if probe or kwargs.get("client_name") is None:
        kwargs["client_name"] = ("rr-probe:" if probe else "rr:") + client_id.replace(" ", "_")
    tls = region.tls
    if tls is not None:
        # Like username/password: the region's tls_* keys win; without any, the
        # application's own ssl_* keywords do, over the same verifying defaults.
        for key, value in tls.redis_py_options().items():
            if tls.configured or key not in kwargs:
                kwargs[key] = value
    if region.username is not None:
        kwargs["username"] = region.username
    if region.password is not None:
        kwargs["password"] = region.password.reveal()
    if probe:
        kwargs["max_connections"] = PROBE_CONNECTIONS
    elif region.max_connections is not None:
        kwargs["max_connections"] = region.max_connections
    return kwargs
