"""Apache Kafka 4.x for the local stack: KRaft on loopback, one node or a cluster of N.

Every node has combined roles (broker and controller): `--brokers 3` starts three JVMs, not six,
which matters on a two-core machine, and a quorum of three voters survives any one node down,
the faults the cluster exists to show. Node n (1-based) listens for clients on
`port + 2(n-1)` and for the quorum on `controller_port + 2(n-1)`; node 1 keeps the single-node
paths (`<state>/kafka/`), node n > 1 lives in `<state>/kafka/node-n/`. A cluster gets replication
factor 3 and min.insync.replicas=2 as broker defaults (internal topics too).

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
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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
#: Heap of each node of a multi-node cluster (the single node keeps KafkaConfig.heap).
CLUSTER_HEAP = "384m"
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
    brokers: int = 1

    @property
    def nodes(self) -> range:
        """Node ids, 1..brokers."""
        return range(1, self.brokers + 1)

    def node_port(self, node: int) -> int:
        return self.port + 2 * (node - 1)

    def node_controller_port(self, node: int) -> int:
        return self.controller_port + 2 * (node - 1)

    def node_endpoint(self, node: int) -> str:
        return f"{self.host}:{self.node_port(node)}"

    @property
    def bootstrap(self) -> str:
        """Every node's client endpoint, comma-separated (KAFKA_BOOTSTRAP_SERVERS)."""
        return ",".join(self.node_endpoint(n) for n in self.nodes)

    @property
    def all_ports(self) -> list[int]:
        return [p for n in self.nodes for p in (self.node_port(n), self.node_controller_port(n))]

    @property
    def node_heap(self) -> str:
        return self.heap if self.brokers == 1 else CLUSTER_HEAP

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
            brokers=int(data.get("brokers", cls.brokers)),
        )


@dataclass(frozen=True)
class KafkaPaths:
    root: Path

    @classmethod
    def under(cls, state_dir: Path, node: int = 1) -> KafkaPaths:
        """Node 1 in `<state>/kafka` (the single-node layout), node n in `<state>/kafka/node-n`."""
        root = state_dir / "kafka"
        return cls(root if node == 1 else root / f"node-{node}")

    @property
    def quorum_state(self) -> Path:
        """KRaft's own record of the metadata quorum's leader and epoch on this node."""
        return self.data / "__cluster_metadata-0" / "quorum-state"

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
            "mvn not found: install Apache Maven 3.6+ (it fetches the Kafka and Connect jars, once)"
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
    return ensure_maven_libs(
        libs_dir(cache_dir, version),
        pom=POM,
        properties={"kafka.version": version},
        expected_jar=f"kafka_2.13-{version}.jar",
        what=f"Kafka {version}",
        progress=progress,
    )


def ensure_maven_libs(
    libs: Path,
    *,
    pom: Path,
    properties: Mapping[str, str],
    expected_jar: str,
    what: str,
    progress: Progress = no_progress,
) -> Path:
    """The jars `pom` resolves, copied into `libs` once (Maven is run only when they're not)."""
    if libs_complete(libs):
        return libs
    with process.blocking_file_lock(libs.parent / ".lock"):  # one download per cache
        if libs_complete(libs):
            return libs
        mvn = find_mvn()
        progress(f"fetching the {what} jars with Maven (first run only)")
        tmp = libs.with_name(f"libs.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        process.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                *(f"-D{k}={v}" for k, v in properties.items()),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
            ],
            log_path=libs.parent / "maven.log",
            what=f"mvn dependency:copy-dependencies ({what})",
        )
        jars = sorted(p.name for p in tmp.glob("*.jar"))
        if expected_jar not in jars:
            raise StackError(f"Maven did not produce {expected_jar}; see {libs.parent}/maven.log")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        (libs / _MARKER).write_text("\n".join(jars) + "\n")
        return libs


# -- configuration ---------------------------------------------------------------------------


