"""Lanes' chunks gathered into shared ingest calls (CoalescingStore over the real repository)
give every command the result a call of its own gives, and the same state."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np

from tests.integration.db.test_typed_ingest import mixed_stream, normalise, through_reference
from tests.support.db_commands import new_id, stream, typed
from tests.support.scenario import wait_until
from tests.unit.test_coalescing_store import chunks_per_call, ids, overdue_chunks
from worker.application.coalescing import CoalescingStore
from worker.application.ports import ResultObject
from worker.domain.errors import PermanentError
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository


def per_user_stream(seed: int) -> list[dict[str, Any]]:
    """mixed_stream without the command_ids that two users share: which user takes such an id
    depends on which lane reaches the database first, not on an order lanes keep."""
    commands = mixed_stream(seed)
    users_of: dict[str, set[str]] = defaultdict(set)
    for c in commands:
        users_of[c["command_id"]].add(c["user_id"])
    return [c for c in commands if len(users_of[c["command_id"]]) == 1]


async def test_shared_calls_give_each_command_its_own_result_and_the_same_state(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    commands = per_user_stream(21)
    reference, reference_digest = await through_reference(await fresh_database(), commands)

    lanes: dict[str, list[int]] = defaultdict(list)  # a lane per user, like partitions
    for index, c in enumerate(commands):
        lanes[c["user_id"]].append(index)
    pool = await create_pool(await fresh_database(), max_size=2)
    try:
        repo = ArtifactRepository(pool)
        store = CoalescingStore(repo, max_calls=1, max_commands=40)
        replies: dict[int, ResultObject | PermanentError] = {}

        async def lane(indexes: list[int]) -> None:
            for start in range(0, len(indexes), 7):
                part = indexes[start : start + 7]
                got = await store.ingest_commands([typed(commands[i]) for i in part])
                replies.update(zip(part, got, strict=True))

        calls_before, chunks_before = chunks_per_call()
        await asyncio.wait_for(asyncio.gather(*(lane(i) for i in lanes.values())), 120)
        calls, chunks = chunks_per_call()
        digest = await repo.state_digest()
    finally:
        await pool.close()

    assert [normalise(replies[i]) for i in range(len(commands))] == reference
    assert digest == reference_digest
    # The lanes did share calls: fewer calls than chunks.
    assert calls - calls_before < chunks - chunks_before


async def test_a_chunk_refused_as_a_whole_in_a_shared_call_spares_the_others(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """U+0000 cannot be bound: the shared call fails, each chunk goes again on its own."""
    users = [new_id() for _ in range(4)]
    commands = stream(np.random.default_rng(22), users=users, per_user=5)
    firsts = [[c for c in commands if c["user_id"] == user] for user in users]
    firsts[2][1]["title"] = "nul \x00 inside"

    pool = await create_pool(await fresh_database(), max_size=2)
    try:
        store = CoalescingStore(ArtifactRepository(pool), max_calls=1, max_commands=100)
        calls_before, chunks_before = chunks_per_call()
        busy = asyncio.ensure_future(store.ingest_commands([typed(c) for c in firsts[0]]))
        await asyncio.sleep(0)  # the first call runs; the others wait and share the next
        others = [
            asyncio.ensure_future(store.ingest_commands([typed(c) for c in cs]))
            for cs in firsts[1:]
        ]
        outcomes = await asyncio.wait_for(
            asyncio.gather(busy, *others, return_exceptions=True), 120
        )
        stored = await pool.fetchval("SELECT count(*) FROM capture.signals")
        calls, chunks = chunks_per_call()
    finally:
        await pool.close()

    # The first chunk's call, then one shared by the other three (which failed as a whole).
    assert (calls - calls_before, chunks - chunks_before) == (2, 4)
    assert isinstance(outcomes[2], PermanentError)
    kept = [outcomes[i] for i in (0, 1, 3)]
    for reply in kept:
        assert isinstance(reply, list)
        assert Counter(type(r).__name__ for r in reply) == Counter({"dict": 5})
    assert stored == 15


async def test_a_call_waiting_for_a_locked_user_holds_the_others_max_wait_at_most(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """One call at a time, and its user's rows held by another transaction (another worker in
    a rebalance, a replay): the other lanes' chunks go beside it once they have waited
    max_wait, while it still waits for the lock."""
    users = [new_id() for _ in range(2)]
    commands = stream(np.random.default_rng(23), users=users, per_user=3)
    locked, free = ([typed(c) for c in commands if c["user_id"] == u] for u in users)
    url = await fresh_database()
    holder = await asyncpg.connect(url)
    # No lock_timeout: the locked call waits for as long as the test holds the lock.
    pool = await create_pool(url, max_size=2)
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute(
            "SELECT pg_advisory_xact_lock(uuid_hash_extended($1::uuid, 0))", users[0]
        )
        store = CoalescingStore(
            ArtifactRepository(pool), max_calls=1, max_commands=100, max_wait=0.05
        )
        overdue_before = overdue_chunks()
        blocked = asyncio.ensure_future(store.ingest_commands(locked))

        async def waiting_for_the_lock() -> bool:
            query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return bool(await holder.fetchval(query))

        await wait_until(
            waiting_for_the_lock, timeout_s=30, what="the locked user's call waiting", poll_s=0.01
        )
        # Without the bound this would wait for the locked call, that is, forever.
        replies = await asyncio.wait_for(store.ingest_commands(free), 30)
        assert [r["command_id"] for r in replies] == ids(free)
        assert not blocked.done(), "the locked user's call ended before its lock was released"
        assert overdue_chunks() - overdue_before == 1
        await hold.rollback()
        done = await asyncio.wait_for(blocked, 30)
        assert [r["command_id"] for r in done] == ids(locked)
    finally:
        await holder.close()
        await pool.close()
