"""Anti-entropy: find the keys two regions disagree on, and repair exactly those.

A session runs between this region (the initiator) and one peer (the responder) over the
control topic, per database:

1. `hello`: the peer's Merkle roots. Equal roots: nothing to do.
2. `children`, level by level: the initiator descends only into nodes whose hashes differ,
   down to the differing hash slots (leaves).
3. `buckets`: both sides read the differing slots' metadata fresh from Redis (so drift of
   an in-memory index can never cause a repair) and split each slot into buckets of about
   `keys_per_bucket` keys by key hash; only differing buckets go on.
4. `entries`: (key, 8-byte digest prefix) of the differing buckets; then `metas`: the full
   metadata of only the keys whose prefixes differ. Each such key is decided with the same
   resolver as replication: the side whose version wins ships its state; concurrent
   versions are exchanged both ways so both sides also merge their clocks.
5. `ship`: the peer ships the keys it won to us; we ship the ones we won to it. Repair
   traffic is ordinary change events targeted at the losing region, so its applier
   resolves them exactly as live replication, and it is rate-limited.

So the bytes exchanged grow with the divergent keys, not with the keyspace. A session keeps
no state beyond itself: interrupted, it fails and is simply run again (every step is
idempotent). Several slot chunks are in flight at once; memory is bounded by the chunk size.

Modes: "repair"; "dry-run" (decide and report, ship nothing); "verify" (dry run plus each
side checking that its data matches its metadata: a checksum of the data itself); and
"resync" (the peer streams its whole keyspace to us, then a repair session runs).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from reconciler.consistency.control import ControlChannel, ControlMessage
from reconciler.consistency.limits import RequestLimits
from reconciler.consistency.merkle import (
    LEAF_LEVEL,
    MASK,
    MerkleTree,
    bucket_of,
    children,
    entry_hash,
    leaf_entries,
    leaf_hash_of_records,
    live_digest,
)
from reconciler.consistency.messages import (
    MAX_BUCKETS_PER_SLOT,
    MAX_ENTRIES,
    MAX_ERROR_CHARS,
    MAX_KEYS_PER_REQUEST,
    MAX_SAMPLE,
    REQUESTS,
    SLOTS_PER_CHUNK,
    TAG_BYTES,
    BadMessageError,
    Buckets,
    BucketsReply,
    Children,
    ChildrenReply,
    Entries,
    EntriesReply,
    Hello,
    HelloReply,
    Metas,
    MetasReply,
    Refusal,
    Request,
    Resync,
    Selfcheck,
    SelfcheckReply,
    Ship,
    Shipped,
    parse_reply,
    parse_request,
    reply_seq,
)
from reconciler.consistency.modes import SessionMode
from reconciler.consistency.repair import RepairShipper
from reconciler.consistency.reports import KeyDecision, RepairReport, ReportStore
from reconciler.service.config import AntiEntropySection
from replication.clock import wall_ms
from replication.errors import DecodeError, ReconcilerError, first_cause
from replication.model.event import Version
from replication.model.keys import is_internal, meta_key
from replication.model.metadata import Meta, decode_meta
from replication.model.resolver import Outcome, resolve
from replication.redis.library import meta_key_for, parse_read_reply, read_command
from replication.redis.resp import RespConnection
from replication.redis.scan import metadata_entries, user_keys

log = logging.getLogger(__name__)

REQUEST = "ae.req."
REPLY = "ae.reply"
CHUNKS_IN_FLIGHT = 4
MAX_REFUSALS_IN_FLIGHT = 64  # refusal replies being sent at once (beyond: no reply)


class SessionError(ReconcilerError):
    """An anti-entropy session could not complete (peer silent, peer error)."""

    retriable = True


def is_live(meta: Meta | None, now: int) -> bool:
    return meta is not None and meta.is_live(now)


Records = dict[bytes, bytes]  # key -> raw stored metadata record, as HGETALL returns it


def bucket_hashes(records: Records, buckets: int, now: int) -> list[int]:
    """Per-bucket sums of the live entries' terms."""
    sums = [0] * buckets
    for key, raw in records.items():
        digest = live_digest(raw, now)
        if digest is not None:
            b = bucket_of(key, buckets)
            sums[b] = (sums[b] + entry_hash(key, digest)) & MASK
    return sums


