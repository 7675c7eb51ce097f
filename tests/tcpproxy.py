"""A TCP proxy with runtime-switchable network faults, for tests on loopback.

Put it between a client and a server to inject real network faults instead of mocking
anything: added latency, reset connections, lost requests, lost replies, a region cut off,
a black hole that accepts and never answers. It runs its own asyncio event loop in a
daemon thread, so threaded (sync) tests and asyncio tests use it the same way::

    with TcpProxy(server.port) as proxy:
        client = redis.Redis.from_url(proxy.url)
        proxy.set_fault(Fault.delay(200))             # every request +200 ms
        proxy.set_fault(Fault.drop_requests(0.3))     # 30% of requests: connection reset
        proxy.set_fault(Fault.drop_requests(0.3, after_forward=True))  # reset after the
                                                      # server got the request (reply lost)
        proxy.set_fault(Fault.reset_connections(0.5)) # half of new connections reset
        proxy.set_fault(Fault.cut_off())              # every connection reset
        proxy.set_fault(Fault.blackhole())            # accepted, never answered
        proxy.set_fault(Fault.none())                 # pass-through again

A "request" is one chunk read from the client; with Redis that is one command, or one
pipeline's worth. Resets are real TCP resets (``SO_LINGER`` 0). Random choices use the
proxy's own seeded generator, so a test can make a fault pattern reproducible.
``stats`` counts what happened (connections, requests, drops), for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Fault", "ProxyStats", "TcpProxy"]

_LOOPBACK = "127.0.0.1"
_CHUNK = 65536
_REPLY_GRACE_S = 2.0  # how long a lost reply is awaited (and discarded) before closing


@dataclass(frozen=True)
class Fault:
    """What the proxy does to traffic; build one with the class methods below.

    Fields combine freely (``Fault(delay_ms=50, drop_request_fraction=0.1)``).
    """

    delay_ms: float = 0.0
    """Every client-to-server request waits this long before it is forwarded."""
    reset_connection_fraction: float = 0.0
    """Fraction of new client connections reset as soon as they are accepted."""
    drop_request_fraction: float = 0.0
    """Fraction of requests on which the client connection is reset."""
    drop_after_forward: bool = False
    """With drop_request_fraction: the dropped request reaches the server first (so it is
    executed and only the reply is lost), instead of never reaching it."""
    refuse_all: bool = False
    """Reset every connection, existing and new (a region cut off)."""
    swallow_all: bool = False
    """Accept connections and read requests, but never forward or answer anything."""

    def __post_init__(self) -> None:
        for name in ("reset_connection_fraction", "drop_request_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {self.delay_ms}")

    @classmethod
    def none(cls) -> Fault:
        """Pass everything through untouched."""
        return cls()

    @classmethod
    def delay(cls, ms: float) -> Fault:
        """Add `ms` of latency to every request."""
        return cls(delay_ms=ms)

    @classmethod
    def reset_connections(cls, fraction: float) -> Fault:
        """Reset this fraction of new connections at accept."""
        return cls(reset_connection_fraction=fraction)

    @classmethod
    def drop_requests(cls, fraction: float, *, after_forward: bool = False) -> Fault:
        """Reset the connection on this fraction of requests (see `drop_after_forward`)."""
        return cls(drop_request_fraction=fraction, drop_after_forward=after_forward)

    @classmethod
    def cut_off(cls) -> Fault:
        """Refuse everything: every connection is reset."""
        return cls(refuse_all=True)

    @classmethod
    def blackhole(cls) -> Fault:
        """Accept and swallow everything; never answer (timeouts, not errors)."""
        return cls(swallow_all=True)


@dataclass
class ProxyStats:
    """Counters updated by the proxy thread (reads from other threads are safe)."""

    connections: int = 0
    """Client connections accepted."""
    connections_reset: int = 0
    """Client connections reset at accept or by cut-off."""
    requests: int = 0
    """Requests (chunks) read from clients."""
    forwarded: int = 0
    """Requests forwarded to the server."""
    dropped: int = 0
    """Requests on which the connection was reset (before or after forwarding)."""
    swallowed: int = 0
    """Requests read and discarded by a black hole."""


class _Pair:
    """One proxied connection: the client side and (once opened) the server side."""

    __slots__ = ("client", "client_reset", "server")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.client_reset = False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN: the peer sees 'connection reset'."""
    transport = writer.transport
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TcpProxy:
    """A loopback TCP proxy to ``upstream_host:upstream_port`` with switchable faults."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = _LOOPBACK,
        listen_port: int = 0,
        seed: int | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listen_port = listen_port
        self._rng = random.Random(seed)
        self._fault = Fault()
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name=f"tcpproxy->{upstream_port}", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self.port = 0
        self._started = False
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> TcpProxy:
        """Start listening on 127.0.0.1 (a free port unless one was given)."""
        if self._started:
            return self
        self._started = True
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(timeout=10)
        return self

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, _LOOPBACK, self._listen_port)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def stop(self) -> None:
        """Close the listener and every connection, stop the thread. Safe to call twice."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # Reset connections end their handlers; cancelling a handler instead would make
        # asyncio's stream callback log the CancelledError. Every task of the loop is
        # awaited, not only the handlers that had started: one accepted just before the
        # listener closed had not run yet, and left pending it would be destroyed with the
        # loop, its sockets unclosed, failing a later test on the ResourceWarning.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        while others:
            self._reset_all()
            _, stragglers = await asyncio.wait(others, timeout=5)
            for task in stragglers:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            others = asyncio.all_tasks() - {asyncio.current_task()}

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``: the proxy as a Redis URL."""
        return f"redis://{_LOOPBACK}:{self.port}/0"

    @property
    def fault(self) -> Fault:
        """The fault in force."""
        return self._fault

    def set_fault(self, fault: Fault) -> None:
        """Switch to `fault` now; a cut-off also resets the connections already open."""
        self._fault = fault
        if fault.refuse_all:
            self.reset_all()

    def reset_all(self) -> None:
        """Reset every open connection (the listener keeps accepting)."""
        done = threading.Event()

        def reset() -> None:
            self._reset_all()
            done.set()

        self._loop.call_soon_threadsafe(reset)
        done.wait(timeout=10)

    def _reset_all(self) -> None:
        for pair in list(self._pairs):
            pair.client_reset = True
            self.stats.connections_reset += 1
            _reset(pair.client)
            if pair.server is not None:
                _reset(pair.server)

    # -- traffic ----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pair = _Pair(writer)
        self._pairs.add(pair)
        self.stats.connections += 1
        try:
            fault = self._fault
            if fault.refuse_all or self._chance(fault.reset_connection_fraction):
                self.stats.connections_reset += 1
                _reset(writer)
                return
            if fault.swallow_all:
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                _reset(writer)
                return
            pair.server = up_writer
            await self._pump(pair, reader, up_reader, up_writer)
        finally:
            self._pairs.discard(pair)
            writers = [w for w in (writer, pair.server) if w is not None]
            try:
                for each in writers:
                    await self._close(each)
            except asyncio.CancelledError:
                # Cancelled by the shutdown while closing: the other side would be left
                # open, its socket unclosed when the loop goes (a ResourceWarning failing a
                # later test). Abort both.
                for each in writers:
                    each.transport.abort()
                raise

    async def _pump(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        upward = asyncio.create_task(self._client_to_server(pair, reader, up_writer))
        downward = asyncio.create_task(self._server_to_client(pair, up_reader))
        try:
            await asyncio.wait({upward, downward}, return_when=asyncio.FIRST_COMPLETED)
            if upward.done() and pair.client_reset and not downward.done():
                # A request went up and its reply must still reach the server's side of the
                # story (executed) but not the client: wait for it briefly, discard it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(downward), _REPLY_GRACE_S)
        finally:
            for task in (upward, downward):
                task.cancel()
            await asyncio.gather(upward, downward, return_exceptions=True)

    async def _client_to_server(
        self, pair: _Pair, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter
    ) -> None:
        stats = self.stats
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                return
            if not data:
                return
            stats.requests += 1
            fault = self._fault
            if fault.swallow_all:
                stats.swallowed += 1
                continue
            if fault.refuse_all:
                self._drop(pair, forward=False)
                return
            if fault.delay_ms > 0:
                await asyncio.sleep(fault.delay_ms / 1000.0)
            if self._chance(fault.drop_request_fraction):
                if fault.drop_after_forward:
                    up_writer.write(data)
                    stats.forwarded += 1
                self._drop(pair, forward=fault.drop_after_forward)
                return
            up_writer.write(data)
            stats.forwarded += 1
            try:
                await up_writer.drain()
            except OSError:
                return

    async def _server_to_client(self, pair: _Pair, up_reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await up_reader.read(_CHUNK)
            except OSError:
                return
            if not data:
                return
            if pair.client_reset:
                return  # the reply is lost on purpose
            pair.client.write(data)
            try:
                await pair.client.drain()
            except OSError:
                return

    def _drop(self, pair: _Pair, *, forward: bool) -> None:
        self.stats.dropped += 1
        pair.client_reset = True
        _reset(pair.client)
        if not forward and pair.server is not None:
            _reset(pair.server)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                return
            if not data:
                return
            self.stats.requests += 1
            self.stats.swallowed += 1

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        if not writer.transport.is_closing():
            writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def _chance(self, fraction: float) -> bool:
        return fraction > 0.0 and (fraction >= 1.0 or self._rng.random() < fraction)
