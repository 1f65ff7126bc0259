"""Fixtures of the database suite: a pool and a repository on the module's database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository


@pytest.fixture(scope="module")
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def repo(pool: asyncpg.Pool) -> ArtifactRepository:
    return ArtifactRepository(pool)
