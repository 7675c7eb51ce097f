"""The PSYNC handshake: from a fresh connection to the first byte of the command stream.

Before ``PSYNC`` the link is an ordinary client, in one round trip: ``AUTH``,
``INFO replication`` (the server's ``master_repl_offset`` *now*, the end of the replay
window), ``COMMAND`` (the key specs), ``REPLCONF listening-port``,
``REPLCONF capa eof capa psync2``. Then ``PSYNC <replid> <offset+1>`` from the acknowledged
position, or ``PSYNC ? -1`` without one, and its reply: ``+CONTINUE [<replid>]``, or
``+FULLRESYNC <replid> <offset>`` followed by an RDB that :class:`PsyncReplyParser`
(sans-IO) skips unread in both forms (``$<len>``, and diskless ``$EOF:<mark>``).

Error replies are classified here (:func:`classify`): a server that will serve soon is a
connection error (the source reconnects), refused credentials and a refused replica are
configuration errors an operator must fix.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from replication.capture.batch import (
    CaptureAuthError,
    CaptureConnectionError,
    CaptureProtocolError,
    PsyncRefusedError,
)
from replication.capture.commands import KeyTable
from replication.capture.link import RespLink, ServerError, pack
from replication.capture.position import CapturePosition, master_offset_in
from replication.errors import ReconcilerError
from replication.redis.address import RedisAddress
from replication.redis.errors import is_retriable

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


@dataclass(slots=True)
class PsyncSession:
    """One connection that PSYNC was answered on: the RDB (if any) and the stream follow."""

    link: RespLink
    reply: PsyncReply
    psync: PsyncReplyParser
    stream_prefix: bytes
    """Bytes read past the PSYNC reply (the start of the RDB or of the stream)."""
    table: KeyTable
    master_offset: int
    """The server's master_repl_offset just before PSYNC: the end of the replay window."""
    asked: CapturePosition | None
    started: float = field(default_factory=time.monotonic)

    async def close(self) -> None:
        """Close the connection (and wait until it is gone)."""
        await self.link.close()


def psync_arguments(asked: CapturePosition | None) -> tuple[str, str]:
    """PSYNC's arguments: continue after `asked`, or ``? -1`` (a full sync) without one."""
    if asked is None:
        return ("?", "-1")
    return (asked.replid, str(asked.offset + 1))


async def open_psync(
    address: RedisAddress,
    asked: CapturePosition | None,
    *,
    listening_port: int,
    high_water: int,
    connect_timeout_s: float,
    read_timeout_s: float,
) -> PsyncSession:
    """Connect, handshake, send PSYNC and read its reply (not the RDB)."""
    link = await RespLink.open(address, high_water=high_water, timeout_s=connect_timeout_s)
    try:
        return await handshake(
            link, address, asked, listening_port=listening_port, timeout_s=read_timeout_s
        )
    except BaseException:
        await link.close()
        raise


async def handshake(
    link: RespLink,
    address: RedisAddress,
    asked: CapturePosition | None,
    *,
    listening_port: int,
    timeout_s: float,
) -> PsyncSession:
    """The ordinary-client phase, then PSYNC and its reply, on a connected `link`."""
    auth = address.auth_command()
    requests: list[tuple[str, tuple[bytes | str, ...]]] = []
    if auth is not None:
        requests.append(("AUTH", auth))
    requests += [
        ("INFO", ("INFO", "replication")),
        ("COMMAND", ("COMMAND",)),
        ("REPLCONF listening-port", ("REPLCONF", "listening-port", str(listening_port))),
        ("REPLCONF capa", ("REPLCONF", "capa", "eof", "capa", "psync2")),
    ]
    # One round trip for the whole ordinary-client phase.
    link.write(b"".join(pack(*args) for _, args in requests))
    replies: dict[str, Any] = {}
    for command, _ in requests:
        try:
            replies[command] = await link.reply(command, timeout_s)
        except ServerError as exc:
            raise classify(address, exc) from exc
    info = replies["INFO"]
    master_offset = master_offset_in(info if isinstance(info, bytes) else b"")
    if master_offset is None:
        raise CaptureProtocolError("INFO replication has no master_repl_offset")
    table = KeyTable.from_command_reply(replies["COMMAND"])

    link.write(pack("PSYNC", *psync_arguments(asked)))
    parser = PsyncReplyParser()
    prefix = b""
    try:
        while parser.reply is None:
            prefix += parser.feed(await link.read(timeout_s))
    except ServerError as exc:
        raise classify(address, exc) from exc
    return PsyncSession(link, parser.reply, parser, prefix, table, master_offset, asked)


def classify(address: RedisAddress, exc: ServerError) -> ReconcilerError:
    """What an error reply during the handshake means for the source."""
    code = exc.code
    if is_retriable(code):
        return CaptureConnectionError(f"{address} not ready: {exc}")
    if exc.command == "AUTH" or code in ("WRONGPASS", "NOAUTH"):
        user = address.username or "default"
        return CaptureAuthError(f"{address} refused the capture credentials (user {user!r}): {exc}")
    return PsyncRefusedError(
        f"{address} refused {exc.command} ({exc.message}). The capture registers "
        "as a replica: grant its user '+psync +replconf +sync +ping +info +command "
        "+select' (see docs/capture.md), or use the keyspace-notification source "
        "(replication.capture.notifications) if this Redis forbids replicas."
    )
