"""PartitionLanes and OffsetCommitter with a fake consumer (no Kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from tests.support.fakes import FakeConsumer
from worker.application.retry import Backoff
from worker.interfaces.kafka.consumer import OffsetCommitter, PartitionLanes

P0, P1, P2 = (TopicPartition("commands", p) for p in range(3))


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


async def test_commits_are_an_interval_apart_and_close_does_not_wait_for_it() -> None:
    consumer = FakeConsumer({P0, P1})
    committer = OffsetCommitter(backoff(), interval_s=0.2)
    committer.mark(consumer, P0, 10)
    await asyncio.sleep(0.05)  # the first commit went out at once
    assert consumer.commits == [{P0: 10}]
    committer.mark(consumer, P0, 20)
    committer.mark(consumer, P1, 5)
    await asyncio.sleep(0.05)  # still inside the interval: nothing new sent
    assert consumer.commits == [{P0: 10}]
    await asyncio.sleep(0.2)
    assert consumer.commits == [{P0: 10}, {P0: 20, P1: 5}]
    committer.mark(consumer, P1, 9)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await committer.close()  # inside the next interval, yet commits at once
    assert loop.time() - began < 0.15
    assert consumer.commits[-1] == {P1: 9}


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


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def records(*offsets: int) -> list[Any]:
    return [Record(o) for o in offsets]


class Handler:
    """Handles what it is given; waits at `gate`; answers `ok` (False: rewound)."""

    def __init__(self) -> None:
        self.calls: list[tuple[TopicPartition, list[int]]] = []
        self.gate = asyncio.Event()
        self.ok = True

    async def __call__(self, consumer: Any, tp: TopicPartition, group: list[Any]) -> int | None:
        self.calls.append((tp, [r.offset for r in group]))
        await self.gate.wait()
        if self.ok:
            return None
        consumer.pause(tp)  # as a rewind does, until its backoff is over
        return int(group[0].offset)


async def test_records_queued_while_a_lane_works_are_handled_next_together_in_order() -> None:
    handler, consumer = Handler(), FakeConsumer({P0, P1})
    lanes = PartitionLanes(handler, max_queued=100)
    lanes.submit(consumer, P0, records(0, 1))
    await asyncio.sleep(0)
    lanes.submit(consumer, P0, records(2, 3))  # fetched while the lane works
    lanes.submit(consumer, P0, records(4))
    lanes.submit(consumer, P1, records(0))  # another partition does not wait for P0
    await asyncio.sleep(0)
    assert handler.calls == [(P0, [0, 1]), (P1, [0])]
    handler.gate.set()
    await asyncio.sleep(0.01)
    assert handler.calls == [(P0, [0, 1]), (P1, [0]), (P0, [2, 3, 4])]
    assert not lanes.busy(P0) and not lanes.busy(P1)


async def test_a_full_queue_pauses_its_partition_until_the_lane_takes_it() -> None:
    handler, consumer = Handler(), FakeConsumer({P0, P1})
    lanes = PartitionLanes(handler, max_queued=3)
    lanes.submit(consumer, P0, records(0))
    await asyncio.sleep(0)
    lanes.submit(consumer, P0, records(1, 2, 3))
    assert consumer.paused_now == {P0}
    handler.gate.set()
    await asyncio.sleep(0.01)
    assert consumer.paused_now == set()
    assert handler.calls == [(P0, [0]), (P0, [1, 2, 3])]


async def test_a_rewound_partition_drops_what_was_queued() -> None:
    handler, consumer = Handler(), FakeConsumer({P0, P1})
    handler.ok = False
    lanes = PartitionLanes(handler, max_queued=100)
    lanes.submit(consumer, P0, records(0, 1))
    await asyncio.sleep(0)
    lanes.submit(consumer, P0, records(2))  # fetched before the rewind: comes again
    handler.gate.set()
    await asyncio.sleep(0.01)
    assert handler.calls == [(P0, [0, 1])]
    handler.ok = True
    consumer.resume(P0)
    lanes.submit(consumer, P0, records(0, 1, 2))  # after the rewind
    await asyncio.sleep(0.01)
    assert handler.calls == [(P0, [0, 1]), (P0, [0, 1, 2])]


async def lane_rewound_after(*offsets: int) -> tuple[Handler, FakeConsumer, PartitionLanes]:
    """A lane whose handling of `offsets` failed: P0 is rewound to the first of them and
    paused; the handler succeeds from now on."""
    handler, consumer = Handler(), FakeConsumer({P0, P1})
    handler.ok = False
    lanes = PartitionLanes(handler, max_queued=100)
    lanes.submit(consumer, P0, records(*offsets))
    handler.gate.set()
    await asyncio.sleep(0.01)
    handler.ok = True
    return handler, consumer, lanes


async def test_records_fetched_before_a_rewind_but_handed_over_after_it_are_dropped() -> None:
    handler, consumer, lanes = await lane_rewound_after(10, 11)
    lanes.submit(consumer, P0, records(12, 13))  # was on its way: would skip 10 and 11
    consumer.resume(P0)  # the backoff is over
    lanes.submit(consumer, P0, records(10, 11, 12, 13))  # the fetch from the rewind point
    lanes.submit(consumer, P0, records(14))
    await asyncio.sleep(0.01)
    assert handler.calls == [(P0, [10, 11]), (P0, [10, 11, 12, 13, 14])]


async def test_after_the_backoff_a_fetch_past_the_rewind_point_is_taken() -> None:
    # Retention may have removed the rewind point meanwhile: the partition must go on.
    handler, consumer, lanes = await lane_rewound_after(10, 11)
    consumer.resume(P0)
    lanes.submit(consumer, P0, records(15, 16))
    await asyncio.sleep(0.01)
    assert handler.calls == [(P0, [10, 11]), (P0, [15, 16])]


async def test_drain_finishes_the_records_in_hand_and_leaves_the_queued() -> None:
    handler, consumer = Handler(), FakeConsumer({P0, P1})
    lanes = PartitionLanes(handler, max_queued=100)
    lanes.submit(consumer, P0, records(0))
    await asyncio.sleep(0)
    lanes.submit(consumer, P0, records(1))
    draining = asyncio.create_task(lanes.drain(timeout_s=1.0))
    await asyncio.sleep(0)
    handler.gate.set()
    await draining
    assert handler.calls == [(P0, [0])]
