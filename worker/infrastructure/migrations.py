"""Apply the ordered SQL migrations in `sql/migrations/` and record them with checksums.

Each file `NNNN_name.sql` runs in its own transaction together with its row in
`capture.schema_migrations`, so a failed file leaves nothing behind and a re-run resumes
there. A session advisory lock makes concurrent runs (two workers starting at once) queue
instead of racing. The checksum is the SHA-256 of the file as committed, before the
`:embedding_dim` substitution, so an edited applied file is refused whatever the dimension.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from worker import sql
from worker.domain.errors import ConfigurationError
from worker.infrastructure.db_errors import is_connection_error, translate_db_errors

# Arbitrary constant: the bigint advisory-lock key of "a migration run is in progress".
_MIGRATION_LOCK_KEY = 0x63617074_75726531  # "capture1"
_FILE_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
# psql's variable syntax; the lookbehind leaves `::casts` and identifiers alone.
_DIM_VARIABLE = re.compile(r"(?<![:\w]):embedding_dim\b")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS capture;
CREATE TABLE IF NOT EXISTS capture.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

# A database with an `extensions` schema (Supabase's layout) keeps pgvector there: installed
# before 0001's plain CREATE EXTENSION, which would otherwise put it into public, the first
# schema of the path. Without that schema, 0001 installs it into public as before.
_VECTOR_HOME = """
DO $$
BEGIN
    IF to_regnamespace('extensions') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
        CREATE EXTENSION vector WITH SCHEMA extensions;
    END IF;
END
$$;
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    version: str
    name: str
    path: Path | Traversable
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, embedding_dim: int) -> str:
        return _DIM_VARIABLE.sub(str(embedding_dim), self.text)


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationStatus:
    version: str
    name: str
    applied: bool
    applied_at: datetime | None
    checksum_ok: bool | None  # None when not applied (or the file is gone)


def load_migrations(directory: Path | Traversable | None = None) -> list[Migration]:
    """The migration files in version order; a duplicated version is a configuration error."""
    folder = directory or sql.migrations()
    if not folder.is_dir():
        raise ConfigurationError(f"migrations folder not found: {folder}")
    found: dict[str, Migration] = {}
    for path in sorted(folder.iterdir(), key=lambda entry: entry.name):
        match = _FILE_NAME.match(path.name)
        if not match:
            continue
        version = match.group(1)
        if version in found:
            raise ConfigurationError(
                f"two migrations share version {version}: {found[version].name}, {path.name}"
            )
        found[version] = Migration(
            version=version, name=path.name, path=path, text=path.read_text(encoding="utf-8")
        )
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    dsn: str, *, embedding_dim: int = 384, directory: Path | None = None
) -> list[str]:
    """Apply the pending migrations; return the names applied (empty when up to date).

    Raises ConfigurationError when an applied file was edited, or when the database was
    migrated with another embedding dimension (its vector columns cannot change type).
    """
    if embedding_dim < 1:
        raise ConfigurationError(f"embedding_dim must be positive, got {embedding_dim}")
    migrations = load_migrations(directory)
    with translate_db_errors("migrate"):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
            try:
                return await _apply_locked(conn, migrations, embedding_dim)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
        finally:
            await conn.close()


async def _apply_locked(
    conn: asyncpg.Connection, migrations: list[Migration], embedding_dim: int
) -> list[str]:
    await conn.execute(_BOOTSTRAP)
    applied = {
        r["version"]: r["checksum"]
        for r in await conn.fetch("SELECT version, checksum FROM capture.schema_migrations")
    }
    for migration in migrations:
        _check_unchanged(migration, applied.get(migration.version))
    await _check_dimension(conn, embedding_dim)

    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        try:
            async with conn.transaction():
                # Where the DDL finds `vector`: public on plain PostgreSQL, extensions on
                # Supabase. Where pgvector goes when missing: see _VECTOR_HOME.
                await conn.execute("SET LOCAL search_path = public, extensions")
                await conn.execute(_VECTOR_HOME)
                await conn.execute(migration.render(embedding_dim))
                await conn.execute(
                    "INSERT INTO capture.schema_migrations (version, name, checksum)"
                    " VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        except asyncpg.PostgresError as exc:
            if is_connection_error(exc):
                raise  # translated into TransientError by the caller's context
            # The SQL itself was refused: retrying cannot help, the deployment must change.
            raise ConfigurationError(
                f"migration {migration.name} failed (SQLSTATE {exc.sqlstate}): {exc}"
            ) from exc
        done.append(migration.name)
    return done


def _check_unchanged(migration: Migration, recorded: str | None) -> None:
    if recorded is not None and recorded != migration.checksum:
        raise ConfigurationError(
            f"migration {migration.name} was edited after it was applied "
            f"(checksum {recorded[:12]}…≠{migration.checksum[:12]}…); "
            "add a new migration instead"
        )


async def _check_dimension(conn: asyncpg.Connection, embedding_dim: int) -> None:
    has_config = await conn.fetchval("SELECT to_regclass('capture.system_config') IS NOT NULL")
    if not has_config:
        return
    recorded = await conn.fetchval(
        "SELECT value #>> '{}' FROM capture.system_config WHERE key = 'embedding.dim'"
    )
    if recorded is not None and int(recorded) != embedding_dim:
        raise ConfigurationError(
            f"the database was migrated with embedding dimension {recorded}, not "
            f"{embedding_dim}; set CAPTURE_EMBEDDING_DIM={recorded} or use another database"
        )


async def migration_status(dsn: str, *, directory: Path | None = None) -> list[MigrationStatus]:
    """Every known migration (files and recorded rows), applied or not, in version order."""
    migrations = {m.version: m for m in load_migrations(directory)}
    with translate_db_errors("migration status"):
        conn = await asyncpg.connect(dsn)
        try:
            exists = await conn.fetchval(
                "SELECT to_regclass('capture.schema_migrations') IS NOT NULL"
            )
            rows = (
                await conn.fetch(
                    "SELECT version, name, checksum, applied_at FROM capture.schema_migrations"
                )
                if exists
                else []
            )
        finally:
            await conn.close()
    recorded = {r["version"]: r for r in rows}
    statuses: list[MigrationStatus] = []
    for version in sorted(set(migrations) | set(recorded)):
        file, row = migrations.get(version), recorded.get(version)
        statuses.append(
            MigrationStatus(
                version=version,
                name=file.name if file else str(row["name"] if row else version),
                applied=row is not None,
                applied_at=row["applied_at"] if row else None,
                checksum_ok=(row["checksum"] == file.checksum) if (row and file) else None,
            )
        )
    return statuses
