"""BatchProcessor and PartitionHold: one partition's transient failure spares the others."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from tests.support.fakes import (
    OTHER_USER,
    USER,
    FakeConsumer,
    FakePublisher,
    FakeStore,
    limits,
    record,
)
from worker.application.capture import BatchProcessor, Stall
from worker.application.retry import Backoff
from worker.infrastructure.kafka_client import envelopes
from worker.interfaces.kafka.consumer import PartitionHold

LOCKED_USER, FREE_USER = USER, OTHER_USER


async def test_a_locked_partition_stalls_alone_and_its_backoff_grows() -> None:
    published = FakePublisher()
    transient: list[str] = []
    processor = BatchProcessor(
        store=FakeStore(locked={LOCKED_USER}),
        publisher=published,
        limits=limits,
        backoff=Backoff(initial_s=1.0, max_s=8.0),
        on_transient=transient.append,
    )
    batch = envelopes(
        [record(0, 7, FREE_USER), record(1, 40, LOCKED_USER), record(0, 8, FREE_USER)]
    )

    first = await processor.process(batch)
    assert [o.envelope.offset for o in published.outcomes] == [7, 8]
    assert list(first.stalled) == [("cmds", 1)]
    assert first.stalled[("cmds", 1)].offset == 40
    assert transient == []  # a lock wait does not mark the database down

    second = await processor.process(envelopes([record(1, 40, LOCKED_USER)]))
    assert second.outcomes == []
    # Attempts are counted per partition across batches: the delay grows (equal jitter).
    assert 0.5 <= first.stalled[("cmds", 1)].delay_s <= 1.0
    assert 1.0 <= second.stalled[("cmds", 1)].delay_s <= 2.0


async def test_hold_rewinds_pauses_and_resumes_after_the_delay() -> None:
    held, revoked = TopicPartition("cmds", 1), TopicPartition("cmds", 2)
    consumer = FakeConsumer({held})
    PartitionHold().hold(
        consumer,
        {("cmds", 1): Stall(40, 0.05, "lock"), ("cmds", 2): Stall(9, 0.05, "lock")},
    )
    assert consumer.positions == {held: 40}
    assert consumer.paused() == {held}
    assert revoked not in consumer.positions  # not ours any more: skipped, no error
    await asyncio.sleep(0.1)
    assert consumer.paused() == set()
