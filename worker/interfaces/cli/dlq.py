"""`capture-worker dlq list | show | redrive`: inspect dead letters and send fixed ones back.

`list` and `show` read the DLQ like `tail` does: no group, no commits. `redrive` reads it
with a consumer group of its own (`capture-worker-redrive` by default) whose committed
offset is its progress: it commits only after every record it republished was acknowledged
by all in-sync replicas, so a second run does not send a record twice and a crash re-sends
at most the uncommitted tail (harmless: the worker's ledger turns a redelivered command into
the identical result).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from contracts import headers as H
from worker.core.config import Settings, get_settings
from worker.core.logging import configure_logging
from worker.infrastructure.kafka_client import connection_options, producer_options
from worker.interfaces.cli.dead_letters import (
    DeadLetter,
    RedrivePlan,
    Selection,
    histogram,
    parse_where,
    partitions_text,
    target_partition,
)
from worker.interfaces.cli.output import OutputFormat, console, emit_json, err_console, fail
from worker.interfaces.cli.tail import decode_headers, decode_value, topic_partitions
from worker.interfaces.cli.timespec import parse_timestamp

DEFAULT_GROUP = "capture-worker-redrive"
COMMIT_EVERY = 500  # records republished between two commits: the most a crash re-sends

app = typer.Typer(
    name="dlq",
    help="Inspect the dead-letter topic and send fixed records back.",
    no_args_is_help=True,
)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="dlq")


# -- reading ---------------------------------------------------------------------------------


def _letter(record: Any) -> DeadLetter:
    return DeadLetter(
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value,
        tuple(record.headers),
    )


def _progress(label: str) -> Progress:
    """On stderr, and only on a terminal: stdout stays clean for --format json."""
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,
    )


async def _read(
    consumer: AIOKafkaConsumer,
    start: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
    label: str = "reading the DLQ",
) -> AsyncIterator[list[DeadLetter]]:
    """Batches of records from `start` up to the end offsets taken before (not later ones)."""
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    active = {tp for tp in start if start[tp] < end[tp]}
    with _progress(label) as progress:
        task = progress.add_task(label, total=sum(max(0, end[tp] - start[tp]) for tp in start))
        async for batch in _fetch(consumer, active, end):
            yield batch
            progress.advance(task, len(batch))


async def _fetch(
    consumer: AIOKafkaConsumer, active: set[TopicPartition], end: Mapping[TopicPartition, int]
) -> AsyncIterator[list[DeadLetter]]:
    while active:
        fetched = await consumer.getmany(*active, timeout_ms=1000, max_records=COMMIT_EVERY)
        batch = [
            _letter(record)
            for tp, records in fetched.items()
            for record in records
            if record.offset < end[tp]
        ]
        if batch:
            yield batch
        for tp in list(active):
            if await consumer.position(tp) >= end[tp]:
                active.discard(tp)


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    partitions = await topic_partitions(settings, topic)
    if partitions is None:
        raise LookupError(f"topic {topic!r} does not exist")
    return [TopicPartition(topic, p) for p in partitions]


def _consumer(settings: Settings, group: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **connection_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Oversize commands end up here: let the largest record through.
        max_partition_fetch_bytes=settings.record_room_bytes,
    )


async def read_all(settings: Settings, topic: str, selection: Selection) -> list[DeadLetter]:
    """Every selected record of the DLQ as it is now (read-only: no group, no commits)."""
    tps = await _partitions(settings, topic)
    consumer = _consumer(settings, None)
    await consumer.start()
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        start = await consumer.beginning_offsets(tps)
        out: list[DeadLetter] = []
        async for batch in _read(consumer, start, end):
            out.extend(letter for letter in batch if selection.accept(letter))
        return out
    finally:
        await consumer.stop()


# -- redrive ---------------------------------------------------------------------------------


@dataclass
class RedriveRun:
    plan: RedrivePlan
    executed: bool
    group: str
    committed: dict[int, int]


async def redrive(
    settings: Settings,
    topic: str,
    selection: Selection,
    *,
    group: str,
    max_redrives: int,
    execute: bool,
) -> RedriveRun:
    """One pass from the group's committed offsets to the current end of the DLQ."""
    tps = await _partitions(settings, topic)
    consumer = _consumer(settings, group)
    producer = AIOKafkaProducer(**producer_options(settings)) if execute else None
    plan = RedrivePlan()
    committed: dict[int, int] = {}
    await consumer.start()
    try:
        if producer is not None:
            await producer.start()
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        beginning = await consumer.beginning_offsets(tps)
        start = {}
        for tp in tps:
            done = await consumer.committed(tp)
            start[tp] = max(beginning[tp], done) if done is not None else beginning[tp]
        targets: dict[str, list[int]] = {}
        label = "redriving" if execute else "dry run"
        async for batch in _read(consumer, start, end, label):
            pending = []
            now = datetime.now(UTC)
            for letter in batch:
                if not plan.consider(letter, selection, max_redrives) or producer is None:
                    continue
                source = str(letter.source_topic)
                if source not in targets:
                    targets[source] = sorted(await producer.partitions_for(source) or [])
                pending.append(
                    await producer.send(
                        source,
                        value=letter.value,
                        key=letter.key,
                        headers=letter.redrive_headers(now),
                        partition=target_partition(letter, targets[source]),
                    )
                )
            if producer is None:
                continue
            # Every republished record acknowledged (acks=all) before the progress moves.
            await asyncio.gather(*pending)
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for letter in batch:
                tp = TopicPartition(topic, letter.partition)
                offsets[tp] = OffsetAndMetadata(letter.offset + 1, "")
            await consumer.commit(offsets)
            committed.update({tp.partition: om.offset for tp, om in offsets.items()})
        return RedriveRun(plan, execute, group, committed)
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()


