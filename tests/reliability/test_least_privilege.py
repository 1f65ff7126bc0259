"""Scenario: the worker as the least-privilege login (SPEC §4).

The worker is first started as a superuser, which it must refuse (exit 2) without consuming
anything; then it runs the stream, poison included, as a login of role capture_worker — the
role that may only EXECUTE the capture functions — and loses and doubles nothing.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.fixtures.workers import WorkerSetup
from tests.support.kafka_io import count, feed, uncommitted
from tests.support.scenario import (
    Scenario,
    add_stream_with_poison,
    ready,
    topics_of,
    wait_done,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent

pytestmark = pytest.mark.reliability

SEED = 7007


async def role_of(url: str) -> tuple[bool, bool, bool]:
    """superuser?, member of capture_worker?, may SELECT the ledger?"""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT rolsuper, pg_has_role('capture_worker', 'MEMBER') AS member,"
            " has_table_privilege('capture.command_ledger', 'SELECT') AS reads"
            " FROM pg_roles WHERE rolname = current_user"
        )
        assert row is not None
        return bool(row["rolsuper"]), bool(row["member"]), bool(row["reads"])
    finally:
        await conn.close()


async def test_worker_as_the_least_privilege_login(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    topics = topics_of(worker_setup)
    sent = Sent()
    add_stream_with_poison(sent, make_stream(1500, users=10, seed=SEED).valid, random.Random(SEED))
    await feed(topics, sent.items)

    # As the owner (a superuser here): refused before it consumes anything.
    refused = worker_setup.start(DATABASE_URL=worker_setup.database_url)
    assert refused.proc is not None
    assert refused.proc.wait(timeout=60) == 2, refused.tail_log()
    assert await count(topics, topics.results) == 0
    assert await uncommitted(topics) == len(sent.items)

    # As the login: EXECUTE only, no table rights, and everything processed exactly once.
    login_url = worker_setup.env["DATABASE_URL"]
    assert await role_of(login_url) == (False, True, False)
    worker = worker_setup.start()
    await ready(worker)
    await wait_done(topics, sent, worker_setup.database_url, workers=(worker,))
    await scenario.conclude(
        "worker as the least-privilege login",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=0,
        stop=(worker,),
    )
