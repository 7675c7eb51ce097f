"""Where and as whom to connect to a Redis: the one address type, parsed once from a URL."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from replication.tls import TlsOptions


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A server, a database, the credentials and, for ``rediss://``, how TLS verifies the
    server (`tls`; None: plain TCP). `password` is a secret: `repr` shows only whether one
    is set, `str` names the server alone (for logs and error messages)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None

    @classmethod
    def from_url(
        cls, url: str, *, password: str | None = None, tls: TlsOptions | None = None
    ) -> RedisAddress:
        """Parse ``redis[s]://[user[:password]@]host[:port][/db]``; an explicit `password`
        wins over one in the URL (an empty one is none). ``rediss://`` connects with TLS,
        verified by `tls` (default: the system's CAs, host name checked); `tls` with a
        ``redis://`` URL is an error, not a silent plain connection. Raises ValueError
        naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(
                f"unsupported Redis URL scheme {parts.scheme!r} (want redis:// or rediss://)"
            )
        if parts.scheme == "redis" and tls is not None:
            raise ValueError("TLS options are set but the URL is redis://: use rediss://")
        if not parts.hostname:
            raise ValueError("the Redis URL has no host")
        db_text = parts.path.lstrip("/")
        if db_text and not (db_text.isascii() and db_text.isdigit()):
            raise ValueError(f"the Redis URL's database {db_text!r} is not a number")
        in_url = unquote(parts.password) if parts.password else None
        return cls(
            host=parts.hostname,
            port=parts.port or 6379,  # ValueError for a port that is not a number
            db=int(db_text) if db_text else 0,
            username=unquote(parts.username) if parts.username else None,
            password=password or in_url,
            tls=(tls or TlsOptions()) if parts.scheme == "rediss" else None,
        )

    def for_db(self, db: int) -> RedisAddress:
        """The same server and credentials, another database."""
        return dataclasses.replace(self, db=db)

    def auth_command(self) -> tuple[str, ...] | None:
        """The AUTH command for these credentials, or None without a password."""
        if self.password is None:
            return None
        if self.username:
            return ("AUTH", self.username, self.password)
        return ("AUTH", self.password)

    def __repr__(self) -> str:
        secret = "'********'" if self.password is not None else "None"
        return (
            f"RedisAddress(host={self.host!r}, port={self.port}, db={self.db}, "
            f"username={self.username!r}, password={secret}, tls={self.tls!r})"
        )

    def __str__(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"
