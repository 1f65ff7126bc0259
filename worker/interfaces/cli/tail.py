"""`capture-worker tail [TOPIC]`: read a topic like `tail`: results by default, or the DLQ.

A read-only observer: the consumer has no group id, assigns partitions itself,
and never commits, so it can neither disturb the worker's group nor move its
offsets. Without --follow it stops at the end offsets taken at start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeAlias

import typer
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.core.config import Settings, get_settings
from worker.core.logging import configure_logging
from worker.infrastructure.kafka_client import connection_options
from worker.interfaces.cli.output import OutputFormat, console, emit_json, err_console, fail
from worker.interfaces.cli.tail_render import pretty_line
from worker.interfaces.cli.timespec import parse_timestamp, to_millis

# aiokafka ships no type information: this alias is documentation for readers.
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class Status(StrEnum):
    INGESTED = "ingested"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Start:
    """Where each partition starts: exactly one of the fields decides, else the default."""

    beginning: bool = False
    timestamp_ms: int | None = None
    last: int | None = None
    follow: bool = False

    def describe(self) -> str:
        if self.timestamp_ms is not None:
            return f"from {datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat()}"
        if self.last is not None:
            return f"last {self.last} per partition"
        return "new events only" if self.follow and not self.beginning else "from the beginning"


@dataclass(frozen=True, slots=True)
class Filters:
    user: str | None = None
    status: Status | None = None

    def accept(self, value: Any, key: bytes | None) -> bool:
        record = value if isinstance(value, dict) else {}
        if self.status is not None and record.get("status") != self.status.value:
            return False
        if self.user is not None:
            # Unparseable records (DLQ) still carry the original key, which is the user id.
            user = record.get("user_id") or (key or b"").decode("utf-8", "replace")
            return str(user).lower() == self.user.lower()
        return True


def decode_value(raw: bytes | None) -> tuple[Any, str]:
    """(value, how): parsed JSON, else text, else base64; how is json | text | base64 | null."""
    if raw is None:
        return None, "null"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"
    try:
        return json.loads(text), "json"
    except ValueError:
        return text, "text"


def decode_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """Header values as text (base64 when not UTF-8); a repeated name maps to a list."""
    decoded: dict[str, Any] = {}
    for name, raw in headers:
        try:
            value: str = (raw or b"").decode("utf-8")
        except UnicodeDecodeError:
            value = "base64:" + base64.b64encode(raw).decode("ascii")
        if name in decoded:
            previous = decoded[name]
            decoded[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            decoded[name] = value
    return decoded


def kafka_metadata(record: Record) -> dict[str, Any]:
    key: str | None = None
    if record.key is not None:
        try:
            key = record.key.decode("utf-8")
        except UnicodeDecodeError:
            key = "base64:" + base64.b64encode(record.key).decode("ascii")
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": _iso_ms(record.timestamp),
        "key": key,
        "headers": decode_headers(record.headers),
    }


def as_json_object(record: Record, value: Any, how: str) -> dict[str, Any]:
    """The value's own fields (jq-friendly) plus `_kafka`; non-object values under `_value`."""
    meta = kafka_metadata(record)
    if how == "json" and isinstance(value, dict):
        return {**value, "_kafka": meta}
    field = {"json": "_value", "text": "_value_text", "base64": "_value_base64"}.get(how, "_value")
    return {field: value, "_kafka": meta}


