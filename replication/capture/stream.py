"""The replication-stream tailer: we register with the region's Redis as a replica.

How it works
------------
One TCP connection per session. Before ``PSYNC`` it is an ordinary client: ``AUTH``,
``INFO replication`` (the server's ``master_repl_offset`` *now*, the end of the replay
window), ``COMMAND`` (the key specs, compiled by :class:`~replication.capture.commands.KeyTable`),
``REPLCONF listening-port``, ``REPLCONF capa eof capa psync2``. Then
``PSYNC <replid> <offset+1>`` from the acknowledged position, or ``PSYNC ? -1`` without one.

* ``+CONTINUE [<replid>]``: the stream goes on right after our offset (a new replid after a
  failover is the same history under a new name: not a gap).
* ``+FULLRESYNC <replid> <offset>``: an RDB snapshot follows, which we skip unread in both
  forms (``$<len>\\r\\n<bytes>``, and diskless ``$EOF:<mark>\\r\\n<bytes><mark>``), then the
  stream starts at that offset. Asked to continue, this is a **gap** (``"full-resync"``);
  without a stored position it is the ``"initial"`` gap. Either way the gap is delivered at
  once as a batch with no keys, before the RDB is skipped.

The stream is parsed with ``hiredis.Reader`` in bulk (all bytes available at once, many
commands per feed). Every byte after the RDB counts in the offset, master ``PING`` and
``REPLCONF GETACK`` included; the master writes canonical RESP, so each command's length is
computed from its arguments and our offset equals the master's ``master_repl_offset`` once
caught up. Bare ``\\n`` keep-alives (sent by a replica whose own master is down) do not count.

Acknowledgement
---------------
``REPLCONF ACK <offset>`` reports what the consumer confirmed with :meth:`ack`, never what
was parsed: Redis's ``WAIT`` and ``min-replicas-to-write`` then mean "handed on by the
daemon". It is sent about once a second (Redis drops a silent replica after
``repl-timeout``), at once when the acknowledged offset advances, and in answer to
``GETACK``. Until the consumer acknowledges the gap batch of a full resync, we report 0:
nothing of the new history has been handed on. A reconnect continues from the
acknowledged position; what was parsed but not acknowledged is simply replayed.

Replay window
-------------
Every batch whose commands all lie at or below the ``master_repl_offset`` read just before
``PSYNC`` is marked ``replay=True``: those commands existed before we connected and may have
been versioned before a crash. Batches never straddle that offset.

Backpressure
------------
Batches wait in a small bounded queue. When it is full the parser stops, the socket buffer
fills to ``read_high_water_bytes`` and we stop reading it; TCP then pushes back on the server,
whose output buffer for us grows. Past ``client-output-buffer-limit replica`` Redis drops
the connection; we come back with ``PSYNC`` from the acknowledged position (a gap if the
backlog no longer holds it). Memory here stays bounded either way.

Reconnects use capped exponential backoff with full jitter; the backoff resets once a
session has lived ``healthy_session_s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import filterfalse
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import hiredis

from replication.backoff import Backoff
from replication.capture.batch import (
    GAP_FLUSH,
    GAP_FULL_RESYNC,
    GAP_INITIAL,
    GAP_SWAPDB,
    CaptureAuthError,
    CaptureBatch,
    CaptureConnectionError,
    CaptureProtocolError,
    CaptureStats,
    Gap,
    PsyncRefusedError,
    now_ms,
)
from replication.capture.commands import (
    Extractor,
    KeyTable,
    Special,
    apply,
    copy_target_db,
    is_getack,
    parse_db,
)
from replication.capture.position import CapturePosition, PositionStore
from replication.errors import ReconcilerError
from replication.model.keys import is_internal
from replication.redis.address import RedisAddress
from replication.redis.errors import error_code, is_retriable

log = logging.getLogger(__name__)

T = TypeVar("T")

# ---------------------------------------------------------------------------------------
# Connection plumbing shared with the notifications source
# ---------------------------------------------------------------------------------------


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
        """Connect to `address` (TCP keepalive on, so a dead peer is noticed)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                transport, link = await loop.create_connection(
                    lambda: cls(high_water), address.host, address.port
                )
        except (OSError, TimeoutError) as exc:
            raise CaptureConnectionError(f"cannot connect to {address}: {exc!r}") from exc
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


class BatchChannel(Generic[T]):
    """A bounded queue between the parser (producers) and the one consumer, closable.

    ``put`` waits while the queue is full: that wait is the backpressure. ``close(error)``
    wakes everyone; the consumer then gets the remaining items (unless dropped) and then
    the error, or None for a clean end.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._maxsize = max(1, maxsize)
        self._closed = False
        self._error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, item: T) -> bool:
        """Queue `item`, waiting for room; False if the channel is closed (item dropped)."""
        while len(self._items) >= self._maxsize and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._items.append(item)
        self._readable.set()
        return True

    async def get(self) -> T | None:
        """The next item; None once closed cleanly; raises the error it was closed with."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item

    def close(self, error: BaseException | None = None, *, drop: bool = False) -> None:
        """No more items; `drop` discards those not yet taken."""
        if not self._closed:
            self._closed = True
            self._error = error
        if drop:
            self._items.clear()
        self._readable.set()
        self._writable.set()


