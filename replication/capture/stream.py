"""The replication-stream source: we register with the region's Redis as a replica.

The layers: the connection (:mod:`replication.capture.link`), the handshake up to the
stream (:mod:`~replication.capture.handshake`), the stream parser
(:mod:`~replication.capture.parser`), and this source, on the lifecycle and reconnect loop
every source shares (:mod:`~replication.capture.source`).

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
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

from replication.capture.batch import (
    GAP_FULL_RESYNC,
    GAP_INITIAL,
    CaptureBatch,
    CaptureConnectionError,
    Gap,
    now_ms,
)
from replication.capture.handshake import PsyncSession, open_psync, psync_arguments
from replication.capture.link import RespLink, pack
from replication.capture.parser import StreamParser
from replication.capture.position import CapturePosition, PositionStore
from replication.capture.source import CaptureSource, SourceOptions, SourceState, run_together
from replication.redis.address import RedisAddress

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Delivery:
    """A batch in the queue, with what ack() needs to map its offset to a position."""

    batch: CaptureBatch
    lineage: int
    db: int


class ReplicationStreamSource(CaptureSource[_Delivery, PsyncSession]):
    """Tails a Redis replication stream into :class:`CaptureBatch` es (see module doc).

    Satisfies :class:`~replication.capture.batch.ChangeSource`::

        async with ReplicationStreamSource(address, state_dir=state) as source:
            async for batch in source.batches():
                ...  # read the keys' state, ship it durably
                await source.ack(batch.end_offset)
    """

    kind = "capture"
    task_name = "stream"
    default_read_timeout_s = 60.0

    def __init__(
        self,
        address: RedisAddress,
        *,
        state_dir: Path | str | None = None,
        position_store: PositionStore | None = None,
        max_batch_commands: int = 4096,
        max_batch_bytes: int = 4 << 20,
        listening_port: int = 0,
        ack_interval_s: float = 1.0,
        persist_interval_s: float = 0.2,
        **options: Unpack[SourceOptions],
    ) -> None:
        """`state_dir` (or `position_store`) keeps the acknowledged position; the common
        settings are :class:`~replication.capture.source.SourceOptions`."""
        super().__init__(address, **options)
        if position_store is None and state_dir is not None:
            position_store = PositionStore(Path(state_dir) / f"{self.name}.position.json")
        self.position_store = position_store
        self.max_batch_commands = max_batch_commands
        self.max_batch_bytes = max_batch_bytes
        self.listening_port = listening_port
        self.ack_interval_s = ack_interval_s
        self.persist_interval_s = persist_interval_s
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

    @property
    def position(self) -> CapturePosition | None:
        """The acknowledged position (what a restart continues from)."""
        return self._position

    @property
    def replid(self) -> str | None:
        """The replication history the stream follows: the server's since the last PSYNC
        reply, the stored position's before the first (None: neither yet)."""
        return self._replid

    # lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the stored position, connect and send PSYNC; stream in the background.

        Raises :class:`CaptureConnectionError` (server unreachable), :class:`CaptureAuthError`
        or :class:`PsyncRefusedError` (configuration problems an operator must fix).
        """
        await super().start()

    async def stop(self) -> None:
        """Stop streaming, close the connection, persist the acknowledged position.

        Safe to call twice and after a failed start. Batches not yet taken are dropped
        (they are replayed from the acknowledged position next time).
        """
        await super().stop()

    async def _prepare(self) -> None:
        if self.position_store is not None:
            self._position = await asyncio.to_thread(self.position_store.load)
            self._load_problem = self.position_store.load_problem
        if self._position is not None:
            self._acked_lineage = 0
            self._replid = self._position.replid
            self.stats.acked_offset = self._position.offset
            self._persisted = self._position

    def _background(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        return [("persist", self._persist_loop())]

    async def _stopped(self) -> None:
        await self._save_now()

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
        if self._state is SourceState.RUNNING:
            self._persist_wanted.set()
        else:
            await self._save_now()

    # delivery ----------------------------------------------------------------------------
    def _taken(self, item: _Delivery) -> CaptureBatch:
        batch = item.batch
        if batch.end_offset is not None and batch.replid is not None:
            self._outstanding.append((batch.end_offset, item.lineage, batch.replid, item.db))
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
    async def _connect(self) -> PsyncSession:
        """Connect, handshake, send PSYNC and read its reply (not the RDB)."""
        session = await open_psync(
            self.address,
            self._position,
            listening_port=self.listening_port,
            high_water=self.read_high_water_bytes,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
        )
        self.stats.master_offset_at_connect = session.master_offset
        self.stats.connected = True
        log.info(
            "capture connected source=%s endpoint=%s asked=%s reply=%s master_offset=%d",
            self.name,
            self.address,
            " ".join(psync_arguments(session.asked)),
            "FULLRESYNC" if session.reply.full else "CONTINUE",
            session.master_offset,
        )
        return session

    def _position_text(self) -> str:
        return f" offset={self.stats.parsed_offset}"

    async def _close_session(self, session: PsyncSession) -> None:
        self._link = None
        await session.close()

    async def _serve(self, session: PsyncSession) -> None:
        await self._stream(session)

    async def _stream(self, session: PsyncSession) -> None:
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

    def _full_resync_gap(self, session: PsyncSession) -> CaptureBatch:
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
                    await self._deliver(self._take(parser), parser.db)
                    continue
                if link.available:
                    # More arrived while we parsed: keep filling the open batch.
                    parser.feed(more := link.read_nowait())
                    stats.bytes += len(more)
                    continue
                if parser.pending:
                    # Nothing more right now: latency matters more than a full batch.
                    await self._deliver(self._take(parser), parser.db)
                break

    def _take(self, parser: StreamParser) -> CaptureBatch:
        batch = parser.take()
        self.stats.echo_keys_dropped += parser.echo_keys_dropped
        parser.echo_keys_dropped = 0
        return batch

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
            link = self._link
            if link is not None and link.lost:
                # The reader may be waiting for the consumer (a full channel) and would
                # not see the loss; the consumer may be waiting for a Redis that refuses
                # writes until we attach again (min-replicas-to-write). Reconnect now:
                # what was delivered and not acknowledged is read again.
                raise CaptureConnectionError("connection lost while the consumer was busy")
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
