"""The daemon's configuration: one TOML file per region (see configs/*.toml).

Loaded and validated at start with `reconciler.configfile` (unknown keys rejected naming
the key, values range-checked and finite, secrets only from `*_env` / `*_file`, masked in
repr and in every message). Cross-field rules (a timeout longer than the interval it
watches, a record that fits a Kafka message, ...) are checked here, naming the keys.
Only `region`, `peers`, `[redis] url`, `[kafka] bootstrap_servers` are required.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from reconciler.configfile import ConfigError, Secret, check_fields, load_file, setting
from replication.model.auth import Keyring, KeyringError, Signer, is_valid_key_id
from replication.model.keys import (
    changes_topic,
    clients_topic,
    control_topic,
    deadletter_topic,
    is_valid_region_name,
)
from replication.redis.address import RedisAddress
from replication.tls import TlsError, TlsOptions
from replication.transport.settings import KafkaSettings

_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
KAFKA_TOPIC_MAX_LEN = 249
RECORD_HEADROOM_BYTES = 64 * 1024
"""Room in a Kafka message for what wraps a record of changes (batch framing, headers,
authentication), so a full record always fits."""
MIN_HORIZON_S = 3600.0
"""The shortest tombstone horizon accepted: a delete must be remembered long enough for a
region that is briefly away (a restart, a partition) to come back without undoing it."""


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP address or "localhost") is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def tls_options(
    ca_file: str | None, cert_file: str | None, key_file: str | None, check_hostname: bool
) -> TlsOptions:
    """The `tls_*` keys of a section as TlsOptions, checked (files readable, a certificate
    with its key, PEM that loads); ConfigError naming the key otherwise."""
    options = TlsOptions(ca_file, cert_file, key_file, check_hostname)
    try:
        options.check()
    except TlsError as exc:
        raise ConfigError(str(exc)) from None
    return options


TLS_KEYS = "'tls_ca_file', 'tls_cert_file', 'tls_key_file', 'tls_check_hostname'"


@dataclass(frozen=True)
class RedisSection:
    url: str = setting(min_len=1)
    """redis://[user@]host:port/db of this region's Redis (no password in the URL);
    rediss:// for TLS, verified with the `tls_*` keys."""
    password: Secret | None = None
    tls_ca_file: str | None = None
    """PEM file of the CA that signed the Redis's certificate (default: the system's CAs)."""
    tls_cert_file: str | None = None
    """Client certificate, for a Redis with `tls-auth-clients yes` (with `tls_key_file`)."""
    tls_key_file: str | None = None
    tls_check_hostname: bool = True
    """Check that the certificate names the URL's host; off, only the chain is verified."""
    dbs: tuple[int, ...] = (0,)
    """Databases replicated; others are ignored (the first one holds the status record)."""
    capture: Literal["psync", "notifications"] = "psync"
    """How changes are captured: the replication stream (PSYNC), or keyspace
    notifications for servers that refuse PSYNC (every disconnect is then a gap)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"'url' = {self.url!r}: expected a redis:// or rediss:// URL")
        scheme, _, rest = self.url.partition("://")
        if "@" in rest and ":" in rest.split("@")[0]:
            raise ConfigError("'url' contains a password: use 'password_env' or 'password_file'")
        tls = TlsOptions(
            self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname
        )
        if scheme == "redis" and tls.configured:
            raise ConfigError(
                f"'url' = {self.url!r} is redis:// (plain TCP) but TLS keys are set "
                f"({TLS_KEYS}): use rediss:// or remove them"
            )
        parts = urlsplit(self.url)
        if parts.query or parts.fragment:
            raise ConfigError(
                f"'url' = {self.url!r}: no '?' options in the URL (each option is its own key)"
            )
        try:
            port = parts.port
            RedisAddress.from_url(self.url)
        except ValueError as exc:
            # The port or database is not a number; the URL has no password (checked above).
            raise ConfigError(f"'url' = {self.url!r}: not a valid Redis URL ({exc})") from None
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"'url' = {self.url!r}: port {port} is out of range")
        if not self.dbs or any(not 0 <= db < 1 << 16 for db in self.dbs):
            raise ConfigError(f"'dbs' = {list(self.dbs)}: expected database numbers >= 0")
        if len(set(self.dbs)) != len(self.dbs):
            raise ConfigError(f"'dbs' = {list(self.dbs)}: a database is listed twice")
        self._tls  # noqa: B018 - unreadable or mismatched certificate files fail at load

    @functools.cached_property
    def _tls(self) -> TlsOptions | None:
        if not self.url.startswith("rediss://"):
            return None
        return tls_options(
            self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname
        )

    @functools.cached_property
    def _address(self) -> RedisAddress:
        # Parsed once: every connection of the daemon (capture included) starts from it.
        return RedisAddress.from_url(
            self.url, password=self.password.reveal() if self.password else None, tls=self._tls
        )

    def address(self, db: int | None = None) -> RedisAddress:
        """This region's Redis, with the password; the URL's database, or `db`."""
        return self._address if db is None else self._address.for_db(db)


@dataclass(frozen=True)
class KafkaSection:
    bootstrap_servers: str = setting(min_len=1)
    topic_prefix: str = setting("reconciler", min_len=1)
    partitions: int = setting(8, ge=1)
    replication_factor: int = setting(1, ge=1)
    record_max_events: int = setting(200, ge=1)
    record_max_bytes: int = setting(512 * 1024, ge=1024)
    linger_ms: int = setting(5, ge=0)
    compression: Literal["none", "gzip", "lz4", "zstd"] = "none"
    max_message_bytes: int = setting(8 * 1024 * 1024, ge=1024 * 1024)
    request_timeout_ms: int = setting(30_000, ge=1000)
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    password: Secret | None = None
    """The SASL password (`password_env` or `password_file`), never written in the file."""
    tls_ca_file: str | None = None
    """With SSL / SASL_SSL: PEM file of the CA that signed the brokers' certificates
    (default: the system's CAs)."""
    tls_cert_file: str | None = None
    """Client certificate for brokers that require one (`ssl.client.auth=required`)."""
    tls_key_file: str | None = None
    tls_check_hostname: bool = True
    """Check that each broker's certificate names the host it is reached at."""

    def __post_init__(self) -> None:
        check_fields(self)
        for server in self.bootstrap_servers.split(","):
            host, colon, port = server.strip().rpartition(":")
            if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
                raise ConfigError(
                    f"'bootstrap_servers' = {self.bootstrap_servers!r}: expected "
                    "host:port[,host:port...]"
                )
        if not _TOPIC_CHARS.fullmatch(self.topic_prefix) or self.topic_prefix in (".", ".."):
            raise ConfigError(
                f"'topic_prefix' = {self.topic_prefix!r}: Kafka topic names allow only "
                "ASCII letters, digits, '.', '_' and '-'"
            )
        if self.record_max_bytes > self.max_message_bytes - RECORD_HEADROOM_BYTES:
            raise ConfigError(
                f"'record_max_bytes' = {self.record_max_bytes} must be at least "
                f"{RECORD_HEADROOM_BYTES} below 'max_message_bytes' = {self.max_message_bytes} "
                "(a record larger than a Kafka message is refused by the broker for ever)"
            )
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.password):
            raise ConfigError(
                f"'security_protocol' = {self.security_protocol!r} needs 'sasl_mechanism', "
                "'sasl_username' and 'password_env' (or 'password_file')"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.password):
            raise ConfigError(
                "'sasl_mechanism', 'sasl_username' and the password apply only with "
                f"security_protocol SASL_PLAINTEXT or SASL_SSL, not {self.security_protocol!r}"
            )
        tls = TlsOptions(
            self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname
        )
        if not self.security_protocol.endswith("SSL") and tls.configured:
            raise ConfigError(
                f"'security_protocol' = {self.security_protocol!r} does not use TLS but TLS "
                f"keys are set ({TLS_KEYS}): use SSL or SASL_SSL, or remove them"
            )
        self._tls  # noqa: B018 - unreadable or mismatched certificate files fail at load

    @functools.cached_property
    def _tls(self) -> TlsOptions | None:
        if not self.security_protocol.endswith("SSL"):
            return None
        return tls_options(
            self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname
        )

    def settings(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers,
            topic_prefix=self.topic_prefix,
            partitions=self.partitions,
            replication_factor=self.replication_factor,
            record_max_events=self.record_max_events,
            record_max_bytes=self.record_max_bytes,
            linger_ms=self.linger_ms,
            compression=None if self.compression == "none" else self.compression,
            max_message_bytes=self.max_message_bytes,
            request_timeout_ms=self.request_timeout_ms,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=self.password.reveal() if self.password else None,
            tls=self._tls,
        )