async def run_together(*coros: Any) -> None:
    """Run coroutines as tasks until the first one ends; cancel and await the others.

    Re-raises the first exception (or returns when one finishes cleanly). Used for the
    parts of one session (reader and ACK timer) so that no task outlives its connection.
    """
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------
# PSYNC reply and RDB skipping (sans-IO)
# ---------------------------------------------------------------------------------------

_RDB_EOF_MARK_SIZE = 40
_MAX_LINE = 4096


class PsyncState(enum.Enum):
    REPLY = "reply"
    """Waiting for +FULLRESYNC / +CONTINUE (bare newlines may come first)."""
    BULK_HEADER = "bulk-header"
    """After +FULLRESYNC: waiting for ``$<len>`` or ``$EOF:<mark>`` (newlines may come)."""
    RDB_LENGTH = "rdb-length"
    RDB_EOF = "rdb-eof"
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class PsyncReply:
    """The master's answer to PSYNC."""

    full: bool
    replid: str | None
    offset: int | None


class PsyncReplyParser:
    """Consumes the bytes after ``PSYNC`` up to the start of the command stream.

    Feed it any chunks (split anywhere); :meth:`feed` returns the bytes of the chunk that
    belong to the command stream (``b""`` until the RDB is behind us). Keep-alive newlines
    before the reply and before the RDB header are skipped; the RDB payload is counted in
    :attr:`rdb_bytes` and dropped.
    """

    def __init__(self) -> None:
        self.state = PsyncState.REPLY
        self.reply: PsyncReply | None = None
        self.rdb_bytes = 0
        self.rdb_size: int | None = None
        """Announced RDB size (length form), None for the diskless EOF form."""
        self.eof_mark: bytes | None = None
        self._line = bytearray()
        self._remaining = 0
        self._tail = b""

    @property
    def done(self) -> bool:
        return self.state is PsyncState.STREAM

    def feed(self, data: bytes) -> bytes:
        """Consume `data`; return the part that belongs to the command stream."""
        view = data
        while view:
            state = self.state
            if state is PsyncState.STREAM:
                return view
            if state is PsyncState.RDB_LENGTH:
                take = min(self._remaining, len(view))
                self._remaining -= take
                self.rdb_bytes += take
                view = view[take:]
                if not self._remaining:
                    self.state = PsyncState.STREAM
                continue
            if state is PsyncState.RDB_EOF:
                view = self._skip_to_mark(view)
                continue
            line, view = self._take_line(view)
            if line is not None:
                self._on_line(line)
        return b""

    def _take_line(self, view: bytes) -> tuple[bytes | None, bytes]:
        end = view.find(b"\n")
        if end < 0:
            self._line += view
            if len(self._line) > _MAX_LINE:
                raise CaptureProtocolError("PSYNC reply line too long")
            return None, b""
        self._line += view[:end]
        line = bytes(self._line).rstrip(b"\r")
        self._line.clear()
        return line, view[end + 1 :]

    def _on_line(self, line: bytes) -> None:
        if not line:
            return  # keep-alive newline while the master prepares the RDB
        if self.state is PsyncState.REPLY:
            if line.startswith(b"-"):
                raise ServerError("PSYNC", line[1:].decode(errors="replace"))
            words = line.split()
            if words[0] == b"+FULLRESYNC" and len(words) == 3:
                self.reply = PsyncReply(True, words[1].decode(), int(words[2]))
                self.state = PsyncState.BULK_HEADER
                return
            if words[0] == b"+CONTINUE" and len(words) <= 2:
                replid = words[1].decode() if len(words) == 2 else None
                self.reply = PsyncReply(False, replid, None)
                self.state = PsyncState.STREAM
                return
            raise CaptureProtocolError(f"unexpected PSYNC reply {line[:80]!r}")
        # BULK_HEADER
        if line.startswith(b"-"):
            raise CaptureConnectionError(
                f"master aborted the full sync: {line[1:].decode(errors='replace')}"
            )
        if not line.startswith(b"$"):
            raise CaptureProtocolError(f"expected the RDB header, got {line[:80]!r}")
        if line.startswith(b"$EOF:"):
            mark = line[5:]
            if len(mark) != _RDB_EOF_MARK_SIZE:
                raise CaptureProtocolError(f"bad RDB EOF mark {line[:80]!r}")
            self.eof_mark = mark
            self.state = PsyncState.RDB_EOF
            return
        self.rdb_size = self._remaining = int(line[1:])
        self.state = PsyncState.RDB_LENGTH if self._remaining else PsyncState.STREAM

    def _skip_to_mark(self, view: bytes) -> bytes:
        mark = self.eof_mark
        assert mark is not None
        # The mark may straddle two chunks: search the previous chunk's tail as well.
        window = self._tail + view
        found = window.find(mark)
        if found < 0:
            keep = _RDB_EOF_MARK_SIZE - 1
            self.rdb_bytes += len(view)
            self._tail = window[-keep:]
            return b""
        end = found + _RDB_EOF_MARK_SIZE
        consumed_here = end - len(self._tail)
        self.rdb_bytes += consumed_here - _RDB_EOF_MARK_SIZE
        self._tail = b""
        self.state = PsyncState.STREAM
        return view[consumed_here:]


