"""Scenario 4: PostgreSQL restarts mid-stream, and PostgreSQL is unreachable for 30 seconds.

A connection lost mid-transaction leaves the batch either committed or not (the reply may be
lost either way): the worker must retry it, the ledger answers a committed one with the stored
results. While the database is away nothing may go to the DLQ, the process must stay up, and
/readyz must say that PostgreSQL is down. Needs the native stack (it stops the shared server).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.fixtures.workers import WorkerSetup
from tests.support.kafka_io import feed
from tests.support.scenario import (
    ReadinessWatch,
    Scenario,
    add_stream_with_poison,
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

OUTAGE_S = 30.0


async def test_postgres_restart_mid_stream(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    seed = 4408
    topics = topics_of(worker_setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(2500, users=12, seed=seed).valid, random.Random(seed))

    before, rest = sent.items[:800], sent.items[800:]

    worker = worker_setup.start()
    await ready(worker)
    await feed(topics, before)

    await wait_applied(worker_setup.database_url, 400, workers=(worker,), timeout_s=60)
    # The rest keeps arriving through the restart (~8 s of it), so there is work in flight
    # whenever the server goes away, however fast the worker caught up before.
    feeder = asyncio.create_task(feed(topics, rest, chunk=100, pause_s=0.5))
    with ReadinessWatch(worker, "postgresql") as watch:
        # Stopped for a moment rather than `restart`ed: a restart takes ~0.3 s here, which the
        # worker could miss entirely (no batch in flight, no health probe in that window) now
        # that it handles the feed's chunks in a fraction of their interval. Two seconds cover
        # the 1 s health probe, and the commands arriving meanwhile meet the server gone.
        await stack("stop", "postgres")
        await asyncio.sleep(2)
        await stack("start", "postgres")
        faults = 1
        assert await feeder == len(rest)
        await wait_done(topics, sent, worker_setup.database_url, workers=(worker,))
    assert watch.down_seen, f"/readyz never reported postgresql down ({watch.samples} samples)"
    assert worker.metric("capture_retries_total") > 0
    await ready(worker, 30)
    await scenario.conclude(
        "PostgreSQL restart mid-stream",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=faults,
        stop=(worker,),
    )


async def test_postgres_unreachable_for_30_seconds(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    seed = 4509
    topics = topics_of(worker_setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(1500, users=8, seed=seed).valid, random.Random(seed))
    before, during = sent.items[:800], sent.items[800:]

    worker = worker_setup.start()
    await ready(worker)
    await feed(topics, before)

    await wait_applied(worker_setup.database_url, 300, workers=(worker,), timeout_s=60)
    with ReadinessWatch(worker, "postgresql") as watch:
        await stack("stop", "postgres")
        stopped = time.monotonic()
        faults = 1
        try:
            # Commands keep arriving while the database is away; they must wait, not fail
            # (tally() checks that no valid command ever reached the DLQ).
            await feed(topics, during)
            while time.monotonic() - stopped < OUTAGE_S:
                assert_alive(worker)
                await asyncio.sleep(1.0)
            assert watch.down_seen, "/readyz never reported the outage"
        finally:
            await stack("start", "postgres")
        await wait_done(topics, sent, worker_setup.database_url, workers=(worker,))
    await ready(worker, 30)
    assert worker.metric("capture_retries_total") > 0
    await scenario.conclude(
        "PostgreSQL unreachable for 30 s",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=faults,
        stop=(worker,),
    )