@dataclass(frozen=True)
class AuthSection:
    """The keys that sign and verify every record (replication.model.auth): a keyring read
    from `keys_file` or `keys_env`, never written in this file."""

    keys: Secret
    signing_key_id: str | None = None
    """Which of this region's keys signs (required while a rotation lists two)."""
    keyring: Keyring = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            keyring = Keyring.parse(self.keys.reveal(), source="'keys'")
        except KeyringError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "keyring", keyring)
        check_fields(self)
        if self.signing_key_id is not None and not is_valid_key_id(self.signing_key_id):
            raise ConfigError(f"'signing_key_id' = {self.signing_key_id!r} is not a key id")

    def signer(self, region: str) -> Signer:
        return self.keyring.signer(region, self.signing_key_id)


@dataclass(frozen=True)
class CaptureSection:
    max_batch_commands: int = setting(2000, ge=1)
    max_in_flight_batches: int = setting(8, ge=1)
    max_unshipped_events: int = setting(50_000, ge=1)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ApplySection:
    max_records_per_poll: int = setting(500, ge=1)
    transient_retry_s: float = setting(30.0, ge=0)
    """How long events Redis refuses with an error that may pass (OOM, LOADING, BUSY) are
    retried before they are given up to a gap, which repairs them from the peers."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class HeartbeatSection:
    interval_s: float = setting(1.0, gt=0)
    peer_timeout_s: float = setting(5.0, gt=0)
    """A peer silent this long is down; when it is heard again, anti-entropy runs with it."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.peer_timeout_s < 2 * self.interval_s:
            raise ConfigError(
                f"'peer_timeout_s' = {self.peer_timeout_s:g} must be at least twice "
                f"'interval_s' = {self.interval_s:g}, or one late heartbeat marks a peer down"
            )