# ---------------------------------------------------------------------------------------
# Command stream parsing (sans-IO): offsets, dbs, keys, batches
# ---------------------------------------------------------------------------------------

# Bytes of RESP framing around the payload: "*<n>\r\n" for the array, and
# "$<len>\r\n" + "\r\n" for each argument. Tables make the per-argument cost one lookup.
_HEADER = [len(b"*%d\r\n" % n) for n in range(1024)]
_FRAMED = [m + 5 + len(str(m)) for m in range(65536)]  # an argument of m bytes, framed
_NEVER = 1 << 62
_FEED_SLICE = 16 << 10


def command_size(argv: Sequence[bytes]) -> int:
    """Bytes of `argv` as the master writes it (canonical RESP multibulk)."""
    size = len(b"*%d\r\n" % len(argv))
    for arg in argv:
        size += len(arg) + 5 + len(str(len(arg)))
    return size


class StreamParser:
    """Turns replication-stream bytes into :class:`CaptureBatch` es, tracking the offset.

    Feed bytes with :meth:`feed`, then call :meth:`fill` until it returns False
    ("nothing more parseable"); whenever it returns True a batch is ready (full, or cut
    before a command that must start a new batch) and :meth:`take` returns it. After
    ``fill()`` returns False, :meth:`take` returns the partial batch (if any) when the
    caller knows no more bytes are available right now.
    """

    def __init__(
        self,
        table: KeyTable,
        *,
        dbs: frozenset[int],
        offset: int,
        replid: str,
        db: int = 0,
        replay_until: int = -1,
        max_commands: int = 4096,
        max_bytes: int = 4 << 20,
        on_getack: Callable[[], None] | None = None,
        on_unknown: Callable[[bytes, str], None] | None = None,
        feed_slice_bytes: int = _FEED_SLICE,
    ) -> None:
        self._table = table
        self._feed_slice_bytes = max(1, feed_slice_bytes)
        self._dbs = dbs
        self._offset = offset
        self.replid = replid
        self._db = db
        self._replay_until = replay_until
        self._cut_at = replay_until if offset < replay_until else _NEVER
        self._max_commands = max(1, max_commands)
        self._max_bytes = max(1, max_bytes)
        self._on_getack = on_getack
        self._on_unknown = on_unknown
        self._reader = hiredis.Reader()
        self._reader_base = offset  # offset when the current reader started
        self._fed = 0  # bytes fed to the current reader
        # Input not yet handed to hiredis, fed in slices (see _FEED_SLICE).
        self._buf = b""
        self._pos = 0
        self._slice = (0, 0)
        self._stash: tuple[list[bytes], int] | None = None
        self.skipped_newlines = 0
        # the open batch
        self._keys: dict[int, set[bytes]] = {}
        self._cur: set[bytes] | None = None
        self._count = 0
        self._nbytes = 0
        self._gap: Gap | None = None
        self._flushed: set[int] = set()
        self._select(db)

    @property
    def offset(self) -> int:
        """Stream offset after the last command taken into a batch."""
        return self._offset

    @property
    def db(self) -> int:
        """The db selected at :attr:`offset`."""
        return self._db

    @property
    def pending(self) -> bool:
        """Whether the open batch holds anything worth delivering."""
        return bool(self._count or self._gap is not None or self._flushed)

    def feed(self, data: bytes) -> None:
        """Add stream bytes (any amount: hiredis gets them in small slices)."""
        if not data:
            return
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos :] + data
        else:
            self._buf = data
        self._pos = 0
        self._slice = (0, 0)

    def _feed_slice(self) -> bool:
        """Hand hiredis the next slice of input; False when there is none.

        hiredis compacts its buffer every time a KiB has been consumed, so parsing cost
        grows with the bytes it holds: 4 MiB fed at once parse ~7x slower than 16 KiB
        slices (measured here; see BENCHMARKS.md).
        """
        start = self._pos
        end = min(start + self._feed_slice_bytes, len(self._buf))
        if end <= start:
            return False
        self._reader.feed(self._buf, start, end - start)
        self._fed += end - start
        self._slice = (start, end)
        self._pos = end
        return True

    def take(self) -> CaptureBatch:
        """Close the open batch and return it."""
        keys: dict[int, frozenset[bytes]] = {}
        for db, touched in self._keys.items():
            user_keys = frozenset(filterfalse(is_internal, touched))
            if user_keys:
                keys[db] = user_keys
        batch = CaptureBatch(
            keys=keys,
            flushed_dbs=frozenset(self._flushed),
            gap=self._gap,
            end_offset=self._offset,
            replid=self.replid,
            commands=self._count,
            replay=self._count > 0 and self._offset <= self._replay_until,
        )
        self._keys = {}
        self._count = 0
        self._nbytes = 0
        self._gap = None
        self._flushed = set()
        self._select(self._db)
        return batch

    def _select(self, db: int) -> None:
        self._db = db
        self._cur = self._keys.setdefault(db, set()) if db in self._dbs else None

    def _keys_of(self, db: int) -> set[bytes]:
        return self._keys.setdefault(db, set())

    def fill(self) -> bool:
        """Parse into the open batch; True when a batch is ready, False when out of bytes."""
        if self._stash is not None:
            argv, size = self._stash
            self._stash = None
            if self._process(argv, size):  # pragma: no cover - a fresh batch never cuts
                raise AssertionError("a command cut an empty batch")
            if self._full():
                return True
        # The hot loop: locals only, the common shapes (arity, extractor) inline.
        gets = self._reader.gets
        fast_get = self._table.fast.get
        framed = _FRAMED
        offset = self._offset
        count = self._count
        nbytes = self._nbytes
        max_bytes = self._max_bytes
        cut_at = self._cut_at
        cur = self._cur
        ready = False
        try:
            for _ in range(self._max_commands - count):
                try:
                    argv = gets()
                except hiredis.ProtocolError:
                    self._offset = offset
                    argv = self._refill(recovering=True)
                    gets = self._reader.gets
                if argv is False:
                    self._offset = offset
                    argv = self._refill(recovering=False)
                    gets = self._reader.gets
                    if argv is False:
                        break
                # Exact RESP length: "*<n>\r\n", then "$<len>\r\n<arg>\r\n" per argument.
                try:
                    nargs = len(argv)
                    if nargs == 3:
                        size = 4 + framed[len(argv[0])] + framed[len(argv[1])]
                        size += framed[len(argv[2])]
                    elif nargs == 4:
                        size = 4 + framed[len(argv[0])] + framed[len(argv[1])]
                        size += framed[len(argv[2])] + framed[len(argv[3])]
                    else:
                        size = _HEADER[nargs]
                        for arg in argv:
                            size += framed[len(arg)]
                except IndexError:
                    size = command_size(argv)  # an argument of 64 KiB or more
                end = offset + size
                if end > cut_at:
                    # The first command past the replay window starts a new batch.
                    cut_at = self._cut_at = _NEVER
                    if count:
                        self._stash = (argv, size)
                        ready = True
                        break
                extractor = fast_get(argv[0])
                if extractor.__class__ is int:
                    if extractor and cur is not None:
                        cur.add(argv[extractor])
                elif extractor.__class__ is slice:
                    if cur is not None:
                        cur.update(argv[extractor])
                else:
                    self._offset, self._count, self._nbytes = offset, count, nbytes
                    if self._process_slow(argv, extractor):
                        self._stash = (argv, size)
                        ready = True
                        break
                    cur = self._cur
                offset = end
                count += 1
                nbytes += size
                if nbytes >= max_bytes:
                    ready = True
                    break
            else:
                ready = True  # the command budget of the batch is used up
        except (TypeError, IndexError, hiredis.ProtocolError) as exc:
            raise CaptureProtocolError(
                f"unparseable replication stream near offset {offset}: {exc!r}"
            ) from exc
        finally:
            self._offset, self._count, self._nbytes = offset, count, nbytes
        return ready

    def _refill(self, *, recovering: bool) -> Any:
        """The next command once hiredis ran dry or choked; False when the input is used up.

        Feeds the next slice, and skips keep-alive newlines (see _recover_from_newlines).
        """
        while True:
            if recovering:
                if not self._recover_from_newlines():
                    raise CaptureProtocolError(
                        f"unparseable replication stream near offset {self._offset}"
                    )
                recovering = False
            elif not self._feed_slice():
                return False
            try:
                argv = self._reader.gets()
            except hiredis.ProtocolError:
                recovering = True
                continue
            if argv is not False:
                return argv

    def _full(self) -> bool:
        return self._count >= self._max_commands or self._nbytes >= self._max_bytes

    def _process(self, argv: list[bytes], size: int) -> bool:
        """The general path for one command (stashed commands); True to cut before it."""
        extractor = self._table.fast.get(argv[0])
        if extractor.__class__ is int or extractor.__class__ is slice:
            if self._cur is not None:
                self._cur.update(apply(extractor, argv))
        elif self._process_slow(argv, extractor):
            return True
        self._offset += size
        self._count += 1
        self._nbytes += size
        return False

    def _process_slow(self, argv: list[bytes], extractor: Extractor | None) -> bool:
        """Commands beyond one key / one slice. True when the batch must be cut before it."""
        if extractor is None:
            extractor = self._table.resolve(argv[0])
        try:
            if isinstance(extractor, Special):
                return self._special(argv, extractor)
            if self._cur is not None:
                self._cur.update(apply(extractor, argv))
        except (IndexError, ValueError) as exc:
            self._report_unknown(argv[0], f"malformed arguments ({exc!r})")
        return False

    def _special(self, argv: list[bytes], special: Special) -> bool:
        dbs = self._dbs
        if special is Special.SELECT:
            self._select(parse_db(argv[1]))
        elif special is Special.REPLCONF:
            if is_getack(argv) and self._on_getack is not None:
                self._on_getack()
        elif special is Special.MOVE:
            if self._cur is not None:
                self._cur.add(argv[1])
            target = parse_db(argv[2])
            if target in dbs:
                self._keys_of(target).add(argv[1])
        elif special is Special.COPY:
            option = copy_target_db(argv)
            destination = self._db if option is None else option
            if destination in dbs:
                self._keys_of(destination).add(argv[2])
        elif special is Special.FLUSHDB or special is Special.FLUSHALL:
            flushed = set(dbs) if special is Special.FLUSHALL else {self._db} & dbs
            if flushed:
                if self._count or self._gap is not None:
                    return True
                self._flushed |= flushed
                name = argv[0].decode(errors="replace").upper()
                self._gap = Gap(
                    GAP_FLUSH,
                    f"{name} at offset {self._offset} emptied db {sorted(flushed)}; not "
                    "replicated by policy: anti-entropy refills this region from its peers",
                    now_ms(),
                )
        elif special is Special.SWAPDB:
            swapped = {parse_db(argv[1]), parse_db(argv[2])}
            if swapped & dbs:
                if self._count or self._gap is not None:
                    return True
                self._gap = Gap(
                    GAP_SWAPDB,
                    f"SWAPDB {' '.join(map(str, sorted(swapped)))} at offset {self._offset}: "
                    "every key of these dbs changed; anti-entropy must compare them",
                    now_ms(),
                )
        elif special is Special.INCOMPLETE:
            self._report_unknown(argv[0], "key specs do not locate every key")
            if self._cur is not None:
                self._cur.update(apply(self._table.partial(argv[0]), argv))
        else:
            self._report_unknown(argv[0], "not in the server's command table")
        return False

    def _report_unknown(self, name: bytes, why: str) -> None:
        if self._on_unknown is not None:
            self._on_unknown(name, why)

    def _recover_from_newlines(self) -> bool:
        """A bare newline between commands (a chained replica's keep-alive): skip it.

        hiredis refuses "\\n" as a type byte; the newline sits right after the last
        complete command, whose end we know exactly from the offset. Restart a fresh
        reader on the rest of the last chunk minus the newlines. False if that is not it.
        """
        unconsumed = self._fed - (self._offset - self._reader_base)
        if self._stash is not None:
            unconsumed -= self._stash[1]
        start, end = self._slice
        # The newline is right after the last complete command, inside the last slice.
        if not 0 < unconsumed <= end - start:
            return False
        rest = self._buf[end - unconsumed : end]
        stripped = rest.lstrip(b"\n")
        if len(stripped) == len(rest):
            return False
        self.skipped_newlines += len(rest) - len(stripped)
        self._reader = hiredis.Reader()
        self._reader_base = self._offset
        self._fed = 0
        self._buf = stripped + self._buf[end:]
        self._pos = 0
        self._slice = (0, 0)
        return True


