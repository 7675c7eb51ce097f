"""Keyspace-notification capture: the fallback for servers that refuse PSYNC.

Managed Redis services often forbid ``PSYNC``/``REPLCONF`` but allow Pub/Sub. With
``notify-keyspace-events`` including ``E`` (keyevent channels) and ``A`` (every class of
key event: generic, string, list, set, hash, zset, expired, evicted, stream), Redis publishes
``__keyevent@<db>__:<event>`` with the key as payload for every key it modifies. We
``PSUBSCRIBE`` to those channels for the captured dbs and deliver the same
:class:`~replication.capture.batch.CaptureBatch` es as the stream source (``end_offset`` and
``replid`` are None, ``replay`` is False; :meth:`ack` does nothing).

Configuration: at connect we read ``notify-keyspace-events``; if it lacks something, we add
it with ``CONFIG SET`` (keeping the flags already set, so other users of notifications are
not disturbed). If ``CONFIG`` is refused, the current value must already suffice, else
:class:`~replication.capture.batch.NotificationsConfigError` names the setting to change.

Policies
--------
* **Pub/Sub is fire-and-forget**: a message published while we are not connected is lost.
  So every (re)connect is a gap (``"notifications-disconnect"``, delivered once the
  subscription is confirmed, so that anti-entropy started for it sees every later change)
  and every disconnect is one too (delivered at once, so the consumer learns promptly).
* **Flushes and SWAPDB publish no key events.** We poll ``INFO commandstats`` every
  ``stats_interval_s`` and compare the ``flushdb``/``flushall``/``swapdb`` call counts: an
  increase is reported like the stream source does (a ``"flush"`` gap, with ``flushed_dbs``
  being every captured db for FLUSHALL and the captured dbs found empty for FLUSHDB; a
  ``"swapdb"`` gap). Detection lags by up to one interval and is not ordered exactly with
  the key events around it; anti-entropy makes that harmless.
* Events are keys, not commands: ``rename_from``/``rename_to``, ``move_from``/``move_to``
  and ``copy_to`` come on the channels of their own dbs; ``expired``/``evicted`` are keys
  that disappeared. ``keymiss`` (a read) is ignored. Internal keys are never reported.
* Backpressure: as in the stream source, a full queue stops our reads; Redis then buffers
  for us up to ``client-output-buffer-limit pubsub`` and disconnects us, which is a gap.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from itertools import filterfalse
from typing import Unpack

import hiredis

from replication.capture.batch import (
    GAP_FLUSH,
    GAP_NOTIFICATIONS_DISCONNECT,
    GAP_SWAPDB,
    CaptureBatch,
    CaptureConnectionError,
    CaptureProtocolError,
    Gap,
    NotificationsConfigError,
    now_ms,
)
from replication.capture.link import RespLink, ServerError, pack
from replication.capture.source import CaptureSource, SourceOptions, run_together
from replication.model.keys import is_internal
from replication.redis.address import RedisAddress

log = logging.getLogger(__name__)

CONFIG_NAME = "notify-keyspace-events"
# 'A' is an alias for these classes; 'E' selects the __keyevent@<db>__ channels we read.
_ALL_CLASSES = "g$lshzxet"
REQUIRED_FLAGS = frozenset("E" + _ALL_CLASSES)

_CHANNEL = re.compile(rb"^__keyevent@(\d+)__:(.*)$", re.DOTALL)
_IGNORED_EVENTS = frozenset({b"keymiss"})
_WATCHED_COMMANDS = ("flushdb", "flushall", "swapdb")
_CMDSTAT = re.compile(rb"^cmdstat_(flushdb|flushall|swapdb):calls=(\d+)", re.MULTILINE)
_KEYSPACE_DB = re.compile(rb"^db(\d+):keys=(\d+)", re.MULTILINE)
_SKIP = (-1, b"")


def expand_flags(value: str) -> set[str]:
    """The notification flags a ``notify-keyspace-events`` value enables ('A' expanded)."""
    flags = set(value)
    if "A" in flags:
        flags.discard("A")
        flags |= set(_ALL_CLASSES)
    return flags


def missing_flags(value: str) -> set[str]:
    """Flags we need that `value` does not enable."""
    return set(REQUIRED_FLAGS) - expand_flags(value)


class _Session:
    """The two connections of one subscription: Pub/Sub, and control (INFO, CONFIG)."""

    def __init__(self, control: RespLink, pubsub: RespLink, counts: dict[str, int]) -> None:
        self.control = control
        self.pubsub = pubsub
        self.counts = counts
        self.started = time.monotonic()

    async def close(self) -> None:
        await self.pubsub.close()
        await self.control.close()


class KeyspaceNotificationSource(CaptureSource[CaptureBatch, _Session]):
    """Keyspace notifications as :class:`CaptureBatch` es (see module doc).

    Satisfies :class:`~replication.capture.batch.ChangeSource`.
    """

    kind = "notifications"
    task_name = "notify"
    default_read_timeout_s = 30.0

    def __init__(
        self,
        address: RedisAddress,
        *,
        configure: bool = True,
        verify_config: bool = True,
        max_batch_keys: int = 4096,
        stats_interval_s: float = 1.0,
        **options: Unpack[SourceOptions],
    ) -> None:
        """`configure`: turn notifications on if they are not; `verify_config`: refuse to
        start if they cannot be checked. The common settings are
        :class:`~replication.capture.source.SourceOptions`."""
        super().__init__(address, **options)
        self.configure = configure
        self.verify_config = verify_config
        self.max_batch_keys = max(1, max_batch_keys)
        self.stats_interval_s = stats_interval_s
        self._channels: dict[bytes, tuple[int, bytes]] = {}

    async def start(self) -> None:
        """Check/enable notifications, subscribe, deliver the connect gap; run in background.

        Raises :class:`NotificationsConfigError` when notifications are insufficient and
        cannot be enabled, :class:`CaptureConnectionError` when the server is unreachable.
        """
        await super().start()

    async def ack(self, offset: int | None) -> None:
        """Nothing to acknowledge: notifications cannot be replayed."""

    # sessions ------------------------------------------------------------------------------
    async def _serve(self, session: _Session) -> None:
        await run_together(self._read_loop(session), self._poll_loop(session))

    async def _lost(self, exc: Exception) -> None:
        await self._gap(
            GAP_NOTIFICATIONS_DISCONNECT,
            f"notification connection lost ({exc}); changes until we are "
            "subscribed again are unknown",
        )

    def _taken(self, item: CaptureBatch) -> CaptureBatch:
        return item

    async def _open(self) -> RespLink:
        link = await RespLink.open(
            self.address, high_water=self.read_high_water_bytes, timeout_s=self.connect_timeout_s
        )
        auth = self.address.auth_command()
        if auth is not None:
            link.write(pack(*auth))
            try:
                await link.reply("AUTH", self.read_timeout_s)
            except ServerError as exc:
                await link.close()
                raise NotificationsConfigError(
                    f"{self.address} refused the capture credentials "
                    f"(user {self.address.username or 'default'!r}): {exc}"
                ) from exc
            except BaseException:
                await link.close()
                raise
        return link

    async def _connect(self) -> _Session:
        control = await self._open()
        pubsub: RespLink | None = None
        try:
            await self._ensure_config(control)
            counts, _ = await self._command_stats(control)
            pubsub = await self._open()
            patterns = [f"__keyevent@{db}__:*" for db in sorted(self.dbs)]
            pubsub.write(pack("PSUBSCRIBE", *patterns))
            confirmed = 0
            while confirmed < len(patterns):
                reply = await pubsub.reply("PSUBSCRIBE", self.read_timeout_s)
                if isinstance(reply, list) and reply and reply[0] == b"psubscribe":
                    confirmed += 1
        except ServerError as exc:
            await control.close()
            if pubsub is not None:
                await pubsub.close()
            raise CaptureConnectionError(f"{self.address}: {exc}") from exc
        except BaseException:
            await control.close()
            if pubsub is not None:
                await pubsub.close()
            raise
        self.stats.connected = True
        log.info(
            "notifications subscribed source=%s endpoint=%s dbs=%s",
            self.name,
            self.address,
            sorted(self.dbs),
        )
        session = _Session(control, pubsub, counts)
        # Anything before this moment is unknown to us: a gap, on every (re)connect.
        await self._gap(
            GAP_NOTIFICATIONS_DISCONNECT,
            f"subscribed to keyspace notifications of db {sorted(self.dbs)} on "
            f"{self.address}; changes before this moment are unknown",
        )
        return session

    async def _ensure_config(self, control: RespLink) -> None:
        timeout = self.read_timeout_s
        control.write(pack("CONFIG", "GET", CONFIG_NAME))
        try:
            reply = await control.reply("CONFIG GET", timeout)
        except ServerError as exc:
            if not self.verify_config:
                log.warning(
                    "notifications cannot read %s source=%s error=%s; trusting the operator",
                    CONFIG_NAME,
                    self.name,
                    exc,
                )
                return
            raise NotificationsConfigError(
                f"{self.address} refused CONFIG GET {CONFIG_NAME} ({exc.message}): cannot "
                f"verify that keyspace notifications are on. Set {CONFIG_NAME} to include "
                "'EA' (e.g. 'KEA') on the server, then start with verify_config=False."
            ) from exc
        current = reply[1].decode() if isinstance(reply, list) and len(reply) == 2 else ""
        missing = missing_flags(current)
        if not missing:
            return
        wanted = current + "".join(sorted(missing))
        refusal = "configure=False"
        if self.configure:
            control.write(pack("CONFIG", "SET", CONFIG_NAME, wanted))
            try:
                await control.reply("CONFIG SET", timeout)
            except ServerError as exc:
                refusal = f"CONFIG SET refused: {exc.message}"
            else:
                log.warning(
                    "notifications enabled %s source=%s old=%r new=%r",
                    CONFIG_NAME,
                    self.name,
                    current,
                    wanted,
                )
                return
        raise NotificationsConfigError(
            f"{self.address} has {CONFIG_NAME}={current!r}, which lacks "
            f"{''.join(sorted(missing))!r} ({refusal}). Set {CONFIG_NAME} to include 'EA' "
            "(e.g. 'KEA') on the server (redis.conf or the provider's parameter group)."
        )

    async def _command_stats(self, control: RespLink) -> tuple[dict[str, int], set[int]]:
        """Call counts of flushdb/flushall/swapdb, and the dbs that hold keys."""
        control.write(pack("INFO", "commandstats", "keyspace"))
        try:
            info = await control.reply("INFO", self.read_timeout_s)
        except ServerError as exc:
            raise NotificationsConfigError(
                f"{self.address} refused INFO ({exc.message}): the notification source "
                "needs INFO commandstats to notice FLUSHDB/FLUSHALL/SWAPDB"
            ) from exc
        if not isinstance(info, bytes):
            raise CaptureProtocolError("INFO reply is not a bulk string")
        counts = dict.fromkeys(_WATCHED_COMMANDS, 0)
        for match in _CMDSTAT.finditer(info):
            counts[match.group(1).decode()] = int(match.group(2))
        nonempty = {int(m.group(1)) for m in _KEYSPACE_DB.finditer(info) if int(m.group(2))}
        return counts, nonempty

    async def _poll_loop(self, session: _Session) -> None:
        """Flush/swapdb detection, and a PING that proves the Pub/Sub link alive."""
        while True:
            await asyncio.sleep(self.stats_interval_s)
            session.pubsub.write(pack("PING"))
            counts, nonempty = await self._command_stats(session.control)
            before, session.counts = session.counts, counts
            await self._report_flushes(before, counts, nonempty)

    async def _report_flushes(
        self, before: dict[str, int], after: dict[str, int], nonempty: set[int]
    ) -> None:
        changed = {name for name in _WATCHED_COMMANDS if after[name] != before[name]}
        if not changed:
            return
        seen = ", ".join(f"{name} calls {before[name]}->{after[name]}" for name in sorted(changed))
        if "flushall" in changed or "flushdb" in changed:
            if "flushall" in changed:
                flushed = frozenset(self.dbs)
            else:
                flushed = frozenset(self.dbs - nonempty)
            await self._gap(
                GAP_FLUSH,
                f"{seen} (from INFO commandstats); emptied captured db {sorted(flushed)} "
                "(a FLUSHDB's db is inferred from which captured dbs are empty); not "
                "replicated by policy: anti-entropy refills this region from its peers",
                flushed,
            )
        if "swapdb" in changed:
            await self._gap(
                GAP_SWAPDB,
                f"{seen} (from INFO commandstats): captured dbs may have been swapped; "
                "anti-entropy must compare them",
            )

    async def _read_loop(self, session: _Session) -> None:
        link = session.pubsub
        reader = hiredis.Reader()
        # Our PINGs (every stats interval) are answered on this link, so silence this long
        # means the link is dead even if TCP has not noticed.
        timeout = max(self.read_timeout_s, 3 * self.stats_interval_s)
        keys: dict[int, set[bytes]] = {}
        count = 0
        nbytes = 0
        while True:
            data = await link.read(timeout)
            while True:
                reader.feed(data)
                nbytes += len(data)
                try:
                    while count < self.max_batch_keys:
                        message = reader.gets()
                        if message is False:
                            break
                        if message[0] != b"pmessage" or len(message) != 4:
                            continue  # pong, subscription confirmations
                        db, event = self._channel_of(message[2])
                        if db in self.dbs and event not in _IGNORED_EVENTS:
                            keys.setdefault(db, set()).add(message[3])
                            count += 1
                except (hiredis.ProtocolError, TypeError, IndexError) as exc:
                    raise CaptureProtocolError(f"bad notification message: {exc!r}") from exc
                if count >= self.max_batch_keys:
                    await self._emit(keys, count, nbytes)
                    keys, count, nbytes = {}, 0, 0
                    data = b""
                    continue
                if link.available:
                    data = link.read_nowait()
                    continue
                break
            if count:
                await self._emit(keys, count, nbytes)
                keys, count, nbytes = {}, 0, 0

    def _channel_of(self, channel: bytes) -> tuple[int, bytes]:
        found = self._channels.get(channel)
        if found is None:
            match = _CHANNEL.match(channel)
            found = (int(match.group(1)), match.group(2)) if match else _SKIP
            if len(self._channels) < 4096:
                self._channels[channel] = found
        return found

    async def _emit(self, keys: dict[int, set[bytes]], count: int, nbytes: int) -> None:
        user_keys: dict[int, frozenset[bytes]] = {}
        for db, touched in keys.items():
            kept = frozenset(filterfalse(is_internal, touched))
            if kept:
                user_keys[db] = kept
        self.stats.commands += count
        self.stats.bytes += nbytes
        if not user_keys:
            return  # only internal keys: nothing to hand on, and no offset to acknowledge
        await self._put(
            CaptureBatch(
                keys=user_keys,
                flushed_dbs=frozenset(),
                gap=None,
                end_offset=None,
                replid=None,
                commands=count,
                replay=False,
            )
        )

    async def _gap(self, reason: str, detail: str, flushed: frozenset[int] = frozenset()) -> None:
        self.stats.gaps += 1
        log.warning("capture gap source=%s reason=%s detail=%s", self.name, reason, detail)
        await self._put(
            CaptureBatch(
                keys={},
                flushed_dbs=flushed,
                gap=Gap(reason, detail, now_ms()),
                end_offset=None,
                replid=None,
                commands=0,
                replay=False,
            )
        )

    async def _put(self, batch: CaptureBatch) -> None:
        await self._channel.put(batch)