@dataclass(frozen=True)
class AntiEntropySection:
    on_start: bool = True
    """Run a session with every peer when the daemon starts."""
    automatic: bool = True
    """Run a session with a peer heard again after missing heartbeats (or restarted).
    Sessions after a capture gap always run; operator commands always run."""
    repair_keys_per_s: float = setting(20_000.0, gt=0)
    """Cap on keys shipped by repair, so repair never starves live replication."""
    request_timeout_s: float = setting(30.0, gt=0)
    """How long a session waits for a peer's answer before giving up (it is retried)."""
    retry_interval_s: float = setting(10.0, gt=0)
    settle_timeout_s: float = setting(30.0, ge=0)
    """An automatic session first waits (at most this long) until replication with the
    peer has caught up both ways, so repair handles only what replication cannot."""
    keys_per_bucket: int = setting(4, ge=1)
    """A differing slot is split into buckets of about this many keys before keys are
    exchanged, so bytes grow with the divergent keys, not with the keyspace."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class TombstoneSection:
    horizon_s: float = setting(7 * 86400.0, gt=0)
    """Tombstones (and metadata of expired keys) older than this are removed even if a peer
    has not been seen caught up; a region down longer than this needs a full resync."""
    min_age_s: float = setting(600.0, ge=0)
    """Never removed before this age, even when every peer is caught up."""
    gc_interval_s: float = setting(300.0, gt=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.horizon_s < MIN_HORIZON_S:
            raise ConfigError(
                f"'horizon_s' = {self.horizon_s:g}: expected at least {MIN_HORIZON_S:g} "
                "(a shorter horizon forgets deletes a briefly absent region has not seen)"
            )
        if self.min_age_s >= self.horizon_s:
            raise ConfigError(
                f"'min_age_s' = {self.min_age_s:g} must be below 'horizon_s' = {self.horizon_s:g}"
            )
        if self.gc_interval_s >= self.horizon_s:
            raise ConfigError(
                f"'gc_interval_s' = {self.gc_interval_s:g} must be below "
                f"'horizon_s' = {self.horizon_s:g}"
            )


@dataclass(frozen=True)
class StatusSection:
    refresh_s: float = setting(1.0, gt=0)
    ttl_s: float = setting(5.0, gt=0)
    instance_check_s: float = setting(0.25, gt=0, le=60)
    """How often the Redis's run_id is read: a restarted Redis is noticed this soon after it
    answers again, and the status says `recovering` before clients trust it."""
    instance_timeout_s: float = setting(1.0, gt=0, le=60)
    """How long an instance check, a status write or a marker write may take."""
    consistent_max_lag_s: float = setting(2.0, gt=0, le=3600)
    """`consistent` only while the peers' changes are applied up to a moment at most this
    long ago: a client failing back may miss only what it wrote elsewhere in that time."""
    catch_up_sample_s: float = setting(0.25, gt=0, le=60)
    """How often the peers' topics' end offsets are sampled to measure that lag."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.ttl_s < 2 * self.refresh_s:
            raise ConfigError(
                f"'ttl_s' = {self.ttl_s:g} must be at least twice 'refresh_s' = "
                f"{self.refresh_s:g}, or the status record vanishes between refreshes"
            )


