"""The bench's paced publisher against a real broker: its record batches must land where, in
the order and with the timestamps that a `send()` per record would have given them."""

from __future__ import annotations

import uuid
from collections import defaultdict

from aiokafka.partitioner import DefaultPartitioner

from devkit.cli.bench import _publish
from devkit.records import Command
from tests.fixtures.services import MakeTopic
from tests.support.kafka import read_all
from worker.core.config import Settings


async def test_paced_records_land_on_their_keys_partition_in_order_with_their_stamps(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(3, suffix="paced", configs={"max.message.bytes": str(4 << 20)})
    users = [str(uuid.uuid4()).encode() for _ in range(7)]
    # Two records larger than a producer batch (512 KiB): each closes the batch it meets and
    # goes alone in one of its own, in its place.
    large = {40: 600_000, 150: 700_000}
    commands = [
        Command(str(uuid.uuid4()), users[i % len(users)], f"{i:04d}" + "x" * large.get(i, 200))
        for i in range(300)
    ]
    rate = 600.0
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, max_message_bytes=1 << 20)
    stamps = await _publish(settings, topic, commands, rate=rate)

    assert len(stamps) == len(commands)
    records = await read_all(kafka_bootstrap, topic)
    assert len(records) == len(commands)
    partitioner = DefaultPartitioner()
    by_partition: dict[int, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        index = int((record.value or b"")[:4])
        sent = commands[index]
        assert record.key == sent.key
        assert record.value == sent.text.encode()
        # Where Kafka's default partitioner (murmur2 of the key) puts that key.
        assert record.partition == partitioner(record.key, [0, 1, 2], [0, 1, 2])
        # The timestamp returned for it is the one the topic keeps (CreateTime).
        assert record.timestamp == stamps[index]
        by_partition[record.partition].append(index)
    assert sorted(i for indexes in by_partition.values() for i in indexes) == list(range(300))
    for indexes in by_partition.values():
        assert indexes == sorted(indexes)  # each partition in sending order
    assert len(by_partition) > 1
    # Paced: after the bucket's burst (rate / 20 records) one record per 1 / rate seconds, so
    # the stamps span at least that (load can only make it longer); 2 ms of slack a record
    # may go early, and the clock's milliseconds.
    burst = rate / 20
    assert max(stamps) - min(stamps) >= (len(commands) - burst) / rate * 1000 - 5


async def test_a_paced_record_goes_within_its_window_not_with_the_next_record(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    # The broker's clock on each record: how long the bench held it after stamping it.
    topic = await make_topic(1, suffix="slow", configs={"message.timestamp.type": "LogAppendTime"})
    commands = [Command(str(uuid.uuid4()), b"user", f"{i:04d}") for i in range(4)]
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap)
    stamps = await _publish(settings, topic, commands, rate=1.0)  # one a second

    records = await read_all(kafka_bootstrap, topic)
    assert sorted(int(r.value or b"") for r in records) == [0, 1, 2, 3]
    for record in records:
        # Stored in much less than the second until the next record (5 ms and a produce
        # request, normally; the margin is for a loaded machine).
        assert record.timestamp - stamps[int(record.value or b"")] < 500
