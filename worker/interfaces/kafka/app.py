"""The FastStream application: wiring in one place (the lifespan), one batch subscriber.

Ack policy is MANUAL: an offset is committed only after the database commit
and Kafka's acknowledgement of every result and dead-letter record of the
batch. FastStream's default (ACK_FIRST) would be at-most-once.

The subscriber only deals out what it fetched: each partition's records are
queued for that partition's lane (`PartitionLanes`), which handles them in
order and publishes the results; the offset is then committed in the
background (`OffsetCommitter`). Partitions never wait for each other, so the
database works on all of them at once instead of waiting for the slowest of a
batch, and a partition's next records are fetched while its lane works.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalStateError
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from faststream.specification import AsyncAPI

from contracts import CaptureArtifactCommand, CaptureResult
from worker import __version__
from worker.application.capture import BatchProcessor, Limits
from worker.application.coalescing import CoalescingStore
from worker.application.ports import CaptureStore
from worker.application.retry import Backoff
from worker.core.config import Settings
from worker.core.config_cache import SystemConfigCache
from worker.core.logging import get_logger
from worker.domain.errors import CaptureError, ConfigurationError
from worker.infrastructure.db import create_pool
from worker.infrastructure.kafka_client import connection_options, producer_options
from worker.infrastructure.repository import ArtifactRepository
from worker.infrastructure.result_publisher import OutcomePublisher
from worker.infrastructure.roles import refuse_superuser
from worker.infrastructure.topics import ensure_topics
from worker.interfaces.http import Health
from worker.interfaces.kafka.consumer import OffsetCommitter, PartitionHold, PartitionLanes
from worker.interfaces.kafka.runner import PartitionRunner
from worker.interfaces.kafka.security import broker_security
from worker.interfaces.kafka.skipped import SkippedOffsets

log = get_logger(__name__)

# Database batches a partition's fetch holds. Four of 100 commands each (and a queue of four)
# let a 200,000-command backlog keep ~10,000 records in memory (peak RSS 171-197 MiB against
# 130-136 with 20,000 waiting); two kept the peak at 123-132 MiB, as fast. One of 200
# (CAPTURE_BATCH_SIZE's default since) holds as many bytes in fewer calls.
BATCHES_IN_MEMORY = 1
# Database batches a lane's queue holds before its partition pauses. At one, a partition paused
# whenever a second fetch came while its lane was busy: a paused partition is left out of the
# fetch then sent, and once resumed it waited for that fetch (held up to its max wait when
# the others had nothing) before its own; and its lane took one batch at a time, so it never
# validated a chunk while the database worked on the one before. Two: 20,000-command drains
# 13,766-14,446/s against 12,143-13,909 (six alternating pairs), peak RSS the same (105-112 MiB;
# 124-135 with 60,000 and 200,000 waiting, against 120-134).
QUEUED_BATCHES = 2

StoreFactory = Callable[[Settings], Awaitable[tuple[CaptureStore, Callable[[], Awaitable[None]]]]]


async def postgres_store(settings: Settings) -> tuple[CaptureStore, Callable[[], Awaitable[None]]]:
    """The real store: an asyncpg pool behind ArtifactRepository, and how to close it."""
    pool = await create_pool(
        settings.database_url.get_secret_value(),
        max_size=settings.db_pool_size,
        lock_timeout_ms=settings.db_lock_timeout_ms,
        transaction_pooler=settings.db_pooler == "transaction",
    )
    try:
        async with pool.acquire() as conn:
            await refuse_superuser(conn, allowed=settings.allow_superuser)
    except BaseException:
        await pool.close()
        raise
    repository = ArtifactRepository(pool)
    try:
        await repository.warm_up(settings.warm_connections, embedding_dim=settings.embedding_dim)
    except CaptureError as exc:
        # Only slower first calls: not a reason to stay down.
        log.warning("could not warm the database connections", error=str(exc))
    return repository, pool.close


@dataclass
class Worker:
    """Everything the running worker holds; built by `build_worker`, filled by the lifespan."""

    settings: Settings
    app: FastStream
    broker: KafkaBroker
    health: Health
    runner: PartitionRunner | None = None
    exit_code: int = 0
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def _safe_parser(
    records: tuple[ConsumerRecord[Any, Any], ...],
    original: Callable[[tuple[ConsumerRecord[Any, Any], ...]], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    # FastStream's parser decodes every header as UTF-8; a poison header would
    # raise before our handler could dead-letter it. Parse header-less copies
    # and hand the handler the untouched originals. Of a batch it only needs the
    # first and last record (the message id); copying every record cost more than
    # the rest of FastStream's work per batch.
    ends = records if len(records) <= 2 else (records[0], records[-1])
    message = await original(tuple(dataclasses.replace(r, headers=()) for r in ends))
    message.raw_message = records
    return message


async def _no_decode(message: StreamMessage[Any], original: Any) -> list[Any]:
    # Bytes are decoded and validated by the application handler, which knows
    # how to classify what does not decode; FastStream gets an empty body.
    return []


class StartupAborted(CaptureError):
    """SIGTERM/SIGINT arrived while start-up was still waiting for a dependency."""


class WorkerApp(FastStream):
    """FastStream whose exit request also reaches the start-up waits.

    FastStream's signal handler only sets a flag that it reads once the lifespan has started;
    a worker still waiting for its dependencies (Kafka refusing its credentials, a database
    that is not up) ignored SIGTERM and had to be killed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exit_requested = asyncio.Event()

    def exit(self) -> None:
        super().exit()
        self.exit_requested.set()


