"""The Lua library on a real Redis: rr_apply decides exactly as the Python resolver does,
never overwrites an unversioned local write, refuses corrupt events; rr_version versions
local writes once, skips echoes of applies, re-ships in replay, and tombstones deletes."""

from __future__ import annotations

import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication.model.digest import TOMBSTONE_DIGEST, value_digest
from replication.model.event import ChangeEvent
from replication.model.metadata import decode_meta
from replication.model.resolver import resolve
from replication.model.value import Kind
from replication.model.vclock import MAX_CLOCK_ENTRY, VectorClock
from replication.redis.library import (
    VersionStatus,
    apply_command,
    meta_key_for,
    parse_apply_reply,
    parse_version_many_reply,
    parse_version_reply,
    version_command,
    version_many_command,
)

pytestmark = pytest.mark.integration

REGIONS = ["ap-south", "eu-west", "us-east"]
HERE = "eu-west"


def make_event(key: bytes, clock: dict[str, int], origin: str, value: bytes | None) -> ChangeEvent:
    kind = Kind.NONE if value is None else Kind.STRING
    return ChangeEvent(
        0, key, kind, value, 0, VectorClock(clock), origin, value_digest(kind, value, 0)
    )


def call(client: redis.Redis, command: tuple[object, ...]) -> object:
    return client.execute_command(*command)


def apply(client: redis.Redis, event: ChangeEvent) -> str:
    return parse_apply_reply(call(client, apply_command(event, HERE))).outcome  # type: ignore[arg-type]


def reset(client: redis.Redis, key: bytes) -> None:
    client.delete(key)
    client.hdel(meta_key_for(key), key)


