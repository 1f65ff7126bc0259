"""One batch of consumed records through the database and out to Kafka, partition by partition.

The order is the delivery guarantee: database transaction committed -> results and
dead-letter records acknowledged by Kafka -> (the caller) offsets committed. A crash anywhere
before the commit redelivers, and the database's ledger turns a redelivery into the identical
results.

Partitions are independent: one whose records fail transiently (its user's rows locked past
`lock_timeout`, or the database down) comes back as a `Stall` saying where to resume and when;
the others are published and go on. Nothing here knows Kafka's types: records arrive as
`Envelope`s, and results leave through the `Publisher` port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from worker.application.capture import (
    Limits,
    Outcome,
    handle_capture_batch,
    reject,
    store_rejections,
)
from worker.application.ports import CaptureStore, Envelope, Publisher
from worker.application.retry import Backoff
from worker.core import metrics
from worker.core.logging import get_logger
from worker.domain.errors import CaptureError, PermanentError, TransientError

log = get_logger(__name__)

PartitionKey = tuple[str, int]


def by_partition(records: Sequence[Envelope]) -> dict[PartitionKey, list[Envelope]]:
    """Records grouped by (topic, partition), each group in the order given."""
    groups: dict[PartitionKey, list[Envelope]] = {}
    for r in records:
        groups.setdefault((r.topic, r.partition), []).append(r)
    return groups


class RetriesExhausted(CaptureError):
    """CAPTURE_RETRY_MAX_ATTEMPTS reached: the worker stops rather than skip a message."""


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition whose records of this batch failed transiently: where to resume, and when."""

    offset: int
    delay_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Processed:
    """Outcomes of the partitions that succeeded (published), and the partitions to retry."""

    outcomes: list[Outcome]
    stalled: Mapping[PartitionKey, Stall] = field(default_factory=dict)


@dataclass
class BatchProcessor:
    store: CaptureStore
    publisher: Publisher
    limits: Callable[[], Awaitable[Limits]]
    backoff: Backoff
    on_transient: Callable[[str], None] = lambda _: None
    on_success: Callable[[], None] = lambda: None
    _attempts: dict[PartitionKey, int] = field(default_factory=dict)

    async def process(self, records: Sequence[Envelope]) -> Processed:
        """Handle each partition, then publish what succeeded; nothing is ever skipped.

        A partition whose handling failed transiently comes back in `stalled` (the caller
        rewinds and pauses it, `PartitionHold`), whatever the others did: a database that is
        down stalls them all, one user's locked rows only their own partition. A failed
        publish (Kafka) is retried here, with backoff, for the whole batch.
        """
        partitions = by_partition(records)
        attempt = 0
        while True:
            limits = await self.limits()
            outcomes, failures = await _per_partition(partitions, self.store, limits)
            stalled = self._stalled(failures, partitions)
            try:
                await self.publisher.publish(outcomes)
            except TransientError as exc:
                attempt += 1
                metrics.RETRIES.labels(stage="publish").inc()
                self.on_transient("publish")
                if self.backoff.gives_up(attempt):
                    raise RetriesExhausted(exc.reason) from exc
                delay = self.backoff.delay(attempt)
                first = records[0]
                log.warning(
                    "transient failure, retrying",
                    reason=exc.reason,
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                    topic=first.topic,
                    partition=first.partition,
                    offset=first.offset,
                    messages=len(records),
                )
                await asyncio.sleep(delay)
            else:
                for key in partitions.keys() - stalled.keys():
                    self._attempts.pop(key, None)
                if outcomes:
                    self.on_success()
                return Processed(outcomes, stalled)

    async def dead_letter(self, envelope: Envelope, error: PermanentError) -> None:
        """Dead-letter one record the worker cannot handle (its rejected result too, when its
        ids can be read), without handing it to the database's ingest."""
        outcomes = await store_rejections([reject(envelope, error)], self.store)
        await self.publisher.publish(outcomes)

    def _stalled(
        self,
        failures: Mapping[PartitionKey, TransientError],
        partitions: Mapping[PartitionKey, list[Envelope]],
    ) -> dict[PartitionKey, Stall]:
        """Count an attempt per failed partition (attempts survive across batches, so the
        backoff grows until that partition succeeds) and give each its delay."""
        stalled: dict[PartitionKey, Stall] = {}
        for key, exc in failures.items():
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            metrics.RETRIES.labels(stage="database").inc()
            if not exc.contention:  # a lock wait says nothing about the database being down
                self.on_transient("database")
            if self.backoff.gives_up(attempt):
                raise RetriesExhausted(exc.reason) from exc
            delay = self.backoff.delay(attempt)
            first = partitions[key][0]
            log.warning(
                "transient failure, retrying",
                reason=exc.reason,
                attempt=attempt,
                retry_in_s=round(delay, 2),
                topic=first.topic,
                partition=first.partition,
                offset=first.offset,
                messages=len(partitions[key]),
            )
            stalled[key] = Stall(first.offset, delay, exc.reason)
        return stalled


async def _per_partition(
    groups: Mapping[PartitionKey, list[Envelope]], store: CaptureStore, limits: Limits
) -> tuple[list[Outcome], dict[PartitionKey, TransientError]]:
    """Partitions concurrently, each in order; a transient failure of one spares the others."""
    keys = list(groups)
    replies = await asyncio.gather(
        *(handle_capture_batch(groups[k], store=store, limits=limits) for k in keys),
        return_exceptions=True,
    )
    outcomes: list[Outcome] = []
    failures: dict[PartitionKey, TransientError] = {}
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, TransientError):
            failures[key] = reply
        elif isinstance(reply, BaseException):
            raise reply  # a bug (or a cancellation): the caller rewinds the whole batch
        else:
            outcomes += reply
    return outcomes, failures
