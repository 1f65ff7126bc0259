"""PartitionLanes and OffsetCommitter with a fake consumer (no Kafka)."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from worker.application.retry import Backoff
from worker.interfaces.kafka.consumer import OffsetCommitter, PartitionLanes

P0, P1, P2 = (TopicPartition("commands", p) for p in range(3))


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []
        self.release = asyncio.Event()
        self.release.set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.release.wait()
        self.commits.append(dict(offsets))


def backoff() -> Backoff:
    return Backoff(initial_s=0.01, max_s=0.01)


async def test_offsets_marked_while_a_commit_is_in_flight_go_out_together_in_the_next() -> None:
    consumer = FakeConsumer({P0, P1})
    consumer.release.clear()
    committer = OffsetCommitter(backoff())
    committer.mark(consumer, P0, 10)
    await asyncio.sleep(0)  # the first commit is now waiting for the broker
    committer.mark(consumer, P0, 20)
    committer.mark(consumer, P1, 5)
    committer.mark(consumer, P0, 15)  # never backwards
    consumer.release.set()
    await committer.close()
    assert consumer.commits == [{P0: 10}, {P0: 20, P1: 5}]


async def test_a_partition_revoked_meanwhile_is_not_committed() -> None:
    consumer = FakeConsumer({P0})
    committer = OffsetCommitter(backoff())
    committer.mark(consumer, P0, 3)
    committer.mark(consumer, P2, 7)
    await committer.close()
    assert consumer.commits == [{P0: 3}]


async def test_close_without_marks_commits_nothing() -> None:
    committer = OffsetCommitter(backoff())
    await committer.close()


async def test_lanes_are_busy_until_their_work_ends_and_drain_waits_for_them() -> None:
    lanes = PartitionLanes()
    gate = asyncio.Event()
    finished: list[TopicPartition] = []

    async def work(tp: TopicPartition) -> None:
        await gate.wait()
        finished.append(tp)

    lanes.start(P0, work(P0))
    lanes.start(P1, work(P1))
    await asyncio.sleep(0)
    assert lanes.busy(P0) and lanes.busy(P1) and not lanes.busy(P2)
    gate.set()
    await lanes.drain(timeout_s=1.0)
    assert sorted(finished) == [P0, P1]
    assert not lanes.busy(P0) and not lanes.busy(P1)