def tag_of(raw: bytes, now: int) -> bytes:
    """What the first exchange of entries compares: a digest prefix for a live key, empty
    for one that is logically absent (deleted or expired)."""
    digest = live_digest(raw, now)
    return digest[:TAG_BYTES] if digest is not None else b""


def _version(meta: Meta) -> Version:
    return Version(meta.clock, meta.origin, meta.digest)


def _describe(meta: Meta | None, now: int) -> dict[str, Any] | None:
    if meta is None:
        return None
    state = "deleted" if meta.deleted else "expired" if meta.is_expired(now) else "live"
    return {
        "state": state,
        "origin": meta.origin,
        "hlc": meta.hlc,
        "clock": dict(meta.clock),
        "digest": meta.digest.hex(),
    }


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # ship-to-peer | fetch-from-peer | exchange
    winner: str  # local | peer | equal
    reason: str


def decide(mine: Meta | None, theirs: Meta | None, now: int) -> Decision | None:
    """What to do about one key whose entries differ; None when they agree logically
    (same live value, or absent/deleted/expired on both sides)."""
    mine_live, theirs_live = is_live(mine, now), is_live(theirs, now)
    if not mine_live and not theirs_live:
        if mine is None or theirs is None or mine.clock == theirs.clock:
            return None  # absent everywhere; a tombstone on one side only changes nothing
    elif (
        mine_live
        and theirs_live
        and mine is not None
        and theirs is not None
        and mine.digest == theirs.digest
        and mine.clock == theirs.clock
    ):
        return None
    if theirs is None:
        return Decision("ship-to-peer", "local", "the peer has no version of the key")
    if mine is None:
        return Decision("fetch-from-peer", "peer", "this region has no version of the key")
    res = resolve(_version(mine), _version(theirs))
    if res.outcome is Outcome.APPLIED:
        return Decision("fetch-from-peer", "peer", "the peer's clock dominates")
    if res.outcome is Outcome.STALE:
        if mine.clock == theirs.clock:
            return Decision("exchange", "equal", "equal clocks, different states (anomaly)")
        return Decision("ship-to-peer", "local", "this region's clock dominates")
    winner = "peer" if res.outcome is Outcome.REMOTE_WON else "local"
    return Decision("exchange", winner, res.reason)


async def read_slots(conn: RespConnection, slots: Sequence[int]) -> dict[int, Records]:
    """Fresh metadata records of several slots from Redis (one round trip), undecoded:
    the comparison reads digests and expiries straight from them."""
    replies = await conn.pipeline([("HGETALL", meta_key(s)) for s in slots])
    return {
        s: dict(zip(flat[::2], flat[1::2], strict=True))
        for s, flat in zip(slots, replies, strict=True)
    }


@dataclass(frozen=True, slots=True)
class _Pending:
    """A request waiting for its reply, which only `peer` may give."""

    peer: str
    request: Request
    reply: asyncio.Future[ControlMessage]


