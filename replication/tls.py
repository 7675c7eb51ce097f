"""TLS for every connection the project opens (Redis and Kafka): one set of options, one
way to turn them into an ``ssl.SSLContext``, so the daemon, its Kafka clients and the
failover client verify servers the same way.

Standard library only: the failover client imports it on an application's base install.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

__all__ = ["TlsError", "TlsOptions", "describe_tls_failure"]

MIN_VERSION = ssl.TLSVersion.TLSv1_2
"""Older protocol versions are refused whatever the server offers."""


class TlsError(ValueError):
    """TLS options that cannot be used; the message names the config key (``tls_...``)."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """How to verify the server and, optionally, who to be (mutual TLS).

    Field names are the config keys without their ``tls_`` prefix. Without `ca_file` the
    system's trusted CAs verify the server. The server's name is always checked unless
    `check_hostname` is off (then only the chain is verified, never "anything goes").
    """

    ca_file: str | None = None
    """PEM file of the CA(s) that signed the server's certificate."""
    cert_file: str | None = None
    """PEM client certificate, for servers that require one (with `key_file`)."""
    key_file: str | None = None
    """PEM private key of `cert_file` (unencrypted: no passphrase prompt in a daemon)."""
    check_hostname: bool = True
    """Check that the certificate names the host of the URL (a name or an IP address)."""

    @property
    def configured(self) -> bool:
        """Whether any option differs from the defaults (for "TLS options without TLS")."""
        return self != TlsOptions()

    def check(self) -> None:
        """Raise TlsError naming the key if a file is missing or unreadable, a certificate
        comes without its key (or the reverse), or the files do not load (bad PEM, a key
        that does not match the certificate)."""
        for key, path in (
            ("tls_ca_file", self.ca_file),
            ("tls_cert_file", self.cert_file),
            ("tls_key_file", self.key_file),
        ):
            if path is not None and not os.access(path, os.R_OK):
                state = "does not exist" if not os.path.exists(path) else "is not readable"
                raise TlsError(f"'{key}' = {path!r}: the file {state}")
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if self.key_file is None
                else ("tls_key_file", "tls_cert_file")
            )
            raise TlsError(f"'{given}' is set without '{missing}': a client certificate needs both")
        self.context()  # bad PEM and mismatched keys surface now, not at the first connect

    def context(self) -> ssl.SSLContext:
        """A client-side context: server verified (system CAs or `ca_file`), hostname
        checked unless disabled, TLS 1.2 at least, client certificate if configured.

        Built anew on each call so that renewed certificate files are picked up by the next
        connection. Raises TlsError naming the key whose file does not load.
        """
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"'tls_ca_file' = {self.ca_file!r}: not a PEM CA file ({exc})") from None
        ctx.minimum_version = MIN_VERSION
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as exc:
                raise TlsError(
                    f"'tls_cert_file' = {self.cert_file!r} / 'tls_key_file' = {self.key_file!r}: "
                    f"cannot load the client certificate and key ({exc})"
                ) from None
        return ctx

    def redis_py_options(self) -> dict[str, Any]:
        """The same options as redis-py's ``ssl_*`` keyword arguments (redis-py builds its
        own context per connection from them; it takes no SSLContext)."""
        options: dict[str, Any] = {
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": self.check_hostname,
            "ssl_min_version": MIN_VERSION,
        }
        if self.ca_file is not None:
            options["ssl_ca_certs"] = self.ca_file
        if self.cert_file is not None:
            options["ssl_certfile"] = self.cert_file
            options["ssl_keyfile"] = self.key_file
        return options


def describe_tls_failure(exc: BaseException) -> str | None:
    """An operator-facing reason when `exc` is a failed TLS handshake, else None."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate was not accepted ({exc.verify_message}); "
            "check 'tls_ca_file' (the CA that signed it) and the host name it is issued for"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake failed ({exc.reason or exc}); is the server speaking TLS on this port?"
        )
    return None


def connect_failure(address: object, exc: BaseException) -> str:
    """The operator's message for a connection to `address` that failed with `exc` (TLS
    options that cannot be used, a refused or timed-out connect, a failed handshake)."""
    if isinstance(exc, TlsError):
        reason = str(exc)
    else:
        reason = describe_tls_failure(exc) or str(exc) or repr(exc)
    return f"cannot connect to {address}: {reason}"
