"""The persisted capture position: where a restarted daemon continues the replication stream.

The position is the last *acknowledged* point of the stream: ``(replid, offset, db)``, where
``db`` is the db selected in the stream at that offset (the master only sends ``SELECT`` when
the db changes, so a continuation must know it). It lives in one small JSON file under the
daemon's state directory, replaced atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new position, never a torn one.

Writes are throttled by the caller (the stream source saves at most every
``persist_interval_s`` and always on stop): after a crash the stream is replayed from the
last saved position, which is harmless because the consumer is idempotent, while an fsync
per acknowledgement is not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from replication.capture.batch import now_ms

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class CapturePosition:
    """A point of one replication history: continue with ``PSYNC replid offset+1``."""

    replid: str
    offset: int
    db: int = 0


_REPLID = re.compile(rb"^master_replid:([0-9a-f]+)\r?$", re.MULTILINE)
_MASTER_OFFSET = re.compile(rb"^master_repl_offset:(\d+)\r?$", re.MULTILINE)


def master_offset_in(info: bytes) -> int | None:
    """``master_repl_offset`` from an ``INFO replication`` reply (None without one)."""
    match = _MASTER_OFFSET.search(info)
    return int(match.group(1)) if match else None


def master_position_in(info: bytes) -> CapturePosition | None:
    """Where the server's replication history is now, from an ``INFO replication``
    reply: its ``master_replid`` and ``master_repl_offset`` (None without both). A
    restarted Redis starts a new history (a new replid, offsets from 0 again): offsets
    of two histories say nothing about each other."""
    replid, offset = _REPLID.search(info), master_offset_in(info)
    if replid is None or offset is None:
        return None
    return CapturePosition(replid.group(1).decode("ascii"), offset)


class PositionStore:
    """One position file; saves are serialised and never go backwards in save order."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.load_problem: str | None = None
        """Why the last :meth:`load` found no usable position although a file existed."""
        self._lock = threading.Lock()
        self._saved_seq = -1

    def __repr__(self) -> str:
        return f"PositionStore({str(self.path)!r})"

    def load(self) -> CapturePosition | None:
        """The stored position, or None (no file, or an unreadable one: see load_problem).

        An unreadable file is not fatal: the source then starts as if new, which reports an
        ``initial`` gap, so anti-entropy covers whatever the lost position would have.
        """
        self.load_problem = None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.load_problem = f"cannot read {self.path}: {exc}"
            # A traceback adds nothing to "cannot read <path>": log the reason only.
            log.error("capture position unreadable path=%s error=%s", self.path, exc)  # noqa: TRY400
            return None
        try:
            data = json.loads(text)
            position = CapturePosition(
                replid=str(data["replid"]), offset=int(data["offset"]), db=int(data.get("db", 0))
            )
        except (ValueError, KeyError, TypeError) as exc:
            self.load_problem = f"corrupt position file {self.path}: {exc!r}"
            log.error("capture position corrupt path=%s error=%r", self.path, exc)  # noqa: TRY400
            return None
        if len(position.replid) != 40 or position.offset < 0:
            self.load_problem = f"invalid position in {self.path}: {position}"
            log.error("capture position invalid path=%s position=%s", self.path, position)
            return None
        return position

    def save(self, position: CapturePosition, seq: int = 0) -> bool:
        """Atomically replace the file with `position`; skip it if a later `seq` was saved.

        Blocking (fsync): call it from a thread in async code. Returns whether it wrote.
        """
        payload = json.dumps(
            {
                "version": _FORMAT_VERSION,
                "replid": position.replid,
                "offset": position.offset,
                "db": position.db,
                "saved_at_ms": now_ms(),
            },
            sort_keys=True,
        ).encode()
        with self._lock:
            if seq < self._saved_seq:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(payload)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(self.path.parent)
            self._saved_seq = seq
            return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (the directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
