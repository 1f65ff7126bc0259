"""The bench's peer: the Debezium JDBC sink connector on Kafka Connect.

What a team would deploy instead of the worker: Connect reads the same commands (encoded as
Connect JSON, with their schema), and the sink upserts one row per command, by `command_id`,
into a table of the command's shape, the embedding as `vector(D)`, with or without the same
HNSW index as `capture.artifacts`. It computes nothing: no ledger, no engagement, no subspace,
no result event.

Connect runs from the jars `files/pom.xml` resolves (cached like the broker's), every plugin on
the classpath (`plugin.discovery=service_load`), one standalone JVM per measurement (or a
distributed cluster of several, as the worker runs with several processes), stopped at its end.
A rate is rows over the time to the last row's `written_at`, a column the sink does not know
about whose default is PostgreSQL's clock, from either the connector's tasks RUNNING in a fresh
JVM (cold: the span the worker's e2e is timed on, from its readiness) or the connector's resume
after as many commands (warm: a JIT-compiled JVM in a joined group). `measure` does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from devkit.paths import cache_dir
from devkit.ports import free_port
from devkit.records import Command
from devkit.stack import kafka as stack_kafka
from devkit.stack import process
from devkit.stack.kafka import KAFKA_VERSION
from devkit.stack.model import Progress, no_progress
from worker.core.config import Settings

DEBEZIUM_VERSION = "3.6.0.Final"
#: Connect comes from the same release as the stack's broker.
CONNECT_VERSION = KAFKA_VERSION
FILES = Path(__file__).parent / "files"
POM = FILES / "pom.xml"
LOG4J2 = FILES / "log4j2.xml"
TABLE = "peer_captures"
HEAP = "1g"
#: The sink's statement batch, as the peer was measured with when the target was set.
SINK_BATCH = 500
READY_TIMEOUT_S = 120.0
STALL_TIMEOUT_S = 120.0


class PeerError(Exception):
    """The peer could not be set up or did not finish; the message says why."""


def ensure_libs(progress: Progress = no_progress) -> Path:
    """Connect, the connector and their dependencies in the user cache (Maven, first run)."""
    libs = cache_dir() / f"connect-{CONNECT_VERSION}-debezium-jdbc-{DEBEZIUM_VERSION}" / "libs"
    return stack_kafka.ensure_maven_libs(
        libs,
        pom=POM,
        properties={"kafka.version": CONNECT_VERSION, "debezium.version": DEBEZIUM_VERSION},
        expected_jar=f"debezium-connector-jdbc-{DEBEZIUM_VERSION}.jar",
        what=f"Debezium JDBC sink {DEBEZIUM_VERSION} + Connect {CONNECT_VERSION}",
        progress=progress,
    )


# -- the records and the table ---------------------------------------------------------------


def _field(field: str, kind: str, *, optional: bool = False, **extra: object) -> dict[str, object]:
    return {"field": field, "type": kind, "optional": optional, **extra}


def value_schema(dim: int) -> dict[str, object]:
    """The Connect schema of a command, with the logical names the sink maps to column types."""
    return {
        "type": "struct",
        "name": "capture.CaptureArtifactCommand",
        "optional": False,
        "fields": [
            _field("command_id", "string", name="io.debezium.data.Uuid"),
            _field("user_id", "string", name="io.debezium.data.Uuid"),
            _field("url", "string"),
            _field("title", "string", optional=True),
            # The sink writes vector(D) for this name, given the source column's length.
            _field(
                "embedding",
                "array",
                items={"type": "double", "optional": False},
                name="io.debezium.data.DoubleVector",
                parameters={"__debezium.source.column.length": str(dim)},
            ),
            _field("reading_depth", "double"),
            _field("occurred_at", "string", name="io.debezium.time.ZonedTimestamp"),
            _field("schema_version", "int32"),
        ],
    }


def connect_json(command: str, schema_json: str) -> str:
    """A command as Connect JSON: its own text is the payload, field for field."""
    return f'{{"schema":{schema_json},"payload":{command}}}'


def table_ddl(dim: int, *, index: bool) -> list[str]:
    statements = [
        f"""CREATE TABLE public.{TABLE} (
            command_id     uuid PRIMARY KEY,
            user_id        uuid NOT NULL,
            url            text NOT NULL,
            title          text,
            embedding      vector({dim}) NOT NULL,
            reading_depth  double precision NOT NULL,
            occurred_at    timestamptz NOT NULL,
            schema_version integer NOT NULL,
            written_at     timestamptz NOT NULL DEFAULT clock_timestamp()
        )"""
    ]
    if index:  # the definition of capture.artifacts_embedding_hnsw
        statements.append(
            f"CREATE INDEX {TABLE}_embedding_hnsw ON public.{TABLE} "
            "USING hnsw (embedding vector_cosine_ops)"
        )
    return statements


async def create_table(url: str, *, dim: int, index: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in table_ddl(dim, index=index):
            await conn.execute(statement)
    finally:
        await conn.close()


# -- Connect's configuration ------------------------------------------------------------------


def _jdbc(url: str) -> tuple[str, str, str]:
    """(JDBC URL, user, password) of a postgresql:// URL."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5432
    database = parts.path.lstrip("/") or "postgres"
    return (
        f"jdbc:postgresql://{host}:{port}/{database}",
        unquote(parts.username or "postgres"),
        unquote(parts.password or ""),
    )


