"""The worker's connection warm-up (`ArtifactRepository.warm_up`): before it reports ready, each
connection has compiled the ingest and planned its statements, and nothing was stored.

The plans are read from the session's own memory contexts (`pg_backend_memory_contexts`,
superuser only), so that test runs as the admin; the other runs as the worker's login, whose
rights are what a deployment has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import numpy as np

from tests.fixtures.database import WorkerLogin
from tests.support.db_commands import DIM, command, table_counts, typed, unit
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository

# Statements of the typed batch that a first call would otherwise plan: the ledger, the
# artifacts created and updated (one statement), a subspace created, one joined and written
# back, the signals.
_PLANNED = (
    "INSERT INTO capture.command_ledger",
    "INSERT INTO capture.artifacts",
    "INSERT INTO capture.subspaces",
    "UPDATE capture.subspaces",
    "INSERT INTO capture.signals",
)

_PLANS = """
SELECT ident FROM pg_backend_memory_contexts
WHERE name = 'CachedPlan' AND ident IS NOT NULL
"""


async def _planned(conn: asyncpg.Connection) -> set[str]:
    idents = [" ".join(r["ident"].split()) for r in await conn.fetch(_PLANS)]
    return {p for p in _PLANNED if any(p in i for i in idents)}


async def _stored_state(admin_url: str) -> tuple[str, dict[str, int]]:
    conn = await asyncpg.connect(admin_url)
    try:
        digest: str = await conn.fetchval("SELECT capture.capture_state_digest()")
        return digest, await table_counts(conn)
    finally:
        await conn.close()


async def _seed(repo: ArtifactRepository) -> None:
    """A user with artifacts and subspaces already, so that "nothing stored" means something."""
    rng = np.random.default_rng(7)
    user = "00000000-0000-4000-8000-00000000000a"
    commands = [
        typed(command(user_id=user, url=f"https://example.com/{n}", embedding=unit(rng)))
        for n in range(6)
    ]
    replies = await repo.ingest_commands(commands)
    assert all(isinstance(r, dict) for r in replies), replies


async def test_each_warmed_connection_holds_the_ingest_plans(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    url = await fresh_database()
    pool = await create_pool(url, min_size=1, max_size=5)
    try:
        async with pool.acquire() as cold:
            assert await _planned(cold) == set()  # the premise: a new session plans nothing
        repo = ArtifactRepository(pool)
        await repo.warm_up(3, embedding_dim=DIM)
        assert pool.get_size() == 3
        held = [await pool.acquire() for _ in range(3)]
        try:
            for conn in held:
                assert await _planned(conn) == set(_PLANNED)
        finally:
            for conn in held:
                await pool.release(conn)
    finally:
        await pool.close()


async def test_the_warm_up_stores_nothing_as_the_worker(
    fresh_database: Callable[[], Awaitable[str]], worker_login: WorkerLogin
) -> None:
    url = await fresh_database()
    pool = await create_pool(worker_login.url_for(url), min_size=1, max_size=4)
    try:
        repo = ArtifactRepository(pool)
        await _seed(repo)
        before = await _stored_state(url)
        assert before[1]["artifacts"] == 6
        await repo.warm_up(4, embedding_dim=DIM)
        assert pool.get_size() == 4
        assert await _stored_state(url) == before
    finally:
        await pool.close()
