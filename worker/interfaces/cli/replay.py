"""`capture-worker replay`: rebuild the database state from the command topic.

It reads every partition up to the end offsets taken at start, each partition
in order, through the same handler as the live worker, with its own consumer
(no group, no commits), so the live worker is never disturbed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from worker.application.capture import BatchProcessor, Limits, Outcome
from worker.application.ports import Envelope
from worker.application.retry import Backoff
from worker.core.config import Settings, get_settings
from worker.core.logging import configure_logging
from worker.domain.errors import CaptureError
from worker.infrastructure.db import create_pool
from worker.infrastructure.kafka_client import connection_options, envelopes, producer_options
from worker.infrastructure.repository import ArtifactRepository
from worker.infrastructure.result_publisher import OutcomePublisher
from worker.interfaces.cli.output import OutputFormat, console, emit_json, err_console, fail
from worker.interfaces.cli.tail import topic_partitions
from worker.interfaces.cli.timespec import parse_timestamp, to_millis


class ReplayError(Exception):
    """The replay cannot start as asked."""


@dataclass
class ReplaySummary:
    topic: str
    messages: int = 0
    ingested: int = 0
    rejected: int = 0
    partitions: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    digest: str = ""
    verified: bool | None = None
    until: str | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


class _Counting:
    """Publisher stand-in: counts outcomes, optionally forwards results to a topic."""

    def __init__(self, summary: ReplaySummary, forward: Any = None) -> None:
        self.summary = summary
        self.forward = forward

    async def publish(self, outcomes: Any) -> None:
        if self.forward is not None:
            await self.forward.publish(
                [o for o in outcomes if o.result is not None and o.error is None]
            )
        outcome: Outcome
        for outcome in outcomes:
            if outcome.error is None:
                self.summary.ingested += 1
            else:
                self.summary.rejected += 1


async def live_group_members(settings: Settings, topic: str) -> int:
    """Members of the live worker's group, when it consumes `topic` (0 when idle or unknown)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([settings.consumer_group])
        members = 0
        for response in responses:
            for group in response.to_object().get("groups", []):
                if group.get("state") in ("Stable", "PreparingRebalance", "CompletingRebalance"):
                    members += sum(
                        1
                        for member in group.get("members", [])
                        if topic.encode() in member.get("member_metadata", b"")
                    )
        return members
    except Exception:  # the warning is advisory: never block a replay on it
        return 0
    finally:
        await admin.close()


async def replay(
    settings: Settings,
    *,
    database_url: str,
    topic: str,
    since: datetime | None,
    reset: bool,
    rebuild_index: bool,
    emit_results: str | None,
    show_progress: bool,
    until: datetime | None = None,
) -> ReplaySummary:
    summary = ReplaySummary(topic=topic, until=until.isoformat() if until else None)
    pool = await create_pool(
        database_url,
        max_size=settings.topic_partitions + 2,
        transaction_pooler=settings.db_pooler == "transaction",
    )
    repo = ArtifactRepository(pool)
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=settings.record_room_bytes,
        # The worker's view of the topic: aborted transactions' commands were never ingested.
        isolation_level="read_committed",
    )
    producer = None
    try:
        partitions = await topic_partitions(settings, topic)
        if not partitions:
            raise ReplayError(f"topic {topic!r} does not exist")
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in partitions]
        if reset:
            if rebuild_index:
                await repo.drop_embedding_index()
            await repo.reset_state()
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        if until is not None:
            end = await offsets_after(consumer, tps, until, end)
        start = await consumer.beginning_offsets(tps)
        if since is not None:
            found = await consumer.offsets_for_times({tp: to_millis(since) for tp in tps})
            start = {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}
        # Explicit seeks: seek_to_beginning() right after assign() can lose a race
        # with the consumer's own offset reset.
        for tp in tps:
            consumer.seek(tp, start[tp])
        remaining = {tp for tp in tps if start[tp] < end[tp]}
        total = sum(max(0, end[tp] - start[tp]) for tp in tps)

        forward = None
        if emit_results:
            producer = AIOKafkaProducer(**producer_options(settings))
            await producer.start()
            forward = OutcomePublisher(
                producer, results_topic=emit_results, dlq_topic=settings.dlq_topic
            )

        limits = Limits(
            embedding_dim=settings.embedding_dim,
            max_message_bytes=settings.max_message_bytes,
            db_batch_size=settings.batch_size,
        )

        async def fixed_limits() -> Limits:
            return limits

        processor = BatchProcessor(
            store=repo,
            publisher=_Counting(summary, forward),
            limits=fixed_limits,
            backoff=Backoff(initial_s=settings.retry_initial_s, max_s=settings.retry_max_s),
        )
        started = time.perf_counter()
        with Progress(
            TextColumn("[bold]replay[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.0f}/s"),
            TimeRemainingColumn(),
            console=err_console,
            disable=not show_progress,
            transient=False,
        ) as progress:
            task = progress.add_task(topic, total=total, rate=0.0)
            while remaining:
                fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
                records = []
                for tp, msgs in fetched.items():
                    # Stop at the end offsets taken at start: later commands are not ours.
                    kept = [m for m in msgs if m.offset < end[tp]]
                    records.extend(kept)
                    summary.partitions[tp.partition] = summary.partitions.get(
                        tp.partition, 0
                    ) + len(kept)
                    if (kept and kept[-1].offset >= end[tp] - 1) or len(kept) < len(msgs):
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                if records:
                    await _process_fully(processor, envelopes(records))
                    summary.messages += len(records)
                    elapsed = time.perf_counter() - started
                    progress.update(
                        task, advance=len(records), rate=summary.messages / max(elapsed, 1e-9)
                    )
        if reset and rebuild_index:
            await repo.create_embedding_index()
        summary.seconds = time.perf_counter() - started
        summary.digest = await repo.state_digest()
        return summary
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
        await pool.close()