def _client_properties(settings: Settings) -> dict[str, str]:
    protocol = settings.kafka_security_protocol
    props: dict[str, str] = {"security.protocol": protocol}
    if protocol in ("SSL", "SASL_SSL") and settings.kafka_ssl_cafile:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = settings.kafka_ssl_cafile
    if protocol.startswith("SASL"):
        mechanism = settings.kafka_sasl_mechanism or "PLAIN"
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if mechanism == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        password = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        )
        props["sasl.mechanism"] = mechanism
        props["sasl.jaas.config"] = (
            f'{module} required username="{settings.kafka_sasl_username or ""}" '
            f'password="{password}";'
        )
    return props


def worker_properties(
    settings: Settings, *, work_dir: Path, rest_port: int, fetch_bytes: int
) -> dict[str, str]:
    client = _client_properties(settings)
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        **client,
        **{f"consumer.{k}": v for k, v in client.items()},
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": str(work_dir / "offsets"),
        "listeners": f"http://127.0.0.1:{rest_port}",
        "plugin.discovery": "service_load",
        # A poll must carry a whole sink batch of ~9 KB records (the default is 1 MiB).
        "consumer.max.partition.fetch.bytes": str(fetch_bytes),
        "consumer.max.poll.records": str(SINK_BATCH),
        "consumer.auto.offset.reset": "earliest",
    }


def cluster_topics(prefix: str) -> dict[str, str]:
    """The topics a distributed cluster keeps its state in, by kind (config, offset, status)."""
    return {
        "config": f"{prefix}-configs",
        "offset": f"{prefix}-offsets",
        "status": f"{prefix}-status",
    }


def cluster_properties(
    worker: Mapping[str, str], group: str, topics_prefix: str, rest_port: int
) -> dict[str, str]:
    """A standalone worker's settings made one member of a distributed cluster: its offsets,
    the connectors' configs and statuses in topics (one partition where Connect allows it)."""
    topics = cluster_topics(topics_prefix)
    return {
        **{k: v for k, v in worker.items() if k != "offset.storage.file.filename"},
        "group.id": group,
        **{f"{kind}.storage.topic": name for kind, name in topics.items()},
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        "offset.storage.partitions": "1",
        "status.storage.partitions": "1",
        "listeners": f"http://127.0.0.1:{rest_port}",
        "rest.advertised.host.name": "127.0.0.1",
        "rest.advertised.port": str(rest_port),
    }


def connector_properties(name: str, topic: str, database_url: str, *, tasks: int) -> dict[str, str]:
    """The sink's settings; `name` also names its consumer group (connect-<name>)."""
    jdbc_url, user, password = _jdbc(database_url)
    return {
        "name": name,
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": str(tasks),
        "topics": topic,
        "connection.url": jdbc_url,
        "connection.username": user,
        "connection.password": password,
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "command_id",
        "schema.evolution": "none",
        "collection.name.format": TABLE,
        "batch.size": str(SINK_BATCH),
    }


