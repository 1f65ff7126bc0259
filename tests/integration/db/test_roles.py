"""Least privilege: a login in role capture_worker may execute the granted functions and
nothing else: no table access at all, no admin functions."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tests.fixtures.database import TemplateDatabase
from tests.support.db_commands import as_json, as_user, command, new_id, unit
from worker.interfaces.cli.db import register

TABLES = [
    "artifacts",
    "signals",
    "subspaces",
    "command_ledger",
    "rejections",
    "system_config",
    "schema_migrations",
]


@pytest.fixture(scope="module")
async def login(db_url: str, migrated_template: TemplateDatabase) -> AsyncIterator[str]:
    """A new login made by `capture-worker db create-login`; dropped afterwards."""
    name = f"cw_login_{uuid.uuid4().hex[:10]}"
    app = typer.Typer()
    register(app)
    os.environ["CW_TEST_LOGIN_PASSWORD"] = "s3cret-for-tests"
    try:
        # The CLI runs its own event loop: give it a thread.
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                "db",
                "create-login",
                name,
                "--password-env",
                "CW_TEST_LOGIN_PASSWORD",
                "--database-url",
                db_url,
            ],
        )
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output
        yield as_user(db_url, name, "s3cret-for-tests")
    finally:
        del os.environ["CW_TEST_LOGIN_PASSWORD"]
        admin = await asyncpg.connect(migrated_template.admin_url)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await admin.close()


@pytest.fixture
async def worker_conn(login: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(login)
    try:
        yield conn
    finally:
        await conn.close()


async def test_login_is_a_member_of_the_worker_role(worker_conn: asyncpg.Connection) -> None:
    assert await worker_conn.fetchval(
        "SELECT pg_has_role(current_user, 'capture_worker', 'MEMBER')"
    )
    assert not await worker_conn.fetchval(
        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    )


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM capture.{t} LIMIT 1",
        "INSERT INTO capture.{t} DEFAULT VALUES",
        "UPDATE capture.{t} SET {c} = {c}",
        "DELETE FROM capture.{t}",
        "TRUNCATE capture.{t}",
    ],
)
async def test_no_table_access(worker_conn: asyncpg.Connection, table: str, statement: str) -> None:
    column = await worker_conn.fetchval(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum = 1",
        f"capture.{table}",
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await worker_conn.execute(statement.format(t=table, c=column))


@pytest.mark.parametrize(
    "call",
    [
        "SELECT capture.reset_state()",
        "SELECT capture.drop_embedding_index()",
        "SELECT capture.create_embedding_index()",
        "SELECT capture._ingest('{}'::jsonb, capture._ingest_config())",
        "SELECT capture._ingest_config()",
    ],
)
async def test_no_admin_or_internal_functions(worker_conn: asyncpg.Connection, call: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await worker_conn.execute(call)


async def test_granted_functions_work(worker_conn: asyncpg.Connection) -> None:
    rng = np.random.default_rng(1201)
    user = new_id()
    cmd = command(user_id=user, url="https://example.com/role", embedding=unit(rng))
    result = await worker_conn.fetchval(
        "SELECT capture.ingest_with_signal($1::jsonb)::text", as_json(cmd)
    )
    assert '"status": "ingested"' in result
    batch = await worker_conn.fetchval(
        "SELECT capture.ingest_batch($1::jsonb)::text",
        "["
        + as_json(command(user_id=user, url="https://example.com/role2", embedding=unit(rng)))
        + "]",
    )
    assert '"status": "ingested"' in batch
    assert await worker_conn.fetchval("SELECT capture.capture_state_digest()")
    assert await worker_conn.fetchval(
        "SELECT capture.capture_artifact_state($1::uuid, 'https://example.com/role') IS NOT NULL",
        user,
    )
    assert (
        await worker_conn.fetchval(
            "SELECT jsonb_array_length(capture.user_artifacts($1::uuid))", user
        )
        == 2
    )
    assert await worker_conn.fetchval("SELECT capture.get_config() ? 'embedding.dim'")
    assert await worker_conn.fetchval("SELECT capture.canonical_url('HTTP://A.B')") == "http://a.b/"
    assert (
        await worker_conn.fetchval(
            "SELECT jsonb_array_length(capture.record_rejections($1::jsonb))",
            f'[{{"event_id": "{new_id()}", "status": "rejected"}}]',
        )
        == 1
    )


async def test_functions_pin_their_search_path(worker_conn: asyncpg.Connection) -> None:
    # SQL-standard bodies without definer rights need no path (see test_definer.py).
    unpinned = await worker_conn.fetch(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'capture'::regnamespace"
        " AND p.prokind = 'f' AND (p.prosecdef OR p.prosqlbody IS NULL) AND NOT EXISTS"
        " (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')"
    )
    assert [r["proname"] for r in unpinned] == []


async def test_create_login_twice_says_so_and_exists_ok_sets_the_password(
    db_url: str, login: str
) -> None:
    name = urlsplit(login).username
    assert name is not None
    app = typer.Typer()
    register(app)
    base = ["db", "create-login", name, "--password-env", "CW_TEST_NEW_PASSWORD"]
    os.environ["CW_TEST_NEW_PASSWORD"] = "another-s3cret"
    admin = await asyncpg.connect(db_url)
    stored = "SELECT rolpassword FROM pg_authid WHERE rolname = $1"
    try:
        before = await admin.fetchval(stored, name)
        again = await asyncio.to_thread(CliRunner().invoke, app, [*base, "--database-url", db_url])
        assert again.exit_code == 1 and "exists already" in again.output
        reset = await asyncio.to_thread(
            CliRunner().invoke, app, [*base, "--exists-ok", "--database-url", db_url]
        )
        assert reset.exit_code == 0, reset.output
        assert await admin.fetchval(stored, name) not in (None, before)  # a new password hash
        conn = await asyncpg.connect(as_user(db_url, name, "another-s3cret"))
        try:
            assert await conn.fetchval("SELECT pg_has_role('capture_worker', 'MEMBER')")
        finally:
            await conn.close()
    finally:
        await admin.close()
        del os.environ["CW_TEST_NEW_PASSWORD"]
