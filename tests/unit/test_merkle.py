"""The incremental Merkle index always equals a rebuild from scratch, hash for hash."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.consistency.merkle import (
    FANOUT,
    LEAF_LEVEL,
    LEVEL_SIZES,
    MerkleTree,
    bucket_of,
    children,
    entry_hash,
    tree_from_entries,
)
from replication.model.digest import TOMBSTONE_DIGEST
from replication.model.metadata import Meta
from replication.model.slots import key_slot
from replication.model.vclock import VectorClock

CLOCK = VectorClock({"eu-west": 1})
keys = st.binary(min_size=1, max_size=6)
digests = st.sampled_from([b"a" * 16, b"b" * 16, b"c" * 16, TOMBSTONE_DIGEST])
operations = st.lists(st.tuples(keys, digests), max_size=200)


def meta(digest: bytes) -> Meta:
    return Meta(digest, "eu-west", 0, digest == TOMBSTONE_DIGEST, CLOCK)


@settings(max_examples=300)
@given(operations)
def test_incremental_updates_equal_a_rebuild(ops: list[tuple[bytes, bytes]]) -> None:
    tree = MerkleTree()
    state: dict[bytes, bytes] = {}
    for key, digest in ops:
        tree.update(key, state.get(key, b""), digest)
        state[key] = digest
    rebuilt = tree_from_entries({k: meta(d) for k, d in state.items()})
    assert tree.levels == rebuilt.levels
    assert tree.keys == rebuilt.keys == sum(d != TOMBSTONE_DIGEST for d in state.values())


@given(operations, operations)
def test_equal_live_contents_give_equal_roots_whatever_the_history(
    a: list[tuple[bytes, bytes]], b: list[tuple[bytes, bytes]]
) -> None:
    def final(ops: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        state = dict(ops)  # the last digest of each key wins
        return {k: d for k, d in state.items() if d != TOMBSTONE_DIGEST}

    ta = tree_from_entries({k: meta(d) for k, d in final(a).items()})
    tb = tree_from_entries({k: meta(d) for k, d in final(b).items()})
    assert (ta.root == tb.root) == (final(a) == final(b))


@given(keys, st.sampled_from([b"a" * 16, b"b" * 16]))
def test_one_change_touches_exactly_one_node_per_level(key: bytes, digest: bytes) -> None:
    tree = MerkleTree()
    tree.update(key, b"", digest)
    changed = [[i for i, h in enumerate(row) if h] for row in tree.levels]
    assert [len(c) for c in changed] == [1] * len(LEVEL_SIZES)
    assert changed[LEAF_LEVEL] == [key_slot(key)]
    assert tree.levels[LEAF_LEVEL][key_slot(key)] == entry_hash(key, digest)


def test_tree_shape_covers_every_slot() -> None:
    size = 1
    for level, fan in enumerate(FANOUT):
        size *= fan
        assert LEVEL_SIZES[level + 1] == size
    assert list(children(0, 0)) == list(range(16))
    assert list(children(3, 4095)) == [16380, 16381, 16382, 16383]


@given(st.lists(keys, min_size=1, max_size=50, unique=True), st.integers(1, 64))
def test_buckets_are_stable_and_in_range(ks: list[bytes], n: int) -> None:
    assert all(0 <= bucket_of(k, n) < n for k in ks)
    assert [bucket_of(k, n) for k in ks] == [bucket_of(k, n) for k in ks]


@given(operations)
def test_the_fast_leaf_hash_from_raw_records_equals_the_decoded_one(
    ops: list[tuple[bytes, bytes]],
) -> None:
    from reconciler.consistency.merkle import leaf_hash, leaf_hash_of_records
    from replication.model.metadata import encode_meta

    state = dict(ops)
    entries = {k: meta(d) for k, d in state.items()}
    flat = [x for k, m in entries.items() for x in (k, encode_meta(m))]
    assert leaf_hash_of_records(flat) == leaf_hash(entries)


@given(
    digest=st.sampled_from([b"a" * 16, TOMBSTONE_DIGEST]),
    expire=st.sampled_from([0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32, 1_800_000_000_000]),
    origin=st.sampled_from(["eu-west", "x", "a-very-long-region-name-of-31-ch"]),
    now=st.sampled_from([0, 200, 1_800_000_000_000, 1_900_000_000_000]),
)
def test_liveness_read_from_raw_records_equals_the_decoded_one(
    digest: bytes, expire: int, origin: str, now: int
) -> None:
    from reconciler.consistency.merkle import live_digest
    from replication.model.metadata import encode_meta

    m = Meta(digest, origin, expire, digest == TOMBSTONE_DIGEST, CLOCK)
    expected = m.digest if m.is_live(now) else None
    assert live_digest(encode_meta(m), now) == expected