# -- output ----------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    value, how = decode_value(letter.value)
    return {
        "dlq": letter.where,
        "kind": letter.kind,
        "source": f"{letter.source_topic}[{letter.source_partition}]"
        f"@{letter.header(H.SOURCE_OFFSET)}",
        "key": letter.user,
        "redrive_count": letter.redrive_count,
        "headers": decode_headers(letter.headers),
        "value_encoding": how,
        "value": value,
    }


def _histogram_table(letters: list[DeadLetter], title: str) -> Table:
    table = Table(title=title)
    for column in ("kind", "count", "source partitions", "first failed at", "last failed at"):
        table.add_column(column, justify="right" if column == "count" else "left")
    stats = histogram(letters)
    for kind, row in stats.items():
        table.add_row(
            kind,
            str(row.count),
            partitions_text(row.source_partitions),
            _iso(row.first_failed_at),
            _iso(row.last_failed_at),
        )
    if len(stats) > 1:
        table.add_row("[bold]total[/]", str(len(letters)), "", "", "")
    return table


def _line(letter: DeadLetter, prefix: str) -> str:
    message = (letter.header(H.ERROR_MESSAGE) or "")[:80]
    return (
        f"{prefix} dlq {letter.where} {letter.kind}: {message} "
        f"→ {letter.source_topic}[{letter.source_partition}] key={letter.user[:36]} "
        f"redrives={letter.redrive_count}"
    )


# -- commands --------------------------------------------------------------------------------

KindOption = Annotated[
    list[str] | None, typer.Option("--kind", help="Only this capture.error.kind (repeatable).")
]
UserOption = Annotated[str | None, typer.Option(help="Only records keyed by this user_id.")]
SinceOption = Annotated[
    str | None,
    typer.Option(
        metavar="TIME", help="Only records that failed at/after TIME: RFC 3339 or -1h, -15m."
    ),
]
OffsetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--offset", metavar="[P@]N", help="Only the DLQ record at offset N (of partition P)."
    ),
]
TopicOption = Annotated[
    str | None, typer.Option("--topic", help="DLQ topic (default CAPTURE_DLQ_TOPIC).")
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="pretty or json.")]


def _selection(
    kind: list[str] | None, user: str | None, since: str | None, offset: list[str] | None
) -> Selection:
    try:
        return Selection(
            kinds=frozenset(kind or ()),
            user=user,
            since=parse_timestamp(since) if since else None,
            offsets=frozenset(parse_where(o) for o in offset or ()),
        )
    except ValueError as exc:
        fail(str(exc), 2)


def _setup(topic: str | None) -> tuple[Settings, str]:
    settings = get_settings()
    configure_logging(settings.log_format, "WARNING")
    return settings, topic or settings.dlq_topic


def _run_kafka(settings: Settings, coroutine: Any) -> Any:
    try:
        return asyncio.run(coroutine)
    except LookupError as exc:
        fail(str(exc), 1)
    except KafkaError as exc:
        fail(f"Kafka at {settings.kafka_bootstrap_servers}: {exc!r}", 1)


@app.command("list")
def list_command(
    kind: KindOption = None,
    user: UserOption = None,
    since: SinceOption = None,
    offset: OffsetOption = None,
    topic: TopicOption = None,
    fmt: FormatOption = OutputFormat.PRETTY,
) -> None:
    """How many dead letters, by capture.error.kind: source partitions, first/last failure.

    Examples:

      capture-worker dlq list

      capture-worker dlq list --since -1h --format json | jq .kinds
    """
    settings, source = _setup(topic)
    letters = _run_kafka(
        settings, read_all(settings, source, _selection(kind, user, since, offset))
    )
    if fmt is OutputFormat.JSON:
        emit_json(
            {
                "topic": source,
                "total": len(letters),
                "kinds": {k: s.as_json() for k, s in histogram(letters).items()},
            }
        )
        return
    console.print(_histogram_table(letters, f"{source}: {len(letters)} dead letter(s)"))


