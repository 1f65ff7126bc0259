"""`capture-worker bench-db`: the raw throughput of the ingest functions, Kafka left out.

On a fresh temporary database (created from the given server, migrated, dropped at the end)
the same pre-generated command stream is ingested six times, from an empty state each time:
sequential `ingest_with_signal` calls, `ingest_batch` calls (JSON) and `ingest_typed` calls
(typed arrays, binary vectors; decoded before the clock starts), each with and without the
HNSW index. This is the ceiling the worker's own throughput is measured against. Every run must
end in the same state digest; the report says whether it did.

When the server loads pg_stat_statements with `pg_stat_statements.track = all`, the typed runs
also break the time down by statement, those inside the plpgsql functions included: where a
command's server time goes. On the local stack:

    psql "$CAPTURE_ADMIN_DATABASE_URL" \
      -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" \
      -c "ALTER SYSTEM SET pg_stat_statements.track = 'all'"
    capture-worker stack stop postgres && capture-worker stack up
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

import asyncpg
import psutil  # type: ignore[import-untyped]
import typer
from rich.table import Table

from contracts import CaptureArtifactCommand
from devkit.synthetic import generate_lines
from worker.application.capture import ingest_command
from worker.application.ports import IngestCommand
from worker.core.config import get_settings
from worker.infrastructure.db import create_pool, dsn_with_database
from worker.infrastructure.db_errors import translate_db_errors
from worker.infrastructure.migrations import apply_migrations
from worker.infrastructure.repository import ArtifactRepository
from worker.interfaces.cli.output import OutputFormat, console, emit_json


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _timed_run(
    repo: ArtifactRepository,
    lines: list[str],
    typed: list[IngestCommand],
    *,
    batch_size: int | None,
    mode: str,
) -> tuple[int, float]:
    """Ingest every line; returns (calls made, seconds)."""
    calls = 0
    started = time.perf_counter()
    if batch_size is None:
        for line in lines:
            await repo.ingest_with_signal(line)
            calls += 1
    elif mode.startswith("typed"):
        for start in range(0, len(typed), batch_size):
            await repo.ingest_commands(typed[start : start + batch_size])
            calls += 1
    else:
        for start in range(0, len(lines), batch_size):
            await repo.ingest_batch(lines[start : start + batch_size])
            calls += 1
    return calls, time.perf_counter() - started


_STATEMENTS = r"""
SELECT calls, total_exec_time, regexp_replace(query, '\s+', ' ', 'g') AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query NOT LIKE '%pg_stat_statements%'
ORDER BY total_exec_time DESC
LIMIT $1
"""


async def _statements_tracked(pool: asyncpg.Pool) -> bool:
    """pg_stat_statements loaded, tracking nested statements, and its view installed here."""
    async with pool.acquire() as conn:
        loaded = await conn.fetchval("SHOW shared_preload_libraries")
        if "pg_stat_statements" not in str(loaded):
            return False
        if await conn.fetchval("SHOW pg_stat_statements.track") != "all":
            return False
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return True


async def _statement_times(pool: asyncpg.Pool, commands: int) -> list[dict[str, Any]]:
    """The statements that took the most execution time since the last reset, per command."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_STATEMENTS, 12)
    return [
        {
            "calls": int(r["calls"]),
            "exec_us_per_command": round(float(r["total_exec_time"]) * 1000 / commands, 1),
            "query": str(r["query"])[:120],
        }
        for r in rows
    ]


def _backend_cpu(process: psutil.Process) -> float:
    """CPU seconds (user + system) of the database's server process for our connection."""
    times = process.cpu_times()
    return float(times.user + times.system)


