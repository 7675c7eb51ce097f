"""The Merkle index of one region's keyspace, per database.

Leaves are the 16384 hash slots. A leaf's hash is the sum, mod 2**64, of
xxh3_64(key || digest) over the slot's live keys (tombstones are left out: a tombstone and
a key never seen are the same logical state), so one change updates a leaf in O(1) by
subtracting the old term and adding the new. Internal nodes are sums of their children
(fan-out 16, 16, 16, then 4 down to the 16384 leaves), so they too update in O(1) per level,
and a node's hash is the multiset hash of every (key, digest) below it.

Only these sums live in memory (about 170 KB per database); the per-key data stays in the
per-slot metadata hashes in Redis and is read when a leaf differs. The index is rebuilt
from those hashes at start (`rebuild`), and any leaf can be recomputed from Redis
(`leaf_from_redis`) to confirm a difference before repairing it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import xxhash

from replication.errors import DecodeError
from replication.model.digest import DIGEST_BYTES, TOMBSTONE_DIGEST
from replication.model.keys import meta_key
from replication.model.metadata import Meta, decode_meta
from replication.model.slots import SLOTS, key_slot
from replication.redis.resp import RespConnection

log = logging.getLogger(__name__)

MASK = (1 << 64) - 1
FANOUT = (16, 16, 16, 4)  # children per node, from the root down; product = SLOTS
LEVEL_SIZES = (1, 16, 256, 4096, SLOTS)  # nodes per level, root first
LEAF_LEVEL = len(LEVEL_SIZES) - 1


def entry_hash(key: bytes, digest: bytes) -> int:
    """A key's term in its leaf (digest has a fixed length, so the concatenation is
    unambiguous)."""
    return xxhash.xxh3_64_intdigest(key + digest)


def bucket_of(key: bytes, buckets: int) -> int:
    """Sub-leaf bucket of a key, to split a large differing leaf before exchanging keys."""
    return xxhash.xxh3_64_intdigest(key, seed=0x5EED) % buckets


def children(level: int, node: int) -> range:
    """Node ids (at level + 1) of the children of `node` at `level`."""
    fan = FANOUT[level]
    return range(node * fan, node * fan + fan)


def live_term(key: bytes, meta: Meta) -> int:
    """The key's term, 0 for a tombstone."""
    return 0 if meta.deleted else entry_hash(key, meta.digest)


class MerkleTree:
    """Sums per level for one database; level 0 is the root, LEAF_LEVEL the slots."""

    __slots__ = ("keys", "levels")

    def __init__(self) -> None:
        self.levels: list[list[int]] = [[0] * size for size in LEVEL_SIZES]
        self.keys = 0  # live keys counted in the tree

    @property
    def root(self) -> int:
        return self.levels[0][0]

    def _add_to_leaf(self, slot: int, delta: int) -> None:
        node = slot
        for level in range(LEAF_LEVEL, -1, -1):
            row = self.levels[level]
            row[node] = (row[node] + delta) & MASK
            if level:
                node //= FANOUT[level - 1]

    def update(self, key: bytes, old_digest: bytes, new_digest: bytes) -> None:
        """A key's live digest went from old to new (b"" or the tombstone digest: none)."""
        old_live = bool(old_digest) and old_digest != TOMBSTONE_DIGEST
        new_live = bool(new_digest) and new_digest != TOMBSTONE_DIGEST
        if old_live == new_live and old_digest == new_digest:
            return
        delta = 0
        if old_live:
            delta -= entry_hash(key, old_digest)
            self.keys -= 1
        if new_live:
            delta += entry_hash(key, new_digest)
            self.keys += 1
        self._add_to_leaf(key_slot(key), delta & MASK)

    def set_leaf(self, slot: int, value: int, keys_delta: int = 0) -> None:
        """Replace a leaf's sum (after recomputing it from Redis)."""
        delta = (value - self.levels[LEAF_LEVEL][slot]) & MASK
        if delta:
            self._add_to_leaf(slot, delta)
        self.keys += keys_delta

    def node(self, level: int, node: int) -> int:
        return self.levels[level][node]

    def child_hashes(self, level: int, nodes: Iterable[int]) -> dict[int, int]:
        """Hashes of the children (at level + 1) of the given nodes."""
        row = self.levels[level + 1]
        return {c: row[c] for n in nodes for c in children(level, n)}


