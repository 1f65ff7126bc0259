"""PartitionRunner: every branch of the delivery policy, with fakes (no FastStream, no Kafka).

The processor, the hold and the committer are the real ones; the store, the publisher and
the consumer are the fakes of tests/support/fakes.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from contracts import ErrorKind
from tests.support.fakes import (
    OTHER_USER,
    TOPIC,
    USER,
    FakeConsumer,
    FakePublisher,
    FakeStore,
    limits,
    record,
)
from tests.support.scenario import wait_until
from worker.application.capture import BatchProcessor, Outcome
from worker.application.retry import Backoff
from worker.core import metrics
from worker.interfaces.http import Health
from worker.interfaces.kafka.consumer import OffsetCommitter, PartitionHold
from worker.interfaces.kafka.runner import PartitionRunner

TP = TopicPartition(TOPIC, 0)
FAST = Backoff(initial_s=0.001, max_s=0.01)


class Setup:
    def __init__(
        self,
        store: FakeStore,
        *,
        publisher: FakePublisher | None = None,
        backoff: Backoff = FAST,
        attempts: int = 3,
        stop: bool = False,
    ) -> None:
        self.store = store
        self.publisher = publisher or FakePublisher()
        self.consumer = FakeConsumer({TP})
        self.committer = OffsetCommitter(backoff)
        self.health = Health()
        self.gave_up = 0
        self.stopping = asyncio.Event()
        self.runner = PartitionRunner(
            BatchProcessor(store=store, publisher=self.publisher, limits=limits, backoff=backoff),
            hold=PartitionHold(),
            committer=self.committer,
            backoff=backoff,
            on_give_up=self.give_up,
            internal_error_attempts=attempts,
            stop_on_internal_error=stop,
            on_stall=self.health.partition_stalled,
            stopping=self.stopping,
        )

    def give_up(self) -> None:
        self.gave_up += 1

    async def run(self, records: list[ConsumerRecord[Any, Any]]) -> int | None:
        """The runner on `records`, then their delivery (publish, offset marked) awaited."""
        rewound = await self.runner(self.consumer, TP, records)
        await self.runner.delivered()
        return rewound

    async def committed(self) -> int | None:
        """The last offset committed for TP once deliveries and pending commits are done."""
        await self.runner.delivered()
        await self.committer.close()
        offsets = [c[TP] for c in self.consumer.commits if TP in c]
        return offsets[-1] if offsets else None

    def statuses(self) -> list[tuple[int, str | None]]:
        return [
            (o.envelope.offset, o.error.kind.value if o.error else None)
            for o in self.publisher.outcomes
        ]


async def test_processed_records_are_committed_past_the_last_one() -> None:
    s = Setup(FakeStore())
    rewound = await s.run([record(0, 5), record(0, 6)])
    assert rewound is None
    assert s.statuses() == [(5, None), (6, None)]
    assert await s.committed() == 7
    assert s.consumer.paused() == set()


async def test_a_revoked_partition_is_left_to_its_new_owner() -> None:
    s = Setup(FakeStore())
    s.consumer.assigned = set()
    assert await s.runner(s.consumer, TP, [record(0, 5)]) is None
    assert s.store.calls == []
    assert await s.committed() is None


async def test_a_stalled_partition_is_rewound_and_paused_not_committed() -> None:
    s = Setup(FakeStore(locked={USER}), backoff=Backoff(initial_s=5, max_s=5))
    rewound = await s.runner(s.consumer, TP, [record(0, 5), record(0, 6)])
    assert rewound == 5
    assert s.consumer.positions[TP] == 5
    assert TP in s.consumer.paused()
    assert await s.committed() is None
    assert s.publisher.outcomes == []


async def test_exhausted_database_retries_rewind_and_stop_the_worker() -> None:
    backoff = Backoff(initial_s=0.001, max_s=0.001, max_attempts=1)
    s = Setup(FakeStore(locked={USER}), backoff=backoff)
    rewound = await s.run([record(0, 5), record(0, 6)])
    assert rewound == 5
    assert s.gave_up == 1
    assert s.consumer.positions[TP] == 5 and TP in s.consumer.paused()
    assert await s.committed() is None
    assert s.publisher.outcomes == []


async def test_exhausted_publish_retries_rewind_stop_and_reach_the_next_records() -> None:
    backoff = Backoff(initial_s=0.001, max_s=0.001, max_attempts=1)
    s = Setup(FakeStore(), publisher=FakePublisher(failures=5), backoff=backoff)
    # The database's part succeeded; the results' delivery gives up in the background.
    assert await s.run([record(0, 5), record(0, 6)]) is None
    assert s.gave_up == 1
    assert s.consumer.positions[TP] == 5 and TP in s.consumer.paused()
    # The partition's next records (fetched before the rewind) learn of it: the lane drops them.
    assert await s.runner(s.consumer, TP, [record(0, 7)]) == 5
    assert s.publisher.outcomes == []
    assert await s.committed() is None


class HeldPublisher(FakePublisher):
    """Publishes once `release` is set; `publishing` is set while a publish waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.publishing = asyncio.Event()

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        self.publishing.set()
        await self.release.wait()
        await super().publish(outcomes)


