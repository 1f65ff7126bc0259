"""Scenarios on a three-node Kafka cluster (`stack up --brokers 3`): replication factor 3,
min.insync.replicas 2, the worker's producer acks=all and idempotent.

- the leader of the busiest partitions is SIGKILLed mid-stream and comes back later;
- one node is down for 30 s while publishing goes on (acks=all succeeds with 2 of 3);
- a rolling restart of all three nodes while three workers consume.

A node failure here is a failover, not an outage: the worker must keep applying while a node
is gone, and the counts are the same as everywhere (lost=0, doubled=0, one DLQ record per
poison message, digest equal to a direct load of the same commands).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.fixtures.cluster import (
    Cluster,
    busiest_leader,
    cluster_setup,
    create_topics,
    leaders,
    wait_fully_replicated,
)
from tests.fixtures.database import WorkerLogin
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka_io import count, feed
from tests.support.scenario import (
    Scenario,
    add_stream_with_poison,
    applied,
    assert_alive,
    ready,
    topics_of,
    wait_applied,
    wait_done,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent
from worker.infrastructure.topics import ensure_topics

# Each scenario may also pay for the module's cluster start (three JVMs, ~1 min when loaded).
pytestmark = [pytest.mark.reliability, pytest.mark.cluster, pytest.mark.timeout(1200)]

DONE_TIMEOUT_S = 300.0  # three JVMs, the worker and PostgreSQL share two cores
OUTAGE_S = 30.0


@pytest.fixture
async def cluster_workers(
    kafka_cluster: Cluster,
    fresh_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
    worker_login: WorkerLogin,
) -> AsyncIterator[Callable[[], Awaitable[WorkerSetup]]]:
    """Fresh topics and database for the scenario's workers; every worker is killed at the
    end, whatever happened."""
    made: list[WorkerSetup] = []

    async def make() -> WorkerSetup:
        names = await create_topics(kafka_cluster)
        setup = cluster_setup(kafka_cluster, names, await fresh_database(), tmp_path, worker_login)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        for proc in setup.processes:
            proc.kill()


async def _finish(
    setup: WorkerSetup,
    sent: Sent,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
    title: str,
    faults: int,
) -> None:
    topics = topics_of(setup)
    workers = tuple(setup.processes)
    await wait_done(topics, sent, setup.database_url, workers=workers, timeout_s=DONE_TIMEOUT_S)
    assert_alive(*workers)
    await scenario.conclude(
        title,
        sent,
        topics,
        database_url=setup.database_url,
        fresh_database=fresh_database,
        faults=faults,
        stop=workers,
    )


async def test_leader_of_the_busiest_partitions_sigkilled_and_back(
    kafka_cluster: Cluster,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
    cluster_workers: Callable[[], Awaitable[WorkerSetup]],
) -> None:
    seed = 1510
    rng = random.Random(seed)
    setup = await cluster_workers()
    topics = topics_of(setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(3000, users=12, seed=seed).valid, rng)
    node, partitions = busiest_leader(sent.items, await leaders(kafka_cluster, setup.commands))
    worker = setup.start()
    await ready(worker, 120)
    feeder = asyncio.create_task(feed(topics, sent.items, chunk=250, pause_s=0.3))

    await wait_applied(setup.database_url, 600, workers=(worker,), timeout_s=180)
    await asyncio.sleep(rng.uniform(0.0, 0.5))
    at_kill = await applied(setup.database_url)
    kafka_cluster.kill(node)
    print(f"\nSIGKILLed node {node}, leader of partitions {partitions}, at {at_kill} applied")

    # Failover: the stream goes on with two of three nodes (500 more applied).
    await wait_applied(setup.database_url, at_kill + 500, workers=(worker,), timeout_s=180)
    assert kafka_cluster.pid(node) is None
    await kafka_cluster.start(node)
    assert await feeder == len(sent.items)
    await _finish(setup, sent, fresh_database, scenario, "cluster: busiest leader SIGKILLed", 1)


async def test_one_node_down_30s_while_publishing(
    kafka_cluster: Cluster,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
    cluster_workers: Callable[[], Awaitable[WorkerSetup]],
) -> None:
    seed = 1511
    rng = random.Random(seed)
    setup = await cluster_workers()
    topics = topics_of(setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(2500, users=12, seed=seed).valid, rng)
    before, during = sent.items[:800], sent.items[800:]
    node = rng.choice(list(kafka_cluster.cfg.kafka.nodes))
    worker = setup.start()
    await ready(worker, 120)
    await feed(topics, before)

    await wait_applied(setup.database_url, 300, workers=(worker,), timeout_s=180)
    await kafka_cluster.stop(node)
    down_at = time.monotonic()
    results_at_stop = await count(topics, topics.results)
    # The whole rest of the stream is published (acks=all) while the node is away.
    assert await feed(topics, during, chunk=250, pause_s=1.0) == len(during)
    remaining = OUTAGE_S - (time.monotonic() - down_at)
    if remaining > 0:
        await asyncio.sleep(remaining)
    assert_alive(worker)
    assert kafka_cluster.pid(node) is None
    results_while_down = await count(topics, topics.results) - results_at_stop
    outage = time.monotonic() - down_at
    print(f"\nnode {node} down {outage:.0f}s: {results_while_down} results published meanwhile")
    assert results_while_down > 0, "the worker published nothing with two of three nodes"
    await kafka_cluster.start(node)
    await _finish(setup, sent, fresh_database, scenario, "cluster: one node down 30 s", 1)


async def test_rolling_restart_while_three_workers_consume(
    kafka_cluster: Cluster,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
    cluster_workers: Callable[[], Awaitable[WorkerSetup]],
) -> None:
    seed = 1512
    rng = random.Random(seed)
    setup = await cluster_workers()
    topics = topics_of(setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(4000, users=18, seed=seed).valid, rng)
    # A quarter before the roll, then a quarter published while each node is down.
    quarter = len(sent.items) // 4
    parts = [sent.items[i * quarter : (i + 1) * quarter] for i in range(3)]
    parts.append(sent.items[3 * quarter :])
    workers = [setup.start() for _ in range(3)]
    for worker in workers:
        await ready(worker, 120)
    fed = await feed(topics, parts[0], chunk=200, pause_s=0.3)
    faults = 0
    admin = kafka_cluster.admin()
    await admin.start()
    try:
        for node, part in zip(kafka_cluster.cfg.kafka.nodes, parts[1:], strict=True):
            await kafka_cluster.stop(node)
            fed += await feed(topics, part, chunk=200, pause_s=0.3)
            due = int(0.9 * fed) - sent.poison_count  # most of it, repeats aside

            # The workers consume with the node down, not only after it is back.
            await wait_applied(setup.database_url, due, workers=tuple(workers), timeout_s=240)
            await kafka_cluster.start(node)
            faults += 1
            assert_alive(*workers)
            # An operator's rolling restart waits for full replication before the next.
            await wait_fully_replicated(admin, [setup.commands, setup.results, setup.dlq])
    finally:
        await admin.close()
    assert fed == len(sent.items)
    await _finish(
        setup, sent, fresh_database, scenario, "cluster: rolling restart, 3 workers", faults
    )


async def test_the_worker_creates_its_topics_with_three_replicas_two_in_sync(
    kafka_cluster: Cluster,
) -> None:
    prefix = f"cl-auto-{random.randrange(1 << 30):x}"
    admin = kafka_cluster.admin()
    await admin.start()
    try:
        created = await ensure_topics(admin, [f"{prefix}-commands"], partitions=6)
        assert created == [f"{prefix}-commands"]
        await wait_fully_replicated(admin, created)  # three replicas, all in sync
        (described,) = await admin.describe_topics(created)
        assert {len(p["replicas"]) for p in described["partitions"]} == {3}
        (configs,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, created[0])]
        )
        entries = {e[0]: e[1] for e in configs.resources[0][4]}
        assert entries["min.insync.replicas"] == "2"
        await admin.delete_topics(created)
    finally:
        await admin.close()


def test_stack_status_and_env_show_every_node_and_the_quorum_leader(
    kafka_cluster: Cluster,
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CAPTURE_STACK_", "KAFKA_", "PG")) and k != "DATABASE_URL"
    } | {"CAPTURE_STATE_DIR": str(kafka_cluster.cfg.state_dir)}

    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "worker.interfaces.cli.main", "stack", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    services = json.loads(cli("status", "--format", "json"))["services"]
    nodes = {name: s for name, s in services.items() if name.startswith("kafka")}
    assert sorted(nodes) == ["kafka-1", "kafka-2", "kafka-3"]
    assert {s["state"] for s in nodes.values()} == {"running"}
    endpoints = [nodes[f"kafka-{n}"]["endpoint"] for n in (1, 2, 3)]
    assert ",".join(endpoints) == kafka_cluster.bootstrap
    roles = [s["role"] for s in nodes.values()]
    assert sum("quorum leader" in r for r in roles) == 1, roles
    assert f"export KAFKA_BOOTSTRAP_SERVERS={kafka_cluster.bootstrap}" in cli("env")
