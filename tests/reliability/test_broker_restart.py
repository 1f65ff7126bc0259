"""Scenario 3: the Kafka broker restarts (`capture-worker stack restart kafka`) mid-stream.

While the broker is away the worker can neither fetch, publish results nor commit: a batch in
flight fails to publish or to commit and must be retried or redelivered, never skipped, and
/readyz must say that Kafka is down. Needs the native stack (it stops the shared broker).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

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

    worker = worker_setup.start()
    await ready(worker)
    await feed(topics, before)

    await wait_applied(worker_setup.database_url, 400, workers=(worker,), timeout_s=60)
    with ReadinessWatch(worker, "kafka") as watch:
        at_restart = await applied(worker_setup.database_url)
        await stack("restart", "kafka")
        faults = 1
        assert_alive(worker)
        # The rest of the stream goes to the restarted broker.
        await feed(topics, after)
        await wait_done(topics, sent, worker_setup.database_url, workers=(worker,))
    assert watch.down_seen, f"/readyz never reported kafka down ({watch.samples} samples)"
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
