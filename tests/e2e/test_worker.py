"""The worker process end to end: exact state, results, DLQ, shutdown and a database outage."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from contracts import headers as H
from devkit.worker_process import WorkerProcess, metric_sum
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import Record, produce, read_all, wait_for_count
from tests.support.streams import make_stream, reference_digest
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository


async def digest_of(database_url: str) -> str:
    pool = await create_pool(database_url, max_size=1)
    try:
        return await ArtifactRepository(pool).state_digest()
    finally:
        await pool.close()


async def signal_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM capture.signals"))
    finally:
        await conn.close()


def by_command(results: list[Record]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for r in results:
        assert r.value is not None
        grouped[json.loads(r.value)["command_id"]].append(r.value)
    return grouped


# docs/scaling.md has deployments set the pool to the database's cores, fewer connections than
# lanes: the lanes, the dead-letter writes and the health probe then take turns on them; lets
# fetches wait for more bytes than the stream's last records hold (the broker answers at the
# wait's end); and lets the lanes share database calls: one at a time here, with fetches of a
# few records per partition so that the chunks waiting are small enough to share one; and
# once more with a chunk waiting 2 ms at most, then going beside the running call.
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"CAPTURE_DB_POOL_SIZE": "1"},
        {"CAPTURE_FETCH_MIN_BYTES": str(8 * 1024 * 1024), "CAPTURE_FETCH_MAX_WAIT_MS": "100"},
        {"CAPTURE_DB_MAX_CALLS": "1", "CAPTURE_FETCH_PARTITION_BYTES": "32768"},
        {
            "CAPTURE_DB_MAX_CALLS": "1",
            "CAPTURE_DB_MAX_WAIT_MS": "2",
            "CAPTURE_FETCH_PARTITION_BYTES": "32768",
        },
    ],
    ids=[
        "defaults",
        "one-connection",
        "fetches-wait-for-8-MiB",
        "shared-database-calls",
        "shared-calls-waiting-2-ms",
    ],
)
async def test_stream_with_duplicates_recaptures_and_every_poison_kind(
    worker_setup: WorkerSetup,
    kafka_bootstrap: str,
    fresh_database: Callable[[], Awaitable[str]],
    settings: dict[str, str],
) -> None:
    stream = make_stream(1000, duplicates=30, poison=True)
    records = stream.records()
    await produce(kafka_bootstrap, worker_setup.commands, records)
    worker = worker_setup.start(**settings)
    worker.wait_ready()

    readable = stream.readable_poison()
    expected_results = len(stream.valid) + len(readable)
    results = await wait_for_count(
        kafka_bootstrap, worker_setup.results, expected_results, timeout_s=120
    )
    dlq = await wait_for_count(kafka_bootstrap, worker_setup.dlq, len(stream.poison), timeout_s=60)
    # Every record handled (its result or dead letter acknowledged): anything extra was
    # published by now. A condition, not a one-second window.
    await wait_for_metric(worker, "capture_messages_total", len(records))
    results = await read_all(kafka_bootstrap, worker_setup.results)
    dlq = await read_all(kafka_bootstrap, worker_setup.dlq)

    # Exactly one result per delivered command with readable ids; repeats are identical.
    assert len(results) == expected_results
    grouped = by_command(results)
    ingested = {
        cid for cid, values in grouped.items() if json.loads(values[0])["status"] == "ingested"
    }
    assert ingested == stream.valid_ids
    for cid in stream.valid_ids:
        accepted = {v for v in grouped[cid] if json.loads(v)["status"] == "ingested"}
        assert len(accepted) == 1, f"results of {cid} differ between deliveries"
    # Re-captures happened, and were reported as such by the database.
    assert any(
        not json.loads(v[0])["artifact_created"] for cid, v in grouped.items() if cid in ingested
    )

    # Every poison message: exactly one DLQ record, untouched bytes and headers, the right kind.
    assert len(dlq) == len(stream.poison)
    commands = await read_all(kafka_bootstrap, worker_setup.commands)
    position = {(c.partition, c.offset): c for c in commands}
    kinds: dict[str, int] = defaultdict(int)
    for record in dlq:
        headers = dict(record.headers)
        source = position[(int(headers[H.SOURCE_PARTITION]), int(headers[H.SOURCE_OFFSET]))]
        assert headers[H.SOURCE_TOPIC] == worker_setup.commands.encode()
        assert record.value == source.value and record.key == source.key
        assert record.headers[: len(source.headers)] == source.headers  # originals kept, first
        assert set(H.ALL) <= set(headers)
        kinds[headers[H.ERROR_KIND].decode()] += 1
    expected_kinds: dict[str, int] = defaultdict(int)
    for kind, _ in stream.poison:
        expected_kinds[kind.value] += 1
    assert kinds == expected_kinds

    # Poison with readable ids also got a rejected result naming the reason.
    for kind, _value, cid in readable:
        rejected = [json.loads(v) for v in grouped[cid] if json.loads(v)["status"] == "rejected"]
        assert rejected and {r["error"]["kind"] for r in rejected} == {kind.value}

    # The database holds exactly what the valid commands alone produce.
    reference = await fresh_database()
    assert await digest_of(worker_setup.database_url) == await reference_digest(
        reference, stream.valid
    )
    assert await signal_count(worker_setup.database_url) == len(stream.valid_ids)
    # No partition stalled.
    assert worker.metric("capture_consumer_lag") == 0
    if "CAPTURE_DB_MAX_CALLS" in settings:  # and the lanes did share calls
        scrape = worker.metrics()
        calls = metric_sum(scrape, "capture_db_chunks_per_call_count")
        assert 0 < calls < metric_sum(scrape, "capture_db_chunks_per_call_sum")
    assert worker.terminate() == 0


async def test_sigterm_mid_stream_then_restart_loses_and_doubles_nothing(
    worker_setup: WorkerSetup, kafka_bootstrap: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    stream = make_stream(4000, users=12, seed=23)
    await produce(kafka_bootstrap, worker_setup.commands, stream.records())
    first = worker_setup.start(CAPTURE_MAX_POLL_RECORDS="100")
    first.wait_ready()
    deadline = time.monotonic() + 60
    while first.metric("capture_messages_total") < 300 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert first.terminate(timeout_s=40) == 0
    processed_before = len(await read_all(kafka_bootstrap, worker_setup.results))
    assert 0 < processed_before < len(stream.valid), "the stop did not land mid-stream"
    assert "worker stopped" in first.log_path.read_text()

    second = worker_setup.start()
    second.wait_ready()
    await wait_for_count(kafka_bootstrap, worker_setup.results, len(stream.valid), timeout_s=120)
    reference = await fresh_database()
    assert await digest_of(worker_setup.database_url) == await reference_digest(
        reference, stream.valid
    )
    assert await signal_count(worker_setup.database_url) == len(stream.valid_ids)
    grouped = by_command(await read_all(kafka_bootstrap, worker_setup.results))
    assert set(grouped) == stream.valid_ids
    # A repeat (the stream's producer retries) yields the identical result, never another one.
    assert all(len(set(v)) == 1 for v in grouped.values())
    # A graceful stop commits every record whose result it published (the results still being
    # acknowledged when it began included), so the second worker repeats none of them: one
    # result per record.
    records = Counter(json.loads(line)["command_id"] for line in stream.valid)
    assert {k: len(v) for k, v in grouped.items()} == records
    assert second.terminate() == 0


async def wait_for_metric(
    worker: WorkerProcess, name: str, at_least: float, timeout_s: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while (value := worker.metric(name)) < at_least:
        assert time.monotonic() < deadline, f"{name} = {value} < {at_least} after {timeout_s}s"
        await asyncio.sleep(0.2)


def stack(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "worker.interfaces.cli.main", "stack", *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.usefixtures("native_stack")
async def test_postgres_outage_is_retried_not_dead_lettered(
    worker_setup: WorkerSetup, kafka_bootstrap: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    stream = make_stream(1500, users=6, seed=31)
    half = len(stream.valid) // 2
    records = stream.records()
    worker = worker_setup.start()
    worker.wait_ready()
    await produce(kafka_bootstrap, worker_setup.commands, records[:half])
    await wait_for_count(kafka_bootstrap, worker_setup.results, half, timeout_s=60)

    stack("stop", "postgres")
    deadline = time.monotonic() + 90
    try:
        await produce(kafka_bootstrap, worker_setup.commands, records[half:])
        # Down until the worker has said so and retried (conditions, with a generous deadline).
        not_ready_seen = False
        while not (not_ready_seen and worker.metric("capture_retries_total") > 0):
            assert time.monotonic() < deadline, "/readyz never reported the outage, or no retry"
            report = worker.readiness()
            if report and not report["ready"]:
                deps = report["dependencies"]
                assert isinstance(deps, dict) and deps["postgresql"]["up"] is False
                not_ready_seen = True
            await asyncio.sleep(0.5)
        assert worker.proc is not None and worker.proc.poll() is None, (
            "worker died during the outage"
        )
    finally:
        stack("start", "postgres")

    await wait_for_count(kafka_bootstrap, worker_setup.results, len(stream.valid), timeout_s=120)
    worker.wait_ready(30)
    assert await read_all(kafka_bootstrap, worker_setup.dlq) == []
    assert worker.metric("capture_retries_total") > 0
    reference = await fresh_database()
    assert await digest_of(worker_setup.database_url) == await reference_digest(
        reference, stream.valid
    )
    assert worker.terminate() == 0