def _render(props: Mapping[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n")

    return "".join(f"{k}={escape(v)}\n" for k, v in props.items())


# -- the process ------------------------------------------------------------------------------


@dataclass
class Connect:
    """Connect JVMs running one connector; `stop` ends them whatever their state."""

    libs: Path
    work_dir: Path
    #: Each JVM's REST port; the first is the one asked.
    rest_ports: list[int]
    #: The connector's name, one per measurement: its consumer group is connect-<name>, so
    #: two benches on one cluster never share a group.
    name: str = field(default_factory=lambda: f"capture-peer-{uuid.uuid4().hex[:10]}")
    pids: list[int] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.work_dir / "connect.log"

    def _log(self, index: int) -> Path:
        return self.log_path if index == 0 else self.work_dir / f"connect-{index}.log"

    def _spawn(self, index: int, main_class: str, *files: Path) -> None:
        try:
            java = stack_kafka.check_java()
        except process.StackError as exc:
            raise PeerError(str(exc)) from exc
        pid = process.spawn_detached(
            [
                java,
                f"-Xmx{HEAP}",
                f"-Xms{HEAP}",
                "-XX:+UseG1GC",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                f"{self.libs}/*",
                main_class,
                *map(str, files),
            ],
            log_path=self._log(index),
            cwd=self.work_dir,
        )
        self.pids.append(pid)

    def alive(self) -> None:
        for index, pid in enumerate(self.pids):
            if not process.pid_alive(pid):
                log = self._log(index)
                raise PeerError(f"Kafka Connect exited; see {log}:\n{process.tail(log, 15)}")

    def _tail(self) -> str:
        return process.tail(self.log_path, 15)

    def _rest(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, port: int = 0
    ) -> dict[str, Any] | None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port or self.rest_ports[0]}/connectors{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback http)
                answer = response.read()
        except (urllib.error.URLError, OSError):
            return None
        with contextlib.suppress(ValueError):
            loaded = json.loads(answer) if answer else {}
            return loaded if isinstance(loaded, dict) else {"answer": loaded}
        return None

    async def _status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._rest, "GET", f"/{self.name}/status") or {}

    async def wait_state(self, state: str, tasks: int) -> float:
        """Wait until the connector and all its `tasks` report `state` (RUNNING, PAUSED);
        returns the wall-clock time (epoch s) this was seen."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.alive()
            status = await self._status()
            states = [t.get("state") for t in status.get("tasks", [])]
            if "FAILED" in states:
                raise PeerError(f"a connector task failed; see {self.log_path}:\n{self._tail()}")
            connector = status.get("connector", {}).get("state")
            if connector == state and len(states) == tasks and set(states) == {state}:
                return time.time()
            await asyncio.sleep(0.1)
        raise PeerError(f"Connect's tasks were not {state} after {READY_TIMEOUT_S:.0f}s")

    async def launch(
        self, worker: Mapping[str, str], connector: Mapping[str, str], tasks: int
    ) -> float:
        """Start the JVMs and return once the connector's `tasks` are RUNNING, with the time
        (epoch s) they were first seen RUNNING (the peer's cold start is timed from it, or
        from its first row when that came first)."""
        raise NotImplementedError

    async def pause(self, tasks: int) -> None:
        if await asyncio.to_thread(self._rest, "PUT", f"/{self.name}/pause") is None:
            raise PeerError("Connect refused to pause the connector")
        await self.wait_state("PAUSED", tasks)

    async def resume(self) -> None:
        if await asyncio.to_thread(self._rest, "PUT", f"/{self.name}/resume") is None:
            raise PeerError("Connect refused to resume the connector")

    def peak_rss(self) -> list[int]:
        """Each JVM's peak resident set so far (the kernel's VmHWM), in bytes."""
        peaks = []
        for pid in self.pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) * 1024)
        return peaks

    def stop(self) -> None:
        while self.pids:
            pid = self.pids.pop()
            process.terminate(pid, timeout=20, first_signal=signal.SIGTERM, what="Connect")


class ConnectStandalone(Connect):
    """One Connect standalone JVM, its connector given at its start."""

    async def launch(
        self, worker: Mapping[str, str], connector: Mapping[str, str], tasks: int
    ) -> float:
        self.start(worker, connector)
        return await self.wait_state("RUNNING", tasks)

    def start(self, worker: Mapping[str, str], connector: Mapping[str, str]) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        worker_file = self.work_dir / "worker.properties"
        connector_file = self.work_dir / "connector.properties"
        worker_file.write_text(_render(worker))
        connector_file.write_text(_render(connector))
        connector_file.chmod(0o600)  # it holds the database password
        main = "org.apache.kafka.connect.cli.ConnectStandalone"
        self._spawn(0, main, worker_file, connector_file)


@dataclass
class ConnectDistributed(Connect):
    """A Connect cluster of one JVM per REST port in distributed mode, as a team runs it on
    several hosts: its tasks shared among the JVMs, its offsets, configs and statuses in
    topics named after `topics_prefix` (`cluster_topics`)."""

    topics_prefix: str = ""

    async def launch(
        self, worker: Mapping[str, str], connector: Mapping[str, str], tasks: int
    ) -> float:
        self.start(worker)
        return await self.create(connector, tasks)

    def start(self, worker: Mapping[str, str]) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        prefix = self.topics_prefix or f"{self.name}-cluster"
        for index, port in enumerate(self.rest_ports):
            props = cluster_properties(worker, f"{self.name}-cluster", prefix, port)
            worker_file = self.work_dir / f"worker-{index}.properties"
            worker_file.write_text(_render(props))
            self._spawn(index, "org.apache.kafka.connect.cli.ConnectDistributed", worker_file)

    async def create(self, connector: Mapping[str, str], tasks: int) -> float:
        """Submit the connector once every JVM answers, and wait until its tasks run on as
        many JVMs as there are tasks for (a JVM that joins late gets its share then).
        Returns when they were first all RUNNING (the spreading comes after, while they
        already write rows)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        for port in self.rest_ports:
            while await asyncio.to_thread(self._rest, "GET", "", port=port) is None:
                self.alive()
                if time.monotonic() > deadline:
                    raise PeerError(f"Connect on port {port} did not answer; see {self.work_dir}")
                await asyncio.sleep(0.2)
        config = {k: v for k, v in connector.items() if k != "name"}
        body = {"name": self.name, "config": config}
        while not await self._status():
            # Refused while the cluster rebalances (no leader yet); taken once, it has a status.
            self.alive()
            if time.monotonic() > deadline:
                raise PeerError(f"Connect did not take the connector; see {self.log_path}")
            await asyncio.to_thread(self._rest, "POST", "", body)
            await asyncio.sleep(0.5)
        running = await self.wait_state("RUNNING", tasks)
        spread = min(len(self.rest_ports), tasks)
        while time.monotonic() < deadline:
            status = await self._status()
            if len({t.get("worker_id") for t in status.get("tasks", [])}) >= spread:
                return running
            await asyncio.sleep(0.2)
        raise PeerError(f"Connect's tasks did not spread over {spread} JVMs")


