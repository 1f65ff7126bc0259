"""Apache Kafka 4.x for the local stack: KRaft, one combined broker+controller on loopback.

The jars come from Maven Central through `files/pom.xml` into the user cache
(`<cache>/kafka-<version>/libs`, outside the work tree, shared by every state dir); the broker
runs as `java -cp '<libs>/*' kafka.Kafka <state>/kafka/server.properties`, detached, its output
in `<state>/kafka/kafka.log`. Ready means a real metadata request (DescribeCluster) answers.

With `SaslPlain` credentials the client listener is SASL_PLAINTEXT with SASL/PLAIN (the JAAS
config lives in server.properties); the controller listener stays PLAINTEXT on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devkit.stack import process
from devkit.stack.model import (
    Progress,
    ServiceStatus,
    State,
    no_progress,
    quiet_logger,
)
from devkit.stack.process import StackError

KAFKA_VERSION = "4.1.1"
MIN_JAVA = 17
#: Broker-side record batch limit: twice the worker's 1 MiB command limit, so that oversize
#: commands reach the worker (which must reject them) instead of bouncing at the broker.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

FILES = Path(__file__).parent / "files"
POM = FILES / "pom.xml"
LOG4J2 = FILES / "log4j2.xml"
_MARKER = ".capture-worker-complete"
_SAFE_SECRET = re.compile(r'^[^"\\\s]+$')


@dataclass(frozen=True, kw_only=True)
class SaslPlain:
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        for what, value in (("username", self.username), ("password", self.password)):
            if not _SAFE_SECRET.match(value):
                raise StackError(
                    f"kafka SASL {what} must be non-empty, without quotes, backslashes or spaces"
                )


@dataclass(frozen=True, kw_only=True)
class KafkaConfig:
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    version: str = KAFKA_VERSION
    auth: SaslPlain | None = None
    heap: str = "512m"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def security_protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.auth else "PLAINTEXT"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client talking to this broker."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.auth:
            options |= {
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": self.auth.username,
                "sasl_plain_password": self.auth.password,
            }
        return options

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KafkaConfig:
        auth = data.get("auth")
        return cls(
            host=str(data.get("host", cls.host)),
            port=int(data.get("port", cls.port)),
            controller_port=int(data.get("controller_port", cls.controller_port)),
            version=str(data.get("version", cls.version)),
            auth=SaslPlain(username=auth["username"], password=auth["password"]) if auth else None,
            heap=str(data.get("heap", cls.heap)),
        )


@dataclass(frozen=True)
class KafkaPaths:
    root: Path

    @classmethod
    def under(cls, state_dir: Path) -> KafkaPaths:
        return cls(state_dir / "kafka")

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "kafka.log"

    @property
    def setup_log(self) -> Path:
        return self.root / "setup.log"

    @property
    def record(self) -> Path:
        """pid and effective config of the running broker (holds the SASL password: 0600)."""
        return self.root / "service.json"


# -- prerequisites ---------------------------------------------------------------------------


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError(f"java not found: install a JDK {MIN_JAVA}+ (or set JAVA_HOME)")
    return found


@lru_cache(maxsize=4)
def java_major(java: str) -> int:
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise StackError(f"could not read the Java version from `{java} -version`")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> str:
    java = find_java()
    major = java_major(java)
    if major < MIN_JAVA:
        raise StackError(f"Kafka 4 needs Java {MIN_JAVA}+, found Java {major} at {java}")
    return java


def find_mvn() -> str:
    found = shutil.which("mvn")
    if not found:
        raise StackError(
            "mvn not found: install Apache Maven 3.6+ (it downloads the Kafka jars once)"
        )
    return found


def libs_dir(cache_dir: Path, version: str) -> Path:
    return cache_dir / f"kafka-{version}" / "libs"


def libs_complete(libs: Path) -> bool:
    marker = libs / _MARKER
    try:
        names = marker.read_text().split()
    except OSError:
        return False
    return bool(names) and all((libs / name).is_file() for name in names)


def ensure_libs(cache_dir: Path, version: str, progress: Progress = no_progress) -> Path:
    """The broker's jars in the cache, fetched with Maven unless a complete copy is there."""
    libs = libs_dir(cache_dir, version)
    if libs_complete(libs):
        return libs
    with process.blocking_file_lock(libs.parent / ".lock"):  # one download per cache
        if libs_complete(libs):
            return libs
        return _fetch_libs(libs, version, progress)


