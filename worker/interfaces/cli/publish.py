"""`capture-worker publish [FILE|-]`: validate JSON-lines commands, then send them all.

Every line is checked against the contract before the first record is sent, so a
bad file sends nothing (unless `--skip-invalid`). A record's value is the line's
bytes exactly as given (no re-serialisation: what the producer wrote is what the
worker and a replay read); its key is the `user_id`, so one user's commands stay
in order on one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from contracts import CaptureArtifactCommand
from worker.core import tracing
from worker.core.config import Settings, get_settings
from worker.core.logging import configure_logging
from worker.infrastructure.kafka_client import connection_options, producer_options
from worker.infrastructure.topics import ensure_topics
from worker.interfaces.cli import extensions
from worker.interfaces.cli.output import OutputFormat, console, emit_json, err_console, fail

EXIT_INVALID = 2
EXIT_SEND_FAILED = 1


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass
class Checked:
    records: list[Record] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    invalid_lines: int = 0


def numbered_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes without the line ending); blank lines are skipped."""
    for number, raw in enumerate(stream, start=1):
        line = raw.rstrip(b"\r\n")
        if line.strip():
            yield number, line


def check_lines(lines: Iterable[tuple[int, bytes]], *, settings: Settings) -> Checked:
    """Validate every line against the contract; keep the valid ones as records."""
    checked = Checked()
    context = {"embedding_dim": settings.embedding_dim}
    for number, value in lines:
        errors = line_errors(number, value, context=context, max_bytes=settings.max_message_bytes)
        if isinstance(errors, list):
            checked.errors.extend(errors)
            checked.invalid_lines += 1
        else:
            checked.records.append(Record(number, errors, value))
    return checked


def line_errors(
    number: int, value: bytes, *, context: dict[str, Any], max_bytes: int
) -> list[LineError] | bytes:
    """The line's errors, or its record key when it is valid."""
    if len(value) > max_bytes:
        return [LineError(number, "(size)", f"{len(value)} bytes, over the {max_bytes}-byte limit")]
    try:
        command = CaptureArtifactCommand.model_validate_json(value, context=context)
    except ValidationError as exc:
        return [
            LineError(
                number,
                ".".join(str(part) for part in err["loc"])
                or ("(json)" if err["type"] == "json_invalid" else "(value)"),
                err["msg"].removeprefix("Value error, "),
            )
            for err in exc.errors(include_url=False, include_input=False)
        ]
    # The canonical (lower-case) uuid text, so one user always lands on one partition.
    return str(command.user_id).encode()


class TokenBucket:
    """Average `rate` per second with bursts of `burst`; `take` sleeps off any debt.

    The debt is slept off once it is `tick_s` worth of records: at high rates one wake-up per
    few records rather than a timer and a pass of the event loop per record, each record at
    most `tick_s` early, the average rate unchanged.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        tick_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        # A small burst lets high rates batch in the producer instead of sleeping per record.
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self._slack = max(0.0, tick_s * rate - 1)  # records that may go before the sleep
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    async def take(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1
        if self._tokens < -self._slack:
            await self._sleep(-self._tokens / self.rate)


@dataclass
class PublishReport:
    topic: str
    sent: int = 0
    failed: int = 0
    invalid: int = 0
    partitions: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    topic_created: bool = False
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "sent": self.sent,
            "failed": self.failed,
            "invalid": self.invalid,
            "partitions": {str(p): n for p, n in sorted(self.partitions.items())},
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
            "topic_created": self.topic_created,
            "first_error": self.first_error,
        }


async def ensure_topic(settings: Settings, topic: str) -> bool:
    """Create the topic with the production partition count, if missing; True if created."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        created = await ensure_topics(
            admin,
            [topic],
            partitions=settings.topic_partitions,
            # As the worker creates it: room for oversize poison to reach its DLQ.
            max_message_bytes=settings.record_room_bytes,
        )
    finally:
        await admin.close()
    return bool(created)


