"""One fetched batch: per-partition handling, result publish, then the offset commit.

The order matters and is the delivery guarantee: database transaction
committed -> results and dead-letter records acknowledged by Kafka -> offsets
committed. A crash anywhere before the commit redelivers the batch, and the
database's ledger turns the redelivery into the identical results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from worker.application.handlers.capture_handler import Limits, Outcome, handle_capture_batch
from worker.application.ports import CaptureStore, Envelope
from worker.application.retry import Backoff
from worker.core import metrics
from worker.core.logging import get_logger
from worker.domain.errors import TransientError

log = get_logger(__name__)


class Publisher(Protocol):
    async def publish(self, outcomes: Sequence[Outcome]) -> None: ...


class RetriesExhausted(Exception):
    """CAPTURE_RETRY_MAX_ATTEMPTS reached: the worker stops rather than skip a message."""


@dataclass
class BatchProcessor:
    store: CaptureStore
    publisher: Publisher
    limits: Callable[[], Awaitable[Limits]]
    backoff: Backoff
    on_transient: Callable[[str], None] = lambda _: None
    on_success: Callable[[], None] = lambda: None

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> list[Outcome]:
        """Handle and publish until it succeeds; TransientError is retried, never skipped."""
        partitions: dict[tuple[str, int], list[Envelope]] = {}
        for r in records:
            partitions.setdefault((r.topic, r.partition), []).append(
                Envelope(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
            )
        attempt = 0
        while True:
            try:
                limits = await self.limits()
                outcomes = await _per_partition(partitions.values(), self.store, limits)
                await self.publisher.publish(outcomes)
            except TransientError as exc:
                attempt += 1
                stage = "publish" if exc.reason.startswith("kafka") else "database"
                metrics.RETRIES.labels(stage=stage).inc()
                self.on_transient(stage)
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
                self.on_success()
                return outcomes


async def _per_partition(groups: Any, store: CaptureStore, limits: Limits) -> list[Outcome]:
    """Partitions concurrently, each in order; the first failure cancels the rest."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(handle_capture_batch(envs, store=store, limits=limits))
                for envs in groups
            ]
    except* TransientError as group:
        raise group.exceptions[0] from None
    return [o for t in tasks for o in t.result()]


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


def record_lag(consumer: Any, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
    last: dict[tuple[str, int], int] = {}
    for r in records:
        last[(r.topic, r.partition)] = r.offset
    for (topic, partition), offset in last.items():
        highwater = consumer.highwater(TopicPartition(topic, partition))
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(
                max(0, highwater - offset - 1)
            )


def observe_batch(size: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    metrics.BATCH_SECONDS.observe(elapsed)
    metrics.BATCH_SIZE.observe(size)
    if size:
        metrics.HANDLER_SECONDS.observe(elapsed / size)