class MerkleIndex:
    """The region's trees, one per database, told of every change to a key's live digest
    (the `replication.pipeline.publisher.ChangeIndex` the publisher writes to).

    While a database's tree is rebuilt, changes still go to the tree in place, and the
    slots they touch are noted: the new tree may have read those slots before the change,
    so they are read again once it is in place.
    """

    def __init__(self, dbs: Iterable[int]) -> None:
        self.trees: dict[int, MerkleTree] = {db: MerkleTree() for db in dbs}
        self._rebuilding: dict[int, set[int]] = {}  # db -> slots changed during its rebuild

    def update(self, db: int, key: bytes, old_digest: bytes, new_digest: bytes) -> None:
        """Record a key's digest change (b"" = no live value) in its database's tree."""
        tree = self.trees.get(db)
        if tree is not None:
            tree.update(key, old_digest, new_digest)
        touched = self._rebuilding.get(db)
        if touched is not None:
            touched.add(key_slot(key))

    @contextlib.contextmanager
    def rebuilding(self, db: int) -> Iterator[set[int]]:
        """Note the slots changed in `db` inside the block (the set it yields)."""
        touched: set[int] = set()
        self._rebuilding[db] = touched
        try:
            yield touched
        finally:
            self._rebuilding.pop(db, None)


def leaf_entries(flat: list[bytes]) -> dict[bytes, Meta]:
    """key -> metadata from an HGETALL/HSCAN of a slot's metadata hash (bad records are
    skipped and logged: they are repaired by the next write or repair of that key)."""
    out: dict[bytes, Meta] = {}
    for key, raw in zip(flat[::2], flat[1::2], strict=True):
        try:
            out[key] = decode_meta(raw)
        except DecodeError as exc:
            log.warning("unreadable metadata record skipped: %s", exc)
    return out


def leaf_hash(entries: Mapping[bytes, Meta]) -> tuple[int, int]:
    """(sum, live keys) of a leaf from its entries."""
    total = 0
    live = 0
    for key, meta in entries.items():
        if not meta.deleted and len(meta.digest) == DIGEST_BYTES:
            total += entry_hash(key, meta.digest)
            live += 1
    return total & MASK, live


# A stored record starts with a 5-array header and the 16-byte digest as a fixed string
# (what Redis's cmsgpack writes), so the digest can be sliced out without decoding.
_RECORD_HEAD = b"\x95\xb0"


def digest_of_record(raw: bytes) -> bytes | None:
    """The digest of a stored metadata record, cheaply; None if it is not readable."""
    if raw[:2] == _RECORD_HEAD and len(raw) >= 2 + DIGEST_BYTES:
        return raw[2 : 2 + DIGEST_BYTES]
    try:
        return decode_meta(raw).digest
    except DecodeError:
        return None


def _int_at(raw: bytes, pos: int) -> int | None:
    """A non-negative msgpack integer at raw[pos] (the forms Redis's cmsgpack writes)."""
    tag = raw[pos]
    if tag <= 0x7F:
        return tag
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(tag)
    if width is None or pos + 1 + width > len(raw):
        return None
    return int.from_bytes(raw[pos + 1 : pos + 1 + width], "big")


