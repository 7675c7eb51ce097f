"""Three real regions (redis-server + `reconciler run` each, one real Kafka broker) converge:
every type replicates with its expiry, concurrent writes end identical, deletes stay
deleted, nothing is echoed, and neither a kill -9 of a daemon nor a frozen broker loses a
write; poison messages are parked in the dead-letter topic while replication goes on."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis

from devcluster import KafkaBroker
from devcluster.daemons import wait_for
from replication.model.digest import value_digest
from replication.model.keys import deadletter_topic
from replication.model.metadata import decode_meta
from replication.model.value import Kind
from replication.model.wire import decode_batch, seal_body
from replication.redis.library import meta_key_for
from tests.kafkatools import produce_raw, read_topic
from tests.promtext import sample
from tests.regions import Regions, running_regions
from tests.servers import RedisFactory

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def write_every_type(client: redis.Redis, p: str) -> None:
    client.set(f"{p}:str", "v", px=HOUR_MS)
    client.hset(f"{p}:hash", mapping={"a": "1", "b": "2"})
    client.rpush(f"{p}:list", "x", "y", "x")
    client.sadd(f"{p}:set", "m1", "m2", "3")
    client.zadd(f"{p}:zset", {"a": 1.5, "b": -2.0, "c": 0.1})
    client.set(f"{p}:persisted", "v", ex=100)
    client.persist(f"{p}:persisted")
    client.set(f"{p}:expire-later", "v")
    client.pexpire(f"{p}:expire-later", HOUR_MS)
    client.incr(f"{p}:counter")
    client.incrby(f"{p}:counter", 41)
    client.set(f"{p}:big", "x" * 200_000)
    with client.pipeline(transaction=True) as pipe:
        pipe.set(f"{p}:tx1", "1").hset(f"{p}:tx2", "f", "v").lpush(f"{p}:tx3", "z").execute()
    client.eval("redis.call('SET', KEYS[1], ARGV[1]); return 1", 1, f"{p}:lua", "from-lua")
    client.set(f"{p}:src", "moved")
    client.rename(f"{p}:src", f"{p}:dst")


def test_writes_of_every_type_reach_every_region_with_value_and_expiry(regions: Regions) -> None:
    for name, client in regions.clients.items():
        write_every_type(client, name)
    data = regions.wait_converged()
    for name, client in regions.clients.items():
        assert data[f"{name}:hash".encode()][1] == {b"a": b"1", b"b": b"2"}
        assert data[f"{name}:list".encode()][1] == [b"x", b"y", b"x"]
        assert data[f"{name}:set".encode()][1] == {b"m1", b"m2", b"3"}
        assert data[f"{name}:zset".encode()][1] == [(b"b", -2.0), (b"c", 0.1), (b"a", 1.5)]
        assert data[f"{name}:counter".encode()][1] == b"42"
        assert data[f"{name}:big".encode()][1] == b"x" * 200_000
        assert data[f"{name}:lua".encode()][1] == b"from-lua"
        assert data[f"{name}:dst".encode()][1] == b"moved"
        assert f"{name}:src".encode() not in data
        assert data[f"{name}:persisted".encode()][2] == 0
        # Expiry is absolute and identical to the origin's.
        for key in ("str", "expire-later"):
            origin_expiry = client.execute_command("PEXPIRETIME", f"{name}:{key}")
            assert data[f"{name}:{key}".encode()][2] == origin_expiry > 0
    assert len(data) == 14 * len(regions.names)


def test_concurrent_writes_to_the_same_keys_end_identical_everywhere(regions: Regions) -> None:
    keys = [f"shared:{i}" for i in range(150)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        client = regions.clients[name]
        round_ = 0
        try:
            while not stop.is_set() and round_ < 40:
                with client.pipeline(transaction=False) as pipe:
                    for i, key in enumerate(keys):
                        if (i + round_) % 17 == 0:
                            pipe.delete(key)
                        elif i % 3 == 0:
                            pipe.hset(key + ":h", name, round_)
                        else:
                            pipe.set(key, f"{name}-{round_}")
                    pipe.execute()
                round_ += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in regions.names]
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors
    data = regions.wait_converged(timeout_s=90)
    assert any(k.startswith(b"shared:") for k in data)
    # Same versions too: every region holds identical metadata for every key.
    for key in [k.encode() for k in keys] + [f"{k}:h".encode() for k in keys]:
        metas = [c.hget(meta_key_for(key), key) for c in regions.clients.values()]
        decoded = [decode_meta(m) for m in metas if m is not None]
        if decoded:
            assert len(decoded) == 3, (key, decoded)
            first = decoded[0]
            assert all(
                (m.clock, m.origin, m.digest, m.deleted)
                == (first.clock, first.origin, first.digest, first.deleted)
                for m in decoded
            ), (key, decoded)


def test_a_deleted_key_stays_deleted_everywhere(regions: Regions) -> None:
    a, b, c = (regions.clients[n] for n in regions.names)
    a.set("doomed", "1")
    a.hset("doomed:h", "f", "v")
    regions.wait_converged()
    b.delete("doomed", "doomed:h")
    wait_for(lambda: all(x.exists("doomed", "doomed:h") == 0 for x in (a, b, c)), 30, "delete")
    # A daemon restart (with anti-entropy at start) must not bring it back either.
    regions.daemons[regions.names[2]].stop()
    regions.daemons[regions.names[2]].start()
    regions.wait_status("consistent")
    time.sleep(1)
    assert all(x.exists("doomed", "doomed:h") == 0 for x in (a, b, c))
    meta = decode_meta(c.hget(meta_key_for(b"doomed"), b"doomed"))  # type: ignore[arg-type]
    assert meta.deleted


async def test_no_change_is_echoed_back_one_event_per_local_change(regions: Regions) -> None:
    regions.wait_status("consistent")
    origin = regions.names[0]
    client = regions.clients[origin]
    for i in range(300):
        client.set(f"once:{i}", i)
    regions.wait_converged()
    regions.wait_status("consistent")
    replicated: dict[str, int] = {}
    repair: dict[str, int] = {}
    for name in regions.names:
        replicated[name] = repair[name] = 0
        for record in await read_topic(regions.kafka.bootstrap, regions.topic(name)):
            events = len(decode_batch(record.value, regions.keyring).events)
            if any(h == "target" for h, _ in record.headers):
                repair[name] += events  # anti-entropy traffic, aimed at one region
            else:
                replicated[name] += events
    assert replicated == {origin: 300, regions.names[1]: 0, regions.names[2]: 0}
    assert repair == dict.fromkeys(regions.names, 0)


async def test_a_daemon_killed_mid_stream_loses_nothing_and_counts_nothing_twice(
    regions: Regions,
) -> None:
    origin = regions.names[0]
    client = regions.clients[origin]
    written = threading.Event()

    def writer() -> None:
        for i in range(3000):
            client.set(f"k9:{i}", f"v{i}")
            if i % 100 == 0:
                time.sleep(0.02)
        written.set()

    thread = threading.Thread(target=writer)
    thread.start()
    wait_for(lambda: client.exists("k9:1000"), 30, "writes under way")
    regions.daemons[origin].kill9()
    regions.daemons[origin].start()
    thread.join(60)
    assert written.is_set()
    data = regions.wait_converged(timeout_s=90)
    assert sum(1 for k in data if k.startswith(b"k9:")) == 3000
    assert all(data[f"k9:{i}".encode()][1] == f"v{i}".encode() for i in range(3000))
    # Re-shipped after the crash is fine; bumped twice is not: one version per key.
    clocks: dict[bytes, set[tuple[tuple[str, int], ...]]] = defaultdict(set)
    for record in await read_topic(regions.kafka.bootstrap, regions.topic(origin)):
        for event in decode_batch(record.value, regions.keyring).events:
            clocks[event.key].add(tuple(sorted(event.clock.items())))
    assert len(clocks) == 3000
    assert all(len(c) == 1 for c in clocks.values())


@pytest.mark.timeout(240)
def test_a_broker_frozen_for_10s_loses_nothing(regions: Regions) -> None:
    def write(tag: str) -> None:
        for name, client in regions.clients.items():
            for i in range(50):
                client.set(f"{tag}:{name}:{i}", i)

    write("before")
    regions.wait_converged()
    regions.kafka.pause()
    try:
        for second in range(10):
            write(f"during{second}")
            time.sleep(1)
    finally:
        regions.kafka.resume()
    write("after")
    data = regions.wait_converged(timeout_s=150)
    assert len(data) == 50 * 3 * 12


async def test_poison_messages_go_to_the_dead_letter_topic_and_replication_goes_on(
    regions: Regions,
) -> None:
    source = regions.names[1]
    topic = regions.topic(source)
    await produce_raw(regions.kafka.bootstrap, topic, b"\x93\x01not a batch")
    # Signed by the source, well-formed, but the value does not match the digest: the
    # applier refuses it, and only it: the good event of the same record is applied.
    bad = [
        0,
        b"tampered",
        int(Kind.STRING),
        b"evil",
        0,
        [source, 10**9],
        source,
        value_digest(Kind.STRING, b"good"),
    ]
    good = [0, b"good", int(Kind.STRING), b"good", 0, [source, 10**9], source, bad[7]]
    body = msgpack.packb([bad, good], use_bin_type=True)
    await produce_raw(
        regions.kafka.bootstrap, topic, seal_body(regions.keyring.signer(source), body)
    )
    regions.clients[source].set("after-poison", "ok")
    regions.wait_converged()
    assert all(c.get("after-poison") == b"ok" for c in regions.clients.values())
    assert all(c.exists("tampered") == 0 for c in regions.clients.values())
    assert all(c.get("good") == b"good" for n, c in regions.clients.items() if n != source)

    async def parked() -> list[dict[str, bytes]]:
        records = await read_topic(regions.kafka.bootstrap, deadletter_topic(regions.prefix))
        return [dict(r.headers) for r in records]

    deadline = time.monotonic() + 30
    letters: list[dict[str, bytes]] = []
    while time.monotonic() < deadline and len(letters) < 4:
        letters = await parked()
    # Each of the two other regions parks each of the two messages.
    assert len(letters) == 4
    codes = sorted(h["reason_code"].decode() for h in letters)
    assert codes == ["bad-digest", "bad-digest", "undecodable", "undecodable"]
    assert sum(b"digest does not match" in h["reason"] for h in letters) == 2
    metrics = regions.daemons[regions.names[0]].metrics()
    assert sample(metrics, "reconciler_deadletters_total", reason="bad-digest") == 1.0
    assert sample(metrics, "reconciler_deadletters_total", reason="undecodable") == 1.0


@pytest.fixture
def roomy_regions(
    tmp_path: Path, kafka: KafkaBroker, redis_factory: RedisFactory
) -> Iterator[Regions]:
    """Regions whose Redis keeps a replication backlog that covers a daemon restart, as the
    README asks of production: writers at full speed outgrow the default 1 MB while a
    daemon stops and starts on a loaded machine, and that is a (correct) gap."""
    with running_regions(
        tmp_path, kafka, redis_factory, redis_config={"repl_backlog_size": "64mb"}
    ) as running:
        yield running


def test_sigterm_flushes_acks_and_commits_so_a_restart_redoes_nothing(
    roomy_regions: Regions,
) -> None:
    regions = roomy_regions
    a, b, _ = regions.names
    regions.wait_status("consistent")
    stop = threading.Event()

    def writer(name: str) -> None:
        # Paced (2,000 writes/s each): writes keep coming through the stop, and what there
        # is to converge afterwards stays a few thousand keys, not the 20,000 of a flat-out
        # writer (the convergence check reads every key).
        client = regions.clients[name]
        started = time.monotonic()
        i = 0
        while not stop.is_set() and i < 20_000:
            client.set(f"term:{name}:{i}", i)
            i += 1
            if i % 50 == 0:
                time.sleep(max(0.0, started + i / 2_000 - time.monotonic()))

    threads = [threading.Thread(target=writer, args=(n,)) for n in (a, b)]
    for t in threads:
        t.start()
    wait_for(lambda: regions.clients[b].exists(f"term:{a}:500"), 30, "replication under way")
    daemon = regions.daemons[a]
    daemon.stop()  # SIGTERM while both regions are writing
    assert daemon.returncode() == 0
    assert "stopped" in daemon.log_tail(5)
    stop.set()
    for t in threads:
        t.join(30)
    daemon.start()
    regions.wait_converged(timeout_s=90)
    status = daemon.get("/status")
    # Everything handed on before the stop was acknowledged on the stream: nothing is
    # re-shipped; every applied offset was committed: nothing is applied twice.
    assert status["capture"]["reshipped"] == 0
    assert status["apply"]["stale"] == 0
    assert "full-resync" not in status["gaps"]
    assert "initial" not in status["gaps"]
