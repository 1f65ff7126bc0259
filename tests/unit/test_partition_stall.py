"""BatchProcessor and PartitionHold: one partition's transient failure spares the others."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

from worker.application.batch import BatchProcessor, Stall
from worker.application.capture import Limits, Outcome
from worker.application.ports import IngestCommand
from worker.application.retry import Backoff
from worker.domain.errors import TransientError
from worker.interfaces.kafka.consumer import PartitionHold

DIM = 4
LOCKED_USER = "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10"
FREE_USER = "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11"


def record(partition: int, offset: int, user: str) -> ConsumerRecord[bytes, bytes]:
    value = json.dumps(
        {
            "command_id": str(uuid.uuid4()),
            "user_id": user,
            "url": "https://example.com/a",
            "embedding": [0.1, 0.2, 0.3, 0.4],
            "reading_depth": 0.5,
            "occurred_at": "2026-11-26T09:30:00+00:00",
        }
    ).encode()
    return ConsumerRecord(
        "cmds", partition, offset, 0, 0, user.encode(), value, None, len(value), len(value), []
    )


class LockedStore:
    """Times out on the locked user's rows (SQLSTATE 55P03), ingests everyone else."""

    async def ingest_commands(self, typed: Sequence[IngestCommand]) -> list[Any]:
        commands = [{"user_id": str(c.user_id), "command_id": str(c.command_id)} for c in typed]
        if any(c["user_id"] == LOCKED_USER for c in commands):
            raise TransientError("ingest_batch: lock not available", sqlstate="55P03")
        return [{"command_id": c["command_id"], "status": "ingested"} for c in commands]

    async def record_rejections(self, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(results)

    async def system_config(self) -> Mapping[str, Any]:
        return {}


class Published:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        self.outcomes += outcomes


async def limits() -> Limits:
    return Limits(embedding_dim=DIM, max_message_bytes=4096, db_batch_size=10)


async def test_a_locked_partition_stalls_alone_and_its_backoff_grows() -> None:
    published = Published()
    transient: list[str] = []
    processor = BatchProcessor(
        store=LockedStore(),
        publisher=published,
        limits=limits,
        backoff=Backoff(initial_s=1.0, max_s=8.0),
        on_transient=transient.append,
    )
    batch = [record(0, 7, FREE_USER), record(1, 40, LOCKED_USER), record(0, 8, FREE_USER)]

    first = await processor.process(batch)
    assert [o.envelope.offset for o in published.outcomes] == [7, 8]
    assert list(first.stalled) == [("cmds", 1)]
    assert first.stalled[("cmds", 1)].offset == 40
    assert transient == []  # a lock wait does not mark the database down

    second = await processor.process([record(1, 40, LOCKED_USER)])
    assert second.outcomes == []
    # Attempts are counted per partition across batches: the delay grows (equal jitter).
    assert 0.5 <= first.stalled[("cmds", 1)].delay_s <= 1.0
    assert 1.0 <= second.stalled[("cmds", 1)].delay_s <= 2.0


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def _check(self, tp: TopicPartition) -> None:
        if tp not in self.assigned:
            raise IllegalStateError(f"No current assignment for partition {tp}")

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check(tp)
        self.positions[tp] = offset

    def pause(self, tp: TopicPartition) -> None:
        self._check(tp)
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self._check(tp)
        self.paused.discard(tp)


async def test_hold_rewinds_pauses_and_resumes_after_the_delay() -> None:
    held, revoked = TopicPartition("cmds", 1), TopicPartition("cmds", 2)
    consumer = FakeConsumer({held})
    PartitionHold().hold(
        consumer,
        {("cmds", 1): Stall(40, 0.05, "lock"), ("cmds", 2): Stall(9, 0.05, "lock")},
    )
    assert consumer.positions == {held: 40}
    assert consumer.paused == {held}
    assert revoked not in consumer.positions  # not ours any more: skipped, no error
    await asyncio.sleep(0.1)
    assert consumer.paused == set()
