"""How a region's redis-py client is built, shared by the sync and asyncio clients.

redis-py's own retries are turned off (``Retry(NoBackoff(), 0)``): a retry inside redis-py
would resend a command whose reply was lost, possibly applying a non-idempotent write
twice, and it would hide failures from the health window. The failover client decides
about every resend itself.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.backoff import NoBackoff
from redis.retry import Retry

from reconciler.client.config import PolicyConfig, RegionConfig
from reconciler.configfile import ConfigError

__all__ = ["PROBE_CONNECTIONS", "new_client_id", "region_kwargs", "status_url"]

# Settings the failover client owns; an application passing them would break its guarantees.
_OWNED = frozenset(
    {
        "connection_pool",
        "host",
        "max_connections",
        "password",
        "port",
        "retry",
        "retry_on_error",
        "retry_on_timeout",
        "single_connection_client",
        "socket_connect_timeout",
        "socket_timeout",
        "unix_socket_path",
        "url",
        "username",
    }
)

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


def region_kwargs(
    region: RegionConfig,
    policy: PolicyConfig,
    client_id: str,
    redis_kwargs: dict[str, Any],
    *,
    probe: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url(region.url, **kwargs)`` (or asyncio's).

    `redis_kwargs` are the application's extra redis-py options (``decode_responses``,
    ``protocol``, TLS files...); options the failover client owns are refused.
    """
    clash = sorted(_OWNED & redis_kwargs.keys())
    if clash:
        raise ConfigError(
            f"redis option(s) {', '.join(clash)} are set by the failover client "
            "from its config; remove them from the constructor call"
        )
    kwargs = dict(redis_kwargs)
    kwargs.update(
        socket_timeout=policy.command_timeout_s,
        socket_connect_timeout=policy.connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        # CLIENT LIST on the server then shows which application a connection belongs to.
        client_name=("rr-probe:" if probe else "rr:") + client_id.replace(" ", "_"),
    )
    if region.username is not None:
        kwargs["username"] = region.username
    if region.password is not None:
        kwargs["password"] = region.password.reveal()
    if probe:
        kwargs["max_connections"] = PROBE_CONNECTIONS
    elif region.max_connections is not None:
        kwargs["max_connections"] = region.max_connections
    return kwargs
