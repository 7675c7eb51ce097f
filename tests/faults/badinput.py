"""Bad input on the change topics during a run: unsigned (schema 1), signed with a key
that is not the region's, a genuine record with its MAC flipped, and bytes that are not a
record at all. Every value they carry says FORGED; the checker makes sure none got in."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgpack
from aiokafka.errors import KafkaError

from replication.model.auth import Keyring
from replication.model.digest import value_digest
from replication.model.hlc import pack, wall_ms
from replication.model.keys import deadletter_topic
from replication.model.value import Kind
from replication.model.wire import seal_body
from tests.faults.workload import OWN_KEYS, own_key
from tests.kafkatools import produce_raw, read_topic
from tests.regions import Regions, State

MARK = b"FORGED"


def _event(key: bytes, value: bytes, source: str, ahead_ms: int) -> list[Any]:
    clock = [source, pack(wall_ms() + ahead_ms)]
    return [0, key, int(Kind.STRING), value, 0, clock, source, value_digest(Kind.STRING, value)]


def forged_records(regions: Regions, source: str, rng: random.Random) -> list[bytes]:
    """Four bad records for `source`'s topic, aimed at a real key of `source`."""
    key = own_key(source, rng.randrange(OWN_KEYS))
    value = MARK + b":" + key
    events = msgpack.packb([_event(key, value, source, 1_000)], use_bin_type=True)
    stranger = Keyring.parse(Keyring.generate_text([source], key_id="k9"))
    genuine = seal_body(regions.keyring.signer(source), events)
    return [
        msgpack.packb([1, source, [_event(key, value, source, 1_000)]], use_bin_type=True),
        seal_body(stranger.signer(source), events),
        genuine[:-1] + bytes([genuine[-1] ^ 1]),
        b"\xc1" + MARK + rng.randbytes(16),  # 0xc1: never valid msgpack
    ]


def inject(regions: Regions, rng: random.Random) -> int:
    """Produce one batch of bad records on a random region's topic; returns how many."""
    source = rng.choice(regions.names)
    records = forged_records(regions, source, rng)

    async def produce() -> None:
        # One at a time, each in a bounded wait: the broker may be frozen by the nemesis.
        for record in records:
            async with asyncio.timeout(20):
                await produce_raw(regions.kafka.bootstrap, regions.topic(source), record)

    try:
        asyncio.run(produce())
    except TimeoutError as exc:
        raise KafkaError("producing a bad record timed out") from exc
    return len(records)


def dead_letters(regions: Regions) -> int:
    """How many records the daemons parked in the dead-letter topic."""
    topic = deadletter_topic(regions.prefix)
    try:
        return len(asyncio.run(read_topic(regions.kafka.bootstrap, topic)))
    except Exception:  # no dead letter at all: the topic may not exist
        return 0


def forged_keys(snapshots: dict[str, dict[bytes, State]]) -> list[str]:
    """Every (region, key) holding a forged value."""
    return [
        f"{region}:{key!r}"
        for region, snap in snapshots.items()
        for key, state in snap.items()
        if MARK in repr(state[1]).encode()
    ]