async def send_records(
    settings: Settings,
    topic: str,
    records: Iterable[Record],
    *,
    rate: float | None = None,
    on_delivery: Callable[[], None] = lambda: None,
) -> PublishReport:
    """Send concurrently and wait for every acknowledgement (acks=all, idempotent)."""
    report = PublishReport(topic=topic)
    report.topic_created = await ensure_topic(settings, topic)
    # Commands are ~4 KB: producer_options' batches hold ~60 of them per request.
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    # Empty partitions show as 0: a skewed spread of keys is visible in the summary.
    report.partitions = dict.fromkeys(await producer.partitions_for(topic), 0)
    started = time.perf_counter()

    def delivered(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            partition = future.result().partition
            report.partitions[partition] = report.partitions.get(partition, 0) + 1
            report.sent += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or f"{type(error).__name__}: {error}"
        on_delivery()

    # Only what is not acknowledged yet: a stream of millions holds no future per record.
    pending: set[asyncio.Future[Any]] = set()
    bucket = TokenBucket(rate) if rate else None
    try:
        for record in records:
            if bucket is not None:
                await bucket.take()
            # `send` only queues the record (it waits when the buffer is full); the
            # returned future resolves when the broker acknowledged it.
            future = await producer.send(
                topic,
                record.value,
                key=record.key,
                headers=tracing.new_trace_headers(topic, record.key),
            )
            future.add_done_callback(delivered)
            future.add_done_callback(pending.discard)
            pending.add(future)
        # Every batch on its way before waiting for the rest: a gather over every future at
        # the end queued a callback each on the event loop while the last batch waited.
        await producer.flush()
        if pending:
            await asyncio.wait(pending)
    finally:
        await producer.stop()
        report.seconds = time.perf_counter() - started
    return report


def _read_file(file: str) -> Iterator[tuple[int, bytes]]:
    if file == "-":
        yield from numbered_lines(sys.stdin.buffer)
    else:
        with Path(file).open("rb") as stream:
            yield from numbered_lines(stream)


def _write_lines(lines: Iterable[str | bytes], output: str) -> int:
    count = 0
    target = sys.stdout.buffer if output == "-" else Path(output).open("wb")  # noqa: SIM115
    try:
        for line in lines:
            target.write(line.encode() if isinstance(line, str) else line)
            target.write(b"\n")
            count += 1
        target.flush()
    finally:
        if target is not sys.stdout.buffer:
            target.close()
    return count


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]publish[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f}/s"),
        TimeRemainingColumn(),
        console=err_console,
        disable=not enabled,
        transient=True,
    )


