"""The batched library calls (rr_version_many, rr_apply_many) decide exactly as the one-key
calls (rr_version, rr_apply) on a real Redis: the same results, the same values, expiries
and metadata, over random sequences of local writes, applies of remote versions of every
kind, deletes, expiries and replays. Two databases of one server play the same region, one
driven through each form."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication.model.digest import value_digest
from replication.model.event import ChangeEvent
from replication.model.value import Kind, Value
from replication.model.vclock import VectorClock
from replication.redis.library import (
    apply_command,
    apply_many_command,
    meta_key_for,
    parse_apply_many_reply,
    parse_apply_reply,
    parse_version_many_reply,
    parse_version_reply,
    version_command,
    version_many_command,
)

pytestmark = pytest.mark.integration

HERE = "eu-west"
REGIONS = ["ap-south", "eu-west", "us-east"]
KEYS = [b"k1", b"k2", b"k3", b"{k1}k4"]

values: dict[Kind, st.SearchStrategy[Any]] = {
    Kind.NONE: st.none(),
    Kind.STRING: st.sampled_from([b"a", b"b", b""]),
    Kind.HASH: st.dictionaries(
        st.sampled_from([b"f", b"g"]), st.sampled_from([b"1", b"2"]), min_size=1
    ),
    Kind.LIST: st.lists(st.sampled_from([b"x", b"y"]), min_size=1, max_size=3),
    Kind.SET: st.sets(st.sampled_from([b"x", b"y", b"z"]), min_size=1),
    Kind.ZSET: st.dictionaries(
        st.sampled_from([b"m", b"n"]), st.sampled_from([0.0, 1.5, -2.0]), min_size=1
    ),
}


@st.composite
def remote_event(draw: st.DrawFn) -> ChangeEvent:
    kind = draw(st.sampled_from(list(Kind)))
    value: Value = draw(values[kind])
    origin = draw(st.sampled_from(REGIONS))
    clock = draw(st.dictionaries(st.sampled_from(REGIONS), st.integers(1, 8), min_size=1))
    clock[origin] = clock.get(origin, 1)
    expire = 0 if kind is Kind.NONE else draw(st.sampled_from([0, 0, 1, 4_000_000_000_000]))
    digest = value_digest(kind, value, expire)
    if draw(st.integers(0, 20)) == 0:
        digest = b"\x00" * 16  # a corrupt event: refused by both forms
    return ChangeEvent(
        0, draw(st.sampled_from(KEYS)), kind, value, expire, VectorClock(clock), origin, digest
    )


local_write = st.tuples(
    st.sampled_from(KEYS),
    st.sampled_from(["set", "set-same", "hset", "del", "expire-past", "rpush", "xadd"]),
)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("local"), local_write),
        st.tuples(st.just("apply"), st.lists(remote_event(), min_size=1, max_size=6)),
        st.tuples(st.just("version"), st.booleans()),
    ),
    min_size=1,
    max_size=12,
)


def local(client: redis.Redis, key: bytes, op: str) -> None:
    if op == "set":
        client.set(key, b"local")
    elif op == "set-same":
        client.set(key, b"a")
    elif op == "hset":
        client.delete(key)
        client.hset(key, b"f", b"1")
    elif op == "del":
        client.delete(key)
    elif op == "expire-past":
        client.set(key, b"gone", pxat=1)
    elif op == "rpush":
        client.delete(key)
        client.rpush(key, b"x")
    else:
        client.delete(key)
        client.xadd(key, {b"f": b"v"})


def state(client: redis.Redis) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in KEYS:
        kind = client.type(key)
        if kind == b"stream":  # entry ids come from the clock: compare the fields only
            dump = [fields for _, fields in client.xrange(key)]
        else:
            dump = client.dump(key) if kind != b"none" else None
        out[key] = (kind, dump, client.pexpiretime(key), client.hget(meta_key_for(key), key))
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=steps)
def test_batched_calls_decide_as_one_key_calls(
    library_redis: redis.Redis, script: list[tuple[str, Any]]
) -> None:
    single = library_redis
    batched = redis.Redis(port=library_redis.connection_pool.connection_kwargs["port"], db=1)
    for client in (single, batched):
        client.flushdb()
    tick = 1000
    for kind, arg in script:
        if kind == "local":
            key, op = arg
            local(single, key, op)
            local(batched, key, op)
        elif kind == "apply":
            one = [parse_apply_reply(single.execute_command(*apply_command(e, HERE))) for e in arg]
            many = parse_apply_many_reply(
                batched.execute_command(*apply_many_command(arg, HERE)), len(arg)
            )
            for a, b in zip(one, many, strict=True):
                assert (a.outcome, a.old_digest) == (b.outcome, b.old_digest)
                if a.outcome.startswith("conflict"):
                    assert a.old_meta == b.old_meta
        else:
            tick += 10
            replay = arg
            one_v = [
                parse_version_reply(
                    single.execute_command(*version_command(k, HERE, tick, replay=replay)), 0, k
                )
                for k in KEYS
            ]
            many_v = parse_version_many_reply(
                batched.execute_command(*version_many_command(KEYS, HERE, tick, replay=replay)),
                0,
                KEYS,
            )
            assert one_v == many_v
        assert state(single) == state(batched)
    batched.close()


def test_a_batched_apply_keeps_an_expiry_and_replaces_a_string_in_one_write(
    library_redis: redis.Redis,
) -> None:
    client = redis.Redis(port=library_redis.connection_pool.connection_kwargs["port"], db=2)
    client.flushdb()
    expire = int(time.time() * 1000) + 3_600_000
    key = b"expiring"
    first = ChangeEvent(
        2,
        key,
        Kind.STRING,
        b"v1",
        expire,
        VectorClock({"us-east": 1}),
        "us-east",
        value_digest(Kind.STRING, b"v1", expire),
    )
    second = ChangeEvent(
        2,
        key,
        Kind.STRING,
        b"v2",
        0,
        VectorClock({"us-east": 2}),
        "us-east",
        value_digest(Kind.STRING, b"v2", 0),
    )
    (r1,) = parse_apply_many_reply(client.execute_command(*apply_many_command([first], HERE)), 1)
    assert r1.outcome == "applied"
    assert client.get(key) == b"v1"
    assert client.pexpiretime(key) == expire
    (r2,) = parse_apply_many_reply(client.execute_command(*apply_many_command([second], HERE)), 1)
    assert (r2.outcome, r2.old_digest) == ("applied", first.digest)
    assert client.get(key) == b"v2"
    assert client.pexpiretime(key) == -1  # the newer version has no expiry: none is left
    client.close()


def test_records_store_the_origin_as_its_clock_position_and_older_records_still_read(
    library_redis: redis.Redis,
) -> None:
    from reconciler.consistency.merkle import digest_of_record, live_digest
    from replication.model.metadata import Meta, decode_meta, encode_meta

    client = redis.Redis(port=library_redis.connection_pool.connection_kwargs["port"], db=3)
    client.flushdb()
    key = b"compact"
    clock = VectorClock({"ap-south": 4, "us-east": 9})
    event = ChangeEvent(
        3, key, Kind.STRING, b"v", 0, clock, "us-east", value_digest(Kind.STRING, b"v", 0)
    )
    (result,) = parse_apply_many_reply(
        client.execute_command(*apply_many_command([event], HERE)), 1
    )
    assert result.outcome == "applied"
    raw = client.hget(meta_key_for(key), key)
    assert raw is not None
    assert raw[18] == 1  # us-east is the second region of the sorted clock
    meta = decode_meta(raw)
    assert (meta.origin, meta.clock, meta.digest) == ("us-east", clock, event.digest)
    assert encode_meta(meta) == raw
    assert digest_of_record(raw) == live_digest(raw, 0) == event.digest
    # array, digest (1 + 16), origin, expiry, deleted, clock array, 'ap-south', 4, 'us-east', 9
    assert len(raw) == 1 + 17 + 1 + 1 + 1 + 1 + 9 + 1 + 8 + 1

    # A record written with the origin's name (before) decodes the same, and the library
    # keeps resolving it (a later local write builds on its clock).
    import msgpack

    older = msgpack.packb(
        [event.digest, b"us-east", 0, 0, [b"ap-south", 4, b"us-east", 9]], use_bin_type=False
    )
    client.hset(meta_key_for(key), key, older)
    assert decode_meta(older) == Meta(event.digest, "us-east", 0, False, clock)
    assert live_digest(older, 0) == event.digest
    client.set(key, b"local")
    (version,) = parse_version_many_reply(
        client.execute_command(*version_many_command([key], HERE, 100)), 3, [key]
    )
    assert version.event is not None
    assert version.event.clock == VectorClock({"ap-south": 4, "us-east": 9, HERE: 100})
    assert version.event.origin == HERE
    client.close()
