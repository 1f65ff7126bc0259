"""Scenario 1: the worker is SIGKILLed at random moments, three times, while a stream arrives.

SIGKILL leaves no chance to finish a batch or commit: whatever was in flight (database
committed or not, results published or not, offsets committed or not) is redelivered to the
next process, and the ledger must turn every redelivery into the identical result.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from tests.fixtures.workers import WorkerSetup
from tests.support.kafka_io import Item, feed
from tests.support.scenario import (
    Scenario,
    add_stream_with_poison,
    applied,
    assert_alive,
    topics_of,
    wait_done,
    wait_until,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent

pytestmark = pytest.mark.reliability

SEED = 1105
COMMANDS = 5000
#: Each kill lands in its own window of the stream (seeded), so the three are spread out and
#: the last one still leaves about a third of the stream to the last worker.
KILL_WINDOWS = ((0.08, 0.20), (0.30, 0.45), (0.55, 0.70))
#: The stream goes out in parts: before each kill, only up to a little past its window. A fast
#: worker drained all that had arrived between reaching a window and its kill (once the whole
#: stream, once all but what the next worker needed to count as processing), so a kill could
#: land after the stream's end; the next part goes out only once the kill is done.
MARGIN = 0.05


async def test_sigkill_three_times_mid_stream(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    rng = random.Random(SEED)
    topics = topics_of(worker_setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(COMMANDS, users=16, seed=SEED).valid, rng)
    total = len(sent.valid_ids)

    ends = [int(len(sent.items) * (high + MARGIN)) for _, high in KILL_WINDOWS]
    parts = [sent.items[a:b] for a, b in zip([0, *ends], [*ends, len(sent.items)], strict=True)]
    fed = 0

    async def send(part: list[Item]) -> None:
        nonlocal fed
        # Paced: each part is still arriving while the worker works on it.
        fed += await feed(topics, part, chunk=500, pause_s=0.25)

    worker = worker_setup.start()
    faults = 0
    for (low, high), part in zip(KILL_WINDOWS, parts, strict=False):
        feeder = asyncio.create_task(send(part))
        target = int(total * rng.uniform(low, high))
        current = worker

        async def due(w=current, target=target) -> bool:
            # Kill only a worker that is processing (not one still joining the group).
            return await applied(worker_setup.database_url) >= target and (
                w.metric("capture_messages_total") > 0
            )

        await wait_until(due, timeout_s=120, what=f"{target} applied", workers=(current,))
        # Then a random instant more: anywhere in the fetch/ingest/publish/commit cycle.
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        assert_alive(current)
        current.kill()
        assert await applied(worker_setup.database_url) < total, "killed after the stream ended"
        faults += 1
        await feeder  # the parts go out in order: a user's commands stay in order
        worker = worker_setup.start()

    await send(parts[-1])
    assert fed == len(sent.items)
    await wait_done(topics, sent, worker_setup.database_url, workers=(worker,))
    assert_alive(worker)
    await scenario.conclude(
        "crash: SIGKILL x3 during 5,000 commands",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=faults,
        stop=(worker,),
    )