async def wait_rows(
    url: str,
    expected: int,
    *,
    connect: Connect,
    on_progress: Callable[[int], None] = lambda _: None,
) -> tuple[float, float]:
    """Poll the row count until `expected`; returns the first and the last row's written_at
    (epoch s)."""
    conn = await asyncpg.connect(url)
    try:
        seen, last_change = -1, time.monotonic()
        while True:
            connect.alive()
            count = int(await conn.fetchval(f"SELECT count(*) FROM public.{TABLE}"))
            on_progress(count)
            if count >= expected:
                span = await conn.fetchrow(
                    f"SELECT extract(epoch FROM min(written_at)) AS first, "
                    f"extract(epoch FROM max(written_at)) AS last FROM public.{TABLE}"
                )
                assert span is not None  # an aggregate's one row
                return float(span["first"]), float(span["last"])
            if count != seen:
                seen, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > STALL_TIMEOUT_S:
                raise PeerError(f"the sink stalled at {count} of {expected} rows")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _truncate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"TRUNCATE public.{TABLE}")
    finally:
        await conn.close()


# -- one measurement ----------------------------------------------------------------------------


def encode(commands: Sequence[Command], dim: int) -> list[Command]:
    """The same records, each value in Connect JSON."""
    schema = json.dumps(value_schema(dim), separators=(",", ":"))
    return [Command(c.command_id, c.key, connect_json(c.text, schema)) for c in commands]


