"""Two holes of the ingest functions (migration 0004): an isolation level other than READ
COMMITTED is refused with CW412 (before, a valid command was refused with 23505 and
dead-lettered), and a subspace's running sum never overflows float32 (before, 22003)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from contracts import CaptureArtifactCommand
from tests.fixtures.database import TemplateDatabase, WorkerLogin
from tests.support.db_commands import DIM, as_json, command, new_id, unit
from worker.application.capture import ingest_command
from worker.application.ports import IngestCommand
from worker.domain.errors import TransientError
from worker.infrastructure.db import create_pool, dsn_with_database
from worker.infrastructure.migrations import apply_migrations
from worker.infrastructure.repository import ArtifactRepository
from worker.infrastructure.roles import ensure_login
from worker.sql import migrations as packaged_migrations

FLT_MAX = float(np.finfo(np.float32).max)
BATCH = "SELECT capture.ingest_batch($1::jsonb)"


@pytest.mark.parametrize("level", ["repeatable_read", "serializable"])
@pytest.mark.parametrize("function", ["ingest_with_signal", "ingest_batch"])
async def test_ingest_outside_read_committed_is_refused_with_cw412(
    pool: asyncpg.Pool, level: str, function: str
) -> None:
    cmd = as_json(command(user_id=new_id(), url="https://example.com/iso", embedding=[1.0] * DIM))
    arg = cmd if function == "ingest_with_signal" else f"[{cmd}]"
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.PostgresError) as caught:
            async with conn.transaction(isolation=level):
                await conn.fetchval(f"SELECT capture.{function}($1::jsonb)", arg)
    assert caught.value.sqlstate == "CW412"
    assert "must run in READ COMMITTED, not " + level.upper().replace("_", " ") in str(caught.value)


async def test_the_repository_maps_cw412_to_a_retry_not_a_dead_letter(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET default_transaction_isolation = 'repeatable read'")
        cmd = command(user_id=new_id(), url="https://example.com/iso2", embedding=[1.0] * DIM)
        with pytest.raises(TransientError, match="READ COMMITTED"):
            await ArtifactRepository(_single(conn)).ingest_batch([as_json(cmd)])
    finally:
        await conn.close()


class _single:
    """The one connection as a pool (the repository only calls fetchval)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.conn.fetchval(query, *args)