@dataclass(frozen=True)
class AdminSection:
    host: str = "127.0.0.1"
    port: int = setting(9300, ge=0, le=65535)
    """Health, Prometheus metrics and repair/resync triggers; 0 picks a free port."""
    token: Secret | None = None
    """Bearer token (`token_file`) every POST must carry, and every request when `host` is
    not loopback; a non-loopback `host` without a token is refused."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.host:
            raise ConfigError("'host' is empty: expected an address to listen on")
        if self.token is not None and len(self.token.reveal()) < MIN_TOKEN_LEN:
            raise ConfigError(
                f"the admin token ('token_file') is shorter than {MIN_TOKEN_LEN} characters"
            )
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(
                f"'host' = {self.host!r} is not a loopback address: a non-loopback admin "
                "endpoint needs a bearer token, set 'token_file' (a file holding it)"
            )


MIN_TOKEN_LEN = 16


@dataclass(frozen=True)
class ReportsSection:
    """Bounds on what the daemon keeps on disk in the reports directory."""

    max_reports: int = setting(1000, ge=1)
    """Sessions whose reports (JSON and Markdown) are kept; the oldest are removed."""
    max_bytes: int = setting(1 << 30, ge=1 << 20)
    """Total size of the kept reports; the oldest are removed beyond it."""
    journal_max_bytes: int = setting(64 << 20, ge=1 << 16)
    """The conflicts journal is rotated (to `.1`, `.2`, ...) when it reaches this size."""
    journal_files: int = setting(4, ge=1, le=100)
    """Rotated journal files kept besides the current one."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ClockSection:
    max_drift_ms: int = setting(60_000, ge=1000)
    """How far ahead of this region's wall clock a remote timestamp may be: further ahead, a
    remote clock is not followed, and an event carrying one is quarantined (dead-lettered,
    `reconciler_apply_quarantined_total`), never applied. At least 1 s: ordinary clock skew
    between hosts plus transit time must never quarantine a live write."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class DaemonConfig:
    redis: RedisSection
    kafka: KafkaSection
    auth: AuthSection
    region: str = setting(min_len=1)
    peers: tuple[str, ...] = setting(min_len=1)
    retired_regions: tuple[str, ...] = ()
    """Regions removed for good, whose clock entries are ignored (see replication.model.vclock)."""
    state_dir: str = "/var/lib/reconciler"
    """Capture position and clock high-water mark live here (systemd StateDirectory)."""
    reports_dir: str = ""
    """Repair reports (JSON and Markdown); default: <state_dir>/reports."""
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    capture: CaptureSection = field(default_factory=CaptureSection)
    apply: ApplySection = field(default_factory=ApplySection)
    heartbeat: HeartbeatSection = field(default_factory=HeartbeatSection)
    antientropy: AntiEntropySection = field(default_factory=AntiEntropySection)
    tombstones: TombstoneSection = field(default_factory=TombstoneSection)
    status: StatusSection = field(default_factory=StatusSection)
    admin: AdminSection = field(default_factory=AdminSection)
    clock: ClockSection = field(default_factory=ClockSection)
    reports: ReportsSection = field(default_factory=ReportsSection)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in (self.region, *self.peers, *self.retired_regions):
            if not is_valid_region_name(name):
                raise ConfigError(
                    f"region name {name!r} is invalid: use lowercase letters, digits, '-' "
                    "or '_' (at most 63), starting with a letter or digit"
                )
        if self.region in self.peers:
            raise ConfigError(f"'peers' must not contain this region ({self.region!r})")
        if len(set(self.peers)) != len(self.peers):
            raise ConfigError(f"'peers' lists a region twice: {list(self.peers)}")
        if set(self.retired_regions) & {self.region, *self.peers}:
            raise ConfigError("'retired_regions' must not contain the region or its peers")
        prefix = self.kafka.topic_prefix
        topics = [changes_topic(prefix, r) for r in self.regions]
        topics += [control_topic(prefix), deadletter_topic(prefix), clients_topic(prefix)]
        longest = max(topics, key=len)
        if len(longest) > KAFKA_TOPIC_MAX_LEN:
            raise ConfigError(
                f"[kafka] 'topic_prefix' = {prefix!r} is too long: topic {longest!r} has "
                f"{len(longest)} characters, Kafka allows {KAFKA_TOPIC_MAX_LEN}"
            )
        self._check_keys()

    def _check_keys(self) -> None:
        keyring = self.auth.keyring
        try:
            self.auth.signer(self.region)
        except KeyringError as exc:
            named = "'signing_key_id': " if self.auth.signing_key_id else ""
            raise ConfigError(f"[auth] {named}{exc}") from None
        unkeyed = [p for p in self.peers if not keyring.key_ids(p)]
        if unkeyed:
            raise ConfigError(
                f"[auth] the keyring has no key for peers {unkeyed}: their records could "
                "not be verified"
            )

    @property
    def regions(self) -> list[str]:
        return [self.region, *self.peers]

    @property
    def reports_path(self) -> Path:
        return Path(self.reports_dir) if self.reports_dir else Path(self.state_dir) / "reports"


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate a daemon config file (ConfigError naming the bad key otherwise)."""
    return load_file(DaemonConfig, path)
