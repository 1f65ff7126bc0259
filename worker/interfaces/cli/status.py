"""`capture-worker status`: where the worker's consumer group stands.

Like `kafka-consumer-groups --describe` plus the worker's own view: the group's state and
members, per partition the committed offset, the end offset and the lag, the size of the
DLQ, and the `/readyz` answer of every worker named with `--http`. Read-only: it never
joins the group.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from rich.console import Group
from rich.live import Live
from rich.table import Table

from worker.core.config import Settings, get_settings
from worker.core.logging import configure_logging
from worker.infrastructure.kafka_client import connection_options
from worker.interfaces.cli.output import OutputFormat, console, emit_json, fail
from worker.interfaces.cli.tail import topic_partitions
from worker.interfaces.cli.watch import watch as watch_until_stopped


@dataclass
class Member:
    client_id: str
    host: str
    partitions: list[str]


@dataclass
class PartitionLag:
    partition: int
    committed: int | None
    end: int
    lag: int


@dataclass
class WorkerProbe:
    address: str
    ready: bool
    answer: dict[str, Any] | str


@dataclass
class Status:
    group: str
    topic: str
    state: str
    members: list[Member] = field(default_factory=list)
    partitions: list[PartitionLag] = field(default_factory=list)
    dlq_topic: str = ""
    dlq_size: int | None = None
    workers: list[WorkerProbe] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


def _member(raw: dict[str, Any]) -> Member:
    partitions: list[str] = []
    assignment = raw.get("member_assignment") or b""
    if assignment:
        decoded = ConsumerProtocolMemberAssignment.decode(assignment)
        for topic, numbers in decoded.assignment:
            partitions.extend(f"{topic}[{n}]" for n in sorted(numbers))
    return Member(str(raw.get("client_id", "")), str(raw.get("client_host", "")), partitions)


async def _group(admin: AIOKafkaAdminClient, group: str) -> tuple[str, list[Member]]:
    for response in await admin.describe_consumer_groups([group]):
        for described in response.to_object().get("groups", []):
            members = [_member(m) for m in described.get("members", [])]
            return str(described.get("state") or "Unknown"), members
    return "Unknown", []


def probe_worker(address: str, timeout_s: float = 3.0) -> WorkerProbe:
    """GET /readyz of one worker (`host:port` or a URL)."""
    base = address if "://" in address else f"http://{address}"
    if not base.startswith(("http://", "https://")):
        return WorkerProbe(address, False, "not an http(s) address")
    url = f"{base.rstrip('/')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - http(s) only
            return WorkerProbe(address, reply.status == 200, json.loads(reply.read()))
    except urllib.error.HTTPError as exc:  # 503: answered, not ready
        try:
            body: dict[str, Any] | str = json.loads(exc.read())
        except ValueError:
            body = f"HTTP {exc.code}"
        return WorkerProbe(address, False, body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return WorkerProbe(address, False, f"unreachable: {exc}")


async def snapshot(
    settings: Settings, *, group: str, topic: str, dlq_topic: str, http: list[str]
) -> Status:
    admin = AIOKafkaAdminClient(**connection_options(settings))
    consumer = AIOKafkaConsumer(**connection_options(settings), group_id=None)
    try:
        # Inside: a client whose start failed (Kafka down) holds connections too.
        await admin.start()
        await consumer.start()
        state, members = await _group(admin, group)
        status = Status(group, topic, state, members, dlq_topic=dlq_topic)
        committed = await admin.list_consumer_group_offsets(group)
        numbers = await topic_partitions(settings, topic)
        if numbers is None:
            raise LookupError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in numbers]
        end = await consumer.end_offsets(tps)
        beginning = await consumer.beginning_offsets(tps)
        for tp in tps:
            done = committed.get(tp)
            offset = done.offset if done is not None and done.offset >= 0 else None
            # No commit yet: the group would start at the beginning (auto_offset_reset).
            lag = end[tp] - (offset if offset is not None else beginning[tp])
            status.partitions.append(PartitionLag(tp.partition, offset, end[tp], max(0, lag)))
        dlq_numbers = await topic_partitions(settings, dlq_topic)
        if dlq_numbers is not None:
            dlq_tps = [TopicPartition(dlq_topic, p) for p in dlq_numbers]
            dlq_end = await consumer.end_offsets(dlq_tps)
            dlq_start = await consumer.beginning_offsets(dlq_tps)
            status.dlq_size = sum(dlq_end[tp] - dlq_start[tp] for tp in dlq_tps)
        probes = [asyncio.to_thread(probe_worker, address) for address in http]
        status.workers = list(await asyncio.gather(*probes))
        return status
    finally:
        await consumer.stop()
        await admin.close()


def _compact(partitions: list[str]) -> str:
    """`t[0] t[1] u[3]` as `t: 0 1  u: 3`."""
    by_topic: dict[str, list[str]] = {}
    for name in partitions:
        topic, _, number = name.rstrip("]").rpartition("[")
        by_topic.setdefault(topic, []).append(number)
    return "  ".join(f"{topic}: {' '.join(numbers)}" for topic, numbers in by_topic.items())


def render(status: Status, max_lag: int | None) -> Group:
    head = Table(show_header=False, title=f"consumer group {status.group}")
    head.add_row("state", status.state)
    over = max_lag is not None and status.lag > max_lag
    lag_text = f"[bold red]{status.lag}[/] (> {max_lag})" if over else str(status.lag)
    head.add_row("lag", f"{lag_text} on {status.topic}")
    if status.dlq_size is None:
        head.add_row("dlq", f"{status.dlq_topic} does not exist")
    else:
        head.add_row("dlq", f"{status.dlq_size} record(s) in {status.dlq_topic}")

    members = Table(title=f"{len(status.members)} member(s)")
    for column in ("client id", "host", "partitions"):
        members.add_column(column)
    for m in status.members:
        members.add_row(m.client_id, m.host, _compact(m.partitions))

    lags = Table(title=f"{status.topic}")
    for column in ("partition", "committed", "end", "lag"):
        lags.add_column(column, justify="right")
    for p in status.partitions:
        committed = "-" if p.committed is None else str(p.committed)
        lags.add_row(str(p.partition), committed, str(p.end), str(p.lag))

    parts: list[Any] = [head, members, lags]
    if status.workers:
        workers = Table(title="workers (/readyz)")
        for column in ("address", "ready", "answer"):
            workers.add_column(column)
        for w in status.workers:
            answer = w.answer if isinstance(w.answer, str) else json.dumps(w.answer)
            ready = "[green]yes[/]" if w.ready else "[red]no[/]"
            workers.add_row(w.address, ready, answer)
        parts.append(workers)
    return Group(*parts)


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)


def status_command(
    http: Annotated[
        list[str] | None,
        typer.Option(
            "--http", metavar="HOST:PORT", help="A worker's HTTP address (repeatable): /readyz."
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Consumer group (default CAPTURE_CONSUMER_GROUP).")
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="Command topic (default CAPTURE_COMMANDS_TOPIC).")
    ] = None,
    max_lag: Annotated[
        int | None,
        typer.Option(metavar="N", min=0, help="Exit 1 when the group's total lag exceeds N."),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh in place until Ctrl-C or SIGTERM.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.2, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="pretty or json (one object per refresh).")
    ] = OutputFormat.PRETTY,
) -> None:
    """Where the consumer group stands: members, committed/end/lag per partition, DLQ size.

    With --max-lag N it exits 1 when the total lag is above N (for cron jobs and probes);
    with --watch, the exit code is the last refresh's.

    Examples:

      capture-worker status --http 127.0.0.1:8080

      capture-worker status --max-lag 10000 --format json | jq .lag

      capture-worker status --watch --interval 1
    """
    settings = get_settings()
    configure_logging(settings.log_format, "WARNING")
    chosen_group = group or settings.consumer_group
    chosen_topic = topic or settings.commands_topic

    def take() -> Status:
        try:
            return asyncio.run(
                snapshot(
                    settings,
                    group=chosen_group,
                    topic=chosen_topic,
                    dlq_topic=settings.dlq_topic,
                    http=list(http or ()),
                )
            )
        except LookupError as exc:
            fail(str(exc), 2)
        except KafkaError as exc:
            fail(f"Kafka at {settings.kafka_bootstrap_servers}: {exc!r}", 2)

    status = take()
    if watch and fmt is OutputFormat.PRETTY:
        # Empty at first: the watch shows the first status itself.
        with Live(console=console, auto_refresh=False) as live:
            status = watch_until_stopped(
                status,
                take,
                lambda s: live.update(render(s, max_lag), refresh=True),
                interval,
            )
    elif watch:
        status = watch_until_stopped(status, take, lambda s: emit_json(s.as_json()), interval)
    elif fmt is OutputFormat.JSON:
        emit_json(status.as_json())
    else:
        console.print(render(status, max_lag))
    if max_lag is not None and status.lag > max_lag:
        raise typer.Exit(1)
