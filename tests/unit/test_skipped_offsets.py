"""Offsets with nothing to handle (transaction markers, aborted records): committed past only
once every record before them is marked. A fake consumer with aiokafka's assignment state
stands for the broker; the end-to-end case is in tests/e2e/test_transactional_producers.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from tests.support.fakes import FakeConsumer
from worker.application.retry import Backoff
from worker.interfaces.kafka.consumer import OffsetCommitter
from worker.interfaces.kafka.skipped import SkippedOffsets

P0, P1, P2, P3 = (TopicPartition("commands", p) for p in range(4))


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class State:
    def __init__(self) -> None:
        self.position: int | None = None

    @property
    def has_valid_position(self) -> bool:
        return self.position is not None


class Assignment:
    """aiokafka's: a new object at every rebalance, a state per partition."""

    def __init__(self, tps: set[TopicPartition]) -> None:
        self.tps = frozenset(tps)
        self.states = {tp: State() for tp in tps}

    def state_value(self, tp: TopicPartition) -> State | None:
        return self.states.get(tp)


class Subscription:
    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment


class SubscriptionState:
    def __init__(self, assignment: Assignment) -> None:
        self.subscription = Subscription(assignment)


class FetchingConsumer(FakeConsumer):
    """Fetches what `fetches` says: each entry, the records returned and the positions after."""

    def __init__(self, tps: set[TopicPartition]) -> None:
        super().__init__(set(tps))
        self._subscription = SubscriptionState(Assignment(tps))
        self.fetches: list[tuple[dict[TopicPartition, list[int]], dict[TopicPartition, int]]] = []
        self.during: Any = None  # called while a fetch waits (a rebalance, a seek)
        self.group_offsets: dict[TopicPartition, int] = {}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.group_offsets.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    @property
    def states(self) -> dict[TopicPartition, State]:
        return self._subscription.subscription.assignment.states

    def rebalance(self, tps: set[TopicPartition]) -> None:
        self.assigned = set(tps)
        self._subscription.subscription.assignment = Assignment(tps)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0)
        if self.during is not None:
            self.during()
            self.during = None
        returned, positions = self.fetches.pop(0)
        for tp, position in positions.items():
            self.states[tp].position = position
        return {tp: [Record(o) for o in offsets] for tp, offsets in returned.items()}


def backoff() -> Backoff:
    return Backoff(initial_s=0.01, max_s=0.01)


async def listening(
    tps: set[TopicPartition], *, from_earliest: bool = True
) -> tuple[FetchingConsumer, OffsetCommitter, SkippedOffsets]:
    consumer = FetchingConsumer(tps)
    committer = OffsetCommitter(backoff())
    listener = SkippedOffsets(committer, lambda: consumer, from_earliest=from_earliest)
    await listener.on_partitions_assigned(tps)
    return consumer, committer, listener


async def watched(
    tps: set[TopicPartition], *, from_earliest: bool = True
) -> tuple[FetchingConsumer, OffsetCommitter]:
    consumer, committer, _ = await listening(tps, from_earliest=from_earliest)
    return consumer, committer


async def test_a_marker_after_the_last_record_is_committed_past_once_that_record_is_marked() -> (
    None
):
    consumer, committer = await watched({P0})
    consumer.states[P0].position = 0
    consumer.fetches = [({P0: [0, 1, 2]}, {P0: 4})]  # offset 3: the commit marker
    fetched = await consumer.getmany(timeout_ms=10)
    assert [r.offset for r in fetched[P0]] == [0, 1, 2]
    await asyncio.sleep(0.01)
    assert consumer.commits == []  # nothing before the records are handled
    committer.mark(consumer, P0, 3)
    await committer.close()
    assert consumer.commits == [{P0: 4}]


async def test_a_marker_fetched_after_the_records_were_marked_is_committed_past_at_once() -> None:
    consumer, committer = await watched({P0})
    consumer.states[P0].position = 0
    consumer.fetches = [({P0: [0, 1]}, {P0: 2}), ({}, {P0: 8})]  # 2..7: aborted, and its marker
    await consumer.getmany()
    committer.mark(consumer, P0, 2)
    await consumer.getmany()
    await committer.close()
    assert consumer.commits[-1] == {P0: 8}


async def test_a_partition_assigned_where_a_marker_lies_is_committed_past_it() -> None:
    consumer, committer = await watched({P0, P1})
    # The positions set from the group's offsets before the first fetch.
    consumer.states[P0].position, consumer.states[P1].position = 5, 9
    consumer.fetches = [({}, {P0: 6, P1: 9})]
    await consumer.getmany()  # P0's marker at 5
    await committer.close()
    assert consumer.commits == [{P0: 6}]


async def test_a_marker_fetched_in_the_fetch_that_set_the_position_is_committed_past() -> None:
    consumer, committer = await watched({P0, P1, P2, P3})
    # Every position set from the group's offsets while the fetch waited: P0 moved past a
    # marker, P1 got records (not handled yet), P2 had nothing to pass, P3 neither, and no
    # group offset (read from the log's start, 0).
    consumer.group_offsets = {P0: 5, P1: 3, P2: 4}
    consumer.fetches = [
        ({P1: [3, 4]}, {P0: 6, P1: 5, P2: 4, P3: 0}),
        ({}, {P0: 6, P1: 7, P2: 4, P3: 0}),
    ]
    await consumer.getmany()
    await asyncio.sleep(0.01)
    assert consumer.commits == [{P0: 6}]
    await consumer.getmany()  # P1's marker at 5..6
    await asyncio.sleep(0.01)
    assert consumer.commits == [{P0: 6}]
    committer.mark(consumer, P1, 5)
    await committer.close()
    assert consumer.commits == [{P0: 6}, {P1: 7}]


