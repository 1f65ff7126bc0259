"""Definer-rights code cannot be redirected (SPEC §4, migration 0004).

Every function in schema capture pins `search_path` with pg_catalog first and pg_temp last
(but one kind that needs no path: a SQL-standard body without definer rights, whose names are
resolved when it is created, never when it runs; 0007's inlined capture._canonical is one),
and a capture_worker login that creates temporary tables named like every table the
functions touch still ingests into the real tables — in both pgvector layouts: `vector` in
public (CREATE EXTENSION's default) and in schema extensions (Supabase).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.fixtures.database import TemplateDatabase, clone_database
from tests.support.db_commands import as_json, as_user, command, new_id, unit
from worker.infrastructure.db import dsn_with_database
from worker.infrastructure.migrations import apply_migrations
from worker.infrastructure.roles import create_login

# Functions whose pinned path does not start with pg_catalog and end with pg_temp, except
# SQL-standard bodies (BEGIN ATOMIC) without definer rights: nothing in them is looked up at
# call time, so no search_path can redirect them, and a pinned one would prevent inlining.
UNSAFE_FUNCTIONS = """
SELECT p.proname, p.prosecdef, c.path
FROM pg_proc p
LEFT JOIN LATERAL (
    SELECT substr(cfg, length('search_path=') + 1) AS path
    FROM unnest(p.proconfig) cfg WHERE cfg LIKE 'search_path=%'
) c ON true
WHERE p.pronamespace = 'capture'::regnamespace AND p.prokind = 'f'
  AND (p.prosecdef OR p.prosqlbody IS NULL)
  AND (c.path IS NULL
       OR regexp_replace(c.path, '\\s', '', 'g') !~ '^pg_catalog,(.*,)?pg_temp$')