def distinct_ids(commands: Sequence[Command]) -> int:
    """The rows an upsert by command_id leaves (a stream may repeat a command)."""
    return len({c.command_id for c in commands})


Publish = Callable[[str, Sequence[Command]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class PeerRun:
    tasks: int
    rows: int
    seconds: float
    #: The warm-up, timed as the worker's e2e is: from a fresh process ready to its last row.
    cold_rows: int
    cold_seconds: float
    #: Each Connect JVM's peak resident set (bytes), at the end of the measurement.
    peak_rss: tuple[int, ...] = ()

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def cold_per_s(self) -> float:
        return self.cold_rows / self.cold_seconds if self.cold_seconds > 0 else 0.0


async def measure(
    settings: Settings,
    *,
    libs: Path,
    database_url: str,
    topics: tuple[str, str],
    warmup: Sequence[Command],
    commands: Sequence[Command],
    tasks: int,
    dim: int,
    index: bool,
    fetch_bytes: int,
    work_dir: Path,
    publish: Publish,
    before_timing: Callable[[], Awaitable[None]],
    on_progress: Callable[[int, int], None] = lambda _done, _total: None,
    workers: int = 1,
    cluster_prefix: str = "",
) -> PeerRun:
    """The sink's rate on `commands`, its JVM warmed by `warmup` first; and on `warmup`, cold.

    One JVM runs Connect standalone; `workers` > 1 JVMs run it distributed, one cluster whose
    own topics are named from `cluster_prefix` (`cluster_topics`).

    `topics` are (warm-up, measured), both empty and subscribed from the start. The warm-up is
    published, Connect started, and its rows timed from the tasks RUNNING (or the first row,
    when that came first) to the last row: a cold start, as the worker's e2e is timed from its
    readiness. Then the connector is paused,
    the table emptied, `commands` published, and the clock runs from the resume to the last
    row: a JIT-compiled JVM with a joined consumer group, which favours the peer.
    """
    await create_table(database_url, dim=dim, index=index)
    warm_topic, topic = topics
    await publish(warm_topic, warmup)
    cold_rows, expected = distinct_ids(warmup), distinct_ids(commands)
    total = cold_rows + expected
    await before_timing()
    ports = [free_port() for _ in range(workers)]
    worker = worker_properties(
        settings, work_dir=work_dir, rest_port=ports[0], fetch_bytes=fetch_bytes
    )
    connect = (
        ConnectStandalone(libs, work_dir, ports)
        if workers == 1
        else ConnectDistributed(libs, work_dir, ports, topics_prefix=cluster_prefix)
    )
    connector = connector_properties(
        connect.name, f"{warm_topic},{topic}", database_url, tasks=tasks
    )
    try:
        running = await connect.launch(worker, connector, tasks)
        cold_first, cold_last = await wait_rows(
            database_url, cold_rows, connect=connect, on_progress=lambda n: on_progress(n, total)
        )
        # From the tasks RUNNING, or from the first row where that came before the status
        # said so: a cluster's statuses travel through a topic and can lag its tasks by
        # seconds, and its tasks write rows while they spread over the JVMs.
        cold_started = min(running, cold_first)
        await connect.pause(tasks)
        await _truncate(database_url)
        await publish(topic, commands)
        await before_timing()
        started = time.time()
        await connect.resume()
        _, last = await wait_rows(
            database_url,
            expected,
            connect=connect,
            on_progress=lambda n: on_progress(cold_rows + n, total),
        )
        peak_rss = tuple(connect.peak_rss())
    finally:
        connect.stop()
    return PeerRun(
        tasks=tasks,
        rows=expected,
        seconds=last - started,
        cold_rows=cold_rows,
        cold_seconds=cold_last - cold_started,
        peak_rss=peak_rss,
    )