def _fetch_libs(libs: Path, version: str, progress: Progress) -> Path:
    mvn = find_mvn()
    progress(f"kafka: fetching Kafka {version} jars with Maven (first run only)")
    tmp = libs.with_name(f"libs.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    process.run(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM),
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ],
        log_path=libs.parent / "maven.log",
        what=f"mvn dependency:copy-dependencies (Kafka {version})",
    )
    jars = sorted(p.name for p in tmp.glob("*.jar"))
    if f"kafka_2.13-{version}.jar" not in jars:
        raise StackError(
            f"Maven did not produce kafka_2.13-{version}.jar; see {libs.parent}/maven.log"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    (libs / _MARKER).write_text("\n".join(jars) + "\n")
    return libs


# -- configuration ---------------------------------------------------------------------------


def render_properties(cfg: KafkaConfig, paths: KafkaPaths) -> str:
    client = cfg.security_protocol  # the listener is named after its protocol
    lines = [
        "# Written by `capture-worker stack up` on every start: edit the generator, not this file.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{cfg.host}:{cfg.controller_port}",
        "controller.listener.names=CONTROLLER",
        f"listeners={client}://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        f"advertised.listeners={client}://{cfg.host}:{cfg.port}",
        f"inter.broker.listener.name={client}",
        "listener.security.protocol.map="
        "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={paths.data}",
        "num.partitions=6",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "delete.topic.enable=true",
        f"message.max.bytes={MAX_MESSAGE_BYTES}",
        f"replica.fetch.max.bytes={MAX_MESSAGE_BYTES}",
        "num.network.threads=3",
        "num.io.threads=4",
        "log.retention.hours=168",
    ]
    if cfg.auth:
        user, password = cfg.auth.username, cfg.auth.password
        lines += [
            "sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{user}" password="{password}" user_{user}="{password}";',
        ]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """Like Kafka's `Uuid.randomUuid()`: URL-safe base64 of 16 random bytes, never led by '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _java_cmd(java: str, libs: Path, heap: str, main: str, *args: str) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J2}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def format_storage(java: str, libs: Path, paths: KafkaPaths) -> None:
    """`kafka-storage format` once per state dir (static voters: no --standalone needed)."""
    if (paths.data / "meta.properties").is_file():
        return
    process.run(
        _java_cmd(
            java,
            libs,
            "256m",
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(paths.properties),
            "--ignore-formatted",
        ),
        log_path=paths.setup_log,
        what="kafka storage format",
        timeout=120,
    )


# -- lifecycle -------------------------------------------------------------------------------


def running_pid(paths: KafkaPaths) -> int | None:
    """The live broker of this state dir: the recorded pid if still ours, else a search."""
    needles = ("kafka.Kafka", str(paths.properties))
    pid = process.read_json(paths.record).get("pid")
    if isinstance(pid, int) and process.process_matches(pid, *needles):
        return pid
    found = process.find_processes(*needles)
    return found[0] if found else None


def recorded_config(paths: KafkaPaths) -> KafkaConfig | None:
    data = process.read_json(paths.record).get("config")
    return KafkaConfig.from_json(data) if isinstance(data, dict) else None


async def probe(cfg: KafkaConfig, probe_s: float = 3.0) -> bool:
    """True when the broker answers DescribeCluster with at least one (unfenced) broker."""
    return await probe_cluster(cfg.client_options(), probe_s)


async def probe_cluster(client_options: dict[str, Any], probe_s: float = 3.0) -> bool:
    """`probe` for any cluster, given aiokafka connection options (bootstrap, security)."""
    with quiet_logger("aiokafka"):
        admin = AIOKafkaAdminClient(request_timeout_ms=int(probe_s * 1000), **client_options)
        try:
            async with asyncio.timeout(probe_s):
                await admin.start()
                cluster = await admin.describe_cluster()
            return bool(cluster.get("brokers"))
        except (KafkaError, OSError, TimeoutError):
            return False
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()


def status(cfg: KafkaConfig, paths: KafkaPaths, *, ready: bool | None) -> ServiceStatus:
    pid = running_pid(paths)
    state: State = (
        "stopped" if pid is None else ("running" if ready is not False else "unresponsive")
    )
    return ServiceStatus(
        name="kafka",
        state=state,
        pid=pid,
        endpoint=cfg.bootstrap,
        version=cfg.version,
        log=paths.log,
        details={
            "security_protocol": cfg.security_protocol,
            "controller": f"{cfg.host}:{cfg.controller_port}",
        },
    )


async def start(
    cfg: KafkaConfig,
    *,
    state_dir: Path,
    cache_dir: Path,
    progress: Progress = no_progress,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> ServiceStatus:
    """Start the broker unless it already runs (then only wait until it answers)."""
    paths = KafkaPaths.under(state_dir)
    began = time.monotonic()
    pid = running_pid(paths)
    if pid is not None:
        running_cfg = recorded_config(paths) or cfg
        if running_cfg != cfg:
            raise StackError(
                f"kafka already runs with other settings ({running_cfg.bootstrap}, "
                f"{running_cfg.security_protocol}); stop it first: capture-worker stack stop kafka"
            )
        await _wait_ready(cfg, pid, paths, ready_timeout_s, progress)
        return _started(cfg, paths, pid, already=True, began=began)

    java = await asyncio.to_thread(check_java)
    for port in (cfg.port, cfg.controller_port):
        if process.port_open(cfg.host, port):
            raise StackError(f"port {cfg.host}:{port} is in use by another process (kafka)")
    libs = await asyncio.to_thread(ensure_libs, cache_dir, cfg.version, progress)

    paths.root.mkdir(parents=True, exist_ok=True)
    paths.properties.write_text(render_properties(cfg, paths))
    paths.properties.chmod(0o600)  # may hold the SASL password
    progress("kafka: formatting storage")
    await asyncio.to_thread(format_storage, java, libs, paths)

    if paths.log.exists():
        paths.log.replace(paths.log.with_name(paths.log.name + ".1"))
    progress(f"kafka: starting broker on {cfg.bootstrap}")
    pid = process.spawn_detached(
        _java_cmd(java, libs, cfg.heap, "kafka.Kafka", str(paths.properties)),
        log_path=paths.log,
        cwd=paths.root,
    )
    process.write_json(
        paths.record,
        {"pid": pid, "config": cfg.to_json(), "started_at": time.time()},
        private=True,
    )
    try:
        await _wait_ready(cfg, pid, paths, ready_timeout_s, progress)
    except BaseException:
        await asyncio.to_thread(stop, paths)
        raise
    return _started(cfg, paths, pid, already=False, began=began)


def _started(
    cfg: KafkaConfig, paths: KafkaPaths, pid: int, *, already: bool, began: float
) -> ServiceStatus:
    return replace(
        status(cfg, paths, ready=True),
        pid=pid,
        already_running=already,
        elapsed_s=time.monotonic() - began,
    )


async def _wait_ready(
    cfg: KafkaConfig, pid: int, paths: KafkaPaths, wait_s: float, progress: Progress
) -> None:
    progress(f"kafka: waiting for a metadata answer on {cfg.bootstrap}")
    deadline = time.monotonic() + wait_s
    while True:
        if not process.pid_alive(pid):
            raise StackError(
                f"kafka exited during start-up; see {paths.log}:\n{process.tail(paths.log)}"
            )
        if await probe(cfg):
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"kafka did not answer a metadata request on {cfg.bootstrap} within "
                f"{wait_s:.0f}s; see {paths.log}"
            )
        await asyncio.sleep(0.25)


def stop(paths: KafkaPaths, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the broker of this state dir (SIGTERM, SIGKILL after `timeout`); returns its pid."""
    pid = running_pid(paths)
    if pid is not None:
        process.terminate(pid, timeout=timeout, what="kafka")
    record = process.read_json(paths.record)
    if record.get("pid") is not None:
        process.write_json(paths.record, {**record, "pid": None}, private=True)
    return pid
