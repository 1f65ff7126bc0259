"""Supabase's layout: pgvector lives in schema `extensions` and the worker's login has no access
to `public`. Migrations put nothing into public there, and the worker's pool and functions work
without it. (CAPTURE_TEST_DB_LAYOUT=supabase runs the whole database suite on this layout.)"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tests.fixtures.database import SUPABASE_LAYOUT, TemplateDatabase
from tests.support.db_commands import as_json, as_user, command, new_id, unit
from worker.infrastructure.db import create_pool, dsn_with_database
from worker.infrastructure.migrations import apply_migrations
from worker.interfaces.cli.db import register

_VECTOR_SCHEMA = (
    "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
    " WHERE e.extname = 'vector'"
)


@pytest.fixture
async def new_database(migrated_template: TemplateDatabase) -> AsyncIterator[str]:
    """An empty database (no layout, no migrations), dropped afterwards."""
    name = f"cw_supa_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(migrated_template.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield dsn_with_database(migrated_template.admin_url, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_vector_goes_into_extensions_when_that_schema_exists(new_database: str) -> None:
    # The schema exists but pgvector is not installed yet: 0001's plain CREATE EXTENSION
    # would put it into public, the first schema of the migration's search_path.
    await _execute(new_database, "CREATE SCHEMA extensions")
    await apply_migrations(new_database, embedding_dim=8)
    assert await _fetchval(new_database, _VECTOR_SCHEMA) == "extensions"
    assert await _fetchval(new_database, "SELECT to_regtype('public.vector')") is None


async def test_vector_goes_into_public_without_an_extensions_schema(new_database: str) -> None:
    await apply_migrations(new_database, embedding_dim=8)
    assert await _fetchval(new_database, _VECTOR_SCHEMA) == "public"


@pytest.fixture
async def supabase_login(
    new_database: str, migrated_template: TemplateDatabase
) -> AsyncIterator[str]:
    """The Supabase layout, migrated, and a login made by `capture-worker db create-login`."""
    await _execute(new_database, SUPABASE_LAYOUT)
    await apply_migrations(new_database)
    name = f"cw_supa_{uuid.uuid4().hex[:10]}"
    app = typer.Typer()
    register(app)
    os.environ["CW_TEST_SUPA_PASSWORD"] = "supa-s3cret"
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                *("db", "create-login", name),
                *("--password-env", "CW_TEST_SUPA_PASSWORD", "--database-url", new_database),
            ],
        )
        assert result.exit_code == 0, result.output
        yield as_user(new_database, name, "supa-s3cret")
    finally:
        del os.environ["CW_TEST_SUPA_PASSWORD"]
        admin = await asyncpg.connect(migrated_template.admin_url)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await admin.close()


async def test_the_worker_works_without_access_to_public(supabase_login: str) -> None:
    assert await _fetchval(supabase_login, "SELECT has_schema_privilege('public', 'USAGE')") is (
        False
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _execute(supabase_login, "CREATE TABLE public.probe (x int)")
    # The worker's own pool: its set-up registers the vector codec from `extensions`.
    pool = await create_pool(supabase_login, min_size=1, max_size=2)
    try:
        rng = np.random.default_rng(1501)
        user = new_id()
        cmds = [
            command(user_id=user, url=f"https://example.com/supa/{i}", embedding=unit(rng))
            for i in range(3)
        ]
        batch = await pool.fetchval(
            "SELECT capture.ingest_batch($1::jsonb)::text",
            "[" + ",".join(as_json(c) for c in cmds) + "]",
        )
        assert batch.count('"status": "ingested"') == 3
        assert (
            await pool.fetchval("SELECT jsonb_array_length(capture.user_artifacts($1::uuid))", user)
            == 3
        )
        assert await pool.fetchval("SELECT capture.capture_state_digest()")
    finally:
        await pool.close()
