"""Offsets with nothing to handle: a transaction's commit or abort marker, and the records of
an aborted transaction (the worker reads committed records only).

A fetch moves the consumer's position past them without returning a record. Committing after
the last record handled then leaves the group one offset (or an aborted transaction) short of
the end of a partition whose log ends with them: a lag that `status`, `capture_consumer_lag`
and lag monitors show, and that only the partition's next command would clear. Spring Kafka's
`fixTxOffsets` answers the same thing. Here every fetch is watched: the offsets it moved past
after its last record (or from where the partition stood, when it returned none) are handed to
the `OffsetCommitter`, which commits past them once every record before them is marked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from worker.interfaces.kafka.consumer import OffsetCommitter


def fetch_positions(consumer: Any) -> tuple[Any, dict[TopicPartition, int]]:
    """The consumer's assignment (a new object at every rebalance) and each assigned
    partition's position, read without waiting: `AIOKafkaConsumer.position` waits for a
    partition's position to be reset, and a fetch must not wait for that."""
    subscription = consumer._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    if assignment is None:
        return None, {}
    positions: dict[TopicPartition, int] = {}
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        if state is not None and state.has_valid_position:
            positions[tp] = state.position
    return assignment, positions


class SkippedOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    """Watches the consumer's fetches (`getmany`) from its first assignment on.

    FastStream makes the consumer when the subscriber starts and fetches from a loop of its
    own; the first assignment comes before any record can be fetched, so the watch is set up
    then. `consumer` gives the subscriber's consumer; `from_earliest`: a partition without
    the group's offset is read from its start (`auto_offset_reset=earliest`).
    """

    def __init__(
        self, committer: OffsetCommitter, consumer: Callable[[], Any], *, from_earliest: bool
    ) -> None:
        self._committer = committer
        self._consumer = consumer
        self._from_earliest = from_earliest
        self._watched: Any = None
        self._assignment: Any = None
        # Partitions of the current assignment not fetched from yet: where they stand is the
        # group's committed offset.
        self._fresh: set[TopicPartition] = set()
        self._checks: set[asyncio.Task[None]] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer()
        if consumer is not None and self._watched is not consumer:
            self.watch(consumer)

    def watch(self, consumer: Any) -> None:
        fetch = consumer.getmany

        async def getmany(
            *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
        ) -> dict[TopicPartition, list[Any]]:
            assignment, before = fetch_positions(consumer)
            fetched: dict[TopicPartition, list[Any]] = await fetch(
                *partitions, timeout_ms=timeout_ms, max_records=max_records
            )
            now, after = fetch_positions(consumer)
            if now is not None and assignment is now:
                self._seen(consumer, now, before, after, fetched)
            elif now is not None:
                # A rebalance during the fetch: what it returned is on its way to the lanes,
                # so those partitions no longer stand where the group committed.
                self._new_assignment(now)
                self._fresh.difference_update(fetched)
            return fetched

        consumer.getmany = getmany
        self._watched = consumer

    def _new_assignment(self, assignment: Any) -> None:
        self._assignment = assignment
        self._fresh = set(assignment.tps)
        self._committer.forget(assignment.tps)

    def _seen(
        self,
        consumer: Any,
        assignment: Any,
        before: dict[TopicPartition, int],
        after: dict[TopicPartition, int],
        fetched: dict[TopicPartition, list[Any]],
    ) -> None:
        if assignment is not self._assignment:
            self._new_assignment(assignment)
        for tp in list(self._fresh):
            if tp in before:  # no record of this assignment was fetched before this fetch
                self._committer.starts_at(tp, before[tp])
                self._fresh.discard(tp)
            elif tp in fetched:
                self._fresh.discard(tp)
            elif tp in after:
                # Its position was set from the group's offset during this fetch (the fetcher
                # resets and fetches in the background, in a few ms), which may then have moved
                # it to `after` without a record: nothing before `after` is left to handle, and
                # the group's offset tells whether anything was passed.
                self._committer.starts_at(tp, after[tp])
                self._fresh.discard(tp)
                task = asyncio.create_task(self._catch_up(consumer, assignment, tp, after[tp]))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)
        for tp, end in after.items():
            records = fetched.get(tp)
            start = records[-1].offset + 1 if records else before.get(tp)
            # A seek back during the fetch (a lane's rewind) leaves the position behind start.
            if start is not None and end > start:
                self._committer.skipped(consumer, tp, start, end)

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the group's offsets still being asked, so that a
        commit they find goes out with the last one at shutdown, not at the next start."""
        if self._checks:
            await asyncio.wait(set(self._checks), timeout=max(timeout_s, 0.0))

    async def _catch_up(self, consumer: Any, assignment: Any, tp: TopicPartition, end: int) -> None:
        """Commit `end` if the group's offset for `tp` is behind it. Without one the fetch
        started at the log's start (`earliest`), which only moves on; after `latest`, where it
        started is not known, and the partition's next record commits."""
        try:
            start = await consumer.committed(tp)
            if start is None and self._from_earliest:
                start = (await consumer.beginning_offsets([tp]))[tp]
        except (KafkaError, IllegalStateError):
            return  # revoked, or the coordinator moved: the next record commits
        if assignment is self._assignment and start is not None and start < end:
            self._committer.mark(consumer, tp, end)