ORDER BY p.proname
"""

# Temporary look-alikes of every table the functions read or write, same columns.
SHADOWS = {
    "command_ledger": "(command_id uuid PRIMARY KEY, user_id uuid NOT NULL,"
    " payload_hash uuid NOT NULL, result jsonb NOT NULL, processed_at timestamptz NOT NULL)",
    "artifacts": "(artifact_id uuid PRIMARY KEY, user_id uuid, canonical_url text, url text,"
    " title text, embedding vector, engagement_level capture.engagement_level,"
    " signal_count integer, subspace_id uuid, assignment_margin double precision,"
    " runner_up_subspace_id uuid, first_occurred_at timestamptz, last_occurred_at timestamptz)",
    "subspaces": "(subspace_id uuid PRIMARY KEY, user_id uuid, founding_artifact_id uuid,"
    " centroid_sum vector, member_count integer, created_at timestamptz,"
    " centroid_scale integer NOT NULL DEFAULT 0)",
    "signals": "(signal_id uuid PRIMARY KEY, artifact_id uuid, user_id uuid,"
    " reading_depth double precision, engagement_level capture.engagement_level,"
    " occurred_at timestamptz)",
    "rejections": "(event_id uuid PRIMARY KEY, result jsonb, recorded_at timestamptz)",
    "system_config": "(key text PRIMARY KEY, value jsonb, updated_at timestamptz DEFAULT now())",
}
LOGIN_PASSWORD = "definer-test-password"  # a throw-away login of this module


@pytest.fixture(scope="module")
async def login(migrated_template: TemplateDatabase) -> AsyncIterator[str]:
    """A capture_worker login (roles are cluster-wide: one serves every database here)."""
    name = f"cw_definer_{uuid.uuid4().hex[:10]}"
    await create_login(migrated_template.admin_url, name, LOGIN_PASSWORD)
    try:
        yield name
    finally:
        admin = await asyncpg.connect(migrated_template.admin_url)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await admin.close()


@pytest.fixture(params=["public", "extensions"])
async def layout_db(
    request: pytest.FixtureRequest, migrated_template: TemplateDatabase
) -> AsyncIterator[str]:
    """An empty database migrated with pgvector in public, or in schema extensions."""
    name = f"cw_layout_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(migrated_template.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = dsn_with_database(migrated_template.admin_url, name)
    try:
        if request.param == "extensions":
            conn = await asyncpg.connect(url)
            try:  # what Supabase has: vector in extensions, which every role may use
                await conn.execute(
                    "CREATE SCHEMA extensions; CREATE EXTENSION vector SCHEMA extensions;"
                    " GRANT USAGE ON SCHEMA extensions TO PUBLIC"
                )
            finally:
                await conn.close()
        await apply_migrations(url, embedding_dim=migrated_template.embedding_dim)
        conn = await asyncpg.connect(url)
        try:
            schema = await conn.fetchval(
                "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"
            )
            assert schema == request.param
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_every_function_pins_pg_catalog_first_and_pg_temp_last(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        assert [tuple(r) for r in await conn.fetch(UNSAFE_FUNCTIONS)] == []
        definers = await conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'capture'::regnamespace"
            " AND prosecdef"
        )
        assert definers >= 8  # the check above did look at the definer functions
    finally:
        await conn.close()


async def test_the_check_flags_a_path_without_pg_temp_last(
    migrated_template: TemplateDatabase,
) -> None:
    name = await clone_database(migrated_template)
    url = dsn_with_database(migrated_template.admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        for fn, path in [
            ("bad_no_temp", "pg_catalog, capture, public, extensions"),
            ("bad_temp_first", "pg_temp, pg_catalog, capture"),
            ("good_one", "pg_catalog, capture, extensions, public, pg_temp"),
        ]:
            await conn.execute(
                f"CREATE FUNCTION capture.{fn}() RETURNS int LANGUAGE sql SECURITY DEFINER"
                f" SET search_path = {path} AS 'SELECT 1'"
            )
        await conn.execute(
            "CREATE FUNCTION capture.bad_unpinned() RETURNS int LANGUAGE sql SECURITY DEFINER"
            " AS 'SELECT 1'"
        )
        # A SQL-standard body needs no path, unless it runs with definer rights; a plain
        # SQL body is looked up at call time and does.
        await conn.execute(
            "CREATE FUNCTION capture.good_atomic() RETURNS int LANGUAGE sql RETURN 1"
        )
        await conn.execute(
            "CREATE FUNCTION capture.bad_atomic_definer() RETURNS int LANGUAGE sql"
            " SECURITY DEFINER RETURN 1"
        )
        await conn.execute(
            "CREATE FUNCTION capture.bad_plain_invoker() RETURNS int LANGUAGE sql AS 'SELECT 1'"
        )
        flagged = [r["proname"] for r in await conn.fetch(UNSAFE_FUNCTIONS)]
        assert flagged == [
            "bad_atomic_definer", "bad_no_temp", "bad_plain_invoker", "bad_temp_first",
            "bad_unpinned",
        ]  # fmt: skip
    finally:
        await conn.close()
        admin = await asyncpg.connect(migrated_template.admin_url)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_shadows_cover_every_table_the_functions_touch(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        tables = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'capture'::regnamespace"
            " AND relkind = 'r' AND relname <> 'schema_migrations'"
        )
        assert {r["relname"] for r in tables} == set(SHADOWS)
    finally:
        await conn.close()


async def _rows(conn: asyncpg.Connection, table: str, command_id: str) -> int:
    key = {"command_ledger": "command_id", "signals": "signal_id"}[
        table.rsplit(".", maxsplit=1)[-1]
    ]
    return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {key} = $1", command_id))


async def test_temp_tables_of_the_login_do_not_redirect_ingest(layout_db: str, login: str) -> None:
    rng = np.random.default_rng(404)
    user = new_id()
    first = command(
        user_id=user, url="https://example.com/shadow", embedding=unit(rng), reading_depth=0.1
    )
    second = command(user_id=user, url="https://example.com/shadow-2", embedding=unit(rng))
    worker = await asyncpg.connect(as_user(layout_db, login, LOGIN_PASSWORD))
    admin = await asyncpg.connect(layout_db)
    try:
        assert not await worker.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", login)
        vector_schema = await admin.fetchval(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"
        )
        await worker.execute(f"SET search_path = public, {vector_schema}")
        for table, columns in SHADOWS.items():
            await worker.execute(f"CREATE TEMP TABLE {table} {columns}")
        # Bait: every level reachable at depth 0, and a stored "result" for the first command.
        await worker.execute(
            "INSERT INTO pg_temp.system_config (key, value) VALUES"
            """ ('engagement.thresholds', '{"skimmed": 0, "read": 0, "deep": 0}'),"""
            " ('subspace.join_threshold', '2'), ('embedding.dim', '3')"
        )
        await worker.execute(
            'INSERT INTO pg_temp.command_ledger VALUES ($1, $2, $1, \'{"status": "shadow"}\','
            " now())",
            first["command_id"],
            user,
        )

        result = json.loads(
            await worker.fetchval(
                "SELECT capture.ingest_with_signal($1::jsonb)::text", as_json(first)
            )
        )
        assert result["status"] == "ingested"
        assert result["engagement_level"] == "captured"  # the real thresholds, not the bait
        batch = json.loads(
            await worker.fetchval(
                "SELECT capture.ingest_batch($1::jsonb)::text", f"[{as_json(second)}]"
            )
        )
        assert [r.get("status") for r in batch] == ["ingested"]

        for cmd in (first, second):
            for table in ("command_ledger", "signals"):
                assert await _rows(admin, f"capture.{table}", cmd["command_id"]) == 1
                shadowed = 1 if (table, cmd) == ("command_ledger", first) else 0
                assert await _rows(worker, f"pg_temp.{table}", cmd["command_id"]) == shadowed
        assert await admin.fetchval("SELECT count(*) FROM capture.artifacts") == 2
        assert await worker.fetchval("SELECT count(*) FROM pg_temp.artifacts") == 0
        assert await worker.fetchval("SELECT count(*) FROM pg_temp.subspaces") == 0

        # A reused command_id with another payload is still a conflict.
        reused = {**first, "url": "https://example.com/another"}
        with pytest.raises(asyncpg.PostgresError) as caught:
            await worker.fetchval("SELECT capture.ingest_with_signal($1::jsonb)", as_json(reused))
        assert caught.value.sqlstate == "CW409"
        conflict: list[dict[str, Any]] = json.loads(
            await worker.fetchval(
                "SELECT capture.ingest_batch($1::jsonb)::text", f"[{as_json(reused)}]"
            )
        )
        assert conflict[0]["error"]["sqlstate"] == "CW409"

        # The read side and the rejections store see the real tables too.
        rejection = {"event_id": new_id(), "status": "rejected"}
        await worker.fetchval(
            "SELECT capture.record_rejections($1::jsonb)", f"[{json.dumps(rejection)}]"
        )
        assert (
            await admin.fetchval(
                "SELECT count(*) FROM capture.rejections WHERE event_id = $1", rejection["event_id"]
            )
            == 1
        )
        assert await worker.fetchval("SELECT count(*) FROM pg_temp.rejections") == 0
        assert await worker.fetchval("SELECT capture.capture_state_digest()") == (
            await admin.fetchval("SELECT capture.capture_state_digest()")
        )
        assert (
            await worker.fetchval(
                "SELECT jsonb_array_length(capture.user_artifacts($1::uuid))", user
            )
            == 2
        )
    finally:
        await worker.close()
        await admin.close()
