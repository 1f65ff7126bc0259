"""Kafka mechanics of the worker: a lane per partition, pause and seek, offset commits.

What to do with a partition's records (and with a failure) is the `PartitionRunner`'s
(`runner.py`); what a batch does in the database and on the result topics is the
application's (`worker.application.capture`). The order that is the delivery guarantee -- database
commit, then results acknowledged, then the offset commit -- ends here: `OffsetCommitter`
commits only what the runner marked as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from worker.application.capture import PartitionKey, Stall
from worker.application.retry import Backoff
from worker.core import metrics
from worker.core.logging import get_logger

log = get_logger(__name__)


# Handles one partition's records in order; returns the offset it rewound the partition to.
Handle = Callable[[Any, TopicPartition, list[ConsumerRecord[Any, Any]]], Awaitable[int | None]]


class PartitionHold:
    """Rewinds stalled partitions to their first unprocessed record and pauses them for their
    backoff delay; fetching goes on for every other partition meanwhile."""

    def __init__(self) -> None:
        self._timers: dict[TopicPartition, asyncio.TimerHandle] = {}

    def hold(self, consumer: Any, stalled: Mapping[PartitionKey, Stall]) -> None:
        loop = asyncio.get_running_loop()
        for (topic, partition), stall in stalled.items():
            tp = TopicPartition(topic, partition)
            try:
                # Seek first: the commit that follows then stores this offset, not the
                # position past the records that were not processed.
                consumer.seek(tp, stall.offset)
                consumer.pause(tp)
            except IllegalStateError:
                continue  # revoked meanwhile: its new owner resumes from the last commit
            previous = self._timers.pop(tp, None)
            if previous is not None:
                previous.cancel()
            self._timers[tp] = loop.call_later(stall.delay_s, self._resume, consumer, tp)

    def _resume(self, consumer: Any, tp: TopicPartition) -> None:
        self._timers.pop(tp, None)
        with contextlib.suppress(IllegalStateError):  # revoked while paused
            consumer.resume(tp)


async def commit(ack: Callable[[], Awaitable[None]], backoff: Backoff) -> bool:
    """Commit the consumed offsets; False when the group moved on (a rebalance)."""
    attempt = 0
    while True:
        try:
            await ack()
            return True
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions went to another member: it will redeliver from the
            # last commit, and the ledger makes that harmless.
            log.warning("offset commit refused after a rebalance", error=str(exc))
            return False
        except KafkaError as exc:
            attempt += 1
            metrics.RETRIES.labels(stage="commit").inc()
            if attempt >= 10:
                log.error("offset commit failed; the batch will be redelivered", error=repr(exc))
                return False
            await asyncio.sleep(backoff.delay(attempt))


def record_lag(consumer: Any, tp: TopicPartition, next_offset: int) -> None:
    if tp in consumer.assignment():  # its high-water mark is known only while assigned
        highwater = consumer.highwater(tp)
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, highwater - next_offset)
            )


def observe_age(stage: str, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
    """The age of the oldest record of `records`, by its Kafka timestamp.

    Once per batch, not per record: what an alert on staleness needs, at no cost per record.
    The oldest, not the first: producers' clocks may disagree within a partition. A timestamp
    of 0 or less is a producer's placeholder (or none at all), not a time.
    """
    oldest = min((r.timestamp for r in records if r.timestamp > 0), default=0)
    if oldest > 0:
        age = time.time() - oldest / 1000
        metrics.RECORD_AGE_SECONDS.labels(stage=stage).observe(max(0.0, age))


def observe_batch(records: Sequence[ConsumerRecord[Any, Any]], started: float) -> None:
    """A batch done: its results acknowledged and its offset marked."""
    elapsed = time.perf_counter() - started
    size = len(records)
    metrics.BATCH_SECONDS.observe(elapsed)
    metrics.BATCH_SIZE.observe(size)
    if size:
        metrics.HANDLER_SECONDS.observe(elapsed / size)
    observe_age("delivered", records)


class PartitionLanes:
    """One task per partition with records to handle, so that partitions never wait for each
    other, and a queue per partition, so that its next records are fetched while the current
    ones are handled.

    Handling a whole fetched batch and only then fetching the next one made every partition
    wait for the slowest of the batch; with users spread unevenly over partitions the database
    then worked on one or two partitions at a time most of the time, where it could on all.

    A lane takes everything queued for its partition at once, in offset order, and hands it
    to `handle`, which returns the offset it rewound the partition to (a transient failure:
    the records from there come again), or None. After a rewind what is queued is dropped,
    and so is any record still on its way that was fetched before the rewind: FastStream
    awaits between fetching a batch and handing it over, so such records can arrive after
    it, while the partition is still paused; they start past the rewind point, while the
    fetch from the rewind point starts at it (or earlier, after a rebalance). A partition
    with `max_queued` records waiting is paused until its lane takes them: memory stays
    bounded and a slow partition holds no other.
    """

    def __init__(self, handle: Handle, *, max_queued: int) -> None:
        self._handle = handle
        self._max_queued = max(1, max_queued)
        self._queued: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        self._paused: set[TopicPartition] = set()
        self._rewound: dict[TopicPartition, int] = {}
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        self._stopping = False

    def busy(self, tp: TopicPartition) -> bool:
        task = self._tasks.get(tp)
        return task is not None and not task.done()

    def submit(
        self, consumer: Any, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        rewound = self._rewound.get(tp)
        if rewound is not None:
            if records[0].offset > rewound and tp in consumer.paused():
                return  # fetched before the rewind: they come again
            # Resumed (a rewind pauses for at least half its backoff, far longer than a
            # batch's way through FastStream), so this is the fetch from the rewind point;
            # it may start later than that point only if retention removed it meanwhile.
            del self._rewound[tp]
        queued = self._queued.setdefault(tp, [])
        queued.extend(records)
        if len(queued) >= self._max_queued and tp not in self._paused:
            with contextlib.suppress(IllegalStateError):
                consumer.pause(tp)
                self._paused.add(tp)
        if not self.busy(tp):
            task = asyncio.create_task(self._run(consumer, tp))
            self._tasks[tp] = task
            task.add_done_callback(lambda done: self._forget(tp, done))

    def _forget(self, tp: TopicPartition, done: asyncio.Task[None]) -> None:
        if self._tasks.get(tp) is done:
            del self._tasks[tp]

    async def _run(self, consumer: Any, tp: TopicPartition) -> None:
        while self._queued.get(tp) and not self._stopping:
            records = self._queued.pop(tp)
            if tp in self._paused:
                self._paused.discard(tp)
                with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                    consumer.resume(tp)
            rewound = await self._handle(consumer, tp, records)
            if rewound is not None:
                # Rewound (and paused by whoever rewound it): the queue is stale.
                self._queued.pop(tp, None)
                self._paused.discard(tp)
                self._rewound[tp] = rewound
                return

    async def drain(self, timeout_s: float) -> None:
        """Finish the records being handled; leave the queued ones. Their results may still be
        on their way: `PartitionRunner.delivered` waits for those."""
        self._stopping = True
        running = [t for t in self._tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout_s)


class OffsetCommitter:
    """Commits the lanes' offsets in the background, every partition's in one request.

    A lane hands over its partition's next offset once the results of its records are
    acknowledged, and goes on with the partition's next records; waiting for the commit itself
    cost every partition a round trip to the group coordinator per batch (~20 ms here, six
    lanes queuing for it), which was a third of a batch's time at a steady rate. Commits are
    at least `interval_s` apart.

    Offsets that hold nothing to handle (`skipped`: a transaction's marker, an aborted
    transaction's records) are committed past once every record before them is marked, so a
    partition that ends with a marker shows no lag.
    """

    def __init__(self, backoff: Backoff, *, interval_s: float = 0.0) -> None:
        self._backoff = backoff
        self._interval_s = interval_s
        self._pending: dict[TopicPartition, int] = {}
        # Per partition of the current assignment: every record before this offset is marked.
        self._marked: dict[TopicPartition, int] = {}
        # Per partition, the last offsets found to hold nothing, [start, end): only the last
        # matters, since a partition's lag stays only when its log ends with such offsets.
        self._skipped: dict[TopicPartition, tuple[int, int]] = {}
        self._consumer: Any = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def mark(self, consumer: Any, tp: TopicPartition, next_offset: int) -> None:
        """Records before `next_offset` are processed and their results acknowledged."""
        skipped = self._skipped.get(tp)
        if skipped is not None and skipped[0] <= next_offset:
            del self._skipped[tp]
            if skipped[0] == next_offset:
                next_offset = skipped[1]
        self._marked[tp] = max(next_offset, self._marked.get(tp, 0))
        self._consumer = consumer
        self._pending[tp] = max(next_offset, self._pending.get(tp, 0))
        record_lag(consumer, tp, self._marked[tp])
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def starts_at(self, tp: TopicPartition, offset: int) -> None:
        """`tp` was just assigned and is fetched from `offset`: the group's committed offset,
        so every record before it counts as marked."""
        self._marked[tp] = offset
        self._skipped.pop(tp, None)

    def skipped(self, consumer: Any, tp: TopicPartition, start: int, end: int) -> None:
        """A fetch moved `tp` from `start` to `end` without a record to handle."""
        if self._marked.get(tp) == start:
            self.mark(consumer, tp, end)
        elif start > self._marked.get(tp, -1):
            self._skipped[tp] = (start, end)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """A new assignment: what was marked before it says nothing about where it starts."""
        for tp in partitions:
            self._marked.pop(tp, None)
            self._skipped.pop(tp, None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                await self._flush()
                if self._interval_s > 0 and not self._closing.is_set():
                    # At a steady rate every lane marks several times a second; a commit
                    # request each time cost the worker and the broker more than the fetches.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), self._interval_s)
            if self._closing.is_set() and not self._pending:
                return

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        consumer = self._consumer
        # A partition revoked meanwhile is its new owner's to commit.
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in pending.items() if tp in assigned}
        if offsets:
            await commit(lambda: consumer.commit(offsets), self._backoff)

    async def close(self) -> None:
        """Commit what is pending (the lanes are drained by then) and stop."""
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            await self._task
