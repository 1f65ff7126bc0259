"""The broker the tests run against: keyed round trip, consumer-group offsets, large records."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.fixtures.services import MakeTopic


async def _produce(
    options: dict[str, Any], topic: str, records: list[tuple[bytes, bytes]], **extra: Any
) -> list[Any]:
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True, **extra)
    await producer.start()
    try:
        return [await producer.send_and_wait(topic, value, key=key) for key, value in records]
    finally:
        await producer.stop()


async def test_keyed_message_round_trip(
    kafka_client_options: dict[str, Any], make_topic: MakeTopic
) -> None:
    topic = await make_topic(partitions=3)
    sent = await _produce(
        kafka_client_options,
        topic,
        [(b"user-1", b'{"n": 1}'), (b"user-2", b'{"n": 2}'), (b"user-1", b'{"n": 3}')],
    )
    # One key, one partition: user-1's records stay in order on the same partition.
    assert sent[0].partition == sent[2].partition
    assert sent[2].offset > sent[0].offset

    consumer = AIOKafkaConsumer(**kafka_client_options, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, sent[0].partition)
    consumer.assign([tp])
    await consumer.start()
    try:
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        while not records or records[-1].offset < sent[2].offset:
            records.append(await asyncio.wait_for(consumer.getone(), 30))
    finally:
        await consumer.stop()
    # user-2 may share the partition (3 partitions): only user-1's records are compared.
    assert [(r.key, r.value, r.offset) for r in records if r.key == b"user-1"] == [
        (b"user-1", b'{"n": 1}', sent[0].offset),
        (b"user-1", b'{"n": 3}', sent[2].offset),
    ]


async def test_consumer_group_commits_and_reads_back_its_offset(
    kafka_client_options: dict[str, Any],
    kafka_admin: AIOKafkaAdminClient,
    make_topic: MakeTopic,
) -> None:
    topic = await make_topic(partitions=1)
    await _produce(kafka_client_options, topic, [(b"k", f"m{i}".encode()) for i in range(5)])
    group = f"g-{topic}"
    tp = TopicPartition(topic, 0)

    def consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            **kafka_client_options,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    first = consumer()
    await first.start()
    try:
        read = [await asyncio.wait_for(first.getone(), 30) for _ in range(3)]
        await first.commit({tp: read[-1].offset + 1})
        assert await first.committed(tp) == 3
    finally:
        await first.stop()

    offsets = await kafka_admin.list_consumer_group_offsets(group)
    assert offsets[tp].offset == 3

    second = consumer()
    await second.start()
    try:
        resumed = await asyncio.wait_for(second.getone(), 30)
    finally:
        await second.stop()
    assert (resumed.offset, resumed.value) == (3, b"m3")


async def test_broker_accepts_a_record_just_over_one_mib(
    kafka_client_options: dict[str, Any], make_topic: MakeTopic
) -> None:
    # The worker rejects commands over 1 MiB itself (DLQ): the broker must let them through.
    topic = await make_topic(partitions=1)
    value = b"x" * (1024 * 1024 + 1)
    (sent,) = await _produce(
        kafka_client_options, topic, [(b"k", value)], max_request_size=2 * 1024 * 1024
    )
    consumer = AIOKafkaConsumer(
        **kafka_client_options, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024
    )
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.start()
    try:
        await consumer.seek_to_beginning(tp)
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert (record.offset, len(record.value)) == (sent.offset, len(value))
