"""The failover client's configuration: regions in order of preference, and the policy.

Loaded from TOML with :mod:`reconciler.configfile` (unknown keys rejected, secrets from
``password_env``/``password_file``); see ``configs/client.example.toml`` and
``docs/client.md`` for every key and its meaning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from reconciler.client.health import DEFAULT_RETRY_COMMANDS
from reconciler.configfile import ConfigError, Secret, check_fields, load_file, setting
from replication.tls import TlsError, TlsOptions

__all__ = [
    "ClientConfig",
    "KafkaConfig",
    "PolicyConfig",
    "RegionConfig",
    "load_client_config",
]

_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RegionConfig:
    """One region's Redis, as the application reaches it."""

    name: str = setting(min_len=1)
    url: str = setting(min_len=1)
    """``redis://host:port/db``, ``rediss://`` for TLS or ``unix:///path``; no password."""
    username: str | None = None
    password: Secret | None = None
    """From ``password_env`` or ``password_file`` in the file; masked in ``repr``."""
    max_connections: int | None = setting(None, ge=1)
    """Cap on this client's connections to the region (default: unbounded, as redis-py)."""
    tls_ca_file: str | None = None
    """With rediss://: PEM file of the CA that signed the Redis's certificate (default:
    the system's CAs)."""
    tls_cert_file: str | None = None
    """Client certificate, for a Redis with `tls-auth-clients yes` (with `tls_key_file`)."""
    tls_key_file: str | None = None
    tls_check_hostname: bool = True
    """Check that the certificate names the URL's host; off, only the chain is verified."""

    def __post_init__(self) -> None:
        check_fields(self)
        parts = urlsplit(self.url)
        if parts.scheme not in _SCHEMES:
            raise ConfigError(
                f"'url' = {self.url!r}: expected a redis://, rediss:// or unix:// URL"
            )
        if parts.password is not None:
            # The URL would carry the secret into logs and reprs; keep it out.
            raise ConfigError(
                "'url' contains a password: remove it and set 'password_env' or 'password_file'"
            )
        options = TlsOptions(
            self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname
        )
        if parts.scheme != "rediss" and options.configured:
            raise ConfigError(
                f"'url' = {self.url!r} is not rediss:// but TLS keys are set ('tls_ca_file', "
                "'tls_cert_file', 'tls_key_file', 'tls_check_hostname'): use rediss:// or "
                "remove them"
            )
        if parts.scheme == "rediss":
            try:
                options.check()
            except TlsError as exc:
                raise ConfigError(str(exc)) from None

    @property
    def tls(self) -> TlsOptions | None:
        """How the region's server is verified (rediss://), None for plain connections."""
        if urlsplit(self.url).scheme != "rediss":
            return None
        return TlsOptions(
            self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname
        )


@dataclass(frozen=True)
class PolicyConfig:
    """When to fail over, when to fail back, and what may be sent again."""

    window_s: float = setting(10.0, gt=0)
    """Length of the sliding window over which the error rate is computed."""
    min_requests: int = setting(20, ge=1)
    """No failover unless the window holds at least this many requests to the region."""
    error_rate_threshold: float = setting(0.5, gt=0, le=1)
    """Fail over when failures / requests over the window reach this fraction."""
    command_timeout_s: float = setting(1.0, gt=0)
    """Socket timeout for one command's reply; a timeout counts as a failure."""
    connect_timeout_s: float = setting(1.0, gt=0)
    """Timeout for establishing a connection."""
    probe_interval_s: float = setting(1.0, gt=0)
    """Interval between probes of a failed region while its probes succeed."""
    probe_backoff_cap_s: float = setting(10.0, gt=0)
    """Upper bound of the extra, jittered delay added after consecutive failed probes."""
    failback_healthy_s: float = setting(30.0, ge=0)
    """A failed region must answer every probe for this long before traffic returns."""
    require_consistent_status: bool = True
    """Also require the region's daemon to report it ``consistent`` before traffic returns."""
    status_db: int = setting(0, ge=0)
    """The Redis database holding the daemon's status record (whatever db the URL names)."""
    retry_commands: tuple[str, ...] = setting(DEFAULT_RETRY_COMMANDS)
    """Commands that may be sent to another region when a reply was lost (idempotent)."""
    resend_before_failover: bool = False
    """Also send a command that failed on its region to the next one while that region has
    not failed over (reply lost: only those in `retry_commands`; never sent, or refused
    unexecuted: any). Off by default: a failure is often a blip (a slow save, a pause, a
    cut link, a restart) and the other region may not yet have the writes this client made
    moments ago (replication is asynchronous), so a read sent there could answer "missing",
    or an older value, for a key the application just wrote. Off, the application gets
    redis-py's error until the region answers again or its error rate fails it over; the
    command whose failure crosses the threshold moves."""

    def __post_init__(self) -> None:
        check_fields(self)
        normalized = tuple(sorted({name.strip().upper() for name in self.retry_commands}))
        if any(not name or " " in name for name in normalized):
            raise ConfigError("'retry_commands': expected command names such as 'GET'")
        object.__setattr__(self, "retry_commands", normalized)


@dataclass(frozen=True)
class KafkaConfig:
    """Where to stream connectivity metrics and failover events (optional)."""

    bootstrap_servers: str = setting(min_len=1)
    """``host:port[,host:port...]``."""
    topic_prefix: str = setting("reconciler", min_len=1)
    """Messages go to ``<topic_prefix>.clients``."""
    snapshot_interval_s: float = setting(5.0, gt=0)
    """A metrics snapshot is sent this often; events are sent as they happen."""


@dataclass(frozen=True)
class ClientConfig:
    """Everything a failover client needs. Build it in code or with load_client_config."""

    regions: tuple[RegionConfig, ...] = setting(min_len=1)
    """In order of preference: the first is the home region, the rest fallbacks."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    kafka: KafkaConfig | None = None
    client_name: str = setting("app", min_len=1)
    """The application's name; client ids are ``<client_name>@<host>:<pid>/<n>``."""

    def __post_init__(self) -> None:
        check_fields(self)
        seen: set[str] = set()
        for region in self.regions:
            if region.name in seen:
                raise ConfigError(f"'regions': the name {region.name!r} appears twice")
            seen.add(region.name)

    @property
    def home(self) -> RegionConfig:
        """The preferred region."""
        return self.regions[0]


def load_client_config(path: str | os.PathLike[str]) -> ClientConfig:
    """Read and validate a client TOML file (see ``configs/client.example.toml``).

    Raises :class:`reconciler.configfile.ConfigError` naming the file, table and key.
    """
    return load_file(ClientConfig, path)
