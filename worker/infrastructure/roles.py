"""Database roles: the least-privilege login the worker runs as, and the superuser guard.

`capture_worker` (migration 0003) is a NOLOGIN role that may EXECUTE the functions and
nothing else; a worker connects with a LOGIN role that is a member of it. A superuser would
bypass all of that, so the worker refuses one unless CAPTURE_ALLOW_SUPERUSER=1.
"""

from __future__ import annotations

import contextlib

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from worker.domain.errors import ConfigurationError
from worker.infrastructure.db_errors import translate_db_errors

WORKER_ROLE = "capture_worker"

# The same statement as migration 0003: roles are cluster-wide, so a login can be created
# before the first migration of a database (the local stack does) and 0003 then keeps it.
_ENSURE_WORKER_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'capture_worker') THEN
        CREATE ROLE capture_worker NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$
"""

SUPERUSER_HINT = (
    "create a least-privilege login and use it as DATABASE_URL:\n"
    "  capture-worker db create-login capture_app --password-env APP_DB_PASSWORD"
    " --database-url <admin URL>\n"
    "  export DATABASE_URL=postgresql://capture_app:<password>@<host>/<database>\n"
    '(local stack: eval "$(capture-worker stack env)" sets it); '
    "CAPTURE_ALLOW_SUPERUSER=1 runs as a superuser anyway"
)


async def _create_statement(conn: asyncpg.Connection, verb: str, name: str, password: str) -> str:
    statement: str = await conn.fetchval(
        f"SELECT format('{verb} ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", name, password
    )
    return statement


async def create_login(dsn: str, name: str, password: str) -> None:
    """CREATE ROLE name LOGIN PASSWORD ... IN ROLE capture_worker (quoted by the server)."""
    with translate_db_errors("create-login"):
        conn = await asyncpg.connect(dsn)
        try:
            statement = await _create_statement(conn, "CREATE", name, password)
            await conn.execute(f'{statement} IN ROLE "{WORKER_ROLE}"')
        except asyncpg.DuplicateObjectError as exc:
            raise ConfigurationError(
                f"login {name!r} exists already (--exists-ok sets its password instead)"
            ) from exc
        finally:
            await conn.close()


async def ensure_login(dsn: str, name: str, password: str) -> None:
    """Create the login in role capture_worker, or reset its password when it exists."""
    with translate_db_errors("ensure-login"):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(_ENSURE_WORKER_ROLE)
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
            if exists:
                await conn.execute(await _create_statement(conn, "ALTER", name, password))
            else:
                # DuplicateObjectError: created meanwhile by a concurrent run
                with contextlib.suppress(asyncpg.DuplicateObjectError):
                    await conn.execute(await _create_statement(conn, "CREATE", name, password))
            member = await conn.fetchval(
                "SELECT format('GRANT %I TO %I', $1::text, $2::text)", WORKER_ROLE, name
            )
            await conn.execute(member)
        finally:
            await conn.close()


async def refuse_superuser(
    conn: asyncpg.Connection | PoolConnectionProxy, *, allowed: bool
) -> None:
    """ConfigurationError when the session's user is a superuser and that was not allowed."""
    if allowed:
        return
    with translate_db_errors("role check"):
        row = await conn.fetchrow(
            "SELECT current_user AS name, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    if row is not None and row["rolsuper"]:
        raise ConfigurationError(
            f"DATABASE_URL connects as {row['name']!r}, a superuser: the worker needs only "
            f"EXECUTE on the capture functions; {SUPERUSER_HINT}"
        )
