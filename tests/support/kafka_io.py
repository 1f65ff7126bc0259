"""Kafka I/O for the scenarios, with client options (the security scenario talks SASL/PLAIN).

`Topics` names a scenario's three topics and how to reach them; `feed` produces in paced
chunks (a stream that is still arriving when the fault hits); `read` returns a whole topic;
`count` and `committed` are cheap enough to poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.support.kafka import Record

Header = tuple[str, bytes]
Item = tuple[bytes | None, bytes | None, list[Header]]


@dataclass(frozen=True)
class Topics:
    bootstrap: str
    commands: str
    results: str
    dlq: str
    group: str
    client_options: Mapping[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap, **self.client_options}


async def feed(
    topics: Topics, items: Sequence[Item], *, chunk: int = 500, pause_s: float = 0.0
) -> int:
    """Produce `items` in order, `chunk` at a time with a pause between chunks; every record
    acknowledged (acks=all, idempotent) before the next chunk."""
    producer = AIOKafkaProducer(
        **topics.options(),
        acks="all",
        enable_idempotence=True,
        max_request_size=4 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        for start in range(0, len(items), chunk):
            futures = [
                await producer.send(topics.commands, key=key, value=value, headers=headers)
                for key, value, headers in items[start : start + chunk]
            ]
            await asyncio.gather(*futures)
            if pause_s and start + chunk < len(items):
                await asyncio.sleep(pause_s)
        return len(items)
    finally:
        await producer.stop()


async def _end_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    return dict(await consumer.end_offsets(tps)) if tps else {}


async def read(topics: Topics, topic: str, *, timeout_s: float = 60.0) -> list[Record]:
    """Every record of the topic up to the end offsets taken now."""
    consumer = AIOKafkaConsumer(
        **topics.options(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        end = await _end_offsets(consumer, topic)
        if not end:
            return []
        consumer.assign(list(end))
        # Explicit seeks: seek_to_beginning() right after assign() can race the consumer's own
        # offset reset and start at the end.
        for tp, offset in (await consumer.beginning_offsets(list(end))).items():
            consumer.seek(tp, offset)
        out: list[Record] = []
        remaining = {tp for tp, offset in end.items() if offset > 0}
        async with asyncio.timeout(timeout_s):
            while remaining:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, messages in batch.items():
                    out += [
                        Record(
                            m.topic,
                            m.partition,
                            m.offset,
                            m.key,
                            m.value,
                            tuple(m.headers),
                            m.timestamp,
                        )
                        for m in messages
                        if m.offset < end[tp]
                    ]
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def count(topics: Topics, topic: str) -> int:
    """Records in the topic (sum of end offsets: no compaction or transactions here)."""
    consumer = AIOKafkaConsumer(**topics.options(), enable_auto_commit=False)
    await consumer.start()
    try:
        return sum((await _end_offsets(consumer, topic)).values())
    finally:
        await consumer.stop()


async def uncommitted(topics: Topics) -> int:
    """Command records past the consumer group's committed offsets: 0 once all is committed."""
    admin = AIOKafkaAdminClient(**topics.options())
    consumer = AIOKafkaConsumer(**topics.options(), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(topics.group)
        end = await _end_offsets(consumer, topics.commands)
        return sum(
            offset - (committed[tp].offset if tp in committed else 0) for tp, offset in end.items()
        )
    finally:
        await consumer.stop()
        await admin.close()


async def stable_members(topics: Topics) -> int:
    """Members of the consumer group once it is Stable (a rebalance done), else 0."""
    admin = AIOKafkaAdminClient(**topics.options())
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([topics.group])
        for group in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members[, authorized_ops])
            if group[1] == topics.group and group[2] == "Stable":
                return len(group[5])
        return 0
    finally:
        await admin.close()