@pytest.fixture
async def repeatable_read_login(
    db_url: str, migrated_template: TemplateDatabase
) -> AsyncIterator[str]:
    """A worker login whose role default is REPEATABLE READ (a DBA's setting)."""
    login = WorkerLogin(f"cw_rr_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex)
    await ensure_login(migrated_template.admin_url, login.name, login.password)
    admin = await asyncpg.connect(migrated_template.admin_url)
    try:
        await admin.execute(
            f"ALTER ROLE \"{login.name}\" SET default_transaction_isolation = 'repeatable read'"
        )
        yield login.url_for(db_url)
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{login.name}"')
        await admin.close()


async def test_the_worker_pool_runs_read_committed_whatever_the_role_default(
    repeatable_read_login: str,
) -> None:
    plain = await asyncpg.connect(repeatable_read_login)
    try:  # the setting is in force for a plain session...
        assert await plain.fetchval("SHOW default_transaction_isolation") == "repeatable read"
    finally:
        await plain.close()
    pool = await create_pool(repeatable_read_login, max_size=1)
    try:  # ... and the worker's pool overrides it
        cmd = command(user_id=new_id(), url="https://example.com/rr", embedding=[1.0] * DIM)
        [result] = await ArtifactRepository(pool).ingest_batch([as_json(cmd)])
        assert isinstance(result, dict) and result["status"] == "ingested"
    finally:
        await pool.close()


@pytest.fixture
async def one_subspace_pool(
    fresh_database: Callable[[], Awaitable[str]],
) -> AsyncIterator[asyncpg.Pool]:
    """A database where a user has at most one subspace: every new artifact joins it, whatever
    its similarity (large magnitudes make pgvector's float32 cosine NaN, which counts as 0)."""
    pool = await create_pool(await fresh_database(), max_size=2)
    try:
        await pool.execute(
            "UPDATE capture.system_config SET value = '1' WHERE key = 'subspace.max_per_user'"
        )
        yield pool
    finally:
        await pool.close()


async def test_large_magnitudes_never_overflow_the_running_sum(
    one_subspace_pool: asyncpg.Pool,
) -> None:
    pool = one_subspace_pool
    user = new_id()
    big = [0.0] * DIM
    big[0], big[1] = FLT_MAX, -FLT_MAX / 2  # valid: every element is a finite float32
    commands = [
        command(user_id=user, url=f"https://example.com/big/{i}", embedding=big) for i in range(5)
    ]
    results = json.loads(
        await pool.fetchval(
            "SELECT capture.ingest_batch($1::jsonb)::text",
            "[" + ",".join(as_json(c) for c in commands) + "]",
        )
    )
    assert [r.get("status") for r in results] == ["ingested"] * 5, results
    assert len({r["subspace_id"] for r in results}) == 1
    row = await pool.fetchrow(
        "SELECT member_count, centroid_scale, centroid_sum::real[] AS s FROM capture.subspaces"
        " WHERE user_id = $1",
        user,
    )
    assert row["member_count"] == 5
    # The scale grew (by one per addition that could overflow); sum * 2^scale is the true sum.
    assert row["centroid_scale"] >= 3
    s = np.array(row["s"], dtype=np.float64) * 2.0 ** row["centroid_scale"]
    assert s[0] == pytest.approx(5 * FLT_MAX, rel=1e-6)
    assert s[1] == pytest.approx(-5 * FLT_MAX / 2, rel=1e-6)

    # A normal embedding afterwards joins it too.
    rng = np.random.default_rng(12)
    after = command(user_id=user, url="https://example.com/after", embedding=unit(rng))
    result = json.loads(
        await pool.fetchval("SELECT capture.ingest_with_signal($1::jsonb)::text", as_json(after))
    )
    assert result["status"] == "ingested"


async def test_ordinary_sums_keep_scale_zero(pool: asyncpg.Pool) -> None:
    rng = np.random.default_rng(5)
    user = new_id()
    v = unit(rng)
    for i in range(3):
        await pool.fetchval(
            "SELECT capture.ingest_with_signal($1::jsonb)",
            as_json(command(user_id=user, url=f"https://example.com/n/{i}", embedding=v)),
        )
    row = await pool.fetchrow(
        "SELECT member_count, centroid_scale, centroid_sum::real[] AS s FROM capture.subspaces"
        " WHERE user_id = $1",
        user,
    )
    assert (row["member_count"], row["centroid_scale"]) == (3, 0)
    # exactly the float32 sum, as before 0004 (digests of earlier databases stay valid)
    expected = (v + v).astype(np.float32) + v
    assert np.array_equal(np.array(row["s"], dtype=np.float32), expected.astype(np.float32))


async def test_migrating_a_used_database_to_0004_keeps_its_state_and_digest(
    migrated_template: TemplateDatabase, tmp_path: Path
) -> None:
    """0004 redefines the functions and adds centroid_scale: a database filled before keeps
    its digest, and ingesting on top gives the same state as ingesting after the migration."""
    before_0004 = tmp_path / "migrations"
    before_0004.mkdir()
    for path in sorted(packaged_migrations().iterdir()):
        if path.name.endswith(".sql") and path.name < "0004":
            shutil.copy(path, before_0004 / path.name)
    rng = np.random.default_rng(2024)
    users = [new_id() for _ in range(3)]
    first = [
        as_json(command(user_id=u, url=f"https://example.com/{u}/{i}", embedding=unit(rng)))
        for i in range(20)
        for u in users
    ]
    later = [
        as_json(command(user_id=u, url=f"https://example.com/{u}/later/{i}", embedding=unit(rng)))
        for i in range(10)
        for u in users
    ]
    digests = []
    for upgrade_between in (True, False):
        name = f"cw_upgrade_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(migrated_template.admin_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = dsn_with_database(migrated_template.admin_url, name)
        try:
            dim = migrated_template.embedding_dim
            if upgrade_between:
                await apply_migrations(url, embedding_dim=dim, directory=before_0004)
            else:
                await apply_migrations(url, embedding_dim=dim)
            conn = await asyncpg.connect(url)
            try:
                await conn.fetchval(
                    "SELECT capture.ingest_batch($1::jsonb)", f"[{','.join(first)}]"
                )
                digest_before = await conn.fetchval("SELECT capture.capture_state_digest()")
                if upgrade_between:
                    assert await apply_migrations(url, embedding_dim=dim) != []
                    assert await conn.fetchval("SELECT capture.capture_state_digest()") == (
                        digest_before
                    )
                await conn.fetchval(
                    "SELECT capture.ingest_batch($1::jsonb)", f"[{','.join(later)}]"
                )
                digests.append(await conn.fetchval("SELECT capture.capture_state_digest()"))
            finally:
                await conn.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    assert digests[0] == digests[1]


def _typed(cmd: dict[str, Any]) -> IngestCommand:
    return ingest_command(
        CaptureArtifactCommand.model_validate_json(as_json(cmd), context={"embedding_dim": DIM})
    )


@pytest.mark.parametrize("level", ["repeatable_read", "serializable"])
async def test_the_typed_ingest_is_refused_outside_read_committed_too(
    pool: asyncpg.Pool, level: str
) -> None:
    cmd = command(user_id=new_id(), url="https://example.com/iso-typed", embedding=[1.0] * DIM)
    async with pool.acquire() as conn:
        with pytest.raises(TransientError, match="ingest_typed must run in READ COMMITTED"):
            async with conn.transaction(isolation=level):
                await ArtifactRepository(_single(conn)).ingest_commands([_typed(cmd)])


async def test_the_typed_ingest_rescales_large_sums_as_the_reference_does(
    one_subspace_pool: asyncpg.Pool,
) -> None:
    user = new_id()
    big = [0.0] * DIM
    big[0], big[1] = FLT_MAX, -FLT_MAX / 2
    commands = [
        command(user_id=user, url=f"https://example.com/typed-big/{i}", embedding=big)
        for i in range(5)
    ]
    results = await ArtifactRepository(one_subspace_pool).ingest_commands(
        [_typed(c) for c in commands]
    )
    assert [r["status"] for r in results if isinstance(r, dict)] == ["ingested"] * 5, results
    row = await one_subspace_pool.fetchrow(
        "SELECT member_count, centroid_scale, centroid_sum::real[] AS s FROM capture.subspaces"
        " WHERE user_id = $1",
        user,
    )
    assert row["member_count"] == 5 and row["centroid_scale"] >= 3
    s = np.array(row["s"], dtype=np.float64) * 2.0 ** row["centroid_scale"]
    assert s[0] == pytest.approx(5 * FLT_MAX, rel=1e-6)
