"""Commands from transactional producers: what a transaction aborted is never ingested, by the
worker or by a replay; what it committed is, in the log's order; and the group's offsets reach
the end of a partition whose log ends with a transaction's marker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from tests.e2e.test_replay_cli import cli, last_json
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import produce, read_all, wait_for_count
from tests.support.streams import make_stream, reference_digest


def partition_of(line: str, partitions: int = 6) -> int:
    """Where the producer's default partitioner puts a command (murmur2 of its key)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(json.loads(line)["user_id"].encode(), every, every))


def ids(lines: Sequence[str]) -> set[str]:
    return {json.loads(line)["command_id"] for line in lines}


async def in_transaction(bootstrap: str, topic: str, lines: Sequence[str], *, commit: bool) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"cw-test-{uuid.uuid4().hex}",
        enable_idempotence=True,
        acks="all",
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        futures = [
            await producer.send(
                topic, value=line.encode(), key=json.loads(line)["user_id"].encode()
            )
            for line in lines
        ]
        for future in futures:
            await future
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_aborted_commands_are_never_ingested_committed_ones_are(
    worker_setup: WorkerSetup, kafka_bootstrap: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    # One user: one partition, so the aborted records lie before the committed ones in the log.
    lines = make_stream(60, users=1, seed=29).valid
    aborted, committed, plain = lines[:20], lines[20:40], lines[40:]
    kept = [*committed, *plain]
    # The generator repeats a command now and then (a producer's retry): an id that also comes
    # in a kept record is ingested by that one.
    never = ids(aborted) - ids(kept)
    assert never
    await in_transaction(kafka_bootstrap, worker_setup.commands, aborted, commit=False)
    await in_transaction(kafka_bootstrap, worker_setup.commands, committed, commit=True)
    await produce(
        kafka_bootstrap,
        worker_setup.commands,
        [(json.loads(line)["user_id"].encode(), line.encode()) for line in plain],
    )
    worker = worker_setup.start()
    worker.wait_ready()

    # The last plain command's result comes after every record before it was handled.
    await wait_for_count(kafka_bootstrap, worker_setup.results, len(kept), timeout_s=120)
    assert worker.terminate() == 0
    results = [
        json.loads(r.value or b"{}") for r in await read_all(kafka_bootstrap, worker_setup.results)
    ]
    assert len(results) == len(kept)
    assert {r["command_id"] for r in results} == ids(kept)
    assert {r["status"] for r in results} == {"ingested"}
    assert await read_all(kafka_bootstrap, worker_setup.dlq) == []
    conn = await asyncpg.connect(worker_setup.database_url)
    try:
        ledger = {
            str(x)
            for x in await conn.fetchval("SELECT array_agg(command_id) FROM capture.command_ledger")
        }
    finally:
        await conn.close()
    assert ledger == ids(kept) and not ledger & never

    # The database holds exactly what the kept commands alone produce, and a replay of the
    # topic into an empty database reads the worker's view of it.
    reference = await reference_digest(await fresh_database(), kept)
    live = cli(worker_setup.env, "digest", "--format", "json")
    assert live.returncode == 0, live.stderr
    assert last_json(live.stdout)["digest"] == reference
    target = await fresh_database()
    replay = cli(
        worker_setup.env,
        "replay",
        "--from-beginning",
        "--reset",
        "--yes",
        "--database-url",
        target,
        "--format",
        "json",
    )
    assert replay.returncode == 0, replay.stderr
    summary = last_json(replay.stdout)
    assert summary["digest"] == reference
    assert summary["messages"] == len(kept)


async def status_once(env: dict[str, str]) -> dict[str, Any]:
    done = await asyncio.to_thread(cli, env, "status", "--format", "json")
    assert done.returncode == 0, done.stderr
    return last_json(done.stdout)


async def wait_for_no_lag(env: dict[str, str], *, timeout_s: float = 90) -> dict[str, Any]:
    """`status` until the group's committed offsets reach every partition's end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    status = await status_once(env)
    while status["lag"] != 0 and loop.time() < deadline:
        await asyncio.sleep(0.5)
        status = await status_once(env)
    assert status["lag"] == 0, status["partitions"]
    return status


async def test_the_group_commits_past_a_transactions_marker(
    worker_setup: WorkerSetup, kafka_bootstrap: str
) -> None:
    # One user: one partition, whose log ends with a marker after each transaction.
    lines = make_stream(15, users=1, seed=31, duplicates=0).valid
    committed, aborted = lines[:10], lines[10:]
    partition = partition_of(lines[0])
    # Another user's partition holds only an aborted transaction when the group starts, with
    # no offset of its own: read from its start, and passed.
    other = next(
        stream.valid
        for seed in range(100)
        if partition_of((stream := make_stream(3, users=1, seed=seed)).valid[0]) != partition
    )
    await in_transaction(kafka_bootstrap, worker_setup.commands, other, commit=False)
    await in_transaction(kafka_bootstrap, worker_setup.commands, committed, commit=True)
    worker = worker_setup.start()
    worker.wait_ready()
    await wait_for_count(kafka_bootstrap, worker_setup.results, len(committed), timeout_s=120)
    status = await wait_for_no_lag(worker_setup.env)
    ends = {p["partition"]: p["end"] for p in status["partitions"]}
    assert ends[partition] == len(committed) + 1  # the commit marker's offset
    assert ends[partition_of(other[0])] == len(other) + 1  # the abort marker's

    # A transaction aborted at the end of the log: its records and its marker are passed too.
    await in_transaction(kafka_bootstrap, worker_setup.commands, aborted, commit=False)
    status = await wait_for_no_lag(worker_setup.env)
    assert {p["partition"]: p["end"] for p in status["partitions"]}[partition] == len(lines) + 2
    assert worker.metric("capture_consumer_lag") == 0
    assert worker.terminate() == 0

    # A group whose offset stops at a marker (as a worker before this left it) is moved past
    # it by the next worker to start, though no record comes.
    tp = TopicPartition(worker_setup.commands, partition)
    group = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=worker_setup.env["CAPTURE_CONSUMER_GROUP"],
        enable_auto_commit=False,
    )
    await group.start()
    try:
        group.assign([tp])
        await group.commit({tp: len(lines) + 1})
    finally:
        await group.stop()
    assert (await status_once(worker_setup.env))["lag"] == 1
    restarted = worker_setup.start()
    restarted.wait_ready()
    await wait_for_no_lag(worker_setup.env)
    assert restarted.terminate() == 0

    results = await read_all(kafka_bootstrap, worker_setup.results)
    assert [json.loads(r.value or b"{}")["command_id"] for r in results] == [
        json.loads(line)["command_id"] for line in committed
    ]