async def _retry(
    what: str,
    attempt_fn: Callable[[], Awaitable[Any]],
    backoff: Backoff,
    *,
    health: Health,
    stop: asyncio.Event,
) -> Any:
    """Start-up waits for a dependency rather than crash-looping; /readyz says which and why."""
    attempt = 0
    while True:
        attempt_task = asyncio.ensure_future(attempt_fn())
        stop_task = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({attempt_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
        if not attempt_task.done():  # asked to stop while connecting
            attempt_task.cancel()
            with contextlib.suppress(BaseException):
                await attempt_task
            raise StartupAborted(f"stopped while connecting to {what}")
        try:
            result = attempt_task.result()
        except ConfigurationError:  # waiting cannot fix it: say so and stop
            raise
        except Exception as exc:  # any failure: wait and try again
            attempt += 1
            delay = backoff.delay(attempt)
            health.up[what] = False
            health.errors[what] = repr(exc)
            log.warning(
                "waiting for dependency",
                dependency=what,
                error=repr(exc),
                retry_in_s=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise StartupAborted(f"stopped while waiting for {what}") from exc
        else:
            health.up[what] = True
            health.errors.pop(what, None)
            return result


def build_worker(settings: Settings, *, store_factory: StoreFactory = postgres_store) -> Worker:
    backoff = Backoff(
        initial_s=settings.retry_initial_s,
        max_s=settings.retry_max_s,
        max_attempts=settings.retry_max_attempts,
    )
    health = Health()
    hold = PartitionHold()
    committer = OffsetCommitter(backoff, interval_s=settings.commit_interval_ms / 1000)
    stopping = asyncio.Event()

    async def connect() -> tuple[CaptureStore, AIOKafkaProducer, AIOKafkaAdminClient]:
        stop = app.exit_requested

        async def wait_for(what: str, attempt_fn: Callable[[], Awaitable[Any]]) -> Any:
            return await _retry(what, attempt_fn, backoff, health=health, stop=stop)

        store, close_store = await wait_for("postgresql", lambda: store_factory(settings))
        worker._closers.append(close_store)
        # Closers go in before the first attempt: a client whose start failed holds
        # resources too, and start-up may end there.
        producer = AIOKafkaProducer(**producer_options(settings))
        worker._closers.append(producer.stop)
        await wait_for("kafka", producer.start)
        admin = AIOKafkaAdminClient(**connection_options(settings))
        worker._closers.append(admin.close)
        await wait_for("kafka", admin.start)
        created = await wait_for(
            "kafka",
            lambda: ensure_topics(
                admin,
                [settings.commands_topic, settings.results_topic, settings.dlq_topic],
                partitions=settings.topic_partitions,
                max_message_bytes=settings.record_room_bytes,
            ),
        )
        if created:
            log.info("created topics", topics=created, partitions=settings.topic_partitions)
        return store, producer, admin

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            store, producer, admin = await connect()
        except (StartupAborted, ConfigurationError):
            for close in reversed(worker._closers):  # what did connect, in reverse order
                with contextlib.suppress(Exception):
                    await close()
            raise

        config = SystemConfigCache(store.system_config, ttl_s=settings.config_ttl_s)

        def db_batch_size(batch: Any) -> int:
            return int(batch) if isinstance(batch, int | float) else settings.batch_size

        async def limits() -> Limits:
            batch = await config.get("worker.db_batch_size", settings.batch_size)
            return Limits(
                embedding_dim=settings.embedding_dim,
                max_message_bytes=settings.max_message_bytes,
                db_batch_size=db_batch_size(batch),
            )

        if settings.db_max_calls:
            # A shared call holds no more commands than a lane's own may (the size read last).
            store = CoalescingStore(
                store,
                max_calls=settings.db_max_calls,
                max_wait=settings.db_max_wait_ms / 1000,
                max_commands=lambda: db_batch_size(
                    config.peek("worker.db_batch_size", settings.batch_size)
                ),
            )

        async def probe_db() -> None:
            await store.system_config()

        async def probe_kafka() -> None:
            await admin.describe_cluster()

        health.probes.update(postgresql=probe_db, kafka=probe_kafka)
        await health.check_once()
        prober = asyncio.create_task(health.run())
        processor = BatchProcessor(
            store=store,
            publisher=OutcomePublisher(
                producer, results_topic=settings.results_topic, dlq_topic=settings.dlq_topic
            ),
            limits=limits,
            backoff=backoff,
            on_transient=lambda _stage: health.up.__setitem__(_stage_dependency(_stage), False),
        )
        worker.runner = PartitionRunner(
            processor,
            hold=hold,
            committer=committer,
            backoff=backoff,
            on_give_up=give_up,
            internal_error_attempts=settings.internal_error_attempts,
            stop_on_internal_error=settings.on_internal_error == "stop",
            on_stall=health.partition_stalled,
            stopping=stopping,
        )
        try:
            yield
        finally:
            health.consuming = False
            prober.cancel()
            for close in reversed(worker._closers):
                try:
                    await close()
                except Exception as exc:  # closing is best effort; the process is ending
                    log.warning("error while closing", error=repr(exc))

    broker = KafkaBroker(
        settings.kafka_bootstrap_list,
        security=broker_security(settings),
        graceful_timeout=settings.shutdown_timeout_s,
        client_id="capture-worker",
        logger=None,
        # FastDepends resolved the handler's `KafkaMessage` parameter in a thread of the pool
        # for every fetched batch (a Context field is a sync call): a tenth of the worker's CPU
        # at a steady few hundred messages a second. The handler reads the message from the
        # context instead; it validates what it receives itself anyway.
        apply_types=False,
    )

    # Set up once the subscriber exists: it makes its consumer when it starts.
    skipped = SkippedOffsets(
        committer,
        lambda: subscriber.consumer,
        from_earliest=settings.auto_offset_reset == "earliest",
    )
    subscriber = broker.subscriber(
        settings.commands_topic,
        batch=True,
        group_id=settings.consumer_group,
        auto_offset_reset=settings.auto_offset_reset,
        ack_policy=AckPolicy.MANUAL,
        max_records=settings.max_poll_records,
        batch_timeout_ms=settings.batch_linger_ms,
        max_partition_fetch_bytes=partition_fetch_bytes(settings),
        # Lanes resume partitions one at a time; a resumed partition's records wait for the
        # fetch in flight, which the broker holds up to fetch_max_wait_ms when none of the
        # partitions it asks for has new records (Kafka's default, 500 ms, showed in the tail
        # latency). That is every fetch of a partition with a backlog once the others are
        # caught up: at 50 ms its lane waited 8-35 ms for each fetch it processed in 15-30, and
        # drained at half its speed. 20 ms (the default) removes those waits; an idle worker
        # then fetches 50 times a second (worker and broker ~2 % of a core more than at 50 ms).
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_min_bytes=settings.fetch_min_bytes,
        # A producer's transaction that aborts takes its commands back: never ingest them,
        # nor a transaction's commands before it commits. Non-transactional producers' records
        # are read as before (the stable offset is then the high-water mark).
        isolation_level="read_committed",
        # Commits past a transaction's marker when a partition ends with one (skipped.py).
        listener=skipped,
        parser=_safe_parser,
        decoder=_no_decode,
        title="capture-commands",
        description="CaptureArtifactCommand v1, keyed by user_id.",
    )

    @subscriber
    async def on_commands(body: list[CaptureArtifactCommand]) -> None:
        # `body` is for the AsyncAPI schema only (the decoder hands over an empty
        # list); the handler reads the raw records itself.
        message: KafkaMessage = broker.context.get_local("message")
        records: tuple[ConsumerRecord[Any, Any], ...] = message.raw_message
        if not records or worker.runner is None:
            return
        consumer: Any = message.consumer
        groups: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for r in records:
            groups.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        for tp, group in groups.items():
            if stopping.is_set():
                # Not handled: the next owner takes them from the last commit.
                with contextlib.suppress(IllegalStateError):
                    consumer.pause(tp)
                continue
            lanes.submit(consumer, tp, group)

    def give_up() -> None:
        worker.exit_code = 3
        app.exit()

    async def handle_partition(
        consumer: Any, tp: TopicPartition, group: list[ConsumerRecord[Any, Any]]
    ) -> int | None:
        assert worker.runner is not None  # lanes get records only once the lifespan set it
        return await worker.runner(consumer, tp, group)

    lanes = PartitionLanes(handle_partition, max_queued=QUEUED_BATCHES * settings.batch_size)

    # Documentation only (AsyncAPI): the worker writes with its own producer.
    broker.publisher(
        settings.results_topic,
        title="capture-results",
        description="CaptureResult v1, one per processed command, keyed by user_id.",
        schema=CaptureResult,
    )
    broker.publisher(
        settings.dlq_topic,
        title="capture-dlq",
        description="Original key, value and headers of a refused command, plus capture.* headers.",
    )

    app = WorkerApp(
        broker,
        lifespan=lifespan,
        logger=None,
        specification=AsyncAPI(
            title="capture-worker",
            version=__version__,
            description="Kafka commands in, one atomic PostgreSQL call each, result events out.",
        ),
    )

    @app.after_startup
    async def _consuming() -> None:
        health.consuming = True
        await health.check_once()
        log.info(
            "worker consuming",
            topic=settings.commands_topic,
            group=settings.consumer_group,
            results=settings.results_topic,
            dlq=settings.dlq_topic,
        )

    @app.on_shutdown
    async def _stopping() -> None:
        health.consuming = False
        log.info("worker stopping: finishing in-flight batch, committing, leaving the group")
        # Before the broker stops the consumer: the lanes still need it to commit.
        stopping.set()
        deadline = time.monotonic() + settings.shutdown_timeout_s
        await lanes.drain(settings.shutdown_timeout_s)
        if worker.runner is not None:  # the last records' results, still being acknowledged
            await worker.runner.delivered(max(0.0, deadline - time.monotonic()))
        await skipped.settle(deadline - time.monotonic())
        await committer.close()

    worker = Worker(settings=settings, app=app, broker=broker, health=health)
    return worker


def partition_fetch_bytes(settings: Settings) -> int:
    """How much one fetch takes from a partition.

    A database batch's worth (BATCHES_IN_MEMORY): a partition's fetch, publish and commit are
    paid once per ingest call or so; with its lane's queue pausing it at QUEUED_BATCHES, what
    waits in memory stays bounded whatever the backlog. A record larger than this still comes,
    alone (Kafka returns the first record batch whatever its size, KIP-74), so an oversize
    poison message still reaches the DLQ.
    """
    if settings.fetch_partition_bytes is not None:
        return settings.fetch_partition_bytes
    # A command is ~11 bytes per embedding number plus ~400 of other fields; round up.
    per_command = 12 * settings.embedding_dim + 512
    return max(64 * 1024, BATCHES_IN_MEMORY * settings.batch_size * per_command)


def _stage_dependency(stage: str) -> str:
    return "kafka" if stage in ("publish", "commit") else "postgresql"
