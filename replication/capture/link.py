"""The capture's connection to Redis: a TCP link that reads everything available at once.

Both capture sources talk to Redis through :class:`RespLink`: first as an ordinary client
(request, reply: :meth:`RespLink.reply`), then, for the stream source after ``PSYNC``, as a
byte stream handed to the parser in bulk. Reading pauses when a bound of bytes is buffered
and nobody takes them, so backpressure reaches TCP and the server.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import hiredis

from replication.capture.batch import CaptureConnectionError, CaptureProtocolError
from replication.redis.address import RedisAddress
from replication.redis.errors import error_code
from replication.tls import TlsError, connect_failure


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP (hiredis's C packer; its stub types the tuple too narrowly)."""
    return bytes(hiredis.pack_command(cast(Any, args)))


class ServerError(Exception):
    """An error reply (``-ERR ...``) from the server, for the caller to classify."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(f"{command}: {message}")
        self.command = command
        self.message = message

    @property
    def code(self) -> str:
        """The error code: ``ERR``, ``NOPERM``, ``LOADING``..."""
        return error_code(self.message)


class RespLink(asyncio.Protocol):
    """A TCP connection with explicit buffering: read everything available at once.

    ``read()`` returns every byte received so far (waiting for at least one), which is what
    lets the parser work in bulk and tell "nothing more right now" from "more to come".
    Reading pauses when ``high_water`` bytes are buffered and nobody takes them
    (backpressure reaches TCP), and resumes when they are taken.
    """

    def __init__(self, high_water: int) -> None:
        self._high_water = high_water
        self._chunks: list[bytes] = []
        self._size = 0
        self._paused = False
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._lost_reason: str = "connection closed by the server"
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reader = hiredis.Reader()
        """Parses request/response replies before the link turns into a stream."""

    @classmethod
    async def open(cls, address: RedisAddress, *, high_water: int, timeout_s: float) -> RespLink:
        """Connect to `address`, with TLS for a rediss:// address (TCP keepalive on, so a
        dead peer is noticed)."""
        loop = asyncio.get_running_loop()
        try:
            ssl_context = address.tls.context() if address.tls is not None else None
            async with asyncio.timeout(timeout_s):
                transport, link = await loop.create_connection(
                    lambda: cls(high_water),
                    address.host,
                    address.port,
                    ssl=ssl_context,
                    ssl_handshake_timeout=timeout_s if ssl_context else None,
                )
        except (TlsError, OSError, TimeoutError) as exc:
            raise CaptureConnectionError(connect_failure(address, exc)) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return link

    # asyncio.Protocol callbacks -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._high_water and not self._paused and self._transport:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if exc is not None:
            self._lost_reason = f"connection lost: {exc!r}"
        self._wake()
        if not self._closed.done():
            self._closed.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # reading -------------------------------------------------------------------------
    @property
    def available(self) -> int:
        """Bytes received and not yet read."""
        return self._size

    @property
    def lost(self) -> bool:
        return self._lost

    async def read(self, timeout_s: float) -> bytes:
        """Everything received so far; waits up to `timeout_s` for at least one byte."""
        if not self._chunks:
            if self._lost:
                raise CaptureConnectionError(self._lost_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError:
                raise CaptureConnectionError(
                    f"no data from the server for {timeout_s:g}s"
                ) from None
            finally:
                self._waiter = None
            if not self._chunks:
                raise CaptureConnectionError(self._lost_reason)
        return self.read_nowait()

    def read_nowait(self) -> bytes:
        """Everything received so far (possibly b"")."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def reply(self, command: str, timeout_s: float) -> Any:
        """The next RESP reply (for the request/response phase); error replies raise."""
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                raise CaptureProtocolError(f"bad reply to {command}: {exc}") from exc
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise ServerError(command, str(reply))
                return reply
            self.reader.feed(await self.read(timeout_s))

    # writing and closing ---------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send bytes unless the connection is going away (ACKs are best effort)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def close(self) -> None:
        """Close and wait until the transport is really gone (no leaked sockets)."""
        transport = self._transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(self._closed)
        except TimeoutError:
            transport.abort()
