"""Plain aiokafka helpers for tests: produce records, read a topic to its end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[
        tuple[bytes | None, bytes | None]
        | tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
    ],
    *,
    timestamp_ms: int | None = None,
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=4 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = []
        for item in records:
            key, value = item[0], item[1]
            headers = item[2] if len(item) > 2 else None  # type: ignore[misc]
            futures.append(
                await producer.send(
                    topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms
                )
            )
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> list[Record]:
    """Every record currently in the topic (up to the end offsets taken now)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=8 * 1024 * 1024,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        # Explicit seeks: seek_to_beginning() right after assign() can lose a race
        # with the consumer's own offset reset and silently start at the end.
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
        out: list[Record] = []
        remaining = {tp for tp in tps if end[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while remaining and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset < end[tp]:
                        out.append(
                            Record(
                                m.topic,
                                m.partition,
                                m.offset,
                                m.key,
                                m.value,
                                tuple(m.headers),
                                m.timestamp,
                            )
                        )
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        if remaining:
            raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
        return out
    finally:
        await consumer.stop()


async def wait_for_count(
    bootstrap: str, topic: str, count: int, *, timeout_s: float = 120.0, poll_s: float = 0.5
) -> list[Record]:
    """Read the topic until it holds at least `count` records."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    records: list[Record] = []
    while loop.time() < deadline:
        records = await read_all(bootstrap, topic)
        if len(records) >= count:
            return records
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"{topic}: {len(records)} records after {timeout_s}s, expected {count}")
