"""A three-node Kafka cluster for the cluster scenarios, and the faults they inject into it.

The cluster is `capture-worker stack up --brokers 3` through the same Python API, in its own
state dir on free ports, started once per module and stopped whatever happens. Its topics get
replication factor 3 and min.insync.replicas=2, so acks=all still succeeds with one node down.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import murmur2

from devkit import stack
from devkit.stack import kafka
from devkit.stack.kafka import KafkaPaths
from tests.e2e.conftest import WorkerSetup
from tests.fixtures.services import unavailable
from tests.reliability.kafka_io import Item

PARTITIONS = 6
REPLICATION = 3
MIN_ISR = 2
PORT_SPAN = 10  # node ports base+0/+2/+4, controller ports base+1/+3/+5


def free_port_range(span: int = PORT_SPAN) -> int:
    """A base port with `span` consecutive free ports above it (bound, then released)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + span >= 65000:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no range of free ports found")


@dataclass
class Cluster:
    cfg: stack.StackConfig

    @property
    def bootstrap(self) -> str:
        return self.cfg.kafka.bootstrap

    def pid(self, node: int) -> int | None:
        return kafka.running_pid(KafkaPaths.under(self.cfg.state_dir, node))

    def kill(self, node: int) -> None:
        """SIGKILL: no controlled shutdown, no flush."""
        pid = self.pid(node)
        assert pid is not None, f"kafka node {node} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.pid(node) is not None:
            assert time.monotonic() < deadline, f"kafka node {node} survived SIGKILL"
            time.sleep(0.1)

    async def stop(self, node: int) -> None:
        """SIGTERM: a controlled shutdown (leadership moves away first)."""
        await asyncio.to_thread(kafka.stop, KafkaPaths.under(self.cfg.state_dir, node))

    async def start(self, node: int) -> None:
        """Start the node and wait until the cluster lists every broker again."""
        await kafka.start_node(
            self.cfg.kafka, node, state_dir=self.cfg.state_dir, cache_dir=self.cfg.cache_dir
        )

    def rss_mib(self) -> dict[int, float]:
        """Resident memory of each running node."""
        out: dict[int, float] = {}
        for node in self.cfg.kafka.nodes:
            pid = self.pid(node)
            if pid is None:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[node] = int(line.split()[1]) / 1024
        return out

    def admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(request_timeout_ms=30_000, bootstrap_servers=self.bootstrap)


async def start_cluster(tmp: Path) -> AsyncIterator[Cluster]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        unavailable("kafka cluster", "java not found: install a JDK 17+")
    base = free_port_range()
    cfg = stack.resolve_config(
        state_dir=tmp,
        kafka_port=base,
        kafka_controller_port=base + 1,
        kafka_brokers=3,
        postgres_port=base + 9,  # not started: only kafka runs here
        environ={},
    )
    try:
        try:
            await stack.up(cfg, services=["kafka"])
        except stack.StackError as exc:
            unavailable("kafka cluster", str(exc))
        yield Cluster(cfg)
    finally:
        await stack.down(cfg, services=["kafka"])


async def create_topics(cluster: Cluster) -> tuple[str, str, str]:
    """commands and results (6 partitions), dlq (1), all RF 3 and min.insync.replicas 2."""
    prefix = f"cl-{uuid.uuid4().hex[:8]}"
    names = (f"{prefix}-commands", f"{prefix}-results", f"{prefix}-dlq")
    isr = {"min.insync.replicas": str(MIN_ISR)}
    topics = [
        NewTopic(names[0], PARTITIONS, REPLICATION, topic_configs=isr),
        NewTopic(names[1], PARTITIONS, REPLICATION, topic_configs=isr),
        NewTopic(
            names[2],
            1,
            REPLICATION,
            topic_configs=isr | {"max.message.bytes": str(4 * 1024 * 1024)},
        ),
    ]
    admin = cluster.admin()
    await admin.start()
    try:
        response = await admin.create_topics(topics)
        for error in response.topic_errors:
            if error[1] != 0:
                raise for_code(error[1])(f"create topic: {error}")
        await wait_fully_replicated(admin, names)
    finally:
        await admin.close()
    return names


async def wait_fully_replicated(
    admin: AIOKafkaAdminClient, topics: Iterable[str], wait_s: float = 120.0
) -> None:
    """Until every partition has a leader and all three replicas in sync."""
    names = list(topics)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            described = await admin.describe_topics(names)
            if all(
                t.get("error_code") == 0
                and t.get("partitions")
                and all(
                    p.get("leader", -1) >= 0 and len(p.get("isr") or []) == REPLICATION
                    for p in t["partitions"]
                )
                for t in described
            ):
                return
        except KafkaError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{names} not fully replicated after {wait_s}s")
        await asyncio.sleep(0.5)


async def leaders(cluster: Cluster, topic: str) -> dict[int, int]:
    """partition -> leader node id."""
    admin = cluster.admin()
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return {int(p["partition"]): int(p["leader"]) for p in described["partitions"]}
    finally:
        await admin.close()


def busiest_leader(items: Iterable[Item], leader_of: dict[int, int]) -> tuple[int, list[int]]:
    """The node leading the most records of the stream, and the partitions it leads."""
    per_partition = Counter(
        (murmur2(key) & 0x7FFFFFFF) % PARTITIONS for key, _, _ in items if key is not None
    )
    per_node: Counter[int] = Counter()
    for partition, records in per_partition.items():
        per_node[leader_of[partition]] += records
    node = per_node.most_common(1)[0][0]
    return node, sorted(p for p, n in leader_of.items() if n == node)


def cluster_setup(
    cluster: Cluster, names: tuple[str, str, str], database_url: str, log_dir: Path
) -> WorkerSetup:
    commands, results, dlq = names
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap,
        "DATABASE_URL": database_url,
        "CAPTURE_COMMANDS_TOPIC": commands,
        "CAPTURE_RESULTS_TOPIC": results,
        "CAPTURE_DLQ_TOPIC": dlq,
        "CAPTURE_CONSUMER_GROUP": f"cw-cluster-{uuid.uuid4().hex[:8]}",
        "CAPTURE_RETRY_MAX_S": "1.0",
        "CAPTURE_LOG_LEVEL": "INFO",
    }
    return WorkerSetup(env, database_url, commands, results, dlq, log_dir, [])


@pytest.fixture(scope="module")
async def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async for cluster in start_cluster(tmp_path_factory.mktemp("cluster")):
        yield cluster