class AntiEntropy:
    """Runs sessions as initiator and answers peers' sessions as responder."""

    def __init__(
        self,
        region: str,
        *,
        channel: ControlChannel,
        trees: Mapping[int, MerkleTree],
        conn: Callable[[int], Awaitable[RespConnection]],
        shipper: RepairShipper,
        settings: AntiEntropySection,
        reports: ReportStore,
        limits: RequestLimits | None = None,
    ) -> None:
        self.region = region
        self.channel = channel
        self.trees = trees
        self._conn = conn
        self.shipper = shipper
        self.settings = settings
        self.reports = reports
        self._seq = itertools.count(1)
        self._pending: dict[tuple[str, int], _Pending] = {}  # (session, seq) -> request
        self._answering: set[asyncio.Task[None]] = set()
        self._refusing = 0
        self.limits = limits if limits is not None else RequestLimits()
        self.refused = self.limits.refused  # requests refused or failed, by reason
        self.bad_replies: Counter[str] = Counter()  # replies dropped or malformed, by reason
        self.sessions_ok = 0
        self.sessions_failed = 0
        self.keys_repaired = 0
        self.bytes_exchanged = 0

    # ----------------------------------------------------------------------- plumbing
    async def handle(self, msg: ControlMessage) -> None:
        """Control-channel handler for "ae." messages (already authenticated and from a
        configured peer: see `ControlChannel.accept`)."""
        if msg.type == REPLY:
            self._on_reply(msg)
        elif msg.type.startswith(REQUEST):
            self._on_request(msg)
        else:
            self.refused["unknown-type"] += 1

    def _on_reply(self, msg: ControlMessage) -> None:
        key = (msg.session, reply_seq(msg.body) or 0)
        pending = self._pending.get(key)
        if pending is None:
            # No such request (any more): late after a timeout, or made up.
            self.bad_replies["unexpected"] += 1
            return
        if pending.peer != msg.sender:
            # Another peer answering for the one asked: never taken as its answer.
            self.bad_replies["wrong-sender"] += 1
            log.warning(
                "anti-entropy reply from %s to a request sent to %s dropped",
                msg.sender,
                pending.peer,
            )
            return
        del self._pending[key]
        if not pending.reply.done():
            pending.reply.set_result(msg)

    def _on_request(self, msg: ControlMessage) -> None:
        op = msg.type.removeprefix(REQUEST)
        seq = reply_seq(msg.body)
        if seq is None or seq < 1:
            self.refused["malformed"] += 1  # no seq: a reply could not even be matched
            return
        kind = REQUESTS.get(op)
        expensive = bool(kind is not None and kind.expensive)
        verdict = self.limits.admit(msg.sender, msg.session, seq, expensive=expensive)
        if verdict == "duplicate":
            return  # answered already (Kafka delivers at least once; or a replay)
        if verdict is not None:
            self._spawn_refusal(msg, seq, f"{op} refused: {verdict} (too many requests)")
            return
        # Answer in a task: the control loop must stay free to deliver replies. The
        # number of these tasks is bounded per peer by the limits.
        task = asyncio.create_task(self._answer(msg, op, seq, expensive))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    def _spawn_refusal(self, msg: ControlMessage, seq: int, error: str) -> None:
        if self._refusing >= MAX_REFUSALS_IN_FLIGHT:
            return  # a flood: the requester times out instead of hearing why
        self._refusing += 1

        async def refuse() -> None:
            try:
                await self._reply(msg, seq, ok=False, error=error)
            finally:
                self._refusing -= 1

        task = asyncio.create_task(refuse())
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _reply(self, msg: ControlMessage, seq: int, **body: Any) -> None:
        try:
            await self.channel.send(REPLY, msg.sender, msg.session, seq=seq, **body)
        except (KafkaError, OSError, ReconcilerError) as exc:
            log.warning("anti-entropy reply to %s not sent: %s", msg.sender, exc)

    def abort_peer(self, peer: str, reason: str) -> None:
        """Fail at once every request waiting on `peer` (it went down or restarted), rather
        than letting each wait for its timeout."""
        for key, pending in list(self._pending.items()):
            if pending.peer == peer and not pending.reply.done():
                pending.reply.set_exception(SessionError(f"peer {peer} {reason}"))
                self._pending.pop(key, None)

    async def stop(self) -> None:
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        for pending in self._pending.values():
            pending.reply.cancel()

    async def _request(
        self,
        report: RepairReport,
        session: str,
        request: Request,
        timeout_s: float | None = None,
    ) -> Any:
        """Send `request` to the session's peer and return its reply, checked against the
        request; SessionError (with the reason) for no reply, a refusal, a malformed one."""
        seq = next(self._seq)
        fut: asyncio.Future[ControlMessage] = asyncio.get_running_loop().create_future()
        self._pending[(session, seq)] = _Pending(report.peer, request, fut)
        op = request.op
        timeout = timeout_s or self.settings.request_timeout_s
        try:
            sent = await self.channel.send(
                REQUEST + op, report.peer, session, seq=seq, **request.body()
            )
            try:
                async with asyncio.timeout(timeout):
                    msg = await fut
            except TimeoutError:
                raise SessionError(
                    f"peer {report.peer} did not answer '{op}' within "
                    f"{timeout:.0f}s (is its daemon up?)"
                ) from None
        finally:
            self._pending.pop((session, seq), None)
        b = report.bytes_exchanged
        b["sent"] = b.get("sent", 0) + sent
        b["received"] = b.get("received", 0) + msg.size
        b["total"] = b["sent"] + b["received"]
        try:
            reply = parse_reply(msg.body, request)
        except BadMessageError as exc:
            self.bad_replies["malformed"] += 1
            raise SessionError(f"peer {report.peer} sent a malformed '{op}' reply: {exc}") from None
        if isinstance(reply, Refusal):
            raise SessionError(f"peer {report.peer} failed '{op}': {reply.error}")
        return reply

    async def _answer(self, msg: ControlMessage, op: str, seq: int, expensive: bool) -> None:
        try:
            request = parse_request(op, msg.body)[1]
            reply = await self._respond(request, msg.sender)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the peer gets the reason; we carry on
            reason = exc.reason if isinstance(exc, BadMessageError) else "failed"
            self.refused[reason] += 1
            log.warning("anti-entropy request %s from %s failed: %s", op, msg.sender, exc)
            await self._reply(msg, seq, ok=False, error=str(exc)[:MAX_ERROR_CHARS])
        else:
            await self._reply(msg, seq, ok=True, **reply.body())
        finally:
            self.limits.release(msg.sender, expensive=expensive)

    async def _respond(self, request: Request, sender: str) -> Any:
        if isinstance(request, Hello):
            return self._on_hello(request)
        if isinstance(request, Children):
            return self._on_children(request)
        if isinstance(request, Buckets):
            return await self._on_buckets(request)
        if isinstance(request, Entries):
            return await self._on_entries(request)
        if isinstance(request, Metas):
            return await self._on_metas(request)
        if isinstance(request, Ship | Resync) and request.target != sender:
            # Keys go only to whoever asks for them: no region can send a third one a
            # shipment it did not ask for.
            raise BadMessageError(
                f"'{request.op}' to {request.target} asked by {sender}", "wrong-target"
            )
        if isinstance(request, Ship):
            return await self._on_ship(request)
        if isinstance(request, Resync):
            return await self._on_resync(request)
        if isinstance(request, Selfcheck):
            return await self._on_selfcheck()
        raise BadMessageError(f"no handler for {request.op!r}", "unknown-request")

    # ---------------------------------------------------------------------- responder
    def _tree(self, db: int) -> MerkleTree:
        tree = self.trees.get(db)
        if tree is None:
            raise SessionError(f"database {db} is not replicated here")
        return tree

    def _on_hello(self, request: Hello) -> HelloReply:
        dbs = [db for db in request.dbs if db in self.trees]
        return HelloReply(
            {db: self.trees[db].root for db in dbs}, {db: self.trees[db].keys for db in dbs}
        )

    def _on_children(self, request: Children) -> ChildrenReply:
        row = self._tree(request.db).levels[request.level + 1]
        return ChildrenReply(
            tuple(row[c] for n in request.nodes for c in children(request.level, n))
        )

    async def _on_buckets(self, request: Buckets) -> BucketsReply:
        tree = self._tree(request.db)
        slots = [s for s, _ in request.slots]
        entries = await read_slots(await self._conn(request.db), slots)
        now = wall_ms()
        out = []
        for slot, n in request.slots:
            self._refresh_leaf(tree, slot, entries[slot])
            out.append(tuple(bucket_hashes(entries[slot], n, now)))
        return BucketsReply(tuple(out))

    async def _on_entries(self, request: Entries) -> EntriesReply:
        """(key, tag) of every entry in the wanted buckets; the tag is the first bytes of
        the digest for a live key, empty otherwise (deleted, expired)."""
        self._tree(request.db)
        conn = await self._conn(request.db)
        records = await read_slots(conn, [s for s, _, _ in request.want])
        now = wall_ms()
        out: dict[bytes, bytes] = {}
        for slot, n, buckets in request.want:
            for key, raw in records[slot].items():
                if bucket_of(key, n) in buckets:
                    out[key] = tag_of(raw, now)
            if len(out) > MAX_ENTRIES:
                raise SessionError(
                    f"more than {MAX_ENTRIES} keys in the buckets asked for: split finer"
                )
        return EntriesReply(out)

    async def _on_metas(self, request: Metas) -> MetasReply:
        """The raw metadata of the given keys (those whose tags differed)."""
        self._tree(request.db)
        keys = list(dict.fromkeys(request.keys))
        conn = await self._conn(request.db)
        raws = await conn.pipeline([("HGET", meta_key_for(k), k) for k in keys])
        return MetasReply(
            {k: raw for k, raw in zip(keys, raws, strict=True) if isinstance(raw, bytes) and raw}
        )

    async def _on_ship(self, request: Ship) -> Shipped:
        self._tree(request.db)
        keys = [k for k in dict.fromkeys(request.keys) if not is_internal(k)]
        shipped = await self.shipper.ship(request.db, keys, request.target)
        self.keys_repaired += shipped
        return Shipped(shipped)

    async def _on_resync(self, request: Resync) -> Shipped:
        shipped = 0
        for db in self.trees:
            shipped += await self.shipper.ship_everything(db, request.target)
        log.info("resync streamed: target=%s keys=%d", request.target, shipped)
        return Shipped(shipped)

    async def _on_selfcheck(self) -> SelfcheckReply:
        checked = inconsistent = 0
        sample: list[str] = []
        for db in self.trees:
            c, bad = await self.selfcheck(db)
            checked += c
            inconsistent += len(bad)
            sample += [
                k.decode("utf-8", "backslashreplace") for k in bad[: MAX_SAMPLE - len(sample)]
            ]
        return SelfcheckReply(checked, inconsistent, tuple(s[:1024] for s in sample))

    async def refresh_slots(self, db: int, slots: Sequence[int]) -> int:
        """Recompute these leaves from Redis; returns how many had drifted. For slots
        changed while the index was being rebuilt (the scan may have read them before)."""
        tree = self.trees[db]
        conn = await self._conn(db)
        drifted = 0
        for i in range(0, len(slots), 256):
            chunk = slots[i : i + 256]
            records = await read_slots(conn, chunk)
            for slot in chunk:
                before = tree.levels[LEAF_LEVEL][slot]
                self._refresh_leaf(tree, slot, records[slot])
                drifted += tree.levels[LEAF_LEVEL][slot] != before
        return drifted

    def _refresh_leaf(self, tree: MerkleTree, slot: int, records: Records) -> None:
        """Correct the in-memory leaf if it drifted from Redis (then the tree is exact)."""
        fresh, _ = leaf_hash_of_records([x for pair in records.items() for x in pair])
        if tree.levels[LEAF_LEVEL][slot] != fresh:
            tree.set_leaf(slot, fresh)

    async def selfcheck(self, db: int) -> tuple[int, list[bytes]]:
        """Does every key's data match its metadata? (checked count, inconsistent keys)."""
        conn = await self._conn(db)
        checked = 0
        bad: list[bytes] = []
        now = wall_ms()
        async for keys in user_keys(conn, 500):
            (reply,) = await conn.pipeline([read_command(keys)])
            for state in parse_read_reply(keys, reply):
                checked += 1
                try:
                    meta = decode_meta(state.meta_raw) if state.meta_raw else None
                except DecodeError:
                    meta = None
                if state.kind_name == "none":
                    continue  # expired between SCAN and read
                if meta is None or meta.deleted or meta.digest != state.digest:
                    bad.append(state.key)
        async for chunk in metadata_entries(conn, 500):
            entries = leaf_entries([x for pair in chunk for x in pair])
            live = [k for k, m in entries.items() if m.is_live(now)]
            if live:
                exists = await conn.pipeline([("EXISTS", k) for k in live])
                bad += [k for k, e in zip(live, exists, strict=True) if e == 0]
        return checked, bad

    # ---------------------------------------------------------------------- initiator
    async def run(
        self, peer: str, trigger: str, mode: SessionMode = SessionMode.REPAIR
    ) -> RepairReport:
        """One session with `peer`; writes and returns its report (never raises for a
        session failure: the report says `failed` and why)."""
        report = RepairReport.new(self.region, peer, trigger, mode)
        session = uuid.uuid4().hex
        started = time.monotonic()
        try:
            if mode is SessionMode.RESYNC:
                t0 = time.monotonic()
                shipped = await self._request(
                    report, session, Resync(self.region), timeout_s=24 * 3600.0
                )
                report.repaired["fetched"] = shipped.shipped
                report.durations_s["resync"] = time.monotonic() - t0
            await self._compare(
                report, session, dry_run=mode in (SessionMode.DRY_RUN, SessionMode.VERIFY)
            )
            if mode is SessionMode.VERIFY:
                await self._verify_data(report, session)
            report.finish("ok")
            self.sessions_ok += 1
        except (ReconcilerError, OSError, KafkaError) as exc:
            report.finish("failed", str(exc))
            self.sessions_failed += 1
            log.warning("anti-entropy session failed: peer=%s error=%s", peer, exc)
        except Exception as exc:
            # Sessions run at every start: escaping here would make a crash loop.
            report.finish("failed", f"internal error: {type(exc).__name__}: {exc}")
            self.sessions_failed += 1
            log.exception("anti-entropy session failed: peer=%s (internal error)", peer)
        report.durations_s["total"] = time.monotonic() - started
        self.bytes_exchanged += report.bytes_exchanged.get("total", 0)
        self.reports.save(report)  # a disk error is counted there, never fatal
        log.info(
            "anti-entropy session: peer=%s mode=%s trigger=%s result=%s keys_differing=%d "
            "bytes=%d seconds=%.2f report=%s",
            peer,
            mode,
            trigger,
            report.result,
            report.keys_differing,
            report.bytes_exchanged.get("total", 0),
            report.durations_s["total"],
            report.id,
        )
        return report

    async def _compare(self, report: RepairReport, session: str, *, dry_run: bool) -> None:
        t0 = time.monotonic()
        dbs = sorted(self.trees)
        hello: HelloReply = await self._request(report, session, Hello(tuple(dbs)))
        report.keys_in_scope = {
            "local": sum(self.trees[db].keys for db in dbs),
            "peer": sum(hello.keys.values()),
        }
        repair_time = 0.0
        semaphore = asyncio.Semaphore(CHUNKS_IN_FLIGHT)
        for db in dbs:
            tree = self.trees[db]
            if db not in hello.roots or tree.root == hello.roots[db]:
                continue
            slots = await self._differing_slots(report, session, db, tree)
            report.leaves_differing += len(slots)

            async def one_chunk(chunk: list[int], db: int = db) -> float:
                async with semaphore:
                    return await self._repair_slots(report, session, db, chunk, dry_run=dry_run)

            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(one_chunk(slots[i : i + SLOTS_PER_CHUNK]))
                        for i in range(0, len(slots), SLOTS_PER_CHUNK)
                    ]
            except ExceptionGroup as failures:
                # One chunk's failure fails the session: raise its cause as such, so run()
                # reports it (a group would escape run() and stop the daemon).
                raise first_cause(failures) from failures
            repair_time += sum(t.result() for t in tasks)
        report.durations_s["compare"] = time.monotonic() - t0
        report.durations_s["repair"] = repair_time

    async def _differing_slots(
        self, report: RepairReport, session: str, db: int, tree: MerkleTree
    ) -> list[int]:
        differing = [0]
        for level in range(LEAF_LEVEL):
            if not differing:
                break
            request = Children(db, level, tuple(differing))
            reply: ChildrenReply = await self._request(report, session, request)
            ids = [c for n in differing for c in children(level, n)]
            row = tree.levels[level + 1]
            differing = [c for c, h in zip(ids, reply.hashes, strict=True) if row[c] != h]
        return differing

    async def _repair_slots(
        self, report: RepairReport, session: str, db: int, slots: list[int], *, dry_run: bool
    ) -> float:
        conn = await self._conn(db)
        mine = await read_slots(conn, slots)
        tree = self.trees[db]
        now = wall_ms()
        sizes = {}
        for slot in slots:
            self._refresh_leaf(tree, slot, mine[slot])
            live = sum(1 for raw in mine[slot].values() if live_digest(raw, now) is not None)
            n = math.ceil(live / self.settings.keys_per_bucket)
            # Bounded as the responder requires (coarser buckets, same correctness).
            sizes[slot] = min(MAX_BUCKETS_PER_SLOT, max(1, n))
        reply: BucketsReply = await self._request(
            report, session, Buckets(db, tuple((s, sizes[s]) for s in slots))
        )
        want: list[tuple[int, int, frozenset[int]]] = []
        for slot, theirs in zip(slots, reply.buckets, strict=True):
            ours = bucket_hashes(mine[slot], sizes[slot], now)
            diff = [b for b, (x, y) in enumerate(zip(ours, theirs, strict=True)) if x != y]
            if diff:
                want.append((slot, sizes[slot], frozenset(diff)))
                report.buckets_differing += len(diff)
        if not want:
            return 0.0
        entries: EntriesReply = await self._request(report, session, Entries(db, tuple(want)))
        theirs_tags = entries.entries
        mine_records: Records = {}
        for slot, n, buckets in want:
            mine_records.update(
                (k, raw) for k, raw in mine[slot].items() if bucket_of(k, n) in buckets
            )
        # Only keys whose tags differ go on; fetch the peer's metadata for those it has.
        candidates = [
            k
            for k in mine_records.keys() | theirs_tags.keys()
            if (tag_of(mine_records[k], now) if k in mine_records else b"")
            != theirs_tags.get(k, b"")
        ]
        report.keys_compared += len(mine_records.keys() | theirs_tags.keys())
        mine_entries = leaf_entries(
            [x for k in candidates if k in mine_records for x in (k, mine_records[k])]
        )
        needed = [k for k in candidates if k in theirs_tags]
        theirs_entries: dict[bytes, Meta] = {}
        for i in range(0, len(needed), MAX_KEYS_PER_REQUEST):
            chunk = tuple(needed[i : i + MAX_KEYS_PER_REQUEST])
            metas: MetasReply = await self._request(report, session, Metas(db, chunk))
            theirs_entries.update(leaf_entries([x for pair in metas.metas.items() for x in pair]))
        ship: list[bytes] = []
        fetch: list[bytes] = []
        for key in sorted(candidates):
            m, t = mine_entries.get(key), theirs_entries.get(key)
            decision = decide(m, t, now)
            if decision is None:
                continue
            report.add_decision(
                KeyDecision(
                    db=db,
                    key=key.decode("utf-8", "backslashreplace"),
                    action=decision.action,
                    winner=decision.winner,
                    reason=decision.reason,
                    local=_describe(m, now),
                    peer=_describe(t, now),
                )
            )
            if decision.action in ("ship-to-peer", "exchange"):
                ship.append(key)
            if decision.action in ("fetch-from-peer", "exchange"):
                fetch.append(key)
        if dry_run or not (ship or fetch):
            return 0.0
        t0 = time.monotonic()
        await self._exchange(report, session, db, ship, fetch)
        return time.monotonic() - t0

    async def _exchange(
        self, report: RepairReport, session: str, db: int, ship: list[bytes], fetch: list[bytes]
    ) -> None:
        if ship:
            shipped = await self.shipper.ship(db, ship, report.peer)
            report.repaired["shipped"] = report.repaired.get("shipped", 0) + shipped
        for i in range(0, len(fetch), MAX_KEYS_PER_REQUEST):
            chunk = tuple(fetch[i : i + MAX_KEYS_PER_REQUEST])
            reply: Shipped = await self._request(report, session, Ship(db, chunk, self.region))
            report.repaired["fetched"] = report.repaired.get("fetched", 0) + reply.shipped
        self.keys_repaired += len(ship) + len(fetch)

    async def _verify_data(self, report: RepairReport, session: str) -> None:
        t0 = time.monotonic()
        local_bad: list[bytes] = []
        for db in self.trees:
            _, bad = await self.selfcheck(db)
            local_bad += bad
        report.local_inconsistencies = len(local_bad)
        reply: SelfcheckReply = await self._request(report, session, Selfcheck(), timeout_s=3600.0)
        report.peer_inconsistencies = reply.inconsistent
        report.durations_s["selfcheck"] = time.monotonic() - t0
        if local_bad or report.peer_inconsistencies:
            log.warning(
                "verify: data does not match metadata: local=%d peer=%d",
                len(local_bad),
                report.peer_inconsistencies,
            )
