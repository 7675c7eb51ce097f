"""Why Kafka cannot be used, when waiting will not help.

aiokafka reports a refused password or a rejected certificate as "Unable to bootstrap",
the same as a broker that is still starting, so a daemon would retry for ever with the
cause only in aiokafka's own log. :func:`check_access` opens one connection per bootstrap
server with the configured security and turns those refusals into an error naming the
keys to fix; anything else (refused connection, timeout) stays the caller's to retry.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from replication.errors import ReconcilerError
from replication.tls import describe_tls_failure
from replication.transport.settings import KafkaSettings

__all__ = ["KafkaAccessError", "check_access"]


class KafkaAccessError(ReconcilerError):
    """Kafka refused this daemon's credentials or certificate settings: retrying with the
    same configuration cannot succeed."""

    retriable = False


async def check_access(settings: KafkaSettings, *, timeout_s: float = 10.0) -> None:
    """Raise KafkaAccessError if a bootstrap server refuses the SASL credentials or
    mechanism, or its certificate is not accepted; return quietly otherwise."""
    options = settings.client_options()
    options.pop("bootstrap_servers")
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        where = f"kafka at {host}:{port} (security_protocol {settings.security_protocol})"
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(host, int(port), **options)
        except SaslAuthenticationFailed:
            # aiokafka's message is the broker's; the password is in neither.
            raise KafkaAccessError(
                f"{where} refused the SASL credentials of user {settings.sasl_username!r} "
                f"(mechanism {settings.sasl_mechanism}): check 'sasl_username' and the "
                "password in 'password_env' / 'password_file'"
            ) from None
        except UnsupportedSaslMechanismError as exc:
            raise KafkaAccessError(
                f"{where} does not offer SASL mechanism {settings.sasl_mechanism} ({exc}): "
                "set 'sasl_mechanism' to one the listener enables"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAccessError(f"{where}: {describe_tls_failure(exc)}") from None
        except (OSError, KafkaError, TimeoutError):
            continue  # not reachable (yet): the caller retries
        conn.close()
        return
