"""The replication-stream parser (sans-IO): stream bytes in, :class:`CaptureBatch` es out.

It keeps the stream offset exactly (every byte after the RDB counts, master ``PING`` and
``REPLCONF GETACK`` included: the master writes canonical RESP, so each command's length
is computed from its arguments), follows ``SELECT``, locates every written key with the
server's key specs (:class:`~replication.capture.commands.KeyTable`), cuts a batch before
a flush or ``SWAPDB`` (each is a gap of its own) and at the end of the replay window, and
skips the bare ``\\n`` keep-alives a chained replica sends (they do not count).

Echoes of applies are dropped here. The daemon applies a peer's change with one library
call, and Redis replicates a script's effects wrapped in ``MULTI``/``EXEC``: the key's
write and its metadata hash's ``HSET`` in one block. The library is the only writer of
metadata hashes, and the only library code that writes a user key is the apply; so the user
keys of a block that also writes a metadata hash were written by an apply, with metadata
that already describes them. The versioner would read each and find it an echo (a Redis
call per key); dropping them here saves that. A local write is never inside such a block:
a script runs alone, and an application's own transaction never writes a metadata hash.
Whenever a block cannot be seen whole (a batch cut inside it, a ``SELECT`` in it), its keys
are reported as usual and the versioner decides, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import filterfalse
from typing import Any

import hiredis

from replication.capture.batch import (
    GAP_FLUSH,
    GAP_SWAPDB,
    CaptureBatch,
    CaptureProtocolError,
    Gap,
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
from replication.model.keys import META_PREFIX, is_internal

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
        # the open MULTI block: the keys its commands wrote (None: not in a block)
        self._block: set[bytes] | None = None
        self._block_db = db
        self.echo_keys_dropped = 0
        """User keys of apply blocks not reported (echoes, see the module doc)."""
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
        self._end_block(echo=False)  # cut inside a block: its keys so far are reported
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

    def _begin_block(self) -> None:
        self._end_block(echo=False)
        self._block = set()
        self._block_db = self._db
        if self._cur is not None:
            self._cur = self._block

    def _end_block(self, *, echo: bool) -> None:
        """Close the open block: its user keys are reported unless it is an apply's."""
        block = self._block
        if block is None:
            return
        self._block = None
        if self._block_db in self._dbs:
            if echo and any(key.startswith(META_PREFIX) for key in block):
                self.echo_keys_dropped += sum(1 for key in block if not is_internal(key))
            else:
                self._keys_of(self._block_db).update(block)
        self._select(self._db)

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
            self._end_block(echo=False)  # not an apply's block: those never switch dbs
            self._select(parse_db(argv[1]))
        elif special is Special.MULTI:
            self._begin_block()
        elif special is Special.EXEC:
            self._end_block(echo=True)
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
