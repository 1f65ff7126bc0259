"""The PostgreSQL server the tests run against has a working pgvector."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest

from tests.fixtures.services import with_database


@pytest.fixture
async def scratch_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A throw-away database on the test server."""
    name = f"t_vector_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'create database "{name}"')
        yield with_database(pg_admin_url, name)
        await admin.execute(f'drop database "{name}" with (force)')
    finally:
        await admin.close()


def cosine_distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_cosine_distance_and_nearest_neighbour(scratch_url: str) -> None:
    conn = await asyncpg.connect(scratch_url)
    try:
        await conn.execute("create extension vector")
        version = await conn.fetchval(
            "select extversion from pg_extension where extname = 'vector'"
        )
        assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 7)

        rng = np.random.default_rng(7)
        # float32 like pgvector stores them, so the expectation sees the same inputs.
        a, b = (rng.normal(size=384).astype(np.float32).tolist() for _ in range(2))
        got = await conn.fetchval("select $1::float4[]::vector <=> $2::float4[]::vector", a, b)
        assert got == pytest.approx(cosine_distance(a, b), abs=1e-6)
        assert await conn.fetchval(
            "select '[1,2,3]'::vector <=> '[3,2,1]'::vector"
        ) == pytest.approx(1 - 10 / 14)

        items = {i: rng.normal(size=8).astype(np.float32).tolist() for i in range(20)}
        await conn.execute("create table item (id int primary key, embedding vector(8))")
        await conn.executemany(
            "insert into item values ($1, $2::float4[]::vector)", list(items.items())
        )
        query = rng.normal(size=8).astype(np.float32).tolist()
        nearest = await conn.fetch(
            "select id from item order by embedding <=> $1::float4[]::vector limit 3", query
        )
        expected = sorted(items, key=lambda i: cosine_distance(items[i], query))[:3]
        assert [r["id"] for r in nearest] == expected
    finally:
        await conn.close()