def _iso_ms(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def topic_partitions(settings: Settings, topic: str) -> list[int] | None:
    """The topic's partitions, or None when it does not exist (never auto-creates it)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return None
        described = await admin.describe_topics([topic])
        return sorted(p["partition"] for t in described for p in t["partitions"])
    finally:
        await admin.close()


async def start_offsets(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    start: Start,
    end: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    beginning: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    if start.timestamp_ms is not None:
        found = await consumer.offsets_for_times({tp: start.timestamp_ms for tp in partitions})
        # No record at or after the time: nothing to show there but what comes next.
        return {tp: found[tp].offset if found.get(tp) else end[tp] for tp in partitions}
    if start.last is not None:
        return {tp: max(beginning[tp], end[tp] - start.last) for tp in partitions}
    if start.follow and not start.beginning:
        return dict(end)
    return beginning


class Tail:
    """Reads the assigned partitions from their start offsets; `stop()` ends it cleanly."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        start: Start,
        filters: Filters,
        emit: Callable[[Record, Any, str], None],
        max_messages: int | None = None,
        on_waiting: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.start = start
        self.filters = filters
        self.emit = emit
        self.max_messages = max_messages
        self.on_waiting = on_waiting
        self.shown = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def _wait_for_topic(self) -> list[int]:
        waited = False
        while not self._stopping.is_set():
            partitions = await topic_partitions(self.settings, self.topic)
            if partitions:
                return partitions
            if not self.start.follow:
                raise LookupError(f"topic {self.topic!r} does not exist")
            if not waited:
                self.on_waiting(f"waiting for topic {self.topic!r} to be created ...")
                waited = True
            await self._sleep(1.0)
        return []

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self) -> int:
        partitions = await self._wait_for_topic()
        if not partitions:
            return 0
        consumer = AIOKafkaConsumer(
            **connection_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # DLQ records may be oversize commands: let the largest through.
            max_partition_fetch_bytes=self.settings.record_room_bytes,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            offsets = await start_offsets(consumer, tps, self.start, end)
            for tp, offset in offsets.items():
                consumer.seek(tp, offset)
            active = set(tps) if self.start.follow else {tp for tp in tps if offsets[tp] < end[tp]}
            await self._read(consumer, active, end)
        finally:
            await consumer.stop()
        return self.shown

    async def _read(
        self,
        consumer: AIOKafkaConsumer,
        active: set[TopicPartition],
        end: Mapping[TopicPartition, int],
    ) -> None:
        while active and not self._stopping.is_set():
            fetch = asyncio.ensure_future(
                consumer.getmany(*active, timeout_ms=1000, max_records=500)
            )
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not fetch.done():
                fetch.cancel()
                break
            batches: dict[TopicPartition, list[Record]] = fetch.result()
            for tp, records in batches.items():
                for record in records:
                    if not self.start.follow and record.offset >= end[tp]:
                        break  # written after we started: not ours without --follow
                    if self._show(record):
                        return
            if not self.start.follow:
                for tp in list(active):
                    if await consumer.position(tp) >= end[tp]:
                        active.discard(tp)

    def _show(self, record: Record) -> bool:
        """Emit the record when it passes the filters; True once --max-messages is reached."""
        value, how = decode_value(record.value)
        if not self.filters.accept(value, record.key):
            return False
        self.emit(record, value, how)
        self.shown += 1
        return self.max_messages is not None and self.shown >= self.max_messages


def _emitter(fmt: OutputFormat) -> Callable[[Record, Any, str], None]:
    if fmt is OutputFormat.JSON:
        return lambda record, value, how: emit_json(as_json_object(record, value, how))

    def pretty(record: Record, value: Any, how: str) -> None:
        console.print(
            pretty_line(record, value, how, decode_headers(record.headers), _iso_ms),
            soft_wrap=True,
            highlight=False,
        )

    return pretty


def register(app: typer.Typer) -> None:
    app.command("tail")(tail_command)


def tail_command(
    topic: Annotated[
        str | None,
        typer.Argument(help="Topic to read.", show_default="CAPTURE_RESULTS_TOPIC"),
    ] = None,
    *,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record.")
    ] = False,
    from_timestamp: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Start at the first record at/after TIME: RFC 3339 or a duration like -15m, -1h.",
        ),
    ] = None,
    last: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Start N records before each end.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep reading new records until Ctrl-C.")
    ] = False,
    user: Annotated[str | None, typer.Option(help="Only this user_id (or record key).")] = None,
    status: Annotated[Status | None, typer.Option(help="Only results with this status.")] = None,
    max_messages: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Stop after showing N records.")
    ] = None,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", help="pretty: one coloured line each; json: one object per line."),
    ] = OutputFormat.PRETTY,
) -> None:
    """Show the records of a topic (results by default; works on the DLQ and commands too).

    Where it starts: --from-beginning, --from-timestamp or --last N (per partition).
    With none of them it reads from the beginning, except `--follow` alone, which
    shows only new records (like kafka-console-consumer). It stops at the end
    offsets taken at start unless --follow; Ctrl-C exits cleanly (code 0).
    It never joins a consumer group and never commits offsets.

    --format json prints the value's own fields plus `_kafka` (topic, partition,
    offset, timestamp, key, headers); values that are not JSON objects appear as
    `_value`, `_value_text` or `_value_base64`.

    Examples:

      capture-worker tail --last 5

      capture-worker tail --follow --status rejected

      capture-worker tail capture.dlq --from-timestamp -1h --format json | jq '._kafka.headers'
    """
    settings = get_settings()
    configure_logging(settings.log_format, "WARNING")
    if sum((from_beginning, from_timestamp is not None, last is not None)) > 1:
        fail("give at most one of --from-beginning, --from-timestamp, --last", 2)
    timestamp_ms = None
    if from_timestamp is not None:
        try:
            timestamp_ms = to_millis(parse_timestamp(from_timestamp))
        except ValueError as exc:
            fail(str(exc), 2)
    start = Start(beginning=from_beginning, timestamp_ms=timestamp_ms, last=last, follow=follow)
    source = topic or settings.results_topic
    if fmt is OutputFormat.PRETTY and err_console.is_terminal:
        until = "following (Ctrl-C stops)" if follow else "up to the current end"
        err_console.print(f"[dim]{source}: {start.describe()}, {until}[/]", highlight=False)
    tail = Tail(
        settings,
        source,
        start=start,
        filters=Filters(user=user, status=status),
        emit=_emitter(fmt),
        max_messages=max_messages,
        on_waiting=lambda note: err_console.print(f"[dim]{note}[/]"),
    )
    try:
        asyncio.run(_run(tail))
    except LookupError as exc:
        fail(str(exc), 1)
    except KafkaError as exc:
        fail(f"Kafka at {settings.kafka_bootstrap_servers}: {exc}", 1)  # str() names the class
    except BrokenPipeError:
        # The reader went away (`| head`): that is a normal way to stop.
        _silence_stdout()


async def _run(tail: Tail) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, tail.stop)
    try:
        return await tail.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _silence_stdout() -> None:
    # Python flushes stdout at exit; point it at /dev/null so that flush cannot fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