versions = st.tuples(
    st.dictionaries(st.sampled_from(REGIONS), st.integers(1, 6), min_size=1),
    st.sampled_from(REGIONS),
    st.sampled_from([b"a", b"b", None]),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(local=st.none() | versions, remote=versions)
def test_lua_apply_decides_exactly_as_the_python_resolver(
    library_redis: redis.Redis,
    local: tuple[dict[str, int], str, bytes | None] | None,
    remote: tuple[dict[str, int], str, bytes | None],
) -> None:
    key = b"parity"
    reset(library_redis, key)
    local_event = None
    if local is not None:
        clock, origin, value = local
        clock[origin] = clock.get(origin, 1)
        local_event = make_event(key, clock, origin, value)
        assert apply(library_redis, local_event) == "applied"
    clock, origin, value = remote
    clock[origin] = clock.get(origin, 1)
    remote_event = make_event(key, clock, origin, value)

    expected = resolve(local_event.version if local_event else None, remote_event.version)
    assert apply(library_redis, remote_event) == expected.outcome.value

    meta = decode_meta(library_redis.hget(meta_key_for(key), key))  # type: ignore[arg-type]
    assert meta.clock == expected.clock
    assert (meta.origin, meta.digest) == (expected.winner.origin, expected.winner.digest)
    stored = library_redis.get(key)
    winner_value = (
        remote_event.value
        if expected.winner == remote_event.version
        else (local_event.value if local_event else None)
    )
    assert stored == winner_value


def test_apply_defers_instead_of_overwriting_an_unversioned_local_write(
    library_redis: redis.Redis,
) -> None:
    key = b"deferred"
    reset(library_redis, key)
    assert apply(library_redis, make_event(key, {"us-east": 1}, "us-east", b"v1")) == "applied"
    library_redis.set(key, b"local write the capture has not seen")
    newer = make_event(key, {"us-east": 2}, "us-east", b"v2")
    assert apply(library_redis, newer) == "deferred"
    assert library_redis.get(key) == b"local write the capture has not seen"
    # Once versioned (as the capture would), the remote write is a real conflict.
    reply = call(library_redis, version_command(key, HERE, 10))
    assert parse_version_reply(reply, 0, key).status is VersionStatus.NEW  # type: ignore[arg-type]
    assert apply(library_redis, newer) == "conflict-local-won"


def test_apply_defers_on_an_uncaptured_local_delete_but_not_on_an_expiry(
    library_redis: redis.Redis,
) -> None:
    key = b"gone"
    reset(library_redis, key)
    apply(library_redis, make_event(key, {"us-east": 1}, "us-east", b"v1"))
    library_redis.delete(key)
    assert apply(library_redis, make_event(key, {"us-east": 2}, "us-east", b"v2")) == "deferred"

    reset(library_redis, key)
    expired = ChangeEvent(
        0,
        key,
        Kind.STRING,
        b"v",
        1000,
        VectorClock({"us-east": 1}),
        "us-east",
        value_digest(Kind.STRING, b"v", 1000),
    )
    assert apply(library_redis, expired) == "applied"
    assert library_redis.exists(key) == 0  # written already expired: nothing stored
    assert apply(library_redis, make_event(key, {"us-east": 2}, "us-east", b"v2")) == "applied"
    assert library_redis.get(key) == b"v2"


def test_apply_refuses_an_event_whose_digest_does_not_match_its_value(
    library_redis: redis.Redis,
) -> None:
    key = b"corrupt"
    reset(library_redis, key)
    good = make_event(key, {"us-east": 1}, "us-east", b"v")
    bad = ChangeEvent(0, key, Kind.STRING, b"tampered", 0, good.clock, "us-east", good.digest)
    assert apply(library_redis, bad) == "bad-digest"
    assert library_redis.exists(key) == 0
    assert library_redis.hget(meta_key_for(key), key) is None


def version(client: redis.Redis, key: bytes, tick: int, replay: bool = False):  # type: ignore[no-untyped-def]
    return parse_version_reply(
        call(client, version_command(key, HERE, tick, replay=replay)), 0, key
    )  # type: ignore[arg-type]


def test_version_bumps_once_per_local_change_and_skips_echoes(library_redis: redis.Redis) -> None:
    key = b"versioned"
    reset(library_redis, key)
    library_redis.hset(key, mapping={b"f": b"1"})
    first = version(library_redis, key, 100)
    assert first.status is VersionStatus.NEW
    assert first.event.clock == VectorClock({HERE: 100})
    assert first.event.value == {b"f": b"1"}
    assert first.old_digest == b""
    assert version(library_redis, key, 200).status is VersionStatus.NOTHING  # already versioned
    replayed = version(library_redis, key, 300, replay=True)
    assert replayed.status is VersionStatus.RESHIP
    assert replayed.event.clock == first.event.clock  # re-shipped, not bumped

    library_redis.hset(key, b"g", b"2")
    second = version(library_redis, key, 50)  # tick behind: the entry still grows
    assert second.status is VersionStatus.NEW
    assert second.event.clock == VectorClock({HERE: 101})
    assert second.old_digest == first.event.digest

    remote = make_event(key, {HERE: 101, "us-east": 500}, "us-east", b"remote")
    assert apply(library_redis, remote) == "applied"
    assert version(library_redis, key, 400).status is VersionStatus.NOTHING  # an echo

    library_redis.delete(key)
    deleted = version(library_redis, key, 600)
    assert deleted.status is VersionStatus.NEW
    assert deleted.event.kind is Kind.NONE
    assert deleted.event.digest == TOMBSTONE_DIGEST
    assert deleted.event.clock == VectorClock({HERE: 600, "us-east": 500})
    assert version(library_redis, key, 700).status is VersionStatus.NOTHING


def test_version_skips_expiries_and_refuses_streams(library_redis: redis.Redis) -> None:
    key = b"expiring"
    reset(library_redis, key)
    library_redis.set(key, b"v", px=50)
    assert version(library_redis, key, 100).status is VersionStatus.NEW
    deadline = time.monotonic() + 5
    while library_redis.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for Redis to expire it
    assert library_redis.exists(key) == 0
    assert version(library_redis, key, 200).status is VersionStatus.NOTHING

    reset(library_redis, b"stream")
    library_redis.xadd(b"stream", {b"f": b"v"})
    result = version(library_redis, b"stream", 100)
    assert result.status is VersionStatus.UNSUPPORTED
    assert result.unsupported_type == "stream"


def test_stored_records_have_the_layout_the_index_slices_digests_from(
    library_redis: redis.Redis,
) -> None:
    from reconciler.consistency.merkle import digest_of_record

    key = b"layout"
    reset(library_redis, key)
    event = make_event(key, {"us-east": 7}, "us-east", b"value")
    assert apply(library_redis, event) == "applied"
    raw = library_redis.hget(meta_key_for(key), key)
    assert raw is not None
    assert raw[:2] == b"\x95\xb0"  # 5-array, 16-byte string: no decoding needed
    assert digest_of_record(raw) == event.digest == decode_meta(raw).digest


def test_liveness_is_read_correctly_from_records_redis_wrote(library_redis: redis.Redis) -> None:
    from reconciler.consistency.merkle import live_digest

    key = b"expiring-record"
    reset(library_redis, key)
    expire_at = 4_102_444_800_000  # 2100
    event = ChangeEvent(
        0,
        key,
        Kind.STRING,
        b"v",
        expire_at,
        VectorClock({"us-east": 3}),
        "us-east",
        value_digest(Kind.STRING, b"v", expire_at),
    )
    assert apply(library_redis, event) == "applied"
    raw = library_redis.hget(meta_key_for(key), key)
    assert raw is not None
    assert live_digest(raw, expire_at - 1) == event.digest
    assert live_digest(raw, expire_at) is None
    tomb = make_event(key, {"us-east": 4}, "us-east", None)  # a remote delete
    assert apply(library_redis, tomb) == "applied"
    assert live_digest(library_redis.hget(meta_key_for(key), key), 0) is None  # type: ignore[arg-type]


def test_version_refuses_a_tick_past_the_clock_bound_and_writes_nothing(
    library_redis: redis.Redis,
) -> None:
    """A clock at the top of its range (planted by an apply, as a forged version did before
    the decoders refused it) is never ticked past MAX_CLOCK_ENTRY, by both entry points:
    the next local write is refused with the entry named, and nothing is stored."""
    key = b"poisoned"
    reset(library_redis, key)
    planted = make_event(key, {"us-east": MAX_CLOCK_ENTRY - 1}, "us-east", b"a")
    assert apply(library_redis, planted) == "applied"
    library_redis.set(key, b"local-1")
    (bumped,) = parse_version_many_reply(
        call(library_redis, version_many_command([key], HERE, 1)),
        0,
        [key],  # type: ignore[arg-type]
    )
    assert bumped.status is VersionStatus.NEW
    assert bumped.event is not None
    assert bumped.event.hlc == MAX_CLOCK_ENTRY  # at the bound exactly: still representable
    before = library_redis.hget(meta_key_for(key), key)
    library_redis.set(key, b"local-2")
    (many,) = parse_version_many_reply(
        call(library_redis, version_many_command([key], HERE, 2)),
        0,
        [key],  # type: ignore[arg-type]
    )
    one = parse_version_reply(call(library_redis, version_command(key, HERE, 2)), 0, key)  # type: ignore[arg-type]
    for result in (many, one):
        assert result.status is VersionStatus.CLOCK_REFUSED
        assert result.refused == f"the entry of {HERE} would become {MAX_CLOCK_ENTRY + 1}"
    assert library_redis.hget(meta_key_for(key), key) == before