@pytest.mark.parametrize("from_earliest", [True, False])
async def test_without_the_groups_offset_only_a_read_from_the_start_is_committed_past(
    from_earliest: bool,
) -> None:
    consumer, committer = await watched({P0}, from_earliest=from_earliest)
    consumer.fetches = [({}, {P0: 2})]  # 0..1: an aborted transaction's record, its marker
    await consumer.getmany()
    await asyncio.sleep(0.01)  # the group's offset asked for
    await committer.close()
    # After `latest`, where the fetch started is not known: its next record commits.
    assert consumer.commits == ([{P0: 2}] if from_earliest else [])


async def test_at_shutdown_a_group_offset_still_being_asked_commits_with_the_last_commit() -> None:
    consumer, committer, listener = await listening({P0})
    answer = asyncio.Event()
    ask = consumer.committed

    async def slow_committed(tp: TopicPartition) -> int | None:
        await answer.wait()
        return await ask(tp)

    consumer.committed = slow_committed  # type: ignore[method-assign]
    consumer.group_offsets = {P0: 5}
    consumer.fetches = [({}, {P0: 6})]  # the position set from 5 and moved past a marker
    await consumer.getmany()
    await asyncio.sleep(0.01)
    assert consumer.commits == []  # the group's offset not answered yet
    shutdown = asyncio.create_task(listener.settle(5.0))
    await asyncio.sleep(0.01)
    assert not shutdown.done()  # waits for the answer
    answer.set()
    await shutdown
    await committer.close()
    assert consumer.commits == [{P0: 6}]


async def test_settling_waits_no_longer_than_it_is_given() -> None:
    consumer, committer, listener = await listening({P0})
    never = asyncio.Event()

    async def unanswered(tp: TopicPartition) -> int | None:
        await never.wait()
        return None

    consumer.committed = unanswered  # type: ignore[method-assign]
    consumer.fetches = [({}, {P0: 6})]
    await consumer.getmany()
    await asyncio.wait_for(listener.settle(0.05), timeout=5.0)
    await committer.close()
    assert consumer.commits == []


async def test_records_not_yet_handled_are_never_committed_past() -> None:
    consumer, committer = await watched({P0})
    consumer.states[P0].position = 0
    # Records fetched, then a fetch that only moves past a marker: the records are not marked.
    consumer.fetches = [({P0: [0, 1]}, {P0: 2}), ({P0: [2]}, {P0: 3}), ({}, {P0: 4})]
    for _ in range(3):
        await consumer.getmany()
    await asyncio.sleep(0.01)
    assert consumer.commits == []
    committer.mark(consumer, P0, 2)
    await asyncio.sleep(0.01)
    assert consumer.commits == [{P0: 2}]
    committer.mark(consumer, P0, 3)
    await committer.close()
    assert consumer.commits == [{P0: 2}, {P0: 4}]


async def test_a_rebalance_during_a_fetch_does_not_take_its_records_for_handled() -> None:
    consumer, committer = await watched({P0})
    consumer.states[P0].position = 0
    consumer.fetches = [({P0: [0, 1]}, {P0: 2}), ({}, {P0: 3})]
    consumer.during = lambda: consumer.rebalance({P0})  # the new assignment starts at 0 ...
    consumer_states_before = consumer.states
    await consumer.getmany()  # ... and its first fetch returns records 0 and 1
    assert consumer.states is not consumer_states_before
    await consumer.getmany()  # a marker at 2, but records 0 and 1 are not handled yet
    await asyncio.sleep(0.01)
    assert consumer.commits == []
    committer.mark(consumer, P0, 2)
    await committer.close()
    assert consumer.commits == [{P0: 3}]


async def test_a_seek_back_during_a_fetch_is_no_offsets_skipped() -> None:
    consumer, committer = await watched({P0})
    consumer.states[P0].position = 10
    consumer.fetches = [({}, {P0: 10}), ({}, {P0: 4})]
    await consumer.getmany()  # the group's offset: 10
    await consumer.getmany()  # a lane rewound the partition to 4 meanwhile
    await committer.close()
    assert consumer.commits == []


async def test_a_partition_assigned_again_starts_where_the_group_committed() -> None:
    consumer, committer = await watched({P0})
    consumer.states[P0].position = 0
    consumer.fetches = [({P0: [0, 1]}, {P0: 2})]
    await consumer.getmany()
    committer.mark(consumer, P0, 2)
    await asyncio.sleep(0.01)
    # Revoked and assigned again; another member meanwhile committed 7; 7..8 is a marker.
    consumer.rebalance({P0})
    consumer.states[P0].position = 7
    consumer.fetches = [({}, {P0: 8})]
    await consumer.getmany()
    await committer.close()
    assert consumer.commits == [{P0: 2}, {P0: 8}]
