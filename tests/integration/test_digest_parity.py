"""The canonical digest is the same in Redis's Lua and in Python, whatever Redis's encoding."""

from __future__ import annotations

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication.model.digest import TOMBSTONE_DIGEST, format_score, value_digest
from replication.model.value import Kind

pytestmark = pytest.mark.integration

# Settings that force the big encodings (hashtable, skiplist, quicklist nodes, no intset).
BIG_ENCODINGS = {
    "hash-max-listpack-entries": "0",
    "set-max-intset-entries": "0",
    "zset-max-listpack-entries": "0",
    "list-max-listpack-size": "1",
}
SMALL_ENCODINGS = {
    "hash-max-listpack-entries": "512",
    "set-max-intset-entries": "512",
    "zset-max-listpack-entries": "512",
    "list-max-listpack-size": "-2",
}

blobs = st.binary(max_size=12) | st.sampled_from([b"1", b"42", b"-7", b"", b"\x00", b"a" * 70])
scores = st.floats(allow_nan=False, width=64) | st.sampled_from([0.1, 1e300, -0.0, 3.0])
expiries = st.sampled_from([0, 4_102_444_800_000])  # none, or 2100-01-01

values = st.one_of(
    st.tuples(st.just(Kind.STRING), blobs),
    st.tuples(st.just(Kind.LIST), st.lists(blobs, min_size=1, max_size=8)),
    st.tuples(st.just(Kind.SET), st.sets(blobs, min_size=1, max_size=8)),
    st.tuples(st.just(Kind.HASH), st.dictionaries(blobs, blobs, min_size=1, max_size=8)),
    st.tuples(st.just(Kind.ZSET), st.dictionaries(blobs, scores, min_size=1, max_size=8)),
)


@pytest.fixture
def lua_redis(library_redis: redis.Redis) -> redis.Redis:
    return library_redis


def configure(client: redis.Redis, settings_: dict[str, str]) -> None:
    for name, value in settings_.items():
        client.config_set(name, value)


def write(client: redis.Redis, key: str, kind: Kind, value: object, expire_at: int) -> None:
    client.delete(key)
    if kind is Kind.STRING:
        client.set(key, value)  # type: ignore[arg-type]
    elif kind is Kind.LIST:
        client.rpush(key, *value)  # type: ignore[misc]
    elif kind is Kind.SET:
        client.sadd(key, *value)  # type: ignore[misc]
    elif kind is Kind.HASH:
        client.hset(key, mapping=value)  # type: ignore[arg-type]
    elif kind is Kind.ZSET:
        client.zadd(key, value)  # type: ignore[arg-type]
    if expire_at:
        client.pexpireat(key, expire_at)


def lua_digest_of_key(client: redis.Redis, key: str) -> bytes:
    [[_kind, _value, _exp, digest, _meta]] = client.fcall("rr_read", 2, key, "__rr:m:{x}")
    return digest  # type: ignore[no-any-return]


def lua_digest_of_args(client: redis.Redis, kind: Kind, value: object, expire_at: int) -> bytes:
    if kind is Kind.STRING:
        args: list[bytes] = [value]  # type: ignore[list-item]
    elif kind in (Kind.LIST, Kind.SET):
        args = list(value)  # type: ignore[call-overload]
    elif kind is Kind.HASH:
        args = [x for pair in value.items() for x in pair]  # type: ignore[attr-defined]
    else:
        args = [x for m, s in value.items() for x in (m, format_score(s))]  # type: ignore[attr-defined]
    return client.fcall_ro("rr_digest", 0, kind.redis_name, expire_at, *args)  # type: ignore[no-any-return]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(item=values, expire_at=expiries)
def test_lua_and_python_digests_agree_across_encodings(
    lua_redis: redis.Redis, item: tuple[Kind, object], expire_at: int
) -> None:
    kind, value = item
    expected = value_digest(kind, value, expire_at)  # type: ignore[arg-type]
    configure(lua_redis, SMALL_ENCODINGS)
    write(lua_redis, "small", kind, value, expire_at)
    configure(lua_redis, BIG_ENCODINGS)
    write(lua_redis, "big", kind, value, expire_at)
    assert lua_digest_of_key(lua_redis, "small") == expected
    assert lua_digest_of_key(lua_redis, "big") == expected
    assert lua_digest_of_args(lua_redis, kind, value, expire_at) == expected


def test_encodings_really_differ_for_the_same_value(lua_redis: redis.Redis) -> None:
    configure(lua_redis, SMALL_ENCODINGS)
    write(lua_redis, "small", Kind.SET, {b"1", b"2"}, 0)
    configure(lua_redis, BIG_ENCODINGS)
    write(lua_redis, "big", Kind.SET, {b"1", b"2"}, 0)
    assert lua_redis.object("encoding", "small") == b"intset"
    assert lua_redis.object("encoding", "big") == b"hashtable"
    assert lua_digest_of_key(lua_redis, "small") == lua_digest_of_key(lua_redis, "big")


def test_a_missing_key_digests_as_the_tombstone(lua_redis: redis.Redis) -> None:
    lua_redis.delete("gone")
    assert lua_digest_of_key(lua_redis, "gone") == TOMBSTONE_DIGEST


def test_expiry_is_part_of_the_digest(lua_redis: redis.Redis) -> None:
    write(lua_redis, "e", Kind.STRING, b"v", 0)
    without = lua_digest_of_key(lua_redis, "e")
    lua_redis.pexpireat("e", 4_102_444_800_000)
    assert lua_digest_of_key(lua_redis, "e") != without
    assert lua_digest_of_key(lua_redis, "e") == value_digest(Kind.STRING, b"v", 4_102_444_800_000)