async def offsets_after(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    until: datetime,
    end: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Per partition, the first offset whose record is later than `until` (else the end)."""
    found = await consumer.offsets_for_times({tp: to_millis(until) + 1 for tp in tps})
    return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}


def same_database(a: str, b: str) -> bool:
    """Whether two DSNs name the same database (host, port and name; not the credentials)."""
    left, right = urlsplit(a), urlsplit(b)
    return (left.hostname, left.port or 5432, left.path.strip("/")) == (
        right.hostname,
        right.port or 5432,
        right.path.strip("/"),
    )


async def _process_fully(processor: BatchProcessor, records: list[Envelope]) -> None:
    """Like the worker, but in place of pausing a stalled partition, wait and redo its rest."""
    pending = records
    while pending:
        processed = await processor.process(pending)
        stalled = processed.stalled
        if not stalled:
            return
        await asyncio.sleep(max(s.delay_s for s in stalled.values()))
        pending = [
            r
            for r in pending
            if (r.topic, r.partition) in stalled
            and r.offset >= stalled[(r.topic, r.partition)].offset
        ]


def target_url(settings: Settings, *, reset: bool) -> str:
    """--reset empties the state with an admin function, which the worker's login may not call."""
    return settings.admin_url() if reset else settings.database_url.get_secret_value()


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_command(
        from_beginning: Annotated[
            bool, typer.Option("--from-beginning", help="Replay the whole topic.")
        ] = False,
        from_timestamp: Annotated[
            str | None,
            typer.Option(help="Replay from this time: RFC 3339 or a duration such as -1h."),
        ] = None,
        until: Annotated[
            str | None,
            typer.Option(
                metavar="TIME",
                help="Only commands up to TIME (RFC 3339 or -1h): the state as of that moment."
                " Needs --database-url; the live database only with --reset --yes.",
            ),
        ] = None,
        reset: Annotated[
            bool, typer.Option(help="Empty the business state first (asks unless --yes).")
        ] = False,
        yes: Annotated[
            bool, typer.Option("--yes", "-y", help="Do not ask before --reset.")
        ] = False,
        rebuild_index: Annotated[
            bool,
            typer.Option(
                help="With --reset: drop the HNSW index during the load, rebuild it after."
            ),
        ] = False,
        emit_results: Annotated[
            str | None,
            typer.Option(help="Publish the replay's results to this topic (default: none)."),
        ] = None,
        verify: Annotated[
            str | None, typer.Option(help="Exit 1 unless the final digest equals this one.")
        ] = None,
        topic: Annotated[
            str | None, typer.Option(help="Command topic (default CAPTURE_COMMANDS_TOPIC).")
        ] = None,
        database_url: Annotated[
            str | None,
            typer.Option(
                envvar="REPLAY_DATABASE_URL",
                help="Target database (default DATABASE_URL; with --reset or --rebuild-index"
                " CAPTURE_ADMIN_DATABASE_URL, whose owner may empty it).",
                show_default=False,
            ),
        ] = None,
        output: Annotated[
            OutputFormat, typer.Option("--format", help="pretty or json.")
        ] = OutputFormat.PRETTY,
    ) -> None:
        """Rebuild state from the command topic, up to its end at start; prints the digest.

        --until TIME stops at the last command recorded at or before TIME (Kafka record
        timestamps), so the digest is that of the state as it was when the worker had
        processed it. It starts from the beginning unless --from-timestamp, and writes only
        to a database named with --database-url: the live one (DATABASE_URL) only with
        --reset --yes.

        Examples:

          capture-worker replay --from-beginning --reset --yes --database-url $REBUILD_URL

          capture-worker replay --until 2026-11-26T09:00:00Z --reset --yes --database-url $ASOF_URL

          capture-worker replay --until -1h --reset --yes --database-url $ASOF_URL --format json
        """
        settings = get_settings()
        configure_logging(settings.log_format, "WARNING")
        if until is not None and not from_timestamp:
            from_beginning = True  # a state as of a moment starts from the first command
        if from_beginning == (from_timestamp is not None):
            fail("give exactly one of --from-beginning or --from-timestamp", 2)
        live_url = settings.database_url.get_secret_value()
        until_at = None
        if until is not None:
            try:
                until_at = parse_timestamp(until)
            except ValueError as exc:
                fail(str(exc), 2)
            if database_url is None:
                fail("--until writes a past state: name its database with --database-url", 2)
            if same_database(database_url, live_url) and not (reset and yes):
                fail(
                    "--until would overwrite the live database (DATABASE_URL): choose another"
                    " --database-url, or give --reset --yes to do it on purpose",
                    2,
                )
        since = None
        if from_timestamp is not None:
            try:
                since = parse_timestamp(from_timestamp)
            except ValueError as exc:
                fail(str(exc), 2)
        if rebuild_index and not reset:
            fail("--rebuild-index only makes sense with --reset", 2)
        source = topic or settings.commands_topic
        members = asyncio.run(live_group_members(settings, source))
        if members:
            err_console.print(
                f"[bold yellow]warning:[/] consumer group {settings.consumer_group!r} has "
                f"{members} live member(s): a live worker is writing to the database while "
                "this replay runs."
            )
        if reset and not yes:
            typer.confirm(
                "This empties every artifact, signal, subspace and ledger entry of the target"
                " database. Continue?",
                abort=True,
            )
        try:
            summary = asyncio.run(
                replay(
                    settings,
                    database_url=database_url or target_url(settings, reset=reset),
                    topic=source,
                    since=since,
                    reset=reset,
                    rebuild_index=rebuild_index,
                    emit_results=emit_results,
                    show_progress=output is OutputFormat.PRETTY and err_console.is_terminal,
                    until=until_at,
                )
            )
        except ReplayError as exc:
            fail(str(exc), 2)
            return
        except CaptureError as exc:
            fail(f"replay stopped: {exc}", 1)
            return
        if verify is not None:
            summary.verified = summary.digest == verify
        if output is OutputFormat.JSON:
            emit_json({**asdict(summary), "rate": round(summary.rate, 1)})
        else:
            table = Table(title=f"replay of {source}", show_header=False)
            table.add_row("messages", str(summary.messages))
            table.add_row("ingested", str(summary.ingested))
            table.add_row("rejected", str(summary.rejected))
            table.add_row("seconds", f"{summary.seconds:.2f} ({summary.rate:.0f}/s)")
            if summary.until is not None:
                table.add_row("until", summary.until)
            table.add_row("digest", summary.digest)
            if summary.verified is not None:
                table.add_row(
                    "verify", "[green]match[/]" if summary.verified else "[red]MISMATCH[/]"
                )
            console.print(table)
        if summary.verified is False:
            err_console.print(
                f"[bold red]digest mismatch:[/] expected {verify}, got {summary.digest}"
            )
            raise typer.Exit(1)
