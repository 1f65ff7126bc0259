"""SPEC §4.6: concurrent calls for one user serialise: the outcome equals some serial order,
no centroid update is lost, and a command_id raced by two users never leaks a raw
unique_violation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np
import pytest

from contracts.results import ErrorKind
from tests.support.db_commands import as_json, command, new_id, stream, strip_clock, unit
from worker.domain.errors import PermanentError
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository

CONNECTIONS = 8


async def test_concurrent_ingest_for_one_user_equals_a_serial_order(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    rng = np.random.default_rng(707)
    user = new_id()
    commands = stream(rng, users=[user], per_user=120, clusters=4)
    texts = [as_json(c) for c in commands]

    url = await fresh_database()
    pool = await create_pool(url, min_size=CONNECTIONS, max_size=CONNECTIONS)
    try:
        repo = ArtifactRepository(pool)
        # Everything at once, over 8 connections: single calls and small batches mixed.
        single = [repo.ingest_with_signal(t) for t in texts[:60]]
        batched = [repo.ingest_batch(texts[i : i + 5]) for i in range(60, len(texts), 5)]
        await asyncio.gather(*single, *batched)

        # No lost update: every subspace's count and sum are those of its members.
        rows = await pool.fetch(
            "SELECT s.subspace_id, s.member_count, s.centroid_sum::text AS total,"
            "       count(a.*) AS members,"
            "       coalesce(json_agg(a.embedding::text), '[]') AS embeddings"
            " FROM capture.subspaces s LEFT JOIN capture.artifacts a USING (subspace_id)"
            " GROUP BY s.subspace_id"
        )
        assert sum(r["member_count"] for r in rows) == await pool.fetchval(
            "SELECT count(*) FROM capture.artifacts"
        )
        for r in rows:
            assert r["member_count"] == r["members"]
            members = np.asarray([json.loads(e) for e in json.loads(r["embeddings"])], np.float64)
            np.testing.assert_allclose(
                np.asarray(json.loads(r["total"])), members.sum(axis=0), rtol=1e-4, atol=1e-5
            )
        assert await pool.fetchval("SELECT count(*) FROM capture.signals") == len(texts)

        # The serial order the lock imposed is the order of processed_at (taken under it).
        order = await pool.fetch(
            "SELECT command_id::text AS id, result"
            " FROM capture.command_ledger ORDER BY processed_at"
        )
        concurrent_digest = await repo.state_digest()
    finally:
        await pool.close()

    by_id = {c["command_id"]: t for c, t in zip(commands, texts, strict=True)}
    replay_url = await fresh_database()
    replay_pool = await create_pool(replay_url, max_size=1)
    try:
        replay = ArtifactRepository(replay_pool)
        for row in order:
            result = await replay.ingest_with_signal(by_id[row["id"]])
            assert strip_clock(result) == strip_clock(row["result"])
        assert await replay.state_digest() == concurrent_digest
    finally:
        await replay_pool.close()


async def test_overlapping_batches_do_not_deadlock(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    rng = np.random.default_rng(808)
    users = [new_id() for _ in range(4)]
    url = await fresh_database()
    pool = await create_pool(url, min_size=4, max_size=4)
    try:
        repo = ArtifactRepository(pool)
        # Each batch visits the users in another order: without the sorted up-front locks
        # two of them would wait for each other.
        batches = []
        for b in range(4):
            order = users[b:] + users[:b]
            batches.append(
                [
                    as_json(
                        command(user_id=u, url=f"https://example.com/{b}/{i}", embedding=unit(rng))
                    )
                    for i, u in enumerate(order * 3)
                ]
            )
        replies = await asyncio.wait_for(
            asyncio.gather(*(repo.ingest_batch(b) for b in batches)), timeout=30
        )
        assert all(isinstance(r, dict) for batch in replies for r in batch)
        assert await pool.fetchval("SELECT count(*) FROM capture.signals") == 48
    finally:
        await pool.close()


async def test_same_command_id_for_two_users_is_a_conflict_not_a_unique_violation(
    pool: asyncpg.Pool,
) -> None:
    rng = np.random.default_rng(909)
    shared_id = new_id()
    first = command(
        user_id=new_id(), url="https://example.com/race", embedding=unit(rng), command_id=shared_id
    )
    second = command(
        user_id=new_id(), url="https://example.com/race", embedding=unit(rng), command_id=shared_id
    )
    repo = ArtifactRepository(pool)

    # Hold the first user's transaction open after its insert, so the second must wait on the
    # ledger row and then find it committed: the exact race.
    conn = await pool.acquire()
    try:
        tx = conn.transaction()
        await tx.start()
        held: dict[str, Any] = await conn.fetchval(
            "SELECT capture.ingest_with_signal($1::jsonb)", as_json(first)
        )
        racing = asyncio.create_task(repo.ingest_with_signal(as_json(second)))
        await asyncio.sleep(0.3)
        assert not racing.done()  # waiting on the uncommitted ledger row
        await tx.commit()
        with pytest.raises(PermanentError) as caught:
            await racing
    finally:
        await pool.release(conn)
    assert caught.value.kind is ErrorKind.CONFLICT and caught.value.sqlstate == "CW409"
    assert held["status"] == "ingested"
    assert await repo.artifact_state(second["user_id"], second["url"]) is None