def _print_report(report: PublishReport, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.JSON:
        emit_json(report.as_json())
        return
    table = Table(title=f"published to {report.topic}", show_header=False)
    table.add_row("sent", str(report.sent))
    if report.invalid:
        table.add_row("invalid (skipped)", str(report.invalid))
    if report.failed:
        table.add_row("[red]failed[/]", f"{report.failed} ({report.first_error})")
    table.add_row(
        "partitions", " ".join(f"{p}:{n}" for p, n in sorted(report.partitions.items())) or "-"
    )
    table.add_row("seconds", f"{report.seconds:.2f} ({report.rate:.0f}/s)")
    if report.topic_created:
        table.add_row("topic", "created")
    console.print(table)


def publish_command(
    file: Annotated[
        str | None,
        typer.Argument(
            metavar="[FILE|-]",
            help="JSON-lines commands; '-' (or no FILE with piped input) reads stdin.",
            show_default=False,
        ),
    ] = None,
    *,
    generate: Annotated[
        int | None,
        typer.Option("--generate", metavar="N", min=0, help="Generate N synthetic commands."),
    ] = None,
    users: Annotated[int, typer.Option(min=1, help="--generate: number of users.")] = 20,
    seed: Annotated[int, typer.Option(help="--generate: same seed, same commands.")] = 1,
    dim: Annotated[
        int | None,
        typer.Option(
            min=2, help="--generate: embedding size.", show_default="CAPTURE_EMBEDDING_DIM"
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", metavar="FILE|-", help="Write the JSON lines here instead of sending."
        ),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(help="Target topic.", show_default="CAPTURE_COMMANDS_TOPIC"),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.001, metavar="N", help="At most N messages per second.")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Report invalid lines, send the valid ones.")
    ] = False,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="Summary as a table or one JSON object.")
    ] = OutputFormat.PRETTY,
) -> None:
    """Publish capture commands: validated first, then sent concurrently (acks=all).

    Invalid lines are listed on stderr as `line N: field: reason`; then nothing is
    sent and the exit code is 2, unless --skip-invalid. The topic is created with
    CAPTURE_TOPIC_PARTITIONS partitions when missing.

    Examples:

      capture-worker publish commands.jsonl

      capture-worker publish --generate 20000 --users 50 --rate 2000

      capture-worker publish --generate 100 --seed 7 --output - | jq .url
    """
    settings = get_settings()
    configure_logging(settings.log_format, "WARNING")
    if file is not None and generate is not None:
        fail("give FILE or --generate, not both", EXIT_INVALID)
    if file is None and generate is None:
        if sys.stdin.isatty():
            fail("give FILE, '-' for stdin, or --generate N", EXIT_INVALID)
        file = "-"
    if file not in (None, "-") and not Path(str(file)).is_file():
        fail(f"no such file: {file}", EXIT_INVALID)
    dimension = dim or settings.embedding_dim
    if generate is not None and output is None and dimension != settings.embedding_dim:
        fail(
            f"--dim {dim} differs from CAPTURE_EMBEDDING_DIM={settings.embedding_dim}: "
            "the worker would reject every command (use --output to only write them)",
            EXIT_INVALID,
        )

    generate_lines = extensions.generator()
    if generate is not None and generate_lines is None:
        fail(
            "--generate needs the devkit's generator: pip install 'capture-worker\\[bench]'",
            EXIT_INVALID,
        )
    if generate is not None and output is not None:
        assert generate_lines is not None
        # Generated lines are valid by construction (tested), so they are not re-checked.
        count = _write_lines(generate_lines(generate, users, seed, dimension), output)
        if output != "-":
            err_console.print(f"wrote {count} commands to {output}")
        return

    source: Iterable[tuple[int, bytes]]
    if generate is not None:
        assert generate_lines is not None
        generated = generate_lines(generate, users, seed, dimension)
        source = enumerate((line.encode() for line in generated), start=1)
    else:
        source = _read_file(str(file))
    show_progress = fmt is OutputFormat.PRETTY and err_console.is_terminal
    # Validating 20,000 commands takes seconds: say so on a terminal.
    with err_console.status("validating ...") if show_progress else contextlib.nullcontext():
        checked = check_lines(source, settings=settings)
    for error in checked.errors:
        err_console.print(str(error), markup=False, highlight=False, soft_wrap=True)
    if checked.errors and not skip_invalid:
        fail(
            f"{checked.invalid_lines} invalid line(s), nothing sent "
            "(--skip-invalid sends the valid ones)",
            EXIT_INVALID,
        )
    if output is not None:
        _write_lines((r.value for r in checked.records), output)
        return

    target = topic or settings.commands_topic
    tracing.configure("capture-worker-publish")  # a trace per command, when asked for
    try:
        with _progress(show_progress) as progress:
            task = progress.add_task("publish", total=len(checked.records), rate=0.0)
            started = time.perf_counter()
            done = 0

            def advance() -> None:
                nonlocal done
                done += 1
                elapsed = max(time.perf_counter() - started, 1e-6)
                progress.update(task, completed=done, rate=done / elapsed)

            report = asyncio.run(
                send_records(settings, target, checked.records, rate=rate, on_delivery=advance)
            )
    except KafkaError as exc:
        where = settings.kafka_bootstrap_servers
        fail(f"Kafka at {where}: {exc}", EXIT_SEND_FAILED)  # str() names the error class
        return
    except KeyboardInterrupt:
        fail("interrupted: some commands may have been sent", 130)
        return
    finally:
        tracing.shutdown()
    report.invalid = checked.invalid_lines
    _print_report(report, fmt)
    if report.failed:
        raise typer.Exit(EXIT_SEND_FAILED)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_command)
