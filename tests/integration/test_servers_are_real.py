"""The fixtures start real servers: data goes in and comes out, faults are real faults."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devcluster import KafkaBroker, RedisServer

pytestmark = pytest.mark.integration


async def test_redis_server_is_a_real_process_that_stores_data(redis_server: RedisServer) -> None:
    assert redis_server.pid is not None
    os.kill(redis_server.pid, 0)  # a live process of ours
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        info = await client.info("server")
        assert info["process_id"] == redis_server.pid
        assert info["tcp_port"] == redis_server.port
    finally:
        await client.aclose()


async def test_redis_kill9_and_restart_keeps_or_loses_data(redis_server: RedisServer) -> None:
    async with aioredis.Redis.from_url(redis_server.url) as client:
        await client.set("durable", "1")
        await client.execute_command("SAVE")
    old_pid = redis_server.pid
    redis_server.restart(keep_data=True)
    assert redis_server.pid != old_pid
    async with aioredis.Redis.from_url(redis_server.url) as client:
        assert await client.get("durable") == b"1"

    redis_server.restart(keep_data=False)
    async with aioredis.Redis.from_url(redis_server.url) as client:
        assert await client.get("durable") is None
        assert await client.dbsize() == 0


async def test_redis_restart_from_an_older_snapshot(redis_server: RedisServer, tmp_path) -> None:
    async with aioredis.Redis.from_url(redis_server.url) as client:
        await client.set("old", "1")
        snap = redis_server.snapshot(tmp_path / "old.rdb")
        await client.set("new", "2")
    redis_server.restart(from_snapshot=snap)
    async with aioredis.Redis.from_url(redis_server.url) as client:
        assert await client.get("old") == b"1"
        assert await client.get("new") is None
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"


async def test_kafka_broker_produces_consumes_and_commits_a_group_offset(
    kafka: KafkaBroker,
) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), partition=i % 2)
    finally:
        await producer.stop()

    group = f"g-{topic}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        async with asyncio.timeout(30):
            while len(seen) < 10:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen.extend(r.value for r in records)
        await consumer.commit()
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(f"m{i}".encode() for i in range(10))
    assert committed == {0: 5, 1: 5}


async def test_kafka_pause_stops_answers_and_resume_brings_them_back(kafka: KafkaBroker) -> None:
    topic = f"pause-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        kafka.pause()
        pending = asyncio.ensure_future(producer.send_and_wait(topic, b"during-pause"))
        await asyncio.sleep(2)
        assert not pending.done(), "a SIGSTOPped broker acknowledged a write"
        kafka.resume()
        meta = await asyncio.wait_for(pending, timeout=60)
        assert meta.offset == 0
    finally:
        kafka.resume()
        await producer.stop()
