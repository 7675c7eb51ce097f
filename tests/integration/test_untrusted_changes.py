"""Bad input on the change topics, against three real regions (redis-server and
`reconciler run` each, one real Kafka broker): forged, unsigned, mis-signed and
mis-addressed records, far-future and top-of-range clocks, events for databases the daemon
does not replicate. Each is refused with its reason in the dead-letter topic and in the
metrics, changes no data in any region, and the daemons stay up and keep replicating."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest
import redis

from devcluster.daemons import wait_for
from replication.model.auth import Keyring
from replication.model.digest import value_digest
from replication.model.event import ChangeEvent
from replication.model.hlc import pack, wall_ms
from replication.model.keys import deadletter_topic
from replication.model.value import Kind
from replication.model.vclock import MAX_CLOCK_ENTRY, VectorClock
from replication.model.wire import seal_body
from replication.redis.library import apply_command
from replication.transport.deadletter import verify_dead_letter
from tests.kafkatools import produce_raw, read_topic
from tests.promtext import sample
from tests.regions import Regions

pytestmark = pytest.mark.integration

SOURCE = "us-east"  # the peer whose topic the bad records are written to


def raw_event(
    key: bytes, value: bytes, clock: list[Any], origin: str = SOURCE, db: int = 0
) -> list[Any]:
    return [db, key, int(Kind.STRING), value, 0, clock, origin, value_digest(Kind.STRING, value)]


def signed(regions: Regions, events: list[list[Any]], region: str = SOURCE) -> bytes:
    body = msgpack.packb(events, use_bin_type=True)
    return seal_body(regions.keyring.signer(region), body)


async def produce(regions: Regions, payload: bytes) -> None:
    await produce_raw(regions.kafka.bootstrap, regions.topic(SOURCE), payload)


async def dead_letters(regions: Regions, want: int) -> list[tuple[dict[str, bytes], bytes]]:
    """The dead letters once there are at least `want` of them (or after 60 s)."""
    deadline = time.monotonic() + 60
    letters: list[tuple[dict[str, bytes], bytes]] = []
    while time.monotonic() < deadline:
        records = await read_topic(regions.kafka.bootstrap, deadletter_topic(regions.prefix))
        letters = [(dict(r.headers), r.value or b"") for r in records]
        if len(letters) >= want:
            break
        await asyncio.sleep(0.5)
    return letters


def codes_by_region(letters: list[tuple[dict[str, bytes], bytes]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for headers, _ in letters:
        region = headers["consumer_region"].decode()
        out.setdefault(region, []).append(headers["reason_code"].decode())
    return {r: sorted(c) for r, c in out.items()}


def assert_up_and_replicating(regions: Regions, key: str) -> None:
    """Every daemon is still running, and a real write made now reaches every region."""
    for daemon in regions.daemons.values():
        assert daemon.running, daemon.log_tail()
        assert daemon.get("/health")["ok"]
    regions.clients[SOURCE].set(key, "real")
    wait_for(
        lambda: all(c.get(key) == b"real" for c in regions.clients.values()),
        60,
        f"{key} everywhere",
    )


async def test_forged_and_misaddressed_change_records_are_refused_and_change_nothing(
    regions: Regions,
) -> None:
    regions.clients[SOURCE].set("balance", "100")
    regions.wait_converged()
    forged_clock = [SOURCE, 2**53 - 1]
    now = pack(wall_ms())
    stranger = Keyring.parse(Keyring.generate_text([SOURCE], key_id="k9"))
    # Unsigned (the old schema 1, what anyone could write): the forged 2**53-1 version.
    await produce(
        regions,
        msgpack.packb([1, SOURCE, [raw_event(b"balance", b"0", forged_clock)]], use_bin_type=True),
    )
    # Signed with a key that is not one of us-east's.
    body = msgpack.packb([raw_event(b"balance", b"1", [SOURCE, now])], use_bin_type=True)
    await produce(regions, seal_body(stranger.signer(SOURCE), body))
    # us-east's real record with one bit of its MAC flipped.
    genuine = signed(regions, [raw_event(b"balance", b"2", [SOURCE, now])])
    await produce(regions, genuine[:-1] + bytes([genuine[-1] ^ 1]))
    # eu-west's valid record, on us-east's topic.
    local = [raw_event(b"balance", b"4", ["eu-west", now], "eu-west")]
    await produce(regions, signed(regions, local, "eu-west"))
    # us-east's valid live record, claiming writes of the local region and of another peer.
    await produce(
        regions,
        signed(
            regions,
            [
                raw_event(b"balance", b"5", ["eu-west", now], "eu-west"),
                raw_event(b"balance", b"6", ["ap-south", now], "ap-south"),
                raw_event(b"balance", b"7", [SOURCE, now, "zz-mallory", 1]),
            ],
        ),
    )
    letters = await dead_letters(regions, want=2 * 7)
    expected = sorted(
        [
            "unsigned",
            "unknown-key",
            "bad-signature",
            "wrong-source",
            "origin-mismatch",
            "origin-mismatch",
            "unknown-clock-region",
        ]
    )
    assert codes_by_region(letters) == {"eu-west": expected, "ap-south": expected}
    # Each forwarding daemon signed what it parked.
    assert {verify_dead_letter(regions.keyring, list(h.items()), p) for h, p in letters} == {
        "eu-west",
        "ap-south",
    }
    for name, client in regions.clients.items():
        assert client.get("balance") == b"100", name
    for name in ("eu-west", "ap-south"):
        metrics = regions.daemons[name].metrics()
        assert sample(metrics, "reconciler_rejected_records_total") == 4.0
        for code in ("unsigned", "unknown-key", "bad-signature", "wrong-source"):
            assert sample(metrics, "reconciler_deadletters_total", reason=code) == 1.0
        assert sample(metrics, "reconciler_deadletters_total", reason="origin-mismatch") == 2.0
    assert_up_and_replicating(regions, "after-forgeries")
    # A real write after all that is not beaten by anything forged.
    regions.clients["eu-west"].set("balance", "90")
    wait_for(lambda: all(c.get("balance") == b"90" for c in regions.clients.values()), 60, "90")


async def test_far_future_and_top_of_range_clocks_are_quarantined_and_later_writes_win(
    regions: Regions,
) -> None:
    """Even with us-east's own key (a buggy or compromised peer): a version an hour ahead is
    quarantined, and one at 2**53-1 is refused by the decoder; the good event beside each
    is applied, and a later real write replicates normally."""
    regions.clients[SOURCE].set("acct", "100")
    regions.wait_converged()
    now = pack(wall_ms())
    hour_ahead = pack(wall_ms() + 3_600_000)
    await produce(
        regions,
        signed(
            regions,
            [
                raw_event(b"acct", b"future", [SOURCE, hour_ahead]),
                raw_event(b"acct", b"top", [SOURCE, 2**53 - 1]),
                raw_event(b"acct", b"poison", [SOURCE, now, "eu-west", MAX_CLOCK_ENTRY]),
                raw_event(b"beside", b"fine", [SOURCE, now]),
            ],
        ),
    )
    letters = await dead_letters(regions, want=2 * 3)
    expected = sorted(["clock-ahead", "clock-range", "clock-ahead"])
    assert codes_by_region(letters) == {"eu-west": expected, "ap-south": expected}
    wait_for(
        lambda: all(c.get("beside") == b"fine" for n, c in regions.clients.items() if n != SOURCE),
        60,
        "the good event of the record applied",
    )
    for name, client in regions.clients.items():
        assert client.get("acct") == b"100", name
    for name in ("eu-west", "ap-south"):
        metrics = regions.daemons[name].metrics()
        assert sample(metrics, "reconciler_apply_quarantined_total") == 2.0
        assert sample(metrics, "reconciler_deadletters_total", reason="clock-range") == 1.0
    regions.clients["ap-south"].set("acct", "80")
    wait_for(lambda: all(c.get("acct") == b"80" for c in regions.clients.values()), 60, "80")
    assert_up_and_replicating(regions, "after-clocks")


async def test_a_clock_at_the_top_of_its_range_is_refused_at_the_source(
    regions: Regions,
) -> None:
    """A key whose metadata already holds an entry at MAX_CLOCK_ENTRY (planted with the
    library's own apply, as a forged version got in before the decoders refused it): the
    next local write is refused by the versioner with a clear error, counted, and the
    other keys of the same capture batch replicate."""
    here = regions.clients["eu-west"]
    here.set("poisoned", "old")
    regions.wait_converged()
    value = b"planted"
    planted = ChangeEvent(
        0,
        b"poisoned",
        Kind.STRING,
        value,
        0,
        VectorClock({"us-east": MAX_CLOCK_ENTRY}),
        "us-east",
        value_digest(Kind.STRING, value),
    )
    outcome = here.execute_command(*apply_command(planted, "eu-west"))[0]
    assert outcome in (b"applied", b"conflict-remote-won")
    with here.pipeline(transaction=True) as pipe:
        pipe.set("poisoned", "local").set("neighbour-1", "a").set("neighbour-2", "b").execute()
    wait_for(
        lambda: all(
            c.get("neighbour-1") == b"a" and c.get("neighbour-2") == b"b"
            for c in regions.clients.values()
        ),
        60,
        "the other keys of the batch everywhere",
    )
    daemon = regions.daemons["eu-west"]
    wait_for(
        lambda: sample(daemon.metrics(), "reconciler_clock_refused_total") >= 1,
        30,
        "the refusal counted",
    )
    assert "cannot be versioned" in daemon.log_tail(400)
    assert "MAX_CLOCK_ENTRY" in daemon.log_tail(400)
    for name in ("us-east", "ap-south"):
        assert regions.clients[name].get("poisoned") == b"old", name
    # A remote write to the key cannot be applied over the unversionable local one: a
    # dead letter in eu-west (only), applied in ap-south.
    regions.clients[SOURCE].set("poisoned", "remote")
    letters = await dead_letters(regions, want=1)
    assert codes_by_region(letters) == {"eu-west": ["local-clock-range"]}
    wait_for(lambda: regions.clients["ap-south"].get("poisoned") == b"remote", 60, "ap-south")
    assert here.get("poisoned") == b"local"
    assert_up_and_replicating(regions, "after-top-of-range")


async def test_events_for_databases_not_replicated_are_dead_lettered_and_committed(
    regions: Regions,
) -> None:
    """db 20 does not exist in these servers (16 databases), db 3 exists but is not in
    redis.dbs: both are dead letters, the db-0 event of the same record is applied, the
    offset is committed (a restarted daemon does not see the record again)."""
    now = pack(wall_ms())
    await produce(
        regions,
        signed(
            regions,
            [
                raw_event(b"far", b"x", [SOURCE, now], db=20),
                raw_event(b"other-db", b"x", [SOURCE, now], db=3),
                raw_event(b"db0", b"x", [SOURCE, now]),
            ],
        ),
    )
    letters = await dead_letters(regions, want=2 * 2)
    expected = ["db-not-replicated", "db-not-replicated"]
    assert codes_by_region(letters) == {"eu-west": expected, "ap-south": expected}
    wait_for(
        lambda: all(c.get("db0") == b"x" for n, c in regions.clients.items() if n != SOURCE),
        60,
        "the db-0 event applied",
    )
    for name, server in regions.servers.items():
        db3 = redis.Redis(port=server.port, db=3)
        assert db3.dbsize() == 0, name
        db3.close()
    assert_up_and_replicating(regions, "after-dbs")
    daemon = regions.daemons["eu-west"]
    daemon.stop()
    daemon.start()
    # After the restart, a record behind the bad one on the same partition: once it is
    # applied, the consumer is past the bad one, which it did not see again.
    await produce(regions, signed(regions, [raw_event(b"marker", b"x", [SOURCE, pack(wall_ms())])]))
    wait_for(lambda: regions.clients["eu-west"].get("marker") == b"x", 60, "marker applied")
    letters = await dead_letters(regions, want=0)
    assert len(letters) == 4, "the record was consumed again after the restart"
