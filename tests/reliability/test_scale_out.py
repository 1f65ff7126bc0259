"""Scenario 2: scale-out and rebalance. Two workers share a 6-partition topic, a third joins
mid-stream, then one of the three is SIGKILLed; the group hands its partitions to the others.

A rebalance moves partitions between members with batches possibly in flight: a partition's
new owner starts from the last committed offset, so the ledger sees redeliveries, and per-user
order must survive the move (the digest would show a reordering).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from devkit.worker_process import WorkerProcess
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka_io import feed, stable_members
from tests.support.scenario import (
    Scenario,
    add_stream_with_poison,
    assert_alive,
    ready,
    topics_of,
    wait_done,
    wait_until,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent

pytestmark = pytest.mark.reliability

SEED = 2206


def processed(worker: WorkerProcess) -> float:
    return worker.metric("capture_messages_total")


async def test_two_then_three_workers_then_one_killed(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    rng = random.Random(SEED)
    topics = topics_of(worker_setup)
    sent = Sent()
    # 24 users: every one of the 6 partitions carries traffic, so every member gets work.
    add_stream_with_poison(sent, make_stream(3000, users=24, seed=SEED).valid, rng)

    # Two parts: the first paced so that records are in flight when the third worker joins,
    # the second fed after the kill. Conditions, not a schedule, move from one step to the
    # next, so a slow machine only makes the run longer (a 25 s paced feed once had to outlast
    # both rebalances, and on a loaded machine it did not).
    half = len(sent.items) // 2
    workers = [worker_setup.start(), worker_setup.start()]
    await asyncio.gather(*(ready(w) for w in workers))
    feeders = [asyncio.create_task(feed(topics, sent.items[:half], chunk=100, pause_s=0.8))]

    async def all_busy() -> bool:
        return all(processed(w) > 0 for w in workers)

    async def three_members() -> bool:
        return await stable_members(topics) == 3

    await wait_until(all_busy, timeout_s=120, what="both workers processing", workers=(*workers,))
    workers.append(worker_setup.start())
    await wait_until(
        three_members, timeout_s=120, what="the group rebalanced to 3", workers=(*workers,)
    )
    await feeders[0]

    victim = rng.choice(workers)
    survivors = tuple(w for w in workers if w is not victim)
    before = sum(processed(w) for w in survivors)
    assert_alive(victim)
    victim.kill()
    faults = 1
    # The rest of the stream arrives while the group hands the victim's partitions over.
    feeders.append(asyncio.create_task(feed(topics, sent.items[half:], chunk=100, pause_s=0.3)))

    assert sum([await f for f in feeders]) == len(sent.items)
    await wait_done(topics, sent, worker_setup.database_url, workers=survivors)
    # The survivors did the rest, including the victim's partitions (else nothing would finish).
    assert sum(processed(w) for w in survivors) > before
    assert_alive(*survivors)
    await scenario.conclude(
        "scale-out 2 -> 3 workers, one SIGKILLed",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=faults,
        stop=survivors,
    )