async def test_the_next_records_are_handled_while_the_results_are_acknowledged() -> None:
    publisher = HeldPublisher()
    s = Setup(FakeStore(), publisher=publisher)
    # Returns with the results still unacknowledged (waiting for them would time out).
    assert (
        await asyncio.wait_for(s.runner(s.consumer, TP, [record(0, 5), record(0, 6)]), 10) is None
    )
    assert publisher.publishing.is_set()
    # The first results are not acknowledged yet: nothing is committed, and the next
    # records go to the database meanwhile...
    second = asyncio.create_task(s.runner(s.consumer, TP, [record(0, 7)]))

    async def second_call_made() -> bool:
        return len(s.store.calls) >= 2

    await wait_until(second_call_made, timeout_s=10, what="the next records' call", poll_s=0.001)
    assert s.publisher.outcomes == []
    # ...but are published only after the first ones, and the offsets marked in order.
    assert not second.done()
    publisher.release.set()
    assert await asyncio.wait_for(second, 10) is None
    await s.runner.delivered()
    assert s.statuses() == [(5, None), (6, None), (7, None)]
    assert [c[TP] for c in s.consumer.commits if TP in c][:1] == [7]
    assert await s.committed() == 8


async def test_a_bug_while_publishing_handles_the_records_one_at_a_time() -> None:
    class BatchBug(FakePublisher):
        async def publish(self, outcomes: Sequence[Outcome]) -> None:
            if len(outcomes) > 1:
                raise RuntimeError("a bug in publishing a batch")
            await super().publish(outcomes)

    s = Setup(FakeStore(), publisher=BatchBug())
    assert await s.run([record(0, 5), record(0, 6)]) is None
    assert s.statuses() == [(5, None), (6, None)]
    assert await s.committed() == 7
    assert s.health.stalled == {}


async def test_a_bug_on_one_record_dead_letters_it_as_internal_and_the_rest_go_on() -> None:
    before = metrics.INTERNAL_ERRORS._value.get()
    s = Setup(FakeStore(bug=ValueError("boom")), attempts=3)
    records = [record(0, 5), record(0, 6, url="https://example.com/bug"), record(0, 7)]
    rewound = await s.runner(s.consumer, TP, records)
    assert rewound is None
    # The batch failed once (which record, unknown), then the culprit failed on its own
    # CAPTURE_INTERNAL_ERROR_ATTEMPTS times.
    assert s.store.bugs == {json.loads(records[1].value)["command_id"]: 1 + 3}
    assert s.statuses() == [(5, None), (6, ErrorKind.INTERNAL.value), (7, None)]
    dead = s.publisher.outcomes[1]
    assert dead.error is not None and "ValueError: boom" in dead.error.message
    assert dead.result is not None and dead.result["status"] == "rejected"
    assert await s.committed() == 8
    assert metrics.INTERNAL_ERRORS._value.get() - before == 1 + 3
    assert s.health.stalled == {}  # moving again


async def test_a_bug_that_heals_is_retried_in_place_and_nothing_is_dead_lettered() -> None:
    s = Setup(FakeStore(bug_times=2), attempts=5)
    records = [record(0, 5, url="https://example.com/bug"), record(0, 6)]
    assert await s.runner(s.consumer, TP, records) is None
    assert s.statuses() == [(5, None), (6, None)]
    assert await s.committed() == 7


