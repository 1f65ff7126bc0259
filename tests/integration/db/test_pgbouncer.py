"""The worker's pool behind a real PgBouncer in transaction mode (Debian's `pgbouncer`).

PgBouncer hands each transaction to any of its server connections. asyncpg's default named
prepared statements then collide (one client's `__asyncpg_stmt_1__` already exists, or is
missing, on the server session it lands on), and PgBouncer refuses the `lock_timeout` startup
parameter. `CAPTURE_DB_POOLER=transaction` (create_pool(transaction_pooler=True)) avoids both.

The PgBouncer process is started here on a free port and stopped whatever happens. Without the
binary the tests skip with the reason locally and fail in CI (`.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest

from devkit.ports import free_port
from devkit.stack.postgres import service_user
from tests.fixtures.services import unavailable
from tests.support.db_commands import as_json, command, unit
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository

SERVER_CONNECTIONS = 2  # PgBouncer's pool per database and user: fewer than the clients
READY_TIMEOUT_S = 30.0


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


@pytest.fixture(scope="module")
def pgbouncer(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`host:port` of a PgBouncer (transaction mode, trust) in front of the test server."""
    binary = pgbouncer_binary()
    if binary is None:
        unavailable("pgbouncer", "no pgbouncer binary (apt-get install pgbouncer)")
    server = urlsplit(pg_server_url)
    user = server.username or "postgres"
    port = free_port()
    workdir = tmp_path_factory.mktemp("pgbouncer")
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_CONNECTIONS}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
        "max_client_conn = 100\nserver_reset_query =\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    command_line = [binary, str(workdir / "pgbouncer.ini")]
    run_as = service_user()  # PgBouncer refuses to run as root
    if run_as is not None:
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, run_as.uid, run_as.gid)
        for parent in workdir.parents:  # let that user reach the directory
            parent.chmod(parent.stat().st_mode | 0o001)
        command_line[1:1] = ["-u", run_as.name]
    proc = subprocess.Popen(
        command_line, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:  # log says why
                log = workdir / "pgbouncer.log"
                text = log.read_text() if log.exists() else ""
                pytest.fail(f"pgbouncer did not start on port {port}: {text}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def through(pgbouncer: str, url: str) -> str:
    """The same database and user, through PgBouncer."""
    parts = urlsplit(url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=credentials + pgbouncer))


def _commands(users: int, per_user: int, seed: int) -> list[list[str]]:
    """Per user, its commands as JSON texts, in order."""
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for u in range(users):
        user = str(uuid.UUID(int=seed * 1000 + u + 1))
        out.append(
            [
                as_json(
                    command(
                        user_id=user,
                        url=f"https://example.com/pgb/{i % 7}",
                        embedding=unit(rng),
                        reading_depth=0.1 * (i % 10),
                        command_id=str(uuid.UUID(int=seed * 10**6 + u * 1000 + i)),
                    )
                )
                for i in range(per_user)
            ]
        )
    return out


async def _ingest(repo: ArtifactRepository, per_user: list[list[str]], chunk: int) -> None:
    async def one_user(cmds: list[str]) -> None:
        for start in range(0, len(cmds), chunk):
            results = await repo.ingest_batch(cmds[start : start + chunk])
            assert all(isinstance(r, dict) for r in results), results

    await asyncio.gather(*(one_user(c) for c in per_user))


async def test_the_worker_pool_works_behind_pgbouncer_in_transaction_mode(
    pgbouncer: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    via_pooler, direct = await fresh_database(), await fresh_database()
    per_user = _commands(users=8, per_user=30, seed=1502)

    pool = await create_pool(
        through(pgbouncer, via_pooler),
        min_size=8,
        max_size=8,
        lock_timeout_ms=2000,
        transaction_pooler=True,
    )
    admin = await asyncpg.connect(via_pooler)  # straight to PostgreSQL
    try:
        await _ingest(ArtifactRepository(pool), per_user, chunk=5)
        await _ingest(ArtifactRepository(pool), per_user, chunk=7)  # redelivery: ledger replays
        assert pool.get_size() == 8
        # Eight client connections shared PgBouncer's two server sessions.
        backends = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert 1 <= backends <= SERVER_CONNECTIONS
        digest = await pool.fetchval("SELECT capture.capture_state_digest()")
        signals = await admin.fetchval("SELECT count(*) FROM capture.signals")
    finally:
        await admin.close()
        await pool.close()
    assert signals == 8 * 30  # each command applied once, the redelivery changed nothing

    reference = await create_pool(direct, min_size=1, max_size=8)
    try:
        await _ingest(ArtifactRepository(reference), per_user, chunk=5)
        assert await reference.fetchval("SELECT capture.capture_state_digest()") == digest
    finally:
        await reference.close()


async def test_named_prepared_statements_collide_behind_pgbouncer(
    pgbouncer: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    """Why the setting exists: asyncpg's default statement cache through this PgBouncer."""
    url = through(pgbouncer, await fresh_database())
    first, second = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        # `first` prepares its cached statement on a server session, `second` then holds that
        # session in a transaction, so `first` runs its cached statement on the other one.
        assert await first.fetchval("SELECT $1::int", 1) == 1
        async with second.transaction():
            await second.execute("SELECT 1")
            with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
                await first.fetchval("SELECT $1::int", 2)
    finally:
        for conn in (first, second):
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


async def test_pgbouncer_refuses_the_lock_timeout_startup_parameter(
    pgbouncer: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    """Why transaction_pooler leaves lock_timeout to the role."""
    url = through(pgbouncer, await fresh_database())
    with pytest.raises(asyncpg.ProtocolViolationError, match="lock_timeout"):
        await asyncpg.connect(url, server_settings={"lock_timeout": "2000ms"})