@app.command("show")
def show_command(
    kind: KindOption = None,
    user: UserOption = None,
    since: SinceOption = None,
    offset: OffsetOption = None,
    topic: TopicOption = None,
    fmt: FormatOption = OutputFormat.PRETTY,
) -> None:
    """Dead letters with all their headers (the producer's and the capture.* ones).

    Examples:

      capture-worker dlq show --kind constraint

      capture-worker dlq show --offset 0@42 --format json | jq .headers
    """
    settings, source = _setup(topic)
    letters = _run_kafka(
        settings, read_all(settings, source, _selection(kind, user, since, offset))
    )
    for letter in letters:
        data = letter_json(letter)
        if fmt is OutputFormat.JSON:
            emit_json(data)
            continue
        console.print(
            f"[bold]{source} {letter.where}[/] [red]{letter.kind}[/] key={letter.user}",
            highlight=False,
        )
        for name, value in data["headers"].items():
            console.print(f"  {name}: {value}", highlight=False, soft_wrap=True)
        shown = str(data["value"])
        more = "…" if len(shown) > 200 else ""
        size = len(letter.value or b"")
        console.print(
            f"  value ({data['value_encoding']}, {size} B): {shown[:200]}{more}",
            highlight=False,
            soft_wrap=True,
        )


@app.command("redrive")
def redrive_command(
    kind: KindOption = None,
    user: UserOption = None,
    since: SinceOption = None,
    offset: OffsetOption = None,
    execute: Annotated[
        bool, typer.Option("--execute", help="Send. Without it: a dry run that sends nothing.")
    ] = False,
    max_redrives: Annotated[
        int,
        typer.Option(min=1, help="Loop guard: never resend a record redriven this many times."),
    ] = 3,
    group: Annotated[
        str, typer.Option(help="Consumer group that holds the redrive's progress.")
    ] = DEFAULT_GROUP,
    topic: TopicOption = None,
    fmt: FormatOption = OutputFormat.PRETTY,
) -> None:
    """Send selected dead letters back to the topic they came from (capture.source.topic).

    Byte for byte: the same key, value and original headers, to the partition they came
    from, plus capture.redrive.count, capture.redrive.at and capture.redrive.from
    (DLQ partition@offset). A DRY RUN unless --execute: it prints what it would send.

    Progress is the committed offset of --group, committed only once every record
    republished before it is acknowledged (acks=all): a second run sends nothing again,
    and records a run passed over (filters) are passed for that group; use another
    --group for another selection. A record already redriven --max-redrives times is
    reported and not sent.

    Examples:

      capture-worker dlq redrive --kind constraint              # what would go back

      capture-worker dlq redrive --kind constraint --execute

      capture-worker dlq redrive --offset 0@42 --execute --group redrive-ticket-123
    """
    settings, source = _setup(topic)
    selection = _selection(kind, user, since, offset)
    run: RedriveRun = _run_kafka(
        settings,
        redrive(
            settings,
            source,
            selection,
            group=group,
            max_redrives=max_redrives,
            execute=execute,
        ),
    )
    plan = run.plan
    if fmt is OutputFormat.JSON:
        emit_json(
            {
                "topic": source,
                "group": group,
                "executed": execute,
                "examined": plan.examined,
                "sent" if execute else "would_send": len(plan.send),
                "kinds": {k: s.count for k, s in histogram(plan.send).items()},
                "records": [letter.where for letter in plan.send],
                "over_limit": [letter.where for letter in plan.over_limit],
                "unsendable": {letter.where: why for letter, why in plan.unsendable},
                "committed": {str(p): o for p, o in sorted(run.committed.items())},
            }
        )
        return
    verb = "sent" if execute else "would send"
    for letter in plan.send:
        console.print(_line(letter, verb), highlight=False, soft_wrap=True)
    for letter in plan.over_limit:
        console.print(
            _line(letter, f"[yellow]not sent: already redriven {letter.redrive_count} times[/]"),
            highlight=False,
            soft_wrap=True,
        )
    for letter, why in plan.unsendable:
        console.print(
            _line(letter, f"[yellow]not sendable: {why}[/]"), highlight=False, soft_wrap=True
        )
    title = f"{verb} {len(plan.send)} of {plan.examined} examined (group {group})"
    if plan.send:
        console.print(_histogram_table(plan.send, title))
    else:
        console.print(f"nothing to send: {plan.examined} examined (group {group})")
    if not execute and plan.send:
        err_console.print("[bold]dry run:[/] nothing was sent; --execute sends.")