async def test_readiness_names_the_stalled_partition_while_a_record_is_retried() -> None:
    s = Setup(FakeStore(), backoff=Backoff(initial_s=0.3, max_s=0.3), attempts=2)
    s.health.consuming, s.health.up = True, {"kafka": True}
    task = asyncio.create_task(
        s.runner(s.consumer, TP, [record(0, 5, url="https://example.com/bug")])
    )
    while not s.health.stalled:
        await asyncio.sleep(0.001)
    assert not s.health.ready
    report = s.health.report()
    assert "internal error at offset 5" in report["stalled_partitions"][f"{TOPIC}[0]"]  # type: ignore[index]
    assert await task is None
    assert s.health.ready and "stalled_partitions" not in s.health.report()


async def test_stop_mode_exits_instead_of_skipping() -> None:
    s = Setup(FakeStore(), attempts=2, stop=True)
    records = [record(0, 5), record(0, 6, url="https://example.com/bug"), record(0, 7)]
    rewound = await s.runner(s.consumer, TP, records)
    assert rewound == 6
    assert s.gave_up == 1
    assert s.statuses() == [(5, None)]  # nothing at or after the culprit was processed
    assert s.consumer.positions[TP] == 6 and TP in s.consumer.paused()
    assert await s.committed() == 6


async def test_stopping_during_a_retry_rewinds_to_the_culprit() -> None:
    s = Setup(FakeStore(), backoff=Backoff(initial_s=30, max_s=30), attempts=5)
    task = asyncio.create_task(
        s.runner(s.consumer, TP, [record(0, 5, url="https://example.com/bug"), record(0, 6)])
    )
    while not s.health.stalled:
        await asyncio.sleep(0.001)
    s.stopping.set()
    assert await asyncio.wait_for(task, 10) == 5
    assert s.consumer.positions[TP] == 5
    assert await s.committed() is None


@pytest.mark.parametrize("kafka_down", [True])
async def test_a_record_that_cannot_be_dead_lettered_is_redelivered(kafka_down: bool) -> None:
    # The publisher fails permanently for the DLQ write: the record must not be committed.
    backoff = Backoff(initial_s=0.001, max_s=0.001, max_attempts=0)

    class DownForDeadLetters(FakePublisher):
        async def publish(self, outcomes: object) -> None:
            outcomes = list(outcomes)  # type: ignore[call-overload]
            if kafka_down and any(o.error for o in outcomes):
                raise RuntimeError("no dead letters today")
            self.outcomes += outcomes

    s = Setup(FakeStore(), publisher=DownForDeadLetters(), backoff=backoff, attempts=2)
    other = record(0, 4, user=OTHER_USER)
    rewound = await s.runner(s.consumer, TP, [other, record(0, 5, url="https://example.com/bug")])
    assert rewound == 5
    assert s.consumer.positions[TP] == 5
    assert await s.committed() == 5  # the record before it only


def _age(stage: str) -> tuple[float, float]:
    """(count, sum) of capture_record_age_seconds for `stage` so far."""
    labels = {"stage": stage}
    count = metrics.REGISTRY.get_sample_value("capture_record_age_seconds_count", labels)
    total = metrics.REGISTRY.get_sample_value("capture_record_age_seconds_sum", labels)
    return count or 0.0, total or 0.0


async def test_each_batch_reports_its_oldest_records_age_when_taken_and_when_delivered() -> None:
    s = Setup(FakeStore())
    now_ms = int(time.time() * 1000)
    # Stamped 2 s and 30 s ago (producers' clocks may disagree): the batch's age is its
    # oldest record's, not its first's.
    records = [
        replace(record(0, 5), timestamp=now_ms - 2_000),
        replace(record(0, 6), timestamp=now_ms - 30_000),
    ]
    taken, delivered = _age("taken"), _age("delivered")
    await s.run(records)
    taken_count, taken_sum = _age("taken")
    delivered_count, delivered_sum = _age("delivered")
    assert taken_count == taken[0] + 1 and delivered_count == delivered[0] + 1
    age_taken = taken_sum - taken[1]
    age_delivered = delivered_sum - delivered[1]
    assert 30 <= age_taken < 60
    assert age_taken <= age_delivered < 60

    # No timestamp (0 or -1: a producer's placeholder): nothing observed.
    await s.run([record(0, 7), replace(record(0, 8), timestamp=-1)])
    assert _age("taken")[0] == taken_count and _age("delivered")[0] == delivered_count
