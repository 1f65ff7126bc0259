"""Scenario: a handler bug on one record. The worker process raises an unexpected exception
whenever it decodes that record (injected with tests/support/inject_bug.py); everything else is
valid. SPEC §6: the record is retried CAPTURE_INTERNAL_ERROR_ATTEMPTS times with readiness
naming its partition, then dead-lettered as kind `internal`, and the worker goes on: the other
partitions never wait, nothing else is lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from contracts import ErrorKind
from contracts import headers as H
from tests.fixtures.workers import WorkerSetup
from tests.support.inject_bug import MARKER
from tests.support.kafka_io import feed, read
from tests.support.scenario import (
    VALID_HEADERS,
    Scenario,
    assert_alive,
    ready,
    topics_of,
    wait_done,
    wait_until,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent

pytestmark = pytest.mark.reliability

SEED = 4242
COMMANDS = 1200
ATTEMPTS = 3


async def test_a_handler_bug_on_one_record_is_dead_lettered_as_internal(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    topics = topics_of(worker_setup)
    lines = make_stream(COMMANDS, users=12, seed=SEED).valid
    sent = Sent()
    middle = len(lines) // 2
    sent.add_valid(lines[:middle], VALID_HEADERS)
    # A valid command of its own, its url marked: only the injected bug refuses it.
    buggy = json.loads(lines[middle])
    buggy["command_id"] = "6f8a7c1e-0b3d-4e5f-9a2b-1c3d5e7f9a0b"
    buggy["url"] = f"https://example.com/{MARKER.decode()}"
    value = json.dumps(buggy).encode()
    sent.add_poison(
        value, {ErrorKind.INTERNAL.value}, key=buggy["user_id"].encode(), headers=VALID_HEADERS
    )
    sent.add_valid(lines[middle:], VALID_HEADERS)

    worker = worker_setup.start(
        preload="tests.support.inject_bug",
        CAPTURE_INTERNAL_ERROR_ATTEMPTS=str(ATTEMPTS),
        CAPTURE_RETRY_INITIAL_S="0.5",
        CAPTURE_RETRY_MAX_S="2",
    )
    await ready(worker)
    feeder = asyncio.create_task(feed(topics, sent.items, chunk=200, pause_s=0.2))

    async def stalled_partition_named() -> bool:
        report = await asyncio.to_thread(worker.readiness)
        return bool(report.get("stalled_partitions"))

    # While the record is retried, /readyz is not ready and names its partition.
    await wait_until(
        stalled_partition_named, timeout_s=120, what="readiness names the stall", workers=(worker,)
    )
    assert await feeder == len(sent.items)
    await wait_done(topics, sent, worker_setup.database_url, workers=(worker,))
    assert_alive(worker)
    assert worker.ready(), worker.readiness()
    assert worker.metric("capture_internal_errors_total") >= ATTEMPTS

    dead = [r for r in await read(topics, topics.dlq) if r.value == value]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers[H.ERROR_KIND] == b"internal"
    assert b"ZeroDivisionError: injected handler bug" in headers[H.ERROR_MESSAGE]
    await scenario.conclude(
        "handler bug on one record of 1,200",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=0,
        stop=(worker,),
    )
