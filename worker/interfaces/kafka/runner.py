"""The delivery policy: what becomes of a partition after its records were handled.

    processed               -> commit past the last record (in the background)
    a partition stalled     -> rewind it and pause it for its backoff (PartitionHold)
    retries exhausted       -> rewind, and stop the worker with exit code 3 (never skip)
    an unexpected exception -> a bug, not the message's fault: rewind, wait, and try again

Each branch rewinds before anything else can fetch past the records, so what was not
processed comes again; only a processed partition's offset is ever committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

from worker.application.batch import BatchProcessor, RetriesExhausted
from worker.application.retry import Backoff
from worker.core.logging import get_logger
from worker.infrastructure.kafka_client import envelopes
from worker.interfaces.kafka.consumer import (
    OffsetCommitter,
    PartitionHold,
    observe_batch,
    record_lag,
)

log = get_logger(__name__)


class PartitionRunner:
    """Runs one partition's records through the processor and applies the delivery policy.

    `consumer` is aiokafka's (pause, seek, resume, assignment); `on_give_up` asks the process
    to stop (exit code 3). Called by the lanes, one call per partition at a time.
    """

    def __init__(
        self,
        processor: BatchProcessor,
        *,
        hold: PartitionHold,
        committer: OffsetCommitter,
        backoff: Backoff,
        on_give_up: Callable[[], None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.processor = processor
        self.hold = hold
        self.committer = committer
        self.backoff = backoff
        self._on_give_up = on_give_up
        self._sleep = sleep

    async def __call__(
        self, consumer: Any, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
    ) -> int | None:
        """Handle `records` (one partition's, in order); the offset it was rewound to, if it was."""
        if tp not in consumer.assignment():
            return None  # revoked: its new owner resumes from the last commit
        first: int = records[0].offset
        started = time.perf_counter()
        try:
            processed = await self.processor.process(envelopes(records))
        except RetriesExhausted as exc:
            log.error(
                "giving up after CAPTURE_RETRY_MAX_ATTEMPTS; stopping",
                reason=str(exc),
                topic=tp.topic,
                partition=tp.partition,
                offset=first,
            )
            rewind(consumer, tp, first)
            self._on_give_up()
            return first
        except Exception:
            # A bug, not the message's fault: rewind so the records are seen again,
            # and slow down rather than spin.
            log.exception(
                "unexpected error; records will be redelivered",
                topic=tp.topic,
                partition=tp.partition,
                offset=first,
                messages=len(records),
            )
            rewind(consumer, tp, first)
            await self._sleep(self.backoff.max_s)
            with contextlib.suppress(IllegalStateError):
                consumer.resume(tp)
            return first
        stall = processed.stalled.get((tp.topic, tp.partition))
        if stall is not None:
            self.hold.hold(consumer, processed.stalled)  # rewinds; resumes after the backoff
            return stall.offset
        # This partition's offset only (other partitions' records may be in flight),
        # committed in the background: the partition goes on meanwhile.
        self.committer.mark(consumer, tp, records[-1].offset + 1)
        if tp in consumer.assignment():  # its high-water mark is known only while assigned
            record_lag(consumer, records)
        observe_batch(len(records), started)
        return None


def rewind(consumer: Any, tp: TopicPartition, offset: int) -> None:
    """Pause and seek back: the records from `offset` come again once resumed."""
    with contextlib.suppress(IllegalStateError):  # revoked meanwhile
        consumer.pause(tp)
        consumer.seek(tp, offset)
