"""Migrations: apply on an empty database, re-run as a no-op, refuse an edited applied file
and a different embedding dimension; the files run under psql's variable syntax too."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from tests.fixtures.database import TemplateDatabase, layout_sql
from worker.domain.errors import ConfigurationError
from worker.infrastructure.db import dsn_with_database
from worker.infrastructure.migrations import (
    apply_migrations,
    load_migrations,
    migration_status,
)
from worker.interfaces.cli.db import register
from worker.sql import migrations as packaged_migrations


@pytest.fixture
async def empty_db(migrated_template: TemplateDatabase) -> AsyncIterator[str]:
    name = f"cw_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(migrated_template.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = dsn_with_database(migrated_template.admin_url, name)
        prelude = layout_sql()  # the layout under test (CAPTURE_TEST_DB_LAYOUT)
        if prelude is not None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(prelude)
            finally:
                await conn.close()
        yield url
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_apply_then_rerun_is_a_noop(empty_db: str) -> None:
    names = [m.name for m in load_migrations()]
    assert names == sorted(names) and names[0].startswith("0001_")
    assert await apply_migrations(empty_db, embedding_dim=8) == names
    assert await apply_migrations(empty_db, embedding_dim=8) == []
    status = await migration_status(empty_db)
    assert [s.name for s in status] == names
    assert all(s.applied and s.checksum_ok for s in status)
    conn = await asyncpg.connect(empty_db)
    try:
        typmod = await conn.fetchval(
            "SELECT atttypmod FROM pg_attribute"
            " WHERE attrelid = 'capture.artifacts'::regclass AND attname = 'embedding'"
        )
        assert typmod == 8  # vector(:embedding_dim) became vector(8)
    finally:
        await conn.close()


async def test_concurrent_runs_apply_once(empty_db: str) -> None:
    results = await asyncio.gather(*(apply_migrations(empty_db) for _ in range(3)))
    applied = [r for r in results if r]
    assert len(applied) == 1 and [r for r in results if not r] == [[], []]


async def test_an_edited_applied_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(str(packaged_migrations()), folder)
    await apply_migrations(empty_db, directory=folder)
    target = folder / "0002_functions.sql"
    target.write_text(target.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(ConfigurationError) as caught:
        await apply_migrations(empty_db, directory=folder)
    message = str(caught.value)
    assert "0002_functions.sql was edited after it was applied" in message
    assert "add a new migration instead" in message
    assert [
        s.name for s in await migration_status(empty_db, directory=folder) if not s.checksum_ok
    ] == ["0002_functions.sql"]

    # A new file is the way to change things.
    (folder / "0002_functions.sql").write_text(
        (packaged_migrations() / "0002_functions.sql").read_text()
    )
    (folder / "0099_extra.sql").write_text("CREATE TABLE capture.extra_for_test (x int);\n")
    assert await apply_migrations(empty_db, directory=folder) == ["0099_extra.sql"]


async def test_another_dimension_is_refused(empty_db: str) -> None:
    await apply_migrations(empty_db, embedding_dim=16)
    with pytest.raises(ConfigurationError, match="embedding dimension 16, not 384"):
        await apply_migrations(empty_db, embedding_dim=384)


async def test_a_failing_migration_leaves_nothing_behind(empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(str(packaged_migrations()), folder)
    (folder / "0999_broken.sql").write_text(
        "CREATE TABLE capture.half_done (x int);\nSELECT 1/0;\n"
    )
    with pytest.raises(ConfigurationError, match=r"0999_broken\.sql failed"):
        await apply_migrations(empty_db, directory=folder)
    conn = await asyncpg.connect(empty_db)
    try:
        assert await conn.fetchval("SELECT to_regclass('capture.half_done')") is None
        assert await conn.fetchval("SELECT count(*) FROM capture.schema_migrations") == len(
            load_migrations()
        )
    finally:
        await conn.close()


def test_migrate_cli_reports_applied_and_already_applied(
    migrated_template: TemplateDatabase,
) -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(
        app, ["migrate", "--database-url", migrated_template.url, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["applied"] == []
    assert report["already_applied"] == [m.name for m in load_migrations()]
    assert migrated_template.url not in result.output  # the URL is never printed
