"""`capture-worker bench`: the worker's throughput and latency against the database's ceiling.

One run, on fresh databases (clones of a template migrated for this run) and fresh topics, all
dropped at the end, with one pre-generated command stream of N commands:

  b_sql    the commands straight into PostgreSQL through asyncpg, batched and concurrent as the
           worker does it: split by Kafka's key -> partition hash into P streams, each calling
           `ingest_typed` with chunks of B (decoded, and the connections warmed as the worker
           warms its own, before the clock starts). The ceiling: no Kafka, no Python per
           message.
  b_kafka  the worker's own consumer path (FastStream batch subscriber, BatchProcessor, decode and
           validate, results published with acks=all, offset commits), in this process, with an
           in-memory store that answers with the results b_sql got: Kafka + Python, no database.
  e2e      the real worker process (`capture-worker run`) on the pre-published stream, timed from
           its /readyz turning 200 (connections warmed, subscriber started) to the time Kafka
           stored the last result; its peak RSS is sampled meanwhile (the whole stream is
           waiting when it starts).
  latency  the same worker, now idle, fed at half the e2e rate (or --latency-rate) for a
           while; a command's latency is from its sending (its record's CreateTime, stamped
           when the bench handed it to its producer) to its result's storing (the results
           topics keep LogAppendTime, so the worker's publishing counts too). Its p99 also
           second by second: a steady state, or a few seconds' stall? With --latency-rate
           repeated, a phase at each rate in turn (each its own commands): latency against
           load, in one run.
  naive    what one writes by hand: consume one record, `ingest_with_signal`, produce the result
           and wait for acks=all, commit; on the first `--naive-messages` records, to bound time.
  peer     with `--peer debezium-jdbc`: the Debezium JDBC sink on Kafka Connect, fed the same
           commands as Connect JSON, upserting one row per command into a table of the
           command's shape (same HNSW index or none), with as many tasks as the worker has
           partitions and with one; warmed up first (devkit/peer/debezium.py says how it is timed).

b_kafka and e2e are timed the same way (start of consumption to the last result's timestamp),
so their numbers compare. The e2e database must end in the state b_sql produced (same digest).
Every timed phase starts after a sync(2), so none pays for the disk writes of the one before.
With `--rounds R`, b_sql and e2e are measured R times, each e2e right after its own b_sql on
fresh databases; the report gives medians, e2e/b_sql the median of the R paired ratios (and
e2e/peer, the peer running between its round's b_sql and e2e).

With `--database-cores N` the local stack's PostgreSQL gets N cores of its own and everything
else (the worker, Kafka, the peer, the bench) the rest, for the whole run (devkit/affinity.py):
the database as if on its own machine, so that the pipeline's CPU no longer slows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import numpy as np
import psutil  # type: ignore[import-untyped]
import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from contracts import CaptureArtifactCommand
from devkit import affinity, cpu, stack
from devkit.peer import debezium as peer
from devkit.ports import free_port
from devkit.records import Command, commands_of
from devkit.stack.process import StackError
from devkit.synthetic import generate_lines
from devkit.worker_process import WorkerExited, WorkerGroup, WorkerProcess, metric_sum
from worker.application.capture import ingest_command
from worker.application.ports import IngestCommand, ResultObject
from worker.core.config import Settings, get_settings
from worker.core.logging import configure_logging
from worker.domain.errors import CaptureError, PermanentError
from worker.infrastructure.db import create_pool, dsn_with_database
from worker.infrastructure.kafka_client import (
    KeyHashPartitioner,
    PartitionBatches,
    connection_options,
    producer_options,
)
from worker.infrastructure.migrations import apply_migrations
from worker.infrastructure.repository import ArtifactRepository
from worker.infrastructure.topics import ensure_topics
from worker.interfaces.cli.output import console, emit_json, err_console, fail
from worker.interfaces.cli.publish import TokenBucket

STALL_TIMEOUT_S = 120.0  # no new result for this long: the phase has failed
WARM_BROKER_S = 300.0  # a Kafka JVM younger than this at the start gets a note in the report


class BenchError(Exception):
    """A phase could not finish; the message says which and why."""


class BenchFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


class Peer(StrEnum):
    NONE = "none"
    DEBEZIUM_JDBC = "debezium-jdbc"


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    messages: int = 20_000
    users: int = 50
    dim: int = 384
    batch: int = 200
    index: bool = True
    seed: int = 1
    naive_messages: int = 3000
    latency_seconds: float = 12.0
    #: A latency phase at each rate, in order; None means half the e2e rate.
    latency_rates: tuple[float | None, ...] = (None,)
    rounds: int = 1
    peer: Peer = Peer.NONE
    #: Connect's tasks in each peer measurement; empty means (partitions, 1).
    peer_tasks: tuple[int, ...] = ()
    #: Cores of PostgreSQL's own for the run, from its first phase (devkit/affinity.py); 0: shared.
    database_cores: int = 0
    #: Worker processes in e2e and the latency phases, one consumer group.
    workers: int = 1
    #: Connect JVMs of the peer: 1 standalone, more a distributed cluster.
    peer_workers: int = 1


def split_by_partition(commands: Sequence[Command], partitions: int) -> list[list[Command]]:
    """The producer's key -> partition mapping (murmur2, as Kafka's default partitioner)."""
    streams: list[list[Command]] = [[] for _ in range(partitions)]
    for command in commands:
        streams[(murmur2(command.key) & 0x7FFFFFFF) % partitions].append(command)
    return streams


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(max(values)), 1),
    }


def typed_commands(commands: Sequence[Command], dim: int) -> list[IngestCommand]:
    """What the worker sends for these commands, decoded and validated as it does."""
    context = {"embedding_dim": dim}
    return [
        ingest_command(CaptureArtifactCommand.model_validate_json(c.text, context=context))
        for c in commands
    ]


class _RecordedStore:
    """A CaptureStore that answers from b_sql's results: the worker's path without a database."""

    def __init__(self, results: Mapping[str, ResultObject | PermanentError]) -> None:
        self._results = results

    async def ingest_commands(
        self, commands: Sequence[IngestCommand]
    ) -> list[ResultObject | PermanentError]:
        return [self._results[str(c.command_id)] for c in commands]

    async def record_rejections(self, results: Sequence[ResultObject]) -> list[ResultObject]:
        return list(results)

    async def system_config(self) -> dict[str, Any]:
        return {}


# -- progress ----------------------------------------------------------------------------------


class Phases:
    """One progress line per phase on a terminal (stderr); silent otherwise."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def start(self, description: str, total: float | None = None) -> TaskID:
        return self._progress.add_task(description, total=total)

    def update(self, task: TaskID, completed: float, total: float | None = None) -> None:
        self._progress.update(task, completed=completed, total=total)

    def done(self, task: TaskID, note: str = "") -> None:
        current = self._progress.tasks[task]
        self._progress.update(
            task,
            completed=current.total or current.completed or 1,
            total=current.total or current.completed or 1,
            description=f"{current.description} {note}".rstrip(),
        )
        self._progress.stop_task(task)


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not enabled,
        refresh_per_second=4,  # the bench shares the CPU with what it measures
    )


# -- resources ---------------------------------------------------------------------------------