async def run_bench(
    admin_dsn: str, *, count: int, users: int, batch_size: int, dim: int, seed: int
) -> dict[str, Any]:
    lines = list(generate_lines(count, users=users, seed=seed, dim=dim))
    context = {"embedding_dim": dim}
    typed = [
        ingest_command(CaptureArtifactCommand.model_validate_json(line, context=context))
        for line in lines
    ]
    name = f"cw_bench_{uuid.uuid4().hex[:12]}"
    with translate_db_errors("bench-db"):
        await _admin(admin_dsn, f'CREATE DATABASE "{name}"')
        try:
            url = dsn_with_database(admin_dsn, name)
            await apply_migrations(url, embedding_dim=dim)
            pool = await create_pool(url, min_size=1, max_size=1)
            try:
                repo = ArtifactRepository(pool)
                server = await pool.fetchval("SHOW server_version")
                pgvector = await pool.fetchval(
                    "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                )
                sync_commit = await pool.fetchval("SHOW synchronous_commit")
                backend = psutil.Process(await pool.fetchval("SELECT pg_backend_pid()"))
                runs: list[dict[str, Any]] = []
                digests: set[str] = set()
                tracked = await _statements_tracked(pool)
                for hnsw in (False, True):
                    for mode, size in (
                        ("sequential", None),
                        (f"batch-{batch_size}", batch_size),
                        (f"typed-{batch_size}", batch_size),
                    ):
                        await repo.reset_state()
                        if hnsw:
                            await repo.create_embedding_index()
                        else:
                            await repo.drop_embedding_index()
                        breakdown = tracked and mode.startswith("typed")
                        if breakdown:
                            await pool.execute("SELECT pg_stat_statements_reset()")
                        cpu_before = _backend_cpu(backend)
                        calls, seconds = await _timed_run(
                            repo, lines, typed, batch_size=size, mode=mode
                        )
                        cpu = _backend_cpu(backend) - cpu_before
                        statements = await _statement_times(pool, len(lines)) if breakdown else None
                        digests.add(await repo.state_digest())
                        runs.append(
                            {
                                "mode": mode,
                                "hnsw_index": hnsw,
                                "commands": len(lines),
                                "calls": calls,
                                "seconds": round(seconds, 3),
                                "commands_per_s": round(len(lines) / seconds, 1),
                                "calls_per_s": round(calls / seconds, 1),
                                # CPU the server process spent: far steadier than wall time
                                # on a shared machine (it leaves out waiting for the cores).
                                "backend_cpu_us_per_command": round(cpu / len(lines) * 1e6, 1),
                                **({"statements": statements} if statements else {}),
                            }
                        )
            finally:
                await pool.close()
        finally:
            await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {
        "server_version": server,
        "pgvector": pgvector,
        "synchronous_commit": sync_commit,
        "embedding_dim": dim,
        "users": users,
        "seed": seed,
        "runs": runs,
        "same_digest_every_run": len(digests) == 1,
    }


def print_report(report: dict[str, Any]) -> None:
    table = Table(
        title=f"ingest throughput: PostgreSQL {report['server_version']}, pgvector "
        f"{report['pgvector']}, dim {report['embedding_dim']}, "
        f"synchronous_commit={report['synchronous_commit']}"
    )
    columns = ("mode", "HNSW index", "commands", "calls", "seconds", "commands/s", "calls/s")
    for column in (*columns, "server CPU µs/command"):
        table.add_column(column, justify="left" if column in ("mode", "HNSW index") else "right")
    for run in report["runs"]:
        table.add_row(
            run["mode"],
            "yes" if run["hnsw_index"] else "no",
            str(run["commands"]),
            str(run["calls"]),
            f"{run['seconds']:.2f}",
            f"{run['commands_per_s']:.0f}",
            f"{run['calls_per_s']:.0f}",
            f"{run['backend_cpu_us_per_command']:.0f}",
        )
    console.print(table)
    for run in report["runs"]:
        if "statements" in run:
            _print_statements(run)
    if not report["same_digest_every_run"]:
        console.print("[bold red]the runs ended in different states (digests differ)[/]")


def _print_statements(run: dict[str, Any]) -> None:
    index = "HNSW index" if run["hnsw_index"] else "no index"
    table = Table(title=f"{run['mode']}, {index}: execution time by statement (pg_stat_statements)")
    table.add_column("calls", justify="right")
    table.add_column("µs/command", justify="right")
    table.add_column("statement")
    for statement in run["statements"]:
        table.add_row(
            str(statement["calls"]),
            f"{statement['exec_us_per_command']:.1f}",
            statement["query"],
        )
    console.print(table)


DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL of an owner (default: CAPTURE_ADMIN_DATABASE_URL / the local stack).",
        show_default=False,
    ),
]
Format = Annotated[OutputFormat, typer.Option("--format", help="pretty or json.")]


def register(app: typer.Typer) -> None:
    @app.command("bench-db")
    def bench_db(
        *,
        count: Annotated[int, typer.Option(help="Commands to ingest per run.", min=1)] = 2000,
        users: Annotated[int, typer.Option(help="Distinct users in the stream.", min=1)] = 20,
        batch_size: Annotated[
            int, typer.Option(help="Commands per ingest_batch call.", min=1)
        ] = 100,
        dim: Annotated[
            int | None, typer.Option(help="Embedding dimension (default CAPTURE_EMBEDDING_DIM).")
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed of the generated commands.")] = 1,
        database_url: DatabaseUrl = None,
        output: Format = OutputFormat.PRETTY,
    ) -> None:
        """Raw throughput of the SQL functions, on a fresh temporary database (dropped after).

        Needs a role that may CREATE DATABASE. Measures sequential ingest_with_signal calls,
        ingest_batch calls and ingest_typed calls, each with and without the HNSW index.

        When the server preloads pg_stat_statements with pg_stat_statements.track = all, the
        typed runs also list the statements that took the most time, those inside the plpgsql
        functions included. On the local stack: ALTER SYSTEM SET shared_preload_libraries =
        'pg_stat_statements' and ALTER SYSTEM SET pg_stat_statements.track = 'all' as the
        admin (CAPTURE_ADMIN_DATABASE_URL), then `capture-worker stack stop postgres` and
        `capture-worker stack up`.
        """
        report = asyncio.run(
            run_bench(
                database_url or get_settings().admin_url(),
                count=count,
                users=users,
                batch_size=batch_size,
                dim=dim or get_settings().embedding_dim,
                seed=seed,
            )
        )
        if output is OutputFormat.JSON:
            emit_json(report)
        else:
            print_report(report)
