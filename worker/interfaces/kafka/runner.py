"""The delivery policy: what becomes of a partition after its records were handled.

    processed                -> publish the results and commit past the last record, in the
                                background: the partition's next records go to the database
                                meanwhile, and are published once these are acknowledged
    a partition stalled      -> rewind it and pause it for its backoff (PartitionHold)
    retries exhausted        -> rewind, and stop the worker with exit code 3 (never skip)
    an unexpected exception  -> a bug, not a transient failure: the records are handled again
                                one at a time; a record that fails CAPTURE_INTERNAL_ERROR_ATTEMPTS
                                times is dead-lettered as kind `internal` (or, with
                                CAPTURE_ON_INTERNAL_ERROR=stop, the worker stops with code 3)

Whatever is not processed is rewound before anything could fetch past it; only processed
records' offsets are ever committed. While a record is retried after an internal error its
partition is named on /readyz (not ready) and every attempt logs an ERROR with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeAlias

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

from contracts import ErrorKind
from worker.application.capture import BatchProcessor, Processed, RetriesExhausted
from worker.application.ports import Envelope
from worker.application.retry import Backoff
from worker.core import metrics
from worker.core.logging import get_logger
from worker.domain.errors import PermanentError
from worker.infrastructure.kafka_client import envelopes
from worker.interfaces.kafka.consumer import (
    OffsetCommitter,
    PartitionHold,
    observe_age,
    observe_batch,
)

log = get_logger(__name__)

Record: TypeAlias = "ConsumerRecord[Any, Any]"
#: (topic, partition, reason or None when the partition moves again)
StallReport = Callable[[str, int, str | None], None]


class PartitionRunner:
    """Runs one partition's records through the processor and applies the delivery policy.

    `consumer` is aiokafka's (pause, seek, resume, assignment); `on_give_up` asks the process
    to stop (exit code 3). The lanes call it once per partition at a time.
    """

    def __init__(
        self,
        processor: BatchProcessor,
        *,
        hold: PartitionHold,
        committer: OffsetCommitter,
        backoff: Backoff,
        on_give_up: Callable[[], None],
        internal_error_attempts: int = 5,
        stop_on_internal_error: bool = False,
        on_stall: StallReport = lambda _topic, _partition, _reason: None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.processor = processor
        self.hold = hold
        self.committer = committer
        self.backoff = backoff
        self.internal_error_attempts = max(1, internal_error_attempts)
        self.stop_on_internal_error = stop_on_internal_error
        self._on_give_up = on_give_up
        self._on_stall = on_stall
        self._stopping = stopping or asyncio.Event()
        self._delivering: dict[TopicPartition, asyncio.Task[int | None]] = {}

    async def __call__(
        self, consumer: Any, tp: TopicPartition, records: list[Record]
    ) -> int | None:
        """Handle `records` (one partition's, in order); the offset it was rewound to, if it was.

        The database's part is done here; the results are published (and the offset marked)
        in the background, while the partition's next records are handled. A call waits for
        the previous delivery on its partition before it publishes anything itself, and
        returns that delivery's rewind if it had one.
        """
        if tp not in consumer.assignment():
            return None  # revoked: its new owner resumes from the last commit
        started = time.perf_counter()
        observe_age("taken", records)
        previous = self._delivering.pop(tp, None)
        batch = envelopes(records)
        failure: Exception | None = None
        try:
            processed = await self.processor.handle(batch)
        except Exception as exc:
            failure = exc
        rewound = await self._delivered(previous)
        if rewound is not None:
            # These records' effects may be committed; their results go out when they come
            # again, from the ledger.
            return rewound
        if isinstance(failure, RetriesExhausted):
            return self._give_up(consumer, tp, records[0].offset, str(failure))
        if failure is not None:
            return await self._internal(consumer, tp, records, failure, started)
        rewound = self._hold_if_stalled(consumer, tp, processed)
        if rewound is not None:
            return rewound
        delivery = asyncio.create_task(
            self._deliver(consumer, tp, records, batch, processed, started)
        )
        delivery.add_done_callback(lambda done: self._forget(tp, done))
        self._delivering[tp] = delivery
        return None

    async def delivered(self, timeout_s: float | None = None) -> None:
        """Wait for the deliveries in flight (at shutdown, before the last commit)."""
        pending = [t for t in self._delivering.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def _delivered(self, delivery: asyncio.Task[int | None] | None) -> int | None:
        # Shielded: a call cancelled while it waits must not cancel the delivery it waits for.
        return None if delivery is None else await asyncio.shield(delivery)

    def _forget(self, tp: TopicPartition, delivery: asyncio.Task[int | None]) -> None:
        """A delivery that ended well has nothing to tell the next call: let its batch go."""
        if (
            self._delivering.get(tp) is delivery
            and not delivery.cancelled()
            and delivery.exception() is None
            and delivery.result() is None
        ):
            del self._delivering[tp]

    async def _deliver(
        self,
        consumer: Any,
        tp: TopicPartition,
        records: list[Record],
        batch: list[Envelope],
        processed: Processed,
        started: float,
    ) -> int | None:
        """Publish what the database returned and mark the offset; the rewind, if any."""
        try:
            await self.processor.publish(processed.outcomes, batch)
        except RetriesExhausted as exc:
            return self._give_up(consumer, tp, records[0].offset, str(exc))
        except Exception as exc:
            return await self._internal(consumer, tp, records, exc, started)
        self._settle(consumer, tp, records, processed)
        observe_batch(records, started)
        return None

    async def _internal(
        self,
        consumer: Any,
        tp: TopicPartition,
        records: list[Record],
        exc: Exception,
        started: float,
    ) -> int | None:
        # A bug, not the message's fault, and not knowing which record caused it: handle
        # them one at a time so that only the culprit is retried and, at worst, set aside.
        self._internal_error(tp, records[0], exc, attempt=1, of_records=len(records))
        # A batch of one has had its first attempt already.
        first_error = exc if len(records) == 1 else None
        rewound = await self._one_by_one(consumer, tp, records, first_error)
        if rewound is None:
            observe_batch(records, started)
        return rewound

    def _settle(
        self, consumer: Any, tp: TopicPartition, records: list[Record], processed: Processed
    ) -> int | None:
        rewound = self._hold_if_stalled(consumer, tp, processed)
        if rewound is not None:
            return rewound
        # This partition's offset only (other partitions' records may be in flight),
        # committed in the background: the partition goes on meanwhile.
        self.committer.mark(consumer, tp, records[-1].offset + 1)
        return None

    def _hold_if_stalled(
        self, consumer: Any, tp: TopicPartition, processed: Processed
    ) -> int | None:
        """The offset the partition was rewound to when it stalled (paused for its backoff)."""
        stall = processed.stalled.get((tp.topic, tp.partition))
        if stall is None:
            return None
        self.hold.hold(consumer, processed.stalled)  # rewinds; resumes after the backoff
        return stall.offset

    async def _one_by_one(
        self,
        consumer: Any,
        tp: TopicPartition,
        records: list[Record],
        first_error: BaseException | None,
    ) -> int | None:
        for index, record in enumerate(records):
            rewound = await self._single(consumer, tp, record, first_error if index == 0 else None)
            if rewound is not None:
                return rewound
        return None

    async def _single(
        self, consumer: Any, tp: TopicPartition, record: Record, error: BaseException | None
    ) -> int | None:
        """One record until it is processed, dead-lettered, or the partition must be rewound.

        `error`: what its attempt so far raised (None: not tried on its own yet).
        """
        attempt = 0 if error is None else 1
        while True:
            if attempt:
                if self.stop_on_internal_error and attempt >= self.internal_error_attempts:
                    return self._give_up(consumer, tp, record.offset, "internal error")
                if attempt >= self.internal_error_attempts:
                    assert error is not None  # attempt > 0 only after an error
                    return await self._dead_letter(consumer, tp, record, error)
                if await self._wait(self.backoff.delay(attempt)):
                    offset: int = record.offset
                    rewind(consumer, tp, offset)  # stopping: the next owner redoes it
                    return offset
            try:
                processed = await self.processor.process(envelopes([record]))
            except RetriesExhausted as exc:
                return self._give_up(consumer, tp, record.offset, str(exc))
            except Exception as exc:
                attempt += 1
                self._internal_error(tp, record, exc, attempt=attempt, of_records=1)
                error = exc
                continue
            self._on_stall(tp.topic, tp.partition, None)
            return self._settle(consumer, tp, [record], processed)

    async def _dead_letter(
        self, consumer: Any, tp: TopicPartition, record: Record, exc: BaseException
    ) -> int | None:
        # The record's own last exception: the runner serves every partition at once.
        error = PermanentError(
            ErrorKind.INTERNAL,
            f"{type(exc).__name__}: {exc} (failed {self.internal_error_attempts} times)",
        )
        try:
            await self.processor.dead_letter(envelopes([record])[0], error)
        except Exception:
            # Not even dead-lettered (Kafka or the database away): redo it from here later.
            log.exception(
                "could not dead-letter a record; it will be redelivered",
                topic=tp.topic,
                partition=tp.partition,
                offset=record.offset,
            )
            rewind(consumer, tp, record.offset)
            if not await self._wait(self.backoff.max_s):
                with contextlib.suppress(IllegalStateError):
                    consumer.resume(tp)
            rewound: int = record.offset
            return rewound
        log.error(
            "record dead-lettered after internal errors",
            kind=ErrorKind.INTERNAL.value,
            reason=error.message,
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
        )
        self._on_stall(tp.topic, tp.partition, None)
        self.committer.mark(consumer, tp, record.offset + 1)
        return None

    def _internal_error(
        self,
        tp: TopicPartition,
        record: Record,
        exc: BaseException,
        *,
        attempt: int,
        of_records: int,
    ) -> None:
        metrics.INTERNAL_ERRORS.inc()
        reason = f"internal error at offset {record.offset}: {type(exc).__name__}: {exc}"
        self._on_stall(tp.topic, tp.partition, reason)
        log.error(
            "unexpected error while handling records; retrying",
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            messages=of_records,
            attempt=attempt,
            max_attempts=self.internal_error_attempts,
            exc_info=exc,
        )

    def _give_up(self, consumer: Any, tp: TopicPartition, offset: int, reason: str) -> int:
        log.error(
            "giving up; stopping (exit code 3)",
            reason=reason,
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
        )
        rewind(consumer, tp, offset)
        self._on_give_up()
        return offset

    async def _wait(self, delay_s: float) -> bool:
        """Sleep `delay_s`; True when the worker began stopping meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        return self._stopping.is_set()


def rewind(consumer: Any, tp: TopicPartition, offset: int) -> None:
    """Pause and seek back: the records from `offset` come again once resumed."""
    with contextlib.suppress(IllegalStateError):  # revoked meanwhile
        consumer.pause(tp)
        consumer.seek(tp, offset)