async def _admin_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Resources:
    """Databases and topics of this run; everything is dropped by `close`."""

    settings: Settings
    admin_dsn: str
    run_id: str
    template: str = ""
    databases: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        return dsn_with_database(self.admin_dsn, database)

    async def make_template(self, *, dim: int, index: bool) -> None:
        self.template = f"cw_bench_{self.run_id}_template"
        await _admin_execute(self.admin_dsn, f'CREATE DATABASE "{self.template}"')
        self.databases.append(self.template)
        await apply_migrations(self.url(self.template), embedding_dim=dim)
        if not index:
            await _admin_execute(self.url(self.template), "SELECT capture.drop_embedding_index()")

    async def clone(self, purpose: str) -> str:
        """A fresh migrated database (a file copy of the template); returns its URL."""
        name = f"cw_bench_{self.run_id}_{purpose}"
        await _admin_execute(self.admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.databases.append(name)
        return self.url(name)

    async def drop(self, url: str) -> None:
        """Drop a clone as soon as its phase is over.

        Its pages leave PostgreSQL's shared buffers with it, and the checkpoint DROP DATABASE
        forces writes out what the phase left dirty: the next phase starts from a clean slate
        instead of paying for the previous one's writes.
        """
        name = next(n for n in self.databases if self.url(n) == url)
        await _admin_execute(self.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.remove(name)

    async def make_topics(self, *suffixes: str, log_append_time: bool = False) -> list[str]:
        """`log_append_time`: each record's timestamp is when the broker stored it, not what
        its producer stamped it with when it was handed to the client."""
        names = [f"cw-bench-{self.run_id}.{s}" for s in suffixes]
        admin = AIOKafkaAdminClient(**connection_options(self.settings))
        await admin.start()
        try:
            await ensure_topics(
                admin,
                names,
                partitions=self.settings.topic_partitions,
                max_message_bytes=self.settings.record_room_bytes,
                configs={"message.timestamp.type": "LogAppendTime"} if log_append_time else None,
            )
        finally:
            await admin.close()
        self.topics.extend(names)
        return names

    async def close(self) -> None:
        for name in reversed(self.databases):
            with contextlib.suppress(Exception):  # best effort: report, don't mask the result
                await _admin_execute(
                    self.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                )
        if self.topics:
            admin = AIOKafkaAdminClient(**connection_options(self.settings))
            with contextlib.suppress(Exception):
                await admin.start()
                try:
                    await admin.delete_topics(self.topics)
                finally:
                    await admin.close()


class TopicReader:
    """Offsets, timestamps and records of one topic, without a consumer group."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._settings = settings
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=settings.record_room_bytes,
        )
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self._topic)
        if not partitions:
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self._topic) or set()
        self._tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._tps)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        end: dict[TopicPartition, int] = await self._consumer.end_offsets(self._tps)
        return end

    async def count(self) -> int:
        return sum((await self.end_offsets()).values())

    async def read(self, start: Mapping[TopicPartition, int]) -> list[Any]:
        """Every record from `start` (default 0) up to the end offsets taken now."""
        end = await self.end_offsets()
        remaining = {tp for tp in self._tps if end[tp] > start.get(tp, 0)}
        for tp in remaining:
            self._consumer.seek(tp, start.get(tp, 0))
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            fetched = await self._consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, records in fetched.items():
                out.extend(r for r in records if r.offset < end[tp])
                if records and records[-1].offset >= end[tp] - 1:
                    remaining.discard(tp)
        if remaining:
            raise BenchError(f"could not read {self._topic} to its end")
        return out

    async def last_timestamp(self) -> int:
        """The largest timestamp (ms) among the last record of each partition."""
        end = await self.end_offsets()
        start = {tp: offset - 1 for tp, offset in end.items() if offset > 0}
        records = await self.read(start)
        return max((r.timestamp for r in records), default=0)


async def _wait_for_count(
    reader: TopicReader,
    target: int,
    *,
    phases: Phases,
    task: TaskID,
    base: int = 0,
    alive: Callable[[], None] = lambda: None,
) -> None:
    """Poll the topic's end offsets (cheap for the broker and for us) until `target` records."""
    seen, last_change = -1, time.monotonic()
    while True:
        alive()
        count = await reader.count() - base
        phases.update(task, min(count, target), target)
        if count >= target:
            return
        if count != seen:
            seen, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            raise BenchError(f"stalled at {count} of {target} results")
        await asyncio.sleep(0.25)


async def _publish(
    settings: Settings,
    topic: str,
    commands: Sequence[Command],
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] = lambda _: None,
) -> list[int]:
    """Send every command (acks=all); returns each record's timestamp (ms), in order.

    At a `rate`, paced by a token bucket: what the producers of a steady load would send, as
    cheaply as the bench can (_paced). `topic` must keep CreateTime: the timestamps returned
    are the ones the bench stamped the records with.
    """
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    try:
        if rate:
            return await _paced(producer, topic, commands, rate, on_progress)
        return await _send_all(producer, topic, commands, on_progress)
    finally:
        await producer.stop()


async def _send_all(
    producer: AIOKafkaProducer,
    topic: str,
    commands: Sequence[Command],
    on_progress: Callable[[int], None],
) -> list[int]:
    """Send every command as fast as the producer takes them; each record's timestamp (ms)."""
    futures = []
    for index, command in enumerate(commands):
        futures.append(await producer.send(topic, command.text.encode(), key=command.key))
        if index % 500 == 0:
            on_progress(index)
    # Every batch on its way first: one gather over every future queued a callback each on
    # the event loop while the last batch waited in the producer.
    await producer.flush()
    metadata = [await future for future in futures]
    on_progress(len(commands))
    return [int(m.timestamp) for m in metadata]


@asynccontextmanager
async def _held_back(
    settings: Settings,
    topic: str,
    commands: Sequence[Command],
    *,
    group: str,
    members: int,
    on_progress: Callable[[int], None] = lambda _: None,
) -> AsyncIterator[Callable[[], Awaitable[float]]]:
    """Publish `commands` in one transaction left open, and yield what commits it.

    The worker reads committed records only: its processes can start, join their group and
    take their partitions while the stream waits in the log unseen. Started on a stream in
    plain sight, the first process to join would take every partition and drain most of it
    before the group had rebalanced to the others (a member learns of a rebalance at its next
    heartbeat, 3 s). The function yielded waits for the group to be stable with `members`
    members, commits, and returns the time it began to (the start of the drain).
    """
    producer = AIOKafkaProducer(
        **producer_options(settings),
        transactional_id=f"cw-bench-{uuid.uuid4().hex}",
        transaction_timeout_ms=HELD_BACK_TIMEOUT_MS,
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        await _send_all(producer, topic, commands, on_progress)

        async def release() -> float:
            await _wait_for_group(settings, group, members)
            began = time.time()
            await producer.commit_transaction()
            return began

        yield release
    finally:
        await producer.stop()  # a transaction still open is aborted by its timeout


#: How long the bench's held-back stream may stay uncommitted (workers starting, a rebalance).
HELD_BACK_TIMEOUT_MS = 300_000
#: How long a group of workers may take to settle on its members.
GROUP_TIMEOUT_S = 120.0


async def _wait_for_group(settings: Settings, group: str, members: int) -> None:
    """Until `group` is stable with `members` members (each then holds its partitions)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        seen: tuple[str, int] = ("", 0)
        while time.monotonic() < deadline:
            for response in await admin.describe_consumer_groups([group]):
                # DescribeGroups: (error, group, state, protocol type, protocol, members, ...)
                for described in response.groups:
                    seen = (described[2], len(described[5]))
            if seen == ("Stable", members):
                return
            await asyncio.sleep(0.05)
        raise BenchError(
            f"group {group}: {seen[0] or 'unknown'} with {seen[1]} members, "
            f"not stable with {members} in {GROUP_TIMEOUT_S:.0f} s"
        )
    finally:
        await admin.close()


#: How long a paced record waits in the bench for the others of its request (as a linger).
PACED_FLUSH_S = 0.005


async def _paced(
    producer: AIOKafkaProducer,
    topic: str,
    commands: Sequence[Command],
    rate: float,
    on_progress: Callable[[int], None],
) -> list[int]:
    """The commands at `rate`, stamped when their turn comes; those of PACED_FLUSH_S from the
    first go together, as one record batch per partition, all in one produce request.

    The bench shares the machine it measures. With a `send()` per record each partition's
    batch lingered on a timer of its own: at 1,000/s the bench made ~365 produce requests a
    second, and this way ~160 for two thirds of the CPU per record (at 5,000/s ~160 requests
    against 305-330), which Kafka and the bench no longer take from the worker and the
    database (alternated runs: the performance history's night round of 2026-12-03). A
    record's latency starts at its stamp, as before: its wait here (at most PACED_FLUSH_S,
    where the producer's linger was 5 ms) counts in it.
    """
    partitions = sorted(await producer.partitions_for(topic))
    partitioner = KeyHashPartitioner()  # where send() would put each key
    batches = PartitionBatches(producer, topic)
    stamps: list[int] = []
    flush_at = 0.0

    async def sleep(seconds: float) -> None:
        """The bucket's wait for the next record: records due to go meanwhile go on time, not
        with the next record (at 100/s that would be 10 ms late)."""
        end = time.monotonic() + seconds
        if batches and flush_at < end:
            await asyncio.sleep(max(0.0, flush_at - time.monotonic()))
            await batches.send_all()
        await asyncio.sleep(max(0.0, end - time.monotonic()))

    bucket = TokenBucket(rate, sleep=sleep)
    for index, command in enumerate(commands):
        await bucket.take()
        if batches and time.monotonic() >= flush_at:
            await batches.send_all()
        if not batches:
            flush_at = time.monotonic() + PACED_FLUSH_S
        partition = partitioner(command.key, partitions, partitions)
        stamps.append(await batches.append(partition, command.key, command.text.encode()))
        if index % 500 == 0:
            on_progress(index)
    await batches.send_all()
    for future in batches.sent:
        await future  # acknowledged by all in-sync replicas, or the failure raised here
    on_progress(len(commands))
    return stamps


# -- the phases --------------------------------------------------------------------------------


async def settle() -> None:
    """Write the previous phases' dirty pages out before timing the next one.

    Kafka's logs and PostgreSQL's data files reach the disk through the page cache; a phase
    leaves tens of megabytes dirty that the kernel writes back some 30 s later, in one burst.
    A database commit that lands in such a burst waits behind it for its WAL flush (up to
    ~0.5 s on this kind of virtual disk), so without this a phase paid, at random, for the
    I/O of the one before it.
    """
    await asyncio.to_thread(os.sync)


async def bench_sql(
    url: str,
    streams: Sequence[Sequence[IngestCommand]],
    *,
    batch: int,
    phases: Phases,
    label: str = "",
) -> tuple[float, dict[str, ResultObject | PermanentError], str]:
    """P concurrent streams of ingest_typed calls; returns (seconds, results by id, digest)."""
    total = sum(len(s) for s in streams)
    task = phases.start(f"b_sql    PostgreSQL only{label}", total)
    pool = await create_pool(url, min_size=len(streams), max_size=len(streams))
    results: dict[str, ResultObject | PermanentError] = {}
    done = 0
    try:
        repo = ArtifactRepository(pool)

        async def stream(commands: Sequence[IngestCommand]) -> None:
            nonlocal done
            for start in range(0, len(commands), batch):
                chunk = commands[start : start + batch]
                replies = await repo.ingest_commands(chunk)
                results.update(zip((str(c.command_id) for c in chunk), replies, strict=True))
                done += len(chunk)
                phases.update(task, done)

        # Each connection's first call compiles and plans the ingest; the worker does that
        # before it reports ready (ArtifactRepository.warm_up), so both are timed warm.
        dim = next((len(c.embedding) // 4 for s in streams for c in s), 0)
        await repo.warm_up(len(streams), embedding_dim=dim)
        started = time.perf_counter()
        await asyncio.gather(*(stream(s) for s in streams))
        seconds = time.perf_counter() - started
        refused = [r for r in results.values() if isinstance(r, PermanentError)]
        if refused:
            raise BenchError(f"b_sql: {len(refused)} commands refused, e.g. {refused[0]}")
        digest = await repo.state_digest()
    finally:
        await pool.close()
    phases.done(task, f"{total / seconds:,.0f}/s")
    return seconds, results, digest


async def bench_kafka(
    settings: Settings,
    results: Mapping[str, ResultObject | PermanentError],
    *,
    total: int,
    phases: Phases,
) -> float:
    """The worker's consumer path in this process, with the recorded store; returns msgs/s."""
    # Imported here: FastStream is slow to import, and only this phase needs it.
    from worker.interfaces.kafka.app import build_worker  # noqa: PLC0415

    store = _RecordedStore(results)

    async def recorded(_: Settings) -> tuple[_RecordedStore, Callable[[], Awaitable[None]]]:
        async def close() -> None:
            return None

        return store, close

    task = phases.start("b_kafka  Kafka + worker path, no database", total)
    reader = TopicReader(settings, settings.results_topic)
    await reader.start()
    worker = build_worker(settings, store_factory=recorded)
    app = worker.app
    try:
        # What `FastStream.run` does, minus its signal handlers (they would outlive the phase).
        async with app.lifespan_context():
            await app.start()
            try:
                started = time.time()
                await _wait_for_count(reader, total, phases=phases, task=task)
            finally:
                await app.stop()
        last = await reader.last_timestamp()
    finally:
        await reader.stop()
    rate = total / max(last / 1000 - started, 1e-3)
    phases.done(task, f"{rate:,.0f}/s")
    return rate


async def bench_e2e(
    worker: WorkerGroup,
    reader: TopicReader,
    *,
    total: int,
    phases: Phases,
    postmaster: int | None,
    label: str = "",
    release: Callable[[], Awaitable[float]] | None = None,
) -> tuple[float, dict[str, float]]:
    """The worker's rate on the waiting stream, and the CPU each part spent per command.

    With `release`, the stream is held back until it is called (it returns when it let the
    stream go): several processes first form their group, then drain.
    """
    n = len(worker.processes)
    what = "the worker process" if n == 1 else f"{n} worker processes"
    task = phases.start(f"e2e      {what}{label}", total)
    worker.start()
    watcher = asyncio.ensure_future(worker.watch_rss())
    try:
        started = await worker.wait_ready_async()
        meter = cpu.CpuMeter(worker.pids, postmaster, cpu.kafka_pids(), own=True)
        before = meter.sample()
        if release is not None:
            started = await release()
        await _wait_for_count(reader, total, phases=phases, task=task, alive=worker.alive)
        after = meter.sample()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    # The drain ends with its last result, not with the poll that saw it (up to 0.25 s later,
    # a sixth of a 1.5 s drain): the cores' busy share is of the drain's own time.
    drain_s = max(await reader.last_timestamp() / 1000 - started, 1e-3)
    rate = total / drain_s
    phases.done(task, f"{rate:,.0f}/s")
    return rate, cpu.CpuMeter.per_command(before, after, total, drain_s)


async def bench_latency(
    settings: Settings,
    worker: WorkerGroup,
    reader: TopicReader,
    commands: Sequence[Command],
    *,
    rate: float,
    phases: Phases,
    postmaster: int | None,
) -> dict[str, Any]:
    """Publish at `rate` to the running, idle worker; latency from the records' timestamps.

    Also what the phase cost: CPU per command of each part (the bench's own publisher and
    reader too, which share the machine), and the worker's mean batch: a steady rate gives it
    smaller batches than a waiting stream, and each command costs more in them.
    """
    task = phases.start(f"latency  {rate:,.0f}/s steady", len(commands))
    base_offsets = await reader.end_offsets()
    base = sum(base_offsets.values())
    meter = cpu.CpuMeter(worker.pids, postmaster, cpu.kafka_pids(), own=True)
    before_counts = _histograms(worker.metrics())
    before = meter.sample()
    started = time.time()
    sent = await _publish(
        settings,
        settings.commands_topic,
        commands,
        rate=rate,
        on_progress=lambda n: phases.update(task, n),
    )
    await _wait_for_count(
        reader, len(commands), phases=phases, task=task, base=base, alive=worker.alive
    )
    after = meter.sample()
    means = _means_between(before_counts, _histograms(worker.metrics()))
    # A producer retry in the stream repeats a command_id: pair the n-th sending with the
    # n-th result of that id.
    sent_at: dict[str, list[int]] = defaultdict(list)
    for command, timestamp in zip(commands, sent, strict=True):
        sent_at[command.command_id].append(timestamp)
    result_at: dict[str, list[int]] = defaultdict(list)
    for record in await reader.read(base_offsets):
        result_at[json.loads(record.value)["command_id"]].append(record.timestamp)
    pairs = [
        (s, float(r - s))
        for command_id, times in sent_at.items()
        for s, r in zip(sorted(times), sorted(result_at[command_id]), strict=False)
    ]
    if len(pairs) != len(commands):
        raise BenchError(f"latency: {len(pairs)} results matched of {len(commands)}")
    # As in e2e: the phase ends with its last result, not with the poll that saw it.
    last = max(timestamp for times in result_at.values() for timestamp in times)
    used = cpu.CpuMeter.per_command(before, after, len(commands), max(last / 1000 - started, 1e-3))
    stats = percentiles([latency for _, latency in pairs])
    phases.done(task, f"p99 {stats['p99']:.0f} ms")
    return {
        **stats,
        "rate_per_s": round(rate, 1),
        "messages": len(commands),
        "batch_mean": round(means["batch"] or 0.0, 1),
        # Where the time goes: a batch's oldest command waited this long, on average, from
        # its sending to its lane taking it, and to its results' acknowledgement.
        "batch_oldest_age_ms": {
            stage: round(mean * 1000, 1)
            for stage in ("taken", "delivered")
            if (mean := means[stage]) is not None
        },
        # With CAPTURE_DB_MAX_CALLS: the lanes' chunks an ingest call carried, on average.
        "chunks_per_db_call": None if means["chunks"] is None else round(means["chunks"], 2),
        "p99_by_second": p99_by_second(pairs),
        "cpu": used,
    }


def p99_by_second(pairs: Sequence[tuple[int, float]]) -> list[float]:
    """The p99 of the commands sent in each second of the phase, in order.

    A run's p99 can be the whole phase's steady state or a few seconds' stall; this tells
    which. (send time in ms, latency in ms) pairs; a second with no command is left out.
    """
    if not pairs:
        return []
    start = min(sent for sent, _ in pairs)
    seconds: dict[int, list[float]] = defaultdict(list)
    for sent, latency in pairs:
        seconds[(sent - start) // 1000].append(latency)
    return [percentiles(seconds[k])["p99"] for k in sorted(seconds)]


#: The worker's histograms a latency phase reads: (name, label text) by what they count.
_HISTOGRAMS = {
    "batch": ("capture_batch_size", ""),  # records per partition batch
    "taken": ("capture_record_age_seconds", 'stage="taken"'),  # a batch's oldest, in s
    "delivered": ("capture_record_age_seconds", 'stage="delivered"'),
    "chunks": ("capture_db_chunks_per_call", ""),  # only with CAPTURE_DB_MAX_CALLS
}


def _histograms(scrape: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each of _HISTOGRAMS so far, from one scrape of the worker's /metrics."""
    return {
        key: (
            metric_sum(scrape, f"{name}_sum", labels),
            metric_sum(scrape, f"{name}_count", labels),
        )
        for key, (name, labels) in _HISTOGRAMS.items()
    }


def _means_between(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float | None]:
    """The mean of each histogram's observations between two samples; None where none."""
    means: dict[str, float | None] = {}
    for key, (total, count) in after.items():
        observed = count - before[key][1]
        means[key] = (total - before[key][0]) / observed if observed > 0 else None
    return means


async def bench_naive(
    settings: Settings,
    url: str,
    *,
    commands_topic: str,
    results_topic: str,
    total: int,
    phases: Phases,
) -> float:
    """One record at a time: consume, ingest_with_signal, produce and wait, commit."""
    task = phases.start("naive    one at a time", total)
    consumer = AIOKafkaConsumer(
        commands_topic,
        **connection_options(settings),
        group_id=f"cw-bench-naive-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    # acks=all and idempotent like the worker, but aiokafka's default linger (0): waiting for
    # each send would otherwise add the worker's 5 ms linger to every message.
    producer = AIOKafkaProducer(**{**producer_options(settings), "linger_ms": 0})
    conn = await asyncpg.connect(url)
    await consumer.start()
    await producer.start()
    try:
        record = await consumer.getone()
        started = time.perf_counter()
        for n in range(total):
            if n:
                record = await consumer.getone()
            # Without a jsonb codec asyncpg sends and returns jsonb as text: no re-encoding.
            result = await conn.fetchval(
                "SELECT capture.ingest_with_signal($1::jsonb)", record.value.decode()
            )
            await producer.send_and_wait(results_topic, result.encode(), key=record.key)
            tp = TopicPartition(record.topic, record.partition)
            await consumer.commit({tp: record.offset + 1})
            if n % 50 == 0:
                phases.update(task, n)
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()
        await conn.close()
    rate = total / seconds
    phases.done(task, f"{rate:,.0f}/s")
    return rate


async def bench_peer(
    settings: Settings,
    resources: Resources,
    workload: PeerWorkload,
    *,
    tasks: int,
    options: BenchOptions,
    work_dir: Path,
    phases: Phases,
    label: str = "",
) -> peer.PeerRun:
    """One measurement of the Debezium JDBC sink, on its own database and topics."""
    jvms = "" if options.peer_workers == 1 else f" on {options.peer_workers} Connect JVMs"
    task = phases.start(f"peer     Debezium JDBC sink, {tasks} task(s){jvms}{label}")
    tag = f"peer{uuid.uuid4().hex[:6]}"
    url = await resources.clone(tag)
    topics = await resources.make_topics(f"{tag}-warmup", f"{tag}-commands")
    # A distributed cluster makes its own topics: dropped with the bench's at its end.
    cluster_prefix = f"cw-bench-{resources.run_id}.{tag}-connect"
    if options.peer_workers > 1:
        resources.topics.extend(peer.cluster_topics(cluster_prefix).values())
    try:
        run = await peer.measure(
            settings,
            libs=workload.libs,
            database_url=url,
            topics=(topics[0], topics[1]),
            warmup=workload.warmup,
            commands=workload.commands,
            tasks=tasks,
            dim=options.dim,
            index=options.index,
            fetch_bytes=workload.fetch_bytes,
            work_dir=work_dir / tag,
            publish=lambda topic, records: _publish(settings, topic, records),
            before_timing=settle,
            on_progress=lambda done, total: phases.update(task, done, total),
            workers=options.peer_workers,
            cluster_prefix=cluster_prefix,
        )
    except peer.PeerError as exc:
        raise BenchError(f"peer: {exc}") from exc
    finally:
        await resources.drop(url)
    phases.done(task, f"{run.per_s:,.0f}/s")
    return run


@dataclass(frozen=True, slots=True)
class PeerWorkload:
    libs: Path
    warmup: list[Command]
    commands: list[Command]
    fetch_bytes: int


def _peer_workload(
    commands: Sequence[Command], options: BenchOptions, fetch_bytes: int
) -> PeerWorkload:
    warmup = commands_of(
        list(
            generate_lines(
                options.messages,  # as many as the measured stream, of another seed
                users=options.users,
                seed=options.seed + 2,
                dim=options.dim,
            )
        )
    )
    return PeerWorkload(
        libs=peer.ensure_libs(),
        warmup=peer.encode(warmup, options.dim),
        commands=peer.encode(commands, options.dim),
        # A poll carries a whole sink batch of these records, schema included.
        fetch_bytes=max(fetch_bytes, 8 * 2**20),
    )


# -- the whole run -----------------------------------------------------------------------------


def _kafka_version(settings: Settings) -> str:
    # The protocol does not tell a broker's version; the local stack records what it runs.
    with contextlib.suppress(Exception):  # informative only
        cfg = stack.resolve_config()
        if settings.kafka_bootstrap_servers == cfg.kafka.bootstrap:
            return f"Kafka {cfg.kafka.version} (local stack)"
    return "unknown (not the local stack)"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def _machine(settings: Settings, url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        server = await conn.fetchval("SHOW server_version")
        pgvector = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "postgresql": str(server),
        "pgvector": str(pgvector),
        "synchronous_commit": str(sync_commit),
        "kafka": _kafka_version(settings),
        # Others' work on the machine moves every number: the load at the start says how much.
        "load_1m": round(os.getloadavg()[0], 2),
        # A broker started minutes ago still compiles: measured here, its CPU per command in
        # the latency phase was more than twice a warm one's.
        "kafka_uptime_s": cpu.kafka_uptime_s(),
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


@asynccontextmanager
async def _resources(settings: Settings) -> AsyncIterator[Resources]:
    resources = Resources(
        settings=settings,
        admin_dsn=settings.admin_url(),
        run_id=uuid.uuid4().hex[:10],
    )
    try:
        yield resources
    finally:
        await resources.close()


@dataclass(frozen=True, slots=True)
class Round:
    b_sql_per_s: float
    e2e_per_s: float
    same_state: bool
    worker_peak_rss: int
    #: µs of CPU per command during e2e: worker, PostgreSQL, Kafka, machine (see devkit/cpu.py).
    cpu_us: dict[str, float] = field(default_factory=dict)
    #: The peer's rates by its number of tasks, warm and cold (empty without --peer).
    peer_per_s: dict[int, float] = field(default_factory=dict)
    peer_cold_per_s: dict[int, float] = field(default_factory=dict)
    #: With several worker processes, their peaks added up.
    workers_peak_rss: int = 0
    #: The peer's JVMs' peaks added up, by its number of tasks.
    peer_peak_rss: dict[int, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return _ratio(self.e2e_per_s, self.b_sql_per_s)


async def run_bench(
    settings: Settings, options: BenchOptions, *, show_progress: bool
) -> dict[str, Any]:
    # Imported here: FastStream is slow to import, and only the worker phases need it.
    from worker.interfaces.kafka.app import partition_fetch_bytes  # noqa: PLC0415

    began = time.perf_counter()
    partitions = settings.topic_partitions
    fetch_bytes = partition_fetch_bytes(
        settings.model_copy(update={"batch_size": options.batch, "embedding_dim": options.dim})
    )
    naive_total = min(options.messages, options.naive_messages)
    split = None
    if options.database_cores:
        try:
            split = affinity.plan(options.database_cores, os.sched_getaffinity(0))
        except affinity.SplitError as exc:
            raise BenchError(str(exc)) from exc
    async with AsyncExitStack() as stack:
        resources = await stack.enter_async_context(_resources(settings))
        progress = stack.enter_context(_progress(show_progress))
        phases = Phases(progress)

        task = phases.start("setup    databases, topics, commands")
        lines = list(
            generate_lines(
                options.messages, users=options.users, seed=options.seed, dim=options.dim
            )
        )
        commands = commands_of(lines)
        del lines
        streams = [typed_commands(s, options.dim) for s in split_by_partition(commands, partitions)]
        await resources.make_template(dim=options.dim, index=options.index)
        sql_urls = [await resources.clone(f"sql{r}") for r in range(options.rounds)]
        e2e_urls = [await resources.clone(f"e2e{r}") for r in range(options.rounds)]
        naive_url = await resources.clone("naive")
        # A result's timestamp is when Kafka stored it, so that the worker's publishing
        # (its producer's linger, the produce request) counts in the latency and the rates.
        (commands_topic,) = await resources.make_topics("commands")
        kafka_results, kafka_dlq, naive_results = await resources.make_topics(
            "kafka-results", "kafka-dlq", "naive-results", log_append_time=True
        )
        # Created now, long before use: a topic read a moment after its creation answers
        # "not leader" for a while, which aiokafka logs as errors.
        e2e_topics = [
            await resources.make_topics(f"results{r}", f"dlq{r}", log_append_time=True)
            for r in range(options.rounds)
        ]
        # Several worker processes read a stream of their own each round, held back in a
        # transaction until their group has formed (_held_back).
        held_topics = (
            [(await resources.make_topics(f"commands{r}"))[0] for r in range(options.rounds)]
            if options.workers > 1
            else []
        )
        machine = await _machine(settings, sql_urls[0])
        postmaster = await cpu.postmaster_pid(resources.admin_dsn)
        machine["cpu_split"] = split.report() if split else None
        if split:
            if postmaster is None:
                raise BenchError(
                    "--database-cores: PostgreSQL must run on this machine (the local stack)"
                )
            try:
                stack.enter_context(
                    affinity.split_cores(split, postmaster=postmaster, kafka=cpu.kafka_pids())
                )
            except affinity.SplitError as exc:
                raise BenchError(str(exc)) from exc
        peer_tasks = options.peer_tasks or (partitions, 1)
        workload = None
        if options.peer is Peer.DEBEZIUM_JDBC:
            phases.update(task, 0)
            try:
                workload = await asyncio.to_thread(_peer_workload, commands, options, fetch_bytes)
            except StackError as exc:  # no Java or Maven, or Maven could not resolve the jars
                raise BenchError(f"peer: {exc}") from exc
        phases.done(task)

        def label(r: int) -> str:
            return f" (round {r + 1}/{options.rounds})" if options.rounds > 1 else ""

        await settle()
        sql_seconds, recorded, sql_digest = await bench_sql(
            sql_urls[0], streams, batch=options.batch, phases=phases, label=label(0)
        )
        b_sql_first = options.messages / sql_seconds
        await resources.drop(sql_urls[0])

        task = phases.start("publish  the commands", options.messages)
        published = time.perf_counter()
        await _publish(
            settings, commands_topic, commands, on_progress=lambda n: phases.update(task, n)
        )
        publish_rate = options.messages / (time.perf_counter() - published)
        phases.done(task, f"{publish_rate:,.0f}/s")

        worker_settings = settings.model_copy(
            update={
                "commands_topic": commands_topic,
                "batch_size": options.batch,
                "embedding_dim": options.dim,
            }
        )
        await settle()
        b_kafka = await bench_kafka(
            worker_settings.model_copy(
                update={
                    "results_topic": kafka_results,
                    "dlq_topic": kafka_dlq,
                    "consumer_group": f"cw-bench-kafka-{resources.run_id}",
                }
            ),
            recorded,
            total=options.messages,
            phases=phases,
        )
        del recorded

        log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-bench-"))
        rounds: list[Round] = []
        for r in range(options.rounds):
            b_sql = b_sql_first
            if r:
                await settle()
                sql_seconds, _, digest = await bench_sql(
                    sql_urls[r], streams, batch=options.batch, phases=phases, label=label(r)
                )
                if digest != sql_digest:
                    raise BenchError("b_sql: two rounds ended in different database states")
                b_sql = options.messages / sql_seconds
                await resources.drop(sql_urls[r])
            peer_rates: dict[int, float] = {}
            peer_cold: dict[int, float] = {}
            peer_rss: dict[int, int] = {}
            if workload is not None:
                for tasks in peer_tasks:
                    measured = await bench_peer(
                        settings,
                        resources,
                        workload,
                        tasks=tasks,
                        options=options,
                        work_dir=Path(log_dir),
                        phases=phases,
                        label=label(r),
                    )
                    peer_rates[tasks] = measured.per_s
                    peer_cold[tasks] = measured.cold_per_s
                    peer_rss[tasks] = sum(measured.peak_rss)
            results, dlq = e2e_topics[r]
            group = f"cw-bench-e2e{r}-{resources.run_id}"
            round_commands = held_topics[r] if held_topics else commands_topic
            env = {
                "DATABASE_URL": e2e_urls[r],
                # The bench's databases are its own, made and dropped as the admin; the
                # worker's rights do not change what is measured.
                "CAPTURE_ALLOW_SUPERUSER": "1",
                "CAPTURE_COMMANDS_TOPIC": round_commands,
                "CAPTURE_RESULTS_TOPIC": results,
                "CAPTURE_DLQ_TOPIC": dlq,
                "CAPTURE_CONSUMER_GROUP": group,
                "CAPTURE_BATCH_SIZE": str(options.batch),
                "CAPTURE_EMBEDDING_DIM": str(options.dim),
            }
            worker = WorkerGroup(
                [
                    WorkerProcess(
                        env=env,
                        log_path=Path(log_dir) / f"worker{r}-{k}.log",
                        http_port=free_port(),
                    )
                    for k in range(options.workers)
                ]
            )
            stack.push_async_callback(worker.stop)
            reader = TopicReader(settings, results)
            await reader.start()
            stack.push_async_callback(reader.stop)
            async with AsyncExitStack() as round_stack:
                release = None
                if held_topics:
                    held = phases.start(
                        f"publish  held back for the group{label(r)}", options.messages
                    )
                    release = await round_stack.enter_async_context(
                        _held_back(
                            settings,
                            round_commands,
                            commands,
                            group=group,
                            members=options.workers,
                            on_progress=functools.partial(phases.update, held),
                        )
                    )
                    phases.done(held)
                await settle()
                e2e, cpu_us = await bench_e2e(
                    worker,
                    reader,
                    total=options.messages,
                    phases=phases,
                    postmaster=postmaster,
                    label=label(r),
                    release=release,
                )
            same_state = await _digest(e2e_urls[r]) == sql_digest
            rounds.append(
                Round(
                    b_sql,
                    e2e,
                    same_state,
                    worker.peak_rss,
                    cpu_us,
                    peer_rates,
                    peer_cold,
                    workers_peak_rss=worker.total_peak_rss,
                    peer_peak_rss=peer_rss,
                )
            )
            if r < options.rounds - 1:
                await worker.stop()
                await reader.stop()
                await resources.drop(e2e_urls[r])

        b_sql = statistics.median(x.b_sql_per_s for x in rounds)
        e2e = statistics.median(x.e2e_per_s for x in rounds)
        latency: list[dict[str, Any]] = []
        for n, asked in enumerate(options.latency_rates):
            rate = asked or max(1.0, e2e / 2)
            latency_commands = commands_of(
                list(
                    generate_lines(
                        max(1, round(rate * options.latency_seconds)),
                        users=options.users,
                        # Another stream each phase: the same ids again would be replays.
                        seed=options.seed + 1 + n,
                        dim=options.dim,
                    )
                )
            )
            await settle()
            # The last round's worker, idle now, on the same topics.
            phase = await bench_latency(
                worker_settings.model_copy(update={"commands_topic": round_commands}),
                worker,
                reader,
                latency_commands,
                rate=rate,
                phases=phases,
                postmaster=postmaster,
            )
            latency.append({**phase, "half_e2e": asked is None})
        await worker.stop()
        await resources.drop(e2e_urls[-1])

        await settle()
        naive = await bench_naive(
            settings,
            naive_url,
            commands_topic=commands_topic,
            results_topic=naive_results,
            total=naive_total,
            phases=phases,
        )
    return {
        "messages": options.messages,
        "users": options.users,
        "dim": options.dim,
        "batch": options.batch,
        "partitions": partitions,
        "hnsw_index": options.index,
        "b_sql_per_s": round(b_sql, 1),
        "b_kafka_per_s": round(b_kafka, 1),
        "e2e_per_s": round(e2e, 1),
        "naive_per_s": round(naive, 1),
        "naive_messages": naive_total,
        "publish_per_s": round(publish_rate, 1),
        # The first phase (half the e2e rate unless --latency-rate said otherwise), then all.
        "latency_ms": latency[0],
        "latency_by_rate": latency,
        "ratios": {
            # Each round's e2e against the b_sql measured just before it: the machine's speed
            # drifts between rounds, a pair shares it.
            "e2e/b_sql": round(statistics.median(x.ratio for x in rounds), 3),
            "e2e/naive": _ratio(e2e, naive),
        },
        "rounds": [
            {
                "b_sql_per_s": round(x.b_sql_per_s, 1),
                "e2e_per_s": round(x.e2e_per_s, 1),
                "e2e/b_sql": x.ratio,
                "worker_peak_rss_mib": round(x.worker_peak_rss / 2**20, 1),
                **(
                    {
                        "peer_per_s": {str(t): round(v, 1) for t, v in x.peer_per_s.items()},
                        "peer_cold_per_s": {
                            str(t): round(v, 1) for t, v in x.peer_cold_per_s.items()
                        },
                    }
                    if x.peer_per_s
                    else {}
                ),
            }
            for x in rounds
        ],
        "same_state": all(x.same_state for x in rounds),
        # Medians over the rounds: µs of CPU per command during e2e, and the machine's busy share.
        "e2e_cpu": {
            key: round(statistics.median(x.cpu_us[key] for x in rounds), 1)
            for key in rounds[0].cpu_us
            if all(key in x.cpu_us for x in rounds)
        },
        "peer": _peer_report(rounds, peer_tasks, options.peer_workers) if workload else None,
        # The worker's largest RSS while the whole stream was waiting for it (e2e): of one
        # process, and with several, their peaks added up.
        "worker_peak_rss_mib": round(max(x.worker_peak_rss for x in rounds) / 2**20, 1),
        "workers": options.workers,
        "workers_peak_rss_mib": round(max(x.workers_peak_rss for x in rounds) / 2**20, 1),
        "worker_settings": {
            "batch_size": options.batch,
            "max_poll_records": settings.max_poll_records,
            "batch_linger_ms": settings.batch_linger_ms,
            "db_pool_size": settings.db_pool_size,
            "producer_linger_ms": producer_options(settings)["linger_ms"],
            "fetch_partition_bytes": fetch_bytes,
            "commit_interval_ms": settings.commit_interval_ms,
            "fetch_min_bytes": settings.fetch_min_bytes,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "db_max_calls": settings.db_max_calls,
            "db_max_wait_ms": settings.db_max_wait_ms,
        },
        "machine": machine,
        "seconds": round(time.perf_counter() - began, 1),
        "run_id": resources.run_id,
    }


def _peer_report(rounds: Sequence[Round], tasks: Sequence[int], jvms: int) -> dict[str, Any]:
    def medians(value: Callable[[Round, int], float], digits: int) -> dict[str, float]:
        return {
            str(t): round(statistics.median(value(x, t) for x in rounds), digits) for t in tasks
        }

    # Each round's e2e against the peer measured just before it, as for b_sql; in order.
    by_round = {str(t): [_ratio(x.e2e_per_s, x.peer_per_s[t]) for x in rounds] for t in tasks}
    return {
        "name": "Debezium JDBC sink connector on Kafka Connect "
        + ("standalone" if jvms == 1 else f"distributed, {jvms} JVMs"),
        "jvms": jvms,
        "versions": {"debezium": peer.DEBEZIUM_VERSION, "connect": peer.CONNECT_VERSION},
        "sink_batch": peer.SINK_BATCH,
        # Rows, not commands: an upsert by command_id leaves one per distinct id. Warm: a
        # JIT-compiled JVM in a joined group, from resume to the last row (the targets').
        "per_s": medians(lambda x, t: x.peer_per_s[t], 1),
        # Cold: a fresh Connect from its tasks RUNNING to the last row, as e2e is timed.
        "per_s_cold": medians(lambda x, t: x.peer_cold_per_s[t], 1),
        "e2e/peer": {t: round(statistics.median(r), 3) for t, r in by_round.items()},
        "e2e/peer_cold": medians(lambda x, t: _ratio(x.e2e_per_s, x.peer_cold_per_s[t]), 3),
        # Every round's too: on a shared host the rounds of one run can differ by more than a
        # change being weighed, which the median alone hides.
        "e2e/peer_by_round": by_round,
        # Its JVMs' peak resident sets added up (each with the bench's fixed heap, HEAP).
        "peak_rss_mib": {
            str(t): round(max(x.peer_peak_rss.get(t, 0) for x in rounds) / 2**20, 1) for t in tasks
        },
        "heap": peer.HEAP,
    }


async def _digest(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT capture.capture_state_digest()"))
    finally:
        await conn.close()


# -- output ------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    index = "HNSW index" if report["hnsw_index"] else "no HNSW index"
    table = Table(
        title=f"{report['messages']:,} commands, {report['users']} users, dim {report['dim']}, "
        f"{index}, batch {report['batch']}, {report['partitions']} partitions"
    )
    table.add_column("measure")
    table.add_column("commands/s", justify="right")
    table.add_column("what it is")
    table.add_row("b_sql", f"{report['b_sql_per_s']:,.0f}", "asyncpg → ingest_typed, P streams")
    table.add_row("b_kafka", f"{report['b_kafka_per_s']:,.0f}", "worker path, no database")
    workers = report.get("workers", 1)
    table.add_row(
        "e2e",
        f"{report['e2e_per_s']:,.0f}",
        "the worker process" if workers == 1 else f"{workers} worker processes, one group",
    )
    table.add_row(
        "naive",
        f"{report['naive_per_s']:,.0f}",
        f"one at a time ({report['naive_messages']:,} commands)",
    )
    if report.get("peer"):
        for tasks, rate in report["peer"]["per_s"].items():
            cold = report["peer"]["per_s_cold"][tasks]
            table.add_row(
                f"peer ({_tasks_label(tasks)})",
                f"{rate:,.0f}",
                f"Debezium JDBC sink on Connect, warm (cold: {cold:,.0f})",
            )
    console.print(table)
    if report.get("peer"):
        _print_peer(report["peer"])
    if len(report["rounds"]) > 1:
        console.print(
            "rounds (b_sql → e2e): "
            + ", ".join(
                f"{x['b_sql_per_s']:,.0f} → {x['e2e_per_s']:,.0f} ({x['e2e/b_sql']:.2f})"
                + (
                    " peer " + "/".join(f"{v:,.0f}" for v in x["peer_per_s"].values())
                    if "peer_per_s" in x
                    else ""
                )
                for x in report["rounds"]
            )
            + "; medians above"
        )
    ratios = report["ratios"]
    lat = report["latency_ms"]
    console.print(
        f"e2e/b_sql [bold]{ratios['e2e/b_sql']:.2f}[/]   "
        f"e2e/naive [bold]{ratios['e2e/naive']:.1f}[/]"
        f"   same state as b_sql: {'yes' if report['same_state'] else '[red]NO[/]'}"
        f"   worker peak RSS during e2e [bold]{report['worker_peak_rss_mib']:,.0f}[/] MiB"
        + (
            f" (each; {workers} together at most {report['workers_peak_rss_mib']:,.0f} MiB)"
            if workers > 1
            else ""
        )
    )
    console.print(f"CPU per command during e2e: {_cpu_parts(report['e2e_cpu'])}")
    if len(report["latency_by_rate"]) == 1:
        _print_latency(lat)
    else:
        _print_latency_by_rate(report["latency_by_rate"])
    ws = report["worker_settings"]
    console.print(
        f"[dim]worker: batch {ws['batch_size']}, max poll {ws['max_poll_records']}, "
        f"linger {ws['batch_linger_ms']} ms, pool {ws['db_pool_size']}, producer linger "
        f"{ws['producer_linger_ms']} ms, fetch {ws['fetch_partition_bytes'] // 1024} KiB "
        f"per partition (waiting for {ws['fetch_min_bytes']:,} "
        f"byte{'s' if ws['fetch_min_bytes'] != 1 else ''}, at most "
        f"{ws['fetch_max_wait_ms']} ms), commits {ws['commit_interval_ms']} ms apart, "
        f"ingest calls at once {ws['db_max_calls'] or 'unlimited'}{_max_wait(ws)}[/]"
    )
    console.print(
        f"[dim]machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"PostgreSQL {m['postgresql']} + pgvector {m['pgvector']} "
        f"(synchronous_commit={m['synchronous_commit']}), {m['kafka']}, Python {m['python']}; "
        f"load {m['load_1m']}; {report['seconds']:.0f} s[/]"
    )
    uptime = m.get("kafka_uptime_s")
    if uptime is not None and uptime < WARM_BROKER_S:
        console.print(
            f"[yellow]Kafka's JVM had run {uptime:.0f} s when the run started: a broker that new "
            "is still compiling and costs more CPU per command (here more than twice a warm "
            "one's in the latency phase), which the other parts pay for on shared cores.[/]"
        )
    if m.get("cpu_split"):
        split = m["cpu_split"]
        console.print(
            f"[dim]cores: PostgreSQL on {', '.join(map(str, split['postgresql']))}; the worker, "
            f"Kafka, the peer and the bench on {', '.join(map(str, split['others']))}[/]"
        )


def _max_wait(ws: dict[str, Any]) -> str:
    if not ws["db_max_calls"]:
        return ""
    return f" (a chunk waits {ws['db_max_wait_ms']} ms at most)"


def _print_latency(lat: dict[str, Any]) -> None:
    console.print(
        f"latency at {lat['rate_per_s']:,.0f}/s ({lat['messages']:,} commands): "
        f"p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 [bold]{lat['p99']:.0f}[/] ms, "
        f"max {lat['max']:.0f} ms"
    )
    by_second = lat["p99_by_second"]
    if by_second:
        console.print(
            f"  p99 second by second: median {statistics.median(by_second):.0f} ms, "
            f"{min(by_second):.0f} to {max(by_second):.0f} ms over {len(by_second)} s"
        )
    shared = lat.get("chunks_per_db_call")
    console.print(
        f"  in it, CPU per command: {_cpu_parts(lat['cpu'])}; the worker's batches "
        f"{lat['batch_mean']:,.0f} commands on average"
        + (f", {shared:.1f} lanes' chunks per database call" if shared else "")
    )
    ages = lat.get("batch_oldest_age_ms", {})
    if "taken" in ages and "delivered" in ages:
        console.print(
            f"  a batch's oldest command, on average: taken {ages['taken']:.0f} ms after its "
            f"sending, its result acknowledged {ages['delivered']:.0f} ms after"
        )


def _print_latency_by_rate(phases: Sequence[dict[str, Any]]) -> None:
    table = Table(
        title="latency against load: a phase at each rate, in this order (ms; the machine's "
        "CPU per command; a batch's oldest command taken / its result acknowledged)"
    )
    for column in ("rate/s", "p50", "p95", "p99", "batch", "oldest", "CPU µs", "busy"):
        table.add_column(column, justify="right")
    for lat in phases:
        half = " (half e2e)" if lat["half_e2e"] else ""
        table.add_row(
            f"{lat['rate_per_s']:,.0f}{half}",
            f"{lat['p50']:.0f}",
            f"{lat['p95']:.0f}",
            f"[bold]{lat['p99']:.0f}[/]",
            f"{lat['batch_mean']:,.0f}",
            _ages_cell(lat.get("batch_oldest_age_ms", {})),
            f"{lat['cpu']['machine_us']:,.0f}",
            f"{lat['cpu']['machine_busy_pct']:.0f}%",
        )
    console.print(table)


def _ages_cell(ages: dict[str, float]) -> str:
    if "taken" not in ages or "delivered" not in ages:
        return ""
    return f"{ages['taken']:.0f} / {ages['delivered']:.0f}"


def _cpu_parts(used: dict[str, float]) -> str:
    parts = [
        f"{label} {used[f'{name}_us']:,.0f} µs"
        for name, label in (
            ("worker", "worker"),
            ("postgresql", "postgresql"),
            ("kafka", "kafka"),
            ("bench", "bench (publisher, reader)"),
            ("machine", "machine"),
        )
        if f"{name}_us" in used
    ]
    cores = [
        f"core {name[4:].removesuffix('_busy_pct')} {value:.0f}%"
        for name, value in used.items()
        if name.startswith("core")
    ]
    each = f" ({', '.join(cores)})" if len(cores) > 1 else ""
    return f"{', '.join(parts)}; machine busy {used['machine_busy_pct']:.0f}%{each}"


def _tasks_label(tasks: str) -> str:
    return f"{tasks} task{'s' if tasks != '1' else ''}"


def _warm_ratio(tasks: str, ratio: float, rounds: Sequence[float]) -> str:
    """`1.21 (6 tasks; rounds 1.14, 1.21, 1.42)`: the median, and each round's when several."""
    each = f"; rounds {', '.join(f'{r:.2f}' for r in rounds)}" if len(rounds) > 1 else ""
    return f"[bold]{ratio:.2f}[/] ({_tasks_label(tasks)}{each})"


def _print_peer(peer_report: dict[str, Any]) -> None:
    by_round = peer_report["e2e/peer_by_round"]
    warm = ", ".join(
        _warm_ratio(tasks, ratio, by_round[tasks])
        for tasks, ratio in peer_report["e2e/peer"].items()
    )
    cold = ", ".join(f"{ratio:.2f}" for ratio in peer_report["e2e/peer_cold"].values())
    versions = peer_report["versions"]
    console.print(f"e2e/peer {warm}; against the cold peer {cold}")
    rss = ", ".join(
        f"{mib:,.0f} MiB ({_tasks_label(tasks)})"
        for tasks, mib in peer_report["peak_rss_mib"].items()
    )
    jvms = peer_report["jvms"]
    console.print(
        f"peer peak RSS {rss}: {'its JVM' if jvms == 1 else f'its {jvms} JVMs together'}, "
        f"heap -Xmx{peer_report['heap']}{'' if jvms == 1 else ' each'}"
    )
    console.print(
        f"[dim]peer: Debezium {versions['debezium']} on Connect {versions['connect']}, sink batch "
        f"{peer_report['sink_batch']}, rows/s; warm = after as many commands of another seed, "
        "cold = those, from its tasks running[/]"
    )


def _latency_rates(values: Sequence[str]) -> tuple[float | None, ...]:
    """`--latency-rate` values: None for `half` (half the e2e rate), else commands/s."""
    rates: list[float | None] = []
    for value in values:
        if value.strip().lower() == "half":
            rates.append(None)
            continue
        try:
            rate = float(value)
        except ValueError:
            rate = 0.0
        if not rate >= 1:  # also NaN
            raise typer.BadParameter(
                f"{value!r}: a rate of at least 1 command/s, or `half`",
                param_hint="--latency-rate",
            )
        rates.append(rate)
    return tuple(rates)


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        *,
        messages: Annotated[int, typer.Option(min=1, help="Commands in the stream.")] = 20_000,
        users: Annotated[int, typer.Option(min=1, help="Distinct users in the stream.")] = 50,
        dim: Annotated[int, typer.Option(min=2, help="Embedding dimension.")] = 384,
        batch: Annotated[
            int | None,
            typer.Option(
                min=1, help="Commands per ingest_batch call.", show_default="CAPTURE_BATCH_SIZE"
            ),
        ] = None,
        no_index: Annotated[
            bool, typer.Option("--no-index", help="Drop the HNSW index in the bench databases.")
        ] = False,
        naive_messages: Annotated[
            int, typer.Option(min=1, help="At most this many commands for the naive loop.")
        ] = 3000,
        latency_seconds: Annotated[
            float, typer.Option(min=0.5, help="How long the latency phase publishes.")
        ] = 12.0,
        latency_rate: Annotated[
            list[str] | None,
            typer.Option(
                help="Publish at this rate in the latency phase instead (commands/s, or `half` "
                "for half the e2e rate): to compare settings or versions at one load. Repeat "
                "it for a phase at each rate, in that order: latency against load.",
                show_default="half",
            ),
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed of the generated commands.")] = 1,
        rounds: Annotated[
            int,
            typer.Option(
                min=1,
                help="Measure b_sql then e2e this many times (fresh databases each) and report "
                "medians: on a shared machine one pair can be off by 10-20%.",
            ),
        ] = 1,
        peer_name: Annotated[
            Peer,
            typer.Option(
                "--peer",
                help="Also measure this peer in every round: debezium-jdbc is the Debezium JDBC "
                "sink on Kafka Connect (needs Java 17+ and Maven; its jars are fetched once).",
            ),
        ] = Peer.NONE,
        peer_tasks: Annotated[
            list[int] | None,
            typer.Option(
                "--peer-tasks",
                min=1,
                help="Connect tasks per peer measurement (repeat the option for several).",
                show_default="the topic's partitions, then 1",
            ),
        ] = None,
        database_cores: Annotated[
            int,
            typer.Option(
                min=0,
                help="Give the local stack's PostgreSQL this many cores of its own, and the "
                "worker, Kafka, the peer and the bench the rest, as if the database had its own "
                "machine (0: every part shares every core).",
            ),
        ] = 0,
        workers: Annotated[
            int,
            typer.Option(
                min=1,
                help="Worker processes in e2e and the latency phases, one consumer group: a "
                "process per core uses the cores a single event loop leaves idle. With more "
                "than one, each round's stream is held back in a transaction until the group "
                "has formed.",
            ),
        ] = 1,
        peer_workers: Annotated[
            int,
            typer.Option(
                min=1,
                help="Connect JVMs of the peer: 1 runs Connect standalone, more a distributed "
                "cluster sharing the tasks (as --workers does for the worker).",
            ),
        ] = 1,
        fmt: Annotated[
            BenchFormat,
            typer.Option("--format", help="A table, or one JSON object on the last line."),
        ] = BenchFormat.TABLE,
    ) -> None:
        """Throughput and latency of the worker against PostgreSQL's ceiling, in one run.

        Creates its own databases (needs a role that may CREATE DATABASE) and topics, and drops
        them at the end. About 2 minutes with the defaults on a 2-core machine, plus about a
        minute per extra round.
        """
        settings = get_settings()
        configure_logging(settings.log_format, "WARNING")
        # The first sends to a topic created a moment ago meet "not leader" and are retried;
        # aiokafka logs each retry as a warning, which is noise in the middle of the report.
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
        options = BenchOptions(
            messages=messages,
            users=users,
            dim=dim,
            batch=batch or settings.batch_size,
            index=not no_index,
            seed=seed,
            naive_messages=naive_messages,
            latency_seconds=latency_seconds,
            latency_rates=_latency_rates(latency_rate or ["half"]),
            rounds=rounds,
            peer=peer_name,
            peer_tasks=tuple(peer_tasks or ()),
            database_cores=database_cores,
            workers=workers,
            peer_workers=peer_workers,
        )
        try:
            report = asyncio.run(
                run_bench(settings, options, show_progress=err_console.is_terminal)
            )
        except (BenchError, CaptureError, WorkerExited) as exc:
            fail(str(exc))
            return
        if fmt is BenchFormat.JSON:
            emit_json(report)
        else:
            print_report(report)
