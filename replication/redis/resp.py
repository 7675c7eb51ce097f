"""A lean asyncio Redis connection for the hot paths (versioning, applying, scanning).

Commands are packed with `hiredis.pack_command` and replies parsed with `hiredis.Reader`,
many per round trip. Building redis-py command objects costs more than Redis executing a
short script, so the write path talks RESP directly; everything else uses redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis

from replication.errors import ReconcilerError
from replication.redis.address import RedisAddress
from replication.redis.errors import error_code, is_retriable
from replication.tls import TlsError, connect_failure

Command = Sequence[bytes | str | int | float]


class RedisUnavailableError(ReconcilerError):
    """The region's Redis cannot be reached or dropped the connection."""

    retriable = True


class RedisCommandError(ReconcilerError):
    """Redis answered a command with an error; retriable when its code says the server
    will serve it soon (`replication.redis.errors`)."""

    def __init__(self, message: str, reply: object = None) -> None:
        super().__init__(message)
        self.code = error_code(reply)
        self.retriable = is_retriable(reply)


class RespConnection:
    """One connection; `pipeline` sends many commands and reads all replies at once.

    Use from one task at a time per connection (an internal lock enforces it).
    """

    def __init__(
        self, address: RedisAddress, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.address = address
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader()
        self._lock = asyncio.Lock()
        self.closed = False

    @classmethod
    async def open(cls, address: RedisAddress, *, timeout_s: float = 5.0) -> RespConnection:
        """Connect (with TLS for a rediss:// address), authenticate and select the database."""
        try:
            ssl_context = address.tls.context() if address.tls is not None else None
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(
                    address.host,
                    address.port,
                    ssl=ssl_context,
                    ssl_handshake_timeout=timeout_s if ssl_context else None,
                )
        except (TlsError, OSError, TimeoutError) as exc:
            raise RedisUnavailableError(connect_failure(address, exc)) from exc
        conn = cls(address, reader, writer)
        try:
            setup: list[Command] = []
            auth = address.auth_command()
            if auth is not None:
                setup.append(auth)
            if address.db:
                setup.append(["SELECT", address.db])
            if setup:
                for reply in await conn.pipeline(setup):
                    if isinstance(reply, hiredis.ReplyError):
                        raise RedisCommandError(f"{address}: setup refused: {reply}", reply)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send all commands, return all replies in order (errors as hiredis.ReplyError)."""
        if not commands:
            return []
        # hiredis's stub types pack_command as a 1-tuple; it takes any length.
        payload = b"".join(hiredis.pack_command(tuple(cmd)) for cmd in commands)  # type: ignore[arg-type]
        async with self._lock:
            if self.closed:
                raise RedisUnavailableError(f"connection to {self.address} is closed")
            try:
                self._writer.write(payload)
                replies: list[Any] = []
                want = len(commands)
                while len(replies) < want:
                    reply = self._parser.gets()
                    if reply is False:
                        data = await self._reader.read(1 << 16)
                        if not data:
                            raise RedisUnavailableError(f"{self.address} closed the connection")
                        self._parser.feed(data)
                        continue
                    replies.append(reply)
                return replies
            except (OSError, asyncio.IncompleteReadError) as exc:
                await self._abort()
                raise RedisUnavailableError(f"connection to {self.address} lost: {exc}") from exc
            except BaseException:
                # Cancelled mid-pipeline: the stream is out of step with the replies.
                await self._abort()
                raise

    async def execute(self, *command: bytes | str | int | float) -> Any:
        """One command; raises RedisCommandError if Redis answers an error."""
        (reply,) = await self.pipeline([command])
        if isinstance(reply, hiredis.ReplyError):
            raise RedisCommandError(f"{command[0]!r} failed: {reply}", reply)
        return reply

    async def _abort(self) -> None:
        self.closed = True
        self._writer.close()

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        if self.closed and self._writer.is_closing():
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            return
        self.closed = True
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
