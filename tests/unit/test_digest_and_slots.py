"""Digests depend on the logical value only; slots match Redis Cluster's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replication.model.digest import TOMBSTONE_DIGEST, value_digest
from replication.model.keys import meta_key
from replication.model.slots import SLOTS, key_slot, slot_tag, slot_tags
from replication.model.value import Kind

blobs = st.binary(max_size=8)


@given(st.dictionaries(blobs, blobs, min_size=1, max_size=10))
def test_hash_digest_ignores_field_order(fields: dict[bytes, bytes]) -> None:
    reordered = dict(reversed(list(fields.items())))
    assert value_digest(Kind.HASH, fields) == value_digest(Kind.HASH, reordered)


@given(st.lists(blobs, min_size=2, max_size=10, unique=True))
def test_list_digest_depends_on_order_but_set_digest_does_not(items: list[bytes]) -> None:
    rev = list(reversed(items))
    assert value_digest(Kind.SET, set(items)) == value_digest(Kind.SET, set(rev))
    if rev != items:
        assert value_digest(Kind.LIST, items) != value_digest(Kind.LIST, rev)


def test_same_bytes_in_different_types_digest_differently() -> None:
    digests = {
        value_digest(Kind.STRING, b"a"),
        value_digest(Kind.LIST, [b"a"]),
        value_digest(Kind.SET, {b"a"}),
        value_digest(Kind.HASH, {b"a": b""}),
        value_digest(Kind.ZSET, {b"a": 0.0}),
        TOMBSTONE_DIGEST,
    }
    assert len(digests) == 6


def test_encoding_is_unambiguous_across_element_boundaries() -> None:
    assert value_digest(Kind.LIST, [b"ab", b"c"]) != value_digest(Kind.LIST, [b"a", b"bc"])
    assert value_digest(Kind.HASH, {b"ab": b"c"}) != value_digest(Kind.HASH, {b"a": b"bc"})


def test_expiry_and_zero_sign_rules() -> None:
    assert value_digest(Kind.STRING, b"v", 0) != value_digest(Kind.STRING, b"v", 1)
    assert value_digest(Kind.ZSET, {b"m": -0.0}) == value_digest(Kind.ZSET, {b"m": 0.0})
    assert value_digest(Kind.NONE, None) == TOMBSTONE_DIGEST


def test_key_slot_matches_redis_cluster_reference_values() -> None:
    # Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    assert key_slot(b"123456789") == 12739
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1000}.following") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: whole key
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")


def test_every_slot_has_a_tag_that_maps_to_it() -> None:
    tags = slot_tags()
    assert len(tags) == SLOTS
    assert all(key_slot(tag) == slot for slot, tag in enumerate(tags))
    assert all(key_slot(meta_key(slot)) == slot for slot in (0, 1, 777, SLOTS - 1))
    assert slot_tag(12182) == tags[12182]
