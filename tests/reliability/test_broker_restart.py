"""Scenario 3: the Kafka broker restarts (`capture-worker stack stop kafka`, then `start`)
mid-stream.

While the broker is away the worker can neither fetch, publish results nor commit: a batch in
flight fails to publish or to commit and must be retried or redelivered, never skipped, and
/readyz must say that Kafka is down. Needs the native stack (it stops the shared broker).

However fast the host, one batch is in flight when the broker stops: the test holds one
user's advisory lock (the worker's per-user lock, `ingest_typed`) and the worker waits for it
without a lock timeout. Released once the broker is down, that batch commits in the database
and its results meet the stopped broker.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.fixtures.workers import WorkerSetup
from tests.support.kafka_io import feed
from tests.support.scenario import (
    ReadinessWatch,
    Scenario,
    add_stream_with_poison,
    applied,
    assert_alive,
    ready,
    stack,
    topics_of,
    wait_applied,
    wait_done,
    wait_until,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("native_stack")]

SEED = 3307


async def test_kafka_restart_mid_stream(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    rng = random.Random(SEED)
    topics = topics_of(worker_setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(3000, users=12, seed=SEED).valid, rng)
    before, after = sent.items[:2000], sent.items[2000:]
    users = [json.loads(line)["user_id"] for line in sent.valid[:500]]
    held = next(u for u in users if u != users[0])  # the poison goes under the first user's key

    async def held_applied() -> int:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM capture.signals WHERE user_id = $1::uuid", held
            )
        )

    async def worker_waits_for_the_lock() -> bool:
        return bool(
            await admin.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
        )

    async def held_batch_committed() -> bool:
        return await held_applied() > 0

    lock = "uuid_hash_extended($1::uuid, 0)"
    # Without a lock timeout the held user's batch waits for the lock, however long.
    worker = worker_setup.start(CAPTURE_DB_LOCK_TIMEOUT_MS="0")
    admin = await asyncpg.connect(worker_setup.database_url)
    try:
        await admin.execute(f"SELECT pg_advisory_lock({lock})", held)
        await ready(worker)
        await feed(topics, before)
        await wait_applied(worker_setup.database_url, 400, workers=(worker,), timeout_s=60)
        await wait_until(
            worker_waits_for_the_lock, timeout_s=60, what="the held batch", workers=(worker,)
        )
        with ReadinessWatch(worker, "kafka") as watch:
            at_restart = await applied(worker_setup.database_url)
            await stack("stop", "kafka")
            faults = 1
            try:
                held_at_stop = await held_applied()
                # The held batch goes on now: its writes commit, its results find no broker.
                await admin.execute(f"SELECT pg_advisory_unlock({lock})", held)
                await wait_until(
                    held_batch_committed, timeout_s=60, what="the held batch", workers=(worker,)
                )
            finally:
                await stack("start", "kafka")  # the shared broker, whatever happened
            assert_alive(worker)
            # The rest of the stream goes to the restarted broker.
            await feed(topics, after)
            await wait_done(topics, sent, worker_setup.database_url, workers=(worker,))
    finally:
        await admin.close()
    assert watch.down_seen, f"/readyz never reported kafka down ({watch.samples} samples)"
    assert held_at_stop == 0, "the held user's batch was not in flight when the broker stopped"
    assert at_restart < len(before) - 16, "the restart did not land mid-stream"
    await ready(worker, 30)
    await scenario.conclude(
        "broker restart mid-stream",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=faults,
        stop=(worker,),
    )
    # aiokafka's reconnect errors are throttled: unthrottled, this restart logged thousands
    # (about 300 a second while the broker was away); now each kind once per 10 s.
    errors = [line for line in worker.log_path.read_text().splitlines() if '"error"' in line]
    assert len(errors) < 100, f"{len(errors)} error lines, e.g.\n" + "\n".join(errors[:20])
