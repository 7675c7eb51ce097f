"""The failover client applications link in: a drop-in for ``redis.Redis`` (thread-safe)
and ``redis.asyncio.Redis`` that sends commands to the preferred healthy region, fails over
when that region's error rate crosses the configured threshold, and fails back once the
region has been healthy for a while and its daemon reports it consistent.

    from reconciler.client import FailoverClient

    with FailoverClient.from_config_file("client.toml") as r:
        r.set("greeting", "hello")

Importing this package loads redis-py, the standard library and prometheus-client only:
never aiokafka (imported when a ``[kafka]`` table turns streaming on), nor the daemon's
Merkle or replication machinery. See ``docs/client.md``.
"""

from reconciler.client.aio import AsyncFailoverClient, AsyncFailoverPipeline
from reconciler.client.config import (
    ClientConfig,
    KafkaConfig,
    PolicyConfig,
    RegionConfig,
    load_client_config,
)
from reconciler.client.errors import (
    ClientClosedError,
    ClientError,
    CommandOutcomeUnknownError,
    NoHealthyRegionError,
)
from reconciler.client.router import Event, RegionState
from reconciler.client.sync import FailoverClient, FailoverPipeline
from reconciler.configfile import ConfigError, Secret

__all__ = [
    "AsyncFailoverClient",
    "AsyncFailoverPipeline",
    "ClientClosedError",
    "ClientConfig",
    "ClientError",
    "CommandOutcomeUnknownError",
    "ConfigError",
    "Event",
    "FailoverClient",
    "FailoverPipeline",
    "KafkaConfig",
    "NoHealthyRegionError",
    "PolicyConfig",
    "RegionConfig",
    "RegionState",
    "Secret",
    "load_client_config",
]