def live_digest(raw: bytes, now_ms: int) -> bytes | None:
    """The digest of a stored record if its key is live (neither deleted nor expired at
    `now_ms`), else None. Reads the fixed layout (digest, then the origin as a small integer
    or a short string, then the expiry) without decoding; falls back to a full decode otherwise."""
    if raw[:2] == _RECORD_HEAD and len(raw) > 19 and (raw[18] <= 0x7F or 0xA0 <= raw[18] <= 0xBF):
        digest = raw[2 : 2 + DIGEST_BYTES]
        if digest == TOMBSTONE_DIGEST:
            return None
        # The origin: its position in the clock (a fixint), or in older records its name.
        expire_at = _int_at(raw, 19 if raw[18] <= 0x7F else 19 + (raw[18] & 0x1F))
        if expire_at is not None:
            return digest if not 0 < expire_at <= now_ms else None
    try:
        meta = decode_meta(raw)
    except DecodeError:
        return None
    return meta.digest if meta.is_live(now_ms) else None


def leaf_hash_of_records(flat: list[bytes]) -> tuple[int, int]:
    """(sum, live keys) of a leaf straight from HGETALL's flat [key, record, ...]: only the
    digests matter (a tombstone's is the tombstone digest), so nothing is fully decoded."""
    total = live = 0
    for key, raw in zip(flat[::2], flat[1::2], strict=True):
        digest = digest_of_record(raw)
        if digest is not None and digest != TOMBSTONE_DIGEST:
            total += xxhash.xxh3_64_intdigest(key + digest)
            live += 1
    return total & MASK, live


async def read_slot(conn: RespConnection, slot: int) -> dict[bytes, Meta]:
    """Every metadata entry of one slot (HSCAN, so a big slot does not block Redis)."""
    entries: dict[bytes, Meta] = {}
    cursor = b"0"
    while True:
        cursor, flat = await conn.execute("HSCAN", meta_key(slot), cursor, "COUNT", 1000)
        entries.update(leaf_entries(flat))
        if cursor == b"0":
            return entries


async def rebuild(
    conn: RespConnection,
    *,
    progress: Callable[[int, int], None] | None = None,
    slots_per_round: int = 256,
) -> MerkleTree:
    """Build a tree from the metadata hashes of the connection's database.

    Small slot hashes are read with HGETALL, many per round trip; a slot with more
    entries than fit one round is read with HSCAN. `progress(slots_done, keys)` is called
    as it goes (for logs and the rebuild-progress metric).
    """
    tree = MerkleTree()
    started = time.monotonic()
    leaves = tree.levels[LEAF_LEVEL]
    for first in range(0, SLOTS, slots_per_round):
        slots = range(first, min(SLOTS, first + slots_per_round))
        sizes = await conn.pipeline([("HLEN", meta_key(s)) for s in slots])
        small = [s for s, n in zip(slots, sizes, strict=True) if 0 < n <= 2000]
        big = [s for s, n in zip(slots, sizes, strict=True) if n > 2000]
        replies = await conn.pipeline([("HGETALL", meta_key(s)) for s in small])
        for slot, flat in zip(small, replies, strict=True):
            leaves[slot], live = leaf_hash_of_records(flat)
            tree.keys += live
        for slot in big:
            leaves[slot], live = leaf_hash(await read_slot(conn, slot))
            tree.keys += live
        if progress is not None:
            progress(slots.stop, tree.keys)
    _recompute_inner(tree)
    log.info("merkle index rebuilt: keys=%d seconds=%.2f", tree.keys, time.monotonic() - started)
    return tree


def _recompute_inner(tree: MerkleTree) -> None:
    for level in range(LEAF_LEVEL - 1, -1, -1):
        fan = FANOUT[level]
        below = tree.levels[level + 1]
        tree.levels[level] = [
            sum(below[i * fan : i * fan + fan]) & MASK for i in range(LEVEL_SIZES[level])
        ]


def tree_from_entries(entries: Mapping[bytes, Meta]) -> MerkleTree:
    """A tree built from scratch from key -> metadata (the reference for tests)."""
    tree = MerkleTree()
    leaves = tree.levels[LEAF_LEVEL]
    for key, meta in entries.items():
        term = live_term(key, meta)
        if term:
            slot = key_slot(key)
            leaves[slot] = (leaves[slot] + term) & MASK
            tree.keys += 1
    _recompute_inner(tree)
    return tree
