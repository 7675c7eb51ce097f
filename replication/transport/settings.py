"""Transport settings, shared by the producer, the consumer and topic creation."""

from __future__ import annotations

from dataclasses import dataclass, field

from replication.tls import TlsOptions

TLS_PROTOCOLS = ("SSL", "SASL_SSL")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic_prefix: str = "reconciler"
    partitions: int = 8  # of each change topic; a key's partition is its hash slot mod this
    replication_factor: int = 1
    # Several events per record: one event per record tops out near 40k records/s from
    # Python, a hundred per record near 400k events/s (shared/KAFKA.md).
    record_max_events: int = 200
    record_max_bytes: int = 512 * 1024
    linger_ms: int = 5
    compression: str | None = None  # None, "gzip" (built in), "lz4"/"zstd" (need their libs)
    max_message_bytes: int = 8 * 1024 * 1024  # topic max.message.bytes / producer max request
    request_timeout_ms: int = 30_000
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None
    """How brokers are verified with SSL / SASL_SSL (None: the system's CAs, names checked)."""

    def client_options(self) -> dict[str, object]:
        """Connection options common to every aiokafka client we create (producers,
        consumers, the admin client): with SSL / SASL_SSL, a fresh verifying SSLContext."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in TLS_PROTOCOLS:
            options["ssl_context"] = (self.tls or TlsOptions()).context()
        if self.sasl_mechanism:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        return options