# ---------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------

_MASTER_OFFSET = re.compile(rb"^master_repl_offset:(\d+)", re.MULTILINE)


@dataclass(slots=True)
class _Delivery:
    """A batch in the queue, with what ack() needs to map its offset to a position."""

    batch: CaptureBatch
    lineage: int
    db: int


@dataclass(slots=True)
class _Session:
    link: RespLink
    reply: PsyncReply
    psync: PsyncReplyParser
    stream_prefix: bytes
    table: KeyTable
    master_offset: int
    asked: CapturePosition | None
    started: float = field(default_factory=time.monotonic)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


class ReplicationStreamSource:
    """Tails a Redis replication stream into :class:`CaptureBatch` es (see module doc).

    Satisfies :class:`~replication.capture.batch.ChangeSource`::

        async with ReplicationStreamSource(address, state_dir=state) as source:
            async for batch in source.batches():
                ...  # read the keys' state, ship it durably
                await source.ack(batch.end_offset)
    """

    def __init__(
        self,
        address: RedisAddress,
        *,
        state_dir: Path | str | None = None,
        position_store: PositionStore | None = None,
        name: str = "capture",
        dbs: Iterable[int] = (0,),
        max_batch_commands: int = 4096,
        max_batch_bytes: int = 4 << 20,
        max_pending_batches: int = 8,
        read_high_water_bytes: int = 4 << 20,
        listening_port: int = 0,
        ack_interval_s: float = 1.0,
        persist_interval_s: float = 0.2,
        read_timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        healthy_session_s: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.address = address
        if position_store is None and state_dir is not None:
            position_store = PositionStore(Path(state_dir) / f"{name}.position.json")
        self.position_store = position_store
        self.name = name
        self.dbs = frozenset(dbs)
        if not self.dbs:
            raise ValueError("capture needs at least one db")
        self.max_batch_commands = max_batch_commands
        self.max_batch_bytes = max_batch_bytes
        self.read_high_water_bytes = read_high_water_bytes
        self.listening_port = listening_port
        self.ack_interval_s = ack_interval_s
        self.persist_interval_s = persist_interval_s
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.healthy_session_s = healthy_session_s
        self.backoff = backoff or Backoff(base_s=0.05, cap_s=2.0)
        self.stats = CaptureStats()
        self._state = _State.NEW
        self._channel: BatchChannel[_Delivery] = BatchChannel(max_pending_batches)
        self._run_task: asyncio.Task[None] | None = None
        self._persist_task: asyncio.Task[None] | None = None
        # What the consumer acknowledged (persisted) and in which lineage. A lineage is one
        # offset space: it changes at every full resync, never at a CONTINUE.
        self._position: CapturePosition | None = None
        self._lineage = 0
        self._acked_lineage = -1
        self._replid: str | None = None
        self._outstanding: collections.deque[tuple[int, int, str, int]] = collections.deque()
        self._link: RespLink | None = None
        self._ack_wanted = asyncio.Event()
        self._persist_wanted = asyncio.Event()
        self._save_seq = 0
        self._persisted: CapturePosition | None = None
        self._warned: set[bytes] = set()
        self._load_problem: str | None = None

    def __repr__(self) -> str:
        return (
            f"ReplicationStreamSource(name={self.name!r}, address={self.address!r}, "
            f"dbs={sorted(self.dbs)}, state={self._state.value})"
        )

    @property
    def position(self) -> CapturePosition | None:
        """The acknowledged position (what a restart continues from)."""
        return self._position

    # lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> ReplicationStreamSource:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the stored position, connect and send PSYNC; stream in the background.

        Raises :class:`CaptureConnectionError` (server unreachable), :class:`CaptureAuthError`
        or :class:`PsyncRefusedError` (configuration problems an operator must fix).
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} cannot start twice")
        self._state = _State.RUNNING
        load_problem: str | None = None
        try:
            if self.position_store is not None:
                self._position = await asyncio.to_thread(self.position_store.load)
                load_problem = self.position_store.load_problem
            if self._position is not None:
                self._acked_lineage = 0
                self._replid = self._position.replid
                self.stats.acked_offset = self._position.offset
                self._persisted = self._position
            session = await self._connect()
        except BaseException:
            self._state = _State.FAILED
            self._channel.close(drop=True)
            raise
        self._load_problem = load_problem
        self._run_task = asyncio.create_task(self._run(session), name=f"{self.name}-stream")
        self._persist_task = asyncio.create_task(self._persist_loop(), name=f"{self.name}-persist")

    async def stop(self) -> None:
        """Stop streaming, close the connection, persist the acknowledged position.

        Safe to call twice and after a failed start. Batches not yet taken are dropped
        (they are replayed from the acknowledged position next time).
        """
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        tasks = [task for task in (self._run_task, self._persist_task) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._channel.close(drop=True)
        await self._save_now()
        self.stats.connected = False

    def batches(self) -> AsyncIterator[CaptureBatch]:
        """Batches in stream order; ends after stop(), raises a fatal source error."""
        return _BatchIterator(self)

    async def ack(self, offset: int | None) -> None:
        """The consumer durably handed on the batch ending at `offset` and all before it.

        `offset` is the ``end_offset`` of a delivered batch; unknown or repeated offsets
        are ignored. The position is persisted within ``persist_interval_s`` (at once after
        ``stop()``), and reported to Redis with ``REPLCONF ACK`` right away.
        """
        if offset is None:
            return
        outstanding = self._outstanding
        found: tuple[int, int, str, int] | None = None
        for index, entry in enumerate(outstanding):
            if entry[0] == offset:
                found = entry
                for _ in range(index + 1):
                    outstanding.popleft()
                break
        if found is None:
            return
        end, lineage, replid, db = found
        if lineage < self._acked_lineage:
            return  # a batch from a history we already left behind
        self._position = CapturePosition(replid, end, db)
        self._acked_lineage = lineage
        self.stats.acked_offset = end
        self._ack_wanted.set()
        if self._state is _State.RUNNING:
            self._persist_wanted.set()
        else:
            await self._save_now()

    # delivery ----------------------------------------------------------------------------
    async def _next_batch(self) -> CaptureBatch | None:
        delivery = await self._channel.get()
        if delivery is None:
            return None
        batch = delivery.batch
        if batch.end_offset is not None and batch.replid is not None:
            self._outstanding.append(
                (batch.end_offset, delivery.lineage, batch.replid, delivery.db)
            )
        self.stats.batches += 1
        self.stats.keys += batch.key_count
        return batch

    async def _deliver(self, batch: CaptureBatch, db: int) -> None:
        self.stats.commands += batch.commands
        if batch.gap is not None:
            self.stats.gaps += 1
            log.warning(
                "capture gap source=%s reason=%s detail=%s",
                self.name,
                batch.gap.reason,
                batch.gap.detail,
            )
        await self._channel.put(_Delivery(batch, self._lineage, db))

    # sessions ------------------------------------------------------------------------------
    async def _run(self, session: _Session | None) -> None:
        try:
            while True:
                if session is None:
                    session = await self._reconnect()
                try:
                    await self._stream(session)
                except (CaptureConnectionError, OSError) as exc:
                    self.stats.reconnects += 1
                    log.warning(
                        "capture connection lost source=%s endpoint=%s offset=%d error=%s",
                        self.name,
                        self.address,
                        self.stats.parsed_offset,
                        exc,
                    )
                finally:
                    self._link = None
                    self.stats.connected = False
                    await session.link.close()
                    if time.monotonic() - session.started >= self.healthy_session_s:
                        self.backoff.reset()
                    session = None
        except ReconcilerError as exc:
            # Not retriable (credentials, PSYNC refused): the consumer sees it in batches().
            log.error("capture stopped source=%s error=%s", self.name, exc)  # noqa: TRY400
            self._channel.close(exc)
        except Exception as exc:
            # A bug must end the consumer's iteration loudly rather than leave it waiting.
            log.exception("capture failed source=%s", self.name)
            self._channel.close(exc)
            raise

    async def _reconnect(self) -> _Session:
        while True:
            delay = await self.backoff.sleep()
            try:
                return await self._connect()
            except (CaptureConnectionError, OSError) as exc:
                log.warning(
                    "capture reconnect failed source=%s endpoint=%s after_s=%.2f error=%s",
                    self.name,
                    self.address,
                    delay,
                    exc,
                )

    async def _connect(self) -> _Session:
        """Connect, handshake, send PSYNC and read its reply (not the RDB)."""
        link = await RespLink.open(
            self.address, high_water=self.read_high_water_bytes, timeout_s=self.connect_timeout_s
        )
        try:
            return await self._handshake(link)
        except BaseException:
            await link.close()
            raise

    async def _handshake(self, link: RespLink) -> _Session:
        timeout = self.read_timeout_s
        auth = self.address.auth_command()
        requests: list[tuple[str, tuple[bytes | str, ...]]] = []
        if auth is not None:
            requests.append(("AUTH", auth))
        requests += [
            ("INFO", ("INFO", "replication")),
            ("COMMAND", ("COMMAND",)),
            ("REPLCONF listening-port", ("REPLCONF", "listening-port", str(self.listening_port))),
            ("REPLCONF capa", ("REPLCONF", "capa", "eof", "capa", "psync2")),
        ]
        # One round trip for the whole ordinary-client phase.
        link.write(b"".join(pack(*args) for _, args in requests))
        replies: dict[str, Any] = {}
        for command, _ in requests:
            try:
                replies[command] = await link.reply(command, timeout)
            except ServerError as exc:
                raise self._classify(exc) from exc
        info = replies["INFO"]
        match = _MASTER_OFFSET.search(info if isinstance(info, bytes) else b"")
        if match is None:
            raise CaptureProtocolError("INFO replication has no master_repl_offset")
        master_offset = int(match.group(1))
        table = KeyTable.from_command_reply(replies["COMMAND"])

        asked = self._position
        if asked is None:
            psync: tuple[str, ...] = ("PSYNC", "?", "-1")
        else:
            psync = ("PSYNC", asked.replid, str(asked.offset + 1))
        link.write(pack(*psync))
        parser = PsyncReplyParser()
        prefix = b""
        try:
            while parser.reply is None:
                prefix += parser.feed(await link.read(timeout))
        except ServerError as exc:
            raise self._classify(exc) from exc
        self.stats.master_offset_at_connect = master_offset
        self.stats.connected = True
        log.info(
            "capture connected source=%s endpoint=%s asked=%s reply=%s master_offset=%d",
            self.name,
            self.address,
            " ".join(psync[1:]),
            "FULLRESYNC" if parser.reply.full else "CONTINUE",
            master_offset,
        )
        return _Session(link, parser.reply, parser, prefix, table, master_offset, asked)

    def _classify(self, exc: ServerError) -> ReconcilerError:
        code = exc.code
        if is_retriable(code):
            return CaptureConnectionError(f"{self.address} not ready: {exc}")
        if exc.command == "AUTH" or code in ("WRONGPASS", "NOAUTH"):
            user = self.address.username or "default"
            return CaptureAuthError(
                f"{self.address} refused the capture credentials (user {user!r}): {exc}"
            )
        return PsyncRefusedError(
            f"{self.address} refused {exc.command} ({exc.message}). The capture registers "
            "as a replica: grant its user '+psync +replconf +sync +ping +info +command "
            "+select' (see docs/capture.md), or use the keyspace-notification source "
            "(replication.capture.notifications) if this Redis forbids replicas."
        )

    async def _stream(self, session: _Session) -> None:
        link = session.link
        reply = session.reply
        if reply.full:
            assert reply.replid is not None
            assert reply.offset is not None
            self.stats.full_resyncs += 1
            self._lineage += 1
            self._replid = reply.replid
            await self._deliver(self._full_resync_gap(session), 0)
            start_offset, start_db, replay_until = reply.offset, 0, -1
        else:
            asked = session.asked
            assert asked is not None
            if reply.replid and reply.replid != asked.replid:
                log.info(
                    "capture replid changed on CONTINUE source=%s old=%s new=%s offset=%d",
                    self.name,
                    asked.replid,
                    reply.replid,
                    asked.offset,
                )
            self._replid = reply.replid or asked.replid
            start_offset, start_db = asked.offset, asked.db
            replay_until = session.master_offset

        parser = StreamParser(
            session.table,
            dbs=self.dbs,
            offset=start_offset,
            replid=self._replid,
            db=start_db,
            replay_until=replay_until,
            max_commands=self.max_batch_commands,
            max_bytes=self.max_batch_bytes,
            on_getack=self._send_ack,
            on_unknown=self._on_unknown,
        )
        self.stats.parsed_offset = start_offset
        data = session.stream_prefix
        psync = session.psync
        rdb_seen = psync.rdb_bytes
        while not psync.done:
            data = psync.feed(await link.read(self.read_timeout_s))
            self.stats.rdb_bytes += psync.rdb_bytes - rdb_seen
            rdb_seen = psync.rdb_bytes
        if reply.full:
            log.info(
                "capture rdb skipped source=%s bytes=%d form=%s",
                self.name,
                psync.rdb_bytes,
                "eof-mark" if psync.eof_mark is not None else "length",
            )
        self._link = link
        # A diskless full sync only starts the stream once the replica ACKs: do it now.
        self._send_ack()
        await run_together(self._read_stream(link, parser, data), self._ack_loop())

    def _full_resync_gap(self, session: _Session) -> CaptureBatch:
        reply = session.reply
        asked = session.asked
        got = f"got FULLRESYNC {reply.replid} {reply.offset}"
        if asked is None:
            problem = self._load_problem
            why = f" ({problem})" if problem else ""
            gap = Gap(GAP_INITIAL, f"no stored capture position{why}; {got}", now_ms())
        else:
            if reply.replid != asked.replid:
                cause = (
                    "the server has a different replication history (restarted without "
                    "its replication state, failed over, or another server)"
                )
            else:
                cause = (
                    "the server's backlog no longer holds our offset (increase "
                    "repl-backlog-size, or the daemon was stopped too long)"
                )
            gap = Gap(
                GAP_FULL_RESYNC,
                f"asked PSYNC {asked.replid} {asked.offset + 1}, {got}: {cause}",
                now_ms(),
            )
        return CaptureBatch(
            keys={},
            flushed_dbs=frozenset(),
            gap=gap,
            end_offset=reply.offset,
            replid=reply.replid,
            commands=0,
            replay=False,
        )

    async def _read_stream(self, link: RespLink, parser: StreamParser, data: bytes) -> None:
        stats = self.stats
        timeout = self.read_timeout_s
        while True:
            if not data:
                data = await link.read(timeout)
            parser.feed(data)
            stats.bytes += len(data)
            data = b""
            while True:
                ready = parser.fill()
                stats.parsed_offset = parser.offset
                if ready:
                    await self._deliver(parser.take(), parser.db)
                    continue
                if link.available:
                    # More arrived while we parsed: keep filling the open batch.
                    parser.feed(more := link.read_nowait())
                    stats.bytes += len(more)
                    continue
                if parser.pending:
                    # Nothing more right now: latency matters more than a full batch.
                    await self._deliver(parser.take(), parser.db)
                break

    def _wire_ack(self) -> int:
        position = self._position
        if position is None or self._acked_lineage != self._lineage:
            return 0
        return position.offset

    def _send_ack(self) -> None:
        link = self._link
        if link is not None:
            link.write(pack("REPLCONF", "ACK", self._wire_ack()))

    async def _ack_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ack_interval_s):
                    await self._ack_wanted.wait()
            self._ack_wanted.clear()
            self._send_ack()

    def _on_unknown(self, name: bytes, why: str) -> None:
        self.stats.unknown_commands += 1
        if name.lower() not in self._warned and len(self._warned) < 1024:
            self._warned.add(name.lower())
            log.warning(
                "capture cannot locate keys source=%s command=%s why=%s",
                self.name,
                name.decode(errors="replace"),
                why,
            )

    # persistence ------------------------------------------------------------------------
    async def _persist_loop(self) -> None:
        while True:
            await self._persist_wanted.wait()
            self._persist_wanted.clear()
            await self._save_now()
            await asyncio.sleep(self.persist_interval_s)

    async def _save_now(self) -> None:
        store = self.position_store
        position = self._position
        if store is None or position is None or position == self._persisted:
            return
        self._save_seq += 1
        await asyncio.to_thread(store.save, position, self._save_seq)
        self._persisted = position


class _BatchIterator:
    """``async for batch in source.batches()`` (a plain iterator: nothing to finalise)."""

    def __init__(self, source: ReplicationStreamSource) -> None:
        self._source = source

    def __aiter__(self) -> _BatchIterator:
        return self

    async def __anext__(self) -> CaptureBatch:
        batch = await self._source._next_batch()
        if batch is None:
            raise StopAsyncIteration
        return batch