def render_properties(cfg: KafkaConfig, paths: KafkaPaths, node: int = 1) -> str:
    client = cfg.security_protocol  # the listener is named after its protocol
    port, controller = cfg.node_port(node), cfg.node_controller_port(node)
    voters = ",".join(f"{n}@{cfg.host}:{cfg.node_controller_port(n)}" for n in cfg.nodes)
    rf = min(3, cfg.brokers)
    isr = 2 if rf >= 3 else 1  # acks=all still succeeds with one of three down
    lines = [
        "# Written by `capture-worker stack up` on every start: edit the generator, not this file.",
        "process.roles=broker,controller",
        f"node.id={node}",
        f"controller.quorum.voters={voters}",
        "controller.listener.names=CONTROLLER",
        f"listeners={client}://{cfg.host}:{port},CONTROLLER://{cfg.host}:{controller}",
        f"advertised.listeners={client}://{cfg.host}:{port}",
        f"inter.broker.listener.name={client}",
        "listener.security.protocol.map="
        "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={paths.data}",
        "num.partitions=6",
        f"default.replication.factor={rf}",
        f"min.insync.replicas={isr}",
        f"offsets.topic.replication.factor={rf}",
        "offsets.topic.num.partitions=10",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={isr}",
        f"share.coordinator.state.topic.replication.factor={rf}",
        f"share.coordinator.state.topic.min.isr={isr}",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "delete.topic.enable=true",
        f"message.max.bytes={MAX_MESSAGE_BYTES}",
        f"replica.fetch.max.bytes={MAX_MESSAGE_BYTES}",
        "num.network.threads=3" if cfg.brokers == 1 else "num.network.threads=2",
        "num.io.threads=4" if cfg.brokers == 1 else "num.io.threads=2",
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


def formatted_cluster_id(paths: KafkaPaths) -> str | None:
    try:
        text = (paths.data / "meta.properties").read_text()
    except OSError:
        return None
    match = re.search(r"^cluster\.id=(\S+)$", text, re.MULTILINE)
    return match.group(1) if match else None


def format_storage(java: str, libs: Path, paths: KafkaPaths, cluster_id: str) -> None:
    """`kafka-storage format` once per node (static voters: no --standalone needed)."""
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
            cluster_id,
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


def quorum_leader(state_dir: Path, cfg: KafkaConfig) -> int | None:
    """The metadata quorum's leader (the active controller) as the nodes last recorded it:
    the leader id of the highest epoch in their quorum-state files."""
    best: tuple[int, int] | None = None
    for node in cfg.nodes:
        try:
            data = json.loads(KafkaPaths.under(state_dir, node).quorum_state.read_text())
        except (OSError, ValueError):
            continue
        leader, epoch = data.get("leaderId", -1), data.get("leaderEpoch", -1)
        if isinstance(leader, int) and leader >= 0 and (best is None or epoch > best[0]):
            best = (int(epoch), leader)
    return best[1] if best else None


def node_status(
    cfg: KafkaConfig, state_dir: Path, node: int, *, ready: bool | None, leader: int | None
) -> ServiceStatus:
    paths = KafkaPaths.under(state_dir, node)
    pid = running_pid(paths)
    state: State = (
        "stopped" if pid is None else ("running" if ready is not False else "unresponsive")
    )
    role = (
        "broker+controller"
        if cfg.brokers == 1
        else (
            "broker+controller (quorum leader)" if leader == node else "broker+controller (voter)"
        )
    )
    return ServiceStatus(
        name="kafka" if cfg.brokers == 1 else f"kafka-{node}",
        state=state,
        pid=pid,
        endpoint=cfg.node_endpoint(node),
        version=cfg.version,
        log=paths.log,
        details={
            "security_protocol": cfg.security_protocol,
            "controller": f"{cfg.host}:{cfg.node_controller_port(node)}",
            "node_id": str(node),
            "role": role,
        },
    )


def status(
    cfg: KafkaConfig, state_dir: Path, *, ready: dict[int, bool | None]
) -> list[ServiceStatus]:
    """One row per node; `ready` maps node -> probe answer (None: not probed)."""
    leader = quorum_leader(state_dir, cfg) if cfg.brokers > 1 else None
    return [node_status(cfg, state_dir, n, ready=ready.get(n), leader=leader) for n in cfg.nodes]


async def probe_node(cfg: KafkaConfig, node: int, probe_s: float = 3.0) -> bool:
    return await probe_cluster(
        cfg.client_options() | {"bootstrap_servers": cfg.node_endpoint(node)}, probe_s
    )


async def live_brokers(cfg: KafkaConfig, probe_s: float = 3.0) -> set[int]:
    """Ids of the brokers the cluster reports registered and unfenced (empty: no answer)."""
    with quiet_logger("aiokafka"):
        admin = AIOKafkaAdminClient(request_timeout_ms=int(probe_s * 1000), **cfg.client_options())
        try:
            async with asyncio.timeout(probe_s):
                await admin.start()
                cluster = await admin.describe_cluster()
            return {int(b["node_id"]) for b in cluster.get("brokers") or []}
        except (KafkaError, OSError, TimeoutError):
            return set()
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()


async def start(
    cfg: KafkaConfig,
    *,
    state_dir: Path,
    cache_dir: Path,
    progress: Progress = no_progress,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> list[ServiceStatus]:
    """Start every node that is not running, then wait until the cluster has all its brokers."""
    began = time.monotonic()
    first = KafkaPaths.under(state_dir)
    recorded = recorded_config(first)
    if recorded is not None and recorded.brokers != cfg.brokers and formatted_cluster_id(first):
        raise StackError(
            f"{first.data} holds a {recorded.brokers}-node cluster, not {cfg.brokers}; "
            "remove it first: capture-worker stack down --purge"
        )
    pids = {n: running_pid(KafkaPaths.under(state_dir, n)) for n in cfg.nodes}
    if any(pid is not None for pid in pids.values()):
        running_cfg = recorded or cfg
        if running_cfg != cfg:
            raise StackError(
                f"kafka already runs with other settings ({running_cfg.bootstrap}, "
                f"{running_cfg.security_protocol}); stop it first: capture-worker stack stop kafka"
            )
    missing = [n for n, pid in pids.items() if pid is None]
    if missing:
        java = await asyncio.to_thread(check_java)
        for node in missing:
            for port in (cfg.node_port(node), cfg.node_controller_port(node)):
                if process.port_open(cfg.host, port):
                    raise StackError(f"port {cfg.host}:{port} is in use by another process (kafka)")
        libs = await asyncio.to_thread(ensure_libs, cache_dir, cfg.version, progress)
        cluster_id = _cluster_id(cfg, state_dir)
        spawned = await asyncio.gather(  # side by side: each format is a JVM start
            *(_spawn_node(cfg, state_dir, n, java, libs, cluster_id, progress) for n in missing)
        )
        pids.update(zip(missing, spawned, strict=True))
    try:
        await _wait_ready(cfg, state_dir, pids, ready_timeout_s, progress)
    except BaseException:
        if missing:
            for node in missing:
                await asyncio.to_thread(stop, KafkaPaths.under(state_dir, node))
        raise
    elapsed = time.monotonic() - began
    return [
        replace(s, pid=pids[n], already_running=n not in missing, elapsed_s=elapsed)
        for n, s in zip(
            cfg.nodes, status(cfg, state_dir, ready=dict.fromkeys(cfg.nodes, True)), strict=True
        )
    ]


def _cluster_id(cfg: KafkaConfig, state_dir: Path) -> str:
    """The id every node was formatted with (a node may have been formatted already), else a
    new one: all nodes of a cluster must share it."""
    for node in cfg.nodes:
        found = formatted_cluster_id(KafkaPaths.under(state_dir, node))
        if found:
            return found
    return new_cluster_id()


async def _spawn_node(
    cfg: KafkaConfig,
    state_dir: Path,
    node: int,
    java: str,
    libs: Path,
    cluster_id: str,
    progress: Progress,
) -> int:
    paths = KafkaPaths.under(state_dir, node)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.properties.write_text(render_properties(cfg, paths, node))
    paths.properties.chmod(0o600)  # may hold the SASL password
    if not (paths.data / "meta.properties").is_file():
        progress(f"kafka: formatting storage of node {node}")
    await asyncio.to_thread(format_storage, java, libs, paths, cluster_id)
    if paths.log.exists():
        paths.log.replace(paths.log.with_name(paths.log.name + ".1"))
    progress(f"kafka: starting node {node} on {cfg.node_endpoint(node)}")
    pid = process.spawn_detached(
        _java_cmd(java, libs, cfg.node_heap, "kafka.Kafka", str(paths.properties)),
        log_path=paths.log,
        cwd=paths.root,
    )
    record: dict[str, Any] = {"pid": pid, "node": node, "started_at": time.time()}
    if node == 1:  # node 1 keeps the cluster's settings
        record["config"] = cfg.to_json()
    process.write_json(paths.record, record, private=True)
    return pid


async def start_node(
    cfg: KafkaConfig,
    node: int,
    *,
    state_dir: Path,
    cache_dir: Path,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> int:
    """Start one node of an already formatted cluster (after a stop or a kill); returns its
    pid once the cluster lists every broker again."""
    paths = KafkaPaths.under(state_dir, node)
    pid = running_pid(paths)
    if pid is None:
        cluster_id = formatted_cluster_id(paths)
        if cluster_id is None:
            raise StackError(f"kafka node {node} was never formatted; run stack up first")
        java = await asyncio.to_thread(check_java)
        libs = await asyncio.to_thread(ensure_libs, cache_dir, cfg.version, no_progress)
        pid = await _spawn_node(cfg, state_dir, node, java, libs, cluster_id, no_progress)
    pids = {n: running_pid(KafkaPaths.under(state_dir, n)) for n in cfg.nodes}
    await _wait_ready(cfg, state_dir, pids, ready_timeout_s, no_progress)
    return pid


async def _wait_ready(
    cfg: KafkaConfig,
    state_dir: Path,
    pids: dict[int, int | None],
    wait_s: float,
    progress: Progress,
) -> None:
    """Until the cluster reports every running node as a registered, unfenced broker and
    each of them answers a metadata request itself."""
    progress(f"kafka: waiting for {cfg.brokers} broker(s) in a metadata answer on {cfg.bootstrap}")
    want = {n for n, pid in pids.items() if pid is not None}
    deadline = time.monotonic() + wait_s
    while True:
        for node, pid in pids.items():
            if pid is not None and not process.pid_alive(pid):
                log = KafkaPaths.under(state_dir, node).log
                raise StackError(
                    f"kafka node {node} exited during start-up; see {log}:\n{process.tail(log)}"
                )
        # A SIGKILLed node stays registered until its session times out, so the list alone
        # could name a node still starting: each node must also answer on its own listener.
        if want <= await live_brokers(cfg) and all(
            [await probe_node(cfg, node) for node in sorted(want)]
        ):
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"kafka did not list brokers {sorted(want)} on {cfg.bootstrap} within "
                f"{wait_s:.0f}s; see {KafkaPaths.under(state_dir).log}"
            )
        await asyncio.sleep(0.25)


def stop(paths: KafkaPaths, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop one node (SIGTERM, SIGKILL after `timeout`); returns its pid."""
    pid = running_pid(paths)
    if pid is not None:
        process.terminate(pid, timeout=timeout, what="kafka")
    record = process.read_json(paths.record)
    if record.get("pid") is not None:
        process.write_json(paths.record, {**record, "pid": None}, private=True)
    return pid


def node_count(state_dir: Path) -> int:
    """How many nodes the recorded cluster has (node directories left by an older run too)."""
    recorded = recorded_config(KafkaPaths.under(state_dir))
    root = state_dir / "kafka"
    extra = [int(p.name.split("-", 1)[1]) for p in root.glob("node-*") if p.name[5:].isdigit()]
    return max([recorded.brokers if recorded else 1, *extra])


def stop_all(state_dir: Path, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop every node; returns node 1's pid (or the first pid found).

    All at once: each node stops its broker before its controller, so every broker's
    controlled shutdown still finds a controller quorum. Stopped one after the other, the last
    node would wait for a quorum that is gone until SIGKILL.
    """
    nodes = range(1, node_count(state_dir) + 1)
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        pids = list(pool.map(lambda n: stop(KafkaPaths.under(state_dir, n), timeout), nodes))
    return next((p for p in pids if p is not None), None)
