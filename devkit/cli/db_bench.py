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

With `--compare FILE` (repeatable) it compares variants of the SQL instead: the migrated schema
and, for each FILE, a copy of it with FILE's SQL applied (a function replaced, a constraint
dropped, ...), each in a database of its own, are fed the same commands through
`ingest_typed`, pass after pass, in alternating order; the report gives each one's server CPU
per command in every pass, the median, the median of its pass-by-pass differences to the
migrated schema, and whether it ended in the migrated schema's state.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import psutil  # type: ignore[import-untyped]
import typer
from rich.table import Table

from contracts import CaptureArtifactCommand
from devkit.cpu import ProcessClock
from devkit.synthetic import generate_lines
from worker.application.capture import ingest_command
from worker.application.ports import IngestCommand
from worker.core.config import get_settings
from worker.domain.errors import CaptureError
from worker.infrastructure.db import create_pool, dsn_with_database
from worker.infrastructure.db_errors import translate_db_errors
from worker.infrastructure.migrations import apply_migrations
from worker.infrastructure.repository import ArtifactRepository
from worker.interfaces.cli.output import OutputFormat, console, emit_json, fail


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


async def run_bench(
    admin_dsn: str, *, count: int, users: int, batch_size: int, dim: int, seed: int
) -> dict[str, Any]:
    lines, typed = _commands(count, users, seed, dim)
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
                # The database's server process for our connection.
                backend = ProcessClock(
                    psutil.Process(await pool.fetchval("SELECT pg_backend_pid()"))
                )
                cpu_clock = _clock_name([backend])
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
                        cpu_before = backend.seconds()
                        calls, seconds = await _timed_run(
                            repo, lines, typed, batch_size=size, mode=mode
                        )
                        cpu = backend.seconds() - cpu_before
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
        "cpu_clock": cpu_clock,
        "pgvector": pgvector,
        "synchronous_commit": sync_commit,
        "embedding_dim": dim,
        "users": users,
        "seed": seed,
        "runs": runs,
        "same_digest_every_run": len(digests) == 1,
    }


def _clock_name(backends: Sequence[ProcessClock]) -> str:
    return "scheduler" if all(b.exact for b in backends) else "ticks"


def _print_clock(report: dict[str, Any]) -> None:
    if report["cpu_clock"] == "ticks":
        console.print(
            "[yellow]server CPU read in clock ticks of 10 ms (this kernel has no "
            "/proc/PID/sched): short runs read coarse, give a larger --count[/]"
        )


def _commands(count: int, users: int, seed: int, dim: int) -> tuple[list[str], list[IngestCommand]]:
    lines = list(generate_lines(count, users=users, seed=seed, dim=dim))
    context = {"embedding_dim": dim}
    typed = [
        ingest_command(CaptureArtifactCommand.model_validate_json(line, context=context))
        for line in lines
    ]
    return lines, typed


def _variant_names(files: Sequence[Path]) -> list[str]:
    names: list[str] = ["migrated"]
    for file in files:
        name, n = file.stem, 2
        while name in names:
            name, n = f"{file.stem}-{n}", n + 1
        names.append(name)
    return names


async def run_compare(
    admin_dsn: str,
    *,
    files: Sequence[Path],
    passes: int,
    count: int,
    users: int,
    batch_size: int,
    dim: int,
    seed: int,
    hnsw: bool,
) -> dict[str, Any]:
    """The migrated schema against each variant FILE: server CPU per command, pass by pass."""
    _, typed = _commands(count, users, seed, dim)
    scripts = [file.read_text() for file in files]
    names = _variant_names(files)
    run_id = uuid.uuid4().hex[:12]
    databases = [f"cw_bench_{run_id}_{i}" for i in range(len(names))]
    created: list[str] = []
    pools: list[asyncpg.Pool] = []
    cpu: dict[str, list[float]] = {name: [] for name in names}
    digests: dict[str, set[str]] = {name: set() for name in names}
    with translate_db_errors("bench-db"):
        try:
            await _admin(admin_dsn, f'CREATE DATABASE "{databases[0]}"')
            created.append(databases[0])
            await apply_migrations(dsn_with_database(admin_dsn, databases[0]), embedding_dim=dim)
            for database, file, script in zip(databases[1:], files, scripts, strict=True):
                # A file copy of the migrated database, then the variant's SQL as its owner.
                await _admin(admin_dsn, f'CREATE DATABASE "{database}" TEMPLATE "{databases[0]}"')
                created.append(database)
                with translate_db_errors(f"applying {file}"):
                    # A statement after it: asyncpg fails on a script of none (comments
                    # only, or empty: the migrated schema again, a measure of the noise).
                    # MagicStack/asyncpg#1259.
                    await _admin(dsn_with_database(admin_dsn, database), f"{script}\n;SELECT 1")
            for database in databases:
                pools.append(
                    await create_pool(
                        dsn_with_database(admin_dsn, database), min_size=1, max_size=1
                    )
                )
            backends = [
                ProcessClock(psutil.Process(await pool.fetchval("SELECT pg_backend_pid()")))
                for pool in pools
            ]
            cpu_clock = _clock_name(backends)
            order = list(range(len(names)))
            for n in range(passes):
                # Alternate the order so that no variant always runs first (the host drifts).
                for i in order if n % 2 == 0 else reversed(order):
                    repo = ArtifactRepository(pools[i])
                    await repo.reset_state()
                    if hnsw:
                        await repo.create_embedding_index()
                    else:
                        await repo.drop_embedding_index()
                    before = backends[i].seconds()
                    await _timed_run(repo, [], typed, batch_size=batch_size, mode="typed")
                    cpu[names[i]].append((backends[i].seconds() - before) / count * 1e6)
                    digests[names[i]].add(await repo.state_digest())
        finally:
            for pool in pools:
                await pool.close()
            for database in created:
                await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    reference = digests["migrated"]
    base = cpu["migrated"]
    return {
        "compare": True,
        "cpu_clock": cpu_clock,
        "commands": count,
        "users": users,
        "seed": seed,
        "batch": batch_size,
        "hnsw_index": hnsw,
        "passes": passes,
        "variants": [
            {
                "name": name,
                "file": None if i == 0 else str(files[i - 1]),
                "backend_cpu_us_per_command": [round(x, 1) for x in cpu[name]],
                "median_us": round(statistics.median(cpu[name]), 1),
                # Pass by pass against the migrated schema, which ran next to it in the same
                # pass: steadier than the difference of the medians when the host drifts.
                "median_diff_us": round(
                    statistics.median(x - b for x, b in zip(cpu[name], base, strict=True)), 1
                ),
                "same_state_as_migrated": len(digests[name]) == 1 and digests[name] == reference,
            }
            for i, name in enumerate(names)
        ],
    }


def print_compare(report: dict[str, Any]) -> None:
    index = "with the HNSW index" if report["hnsw_index"] else "no index"
    table = Table(
        title=f"ingest_typed, {report['commands']} commands in batches of {report['batch']}, "
        f"{index}: server CPU µs/command, {report['passes']} alternating passes"
    )
    for column in ("variant", "passes", "median", "vs migrated, pass by pass", "same state"):
        table.add_column(column, justify="left" if column in ("variant", "passes") else "right")
    for variant in report["variants"]:
        table.add_row(
            variant["name"],
            " ".join(f"{x:.0f}" for x in variant["backend_cpu_us_per_command"]),
            f"{variant['median_us']:.0f}",
            f"{variant['median_diff_us']:+.0f}" if variant["file"] else "",
            "yes" if variant["same_state_as_migrated"] else "[bold red]no[/]",
        )
    console.print(table)
    _print_clock(report)


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
    _print_clock(report)
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
        compare: Annotated[
            list[Path] | None,
            typer.Option(
                "--compare",
                metavar="FILE",
                exists=True,
                dir_okay=False,
                help="Compare the migrated schema with a copy that has FILE's SQL applied "
                "(repeat for several variants): typed ingest only, pass by pass.",
            ),
        ] = None,
        passes: Annotated[
            int, typer.Option(min=1, help="--compare: passes over the commands per variant.")
        ] = 3,
        hnsw: Annotated[
            bool, typer.Option("--hnsw", help="--compare: with the HNSW index in place.")
        ] = False,
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

        --compare FILE: the migrated schema against a copy with FILE's SQL applied (e.g. a
        replaced function, a dropped constraint), each in its own database, the same commands
        through ingest_typed in every pass, alternating; server CPU per command and whether
        each ended in the migrated schema's state.
        """
        admin = database_url or get_settings().admin_url()
        dimension = dim or get_settings().embedding_dim
        try:
            report = _run(admin, compare, passes, count, users, batch_size, dimension, seed, hnsw)
        except CaptureError as exc:
            fail(str(exc))
        if output is OutputFormat.JSON:
            emit_json(report)
        elif compare:
            print_compare(report)
        else:
            print_report(report)


def _run(
    admin: str,
    compare: list[Path] | None,
    passes: int,
    count: int,
    users: int,
    batch_size: int,
    dimension: int,
    seed: int,
    hnsw: bool,
) -> dict[str, Any]:
    if compare:
        return asyncio.run(
            run_compare(
                admin,
                files=compare,
                passes=passes,
                count=count,
                users=users,
                batch_size=batch_size,
                dim=dimension,
                seed=seed,
                hnsw=hnsw,
            )
        )
    return asyncio.run(
        run_bench(admin, count=count, users=users, batch_size=batch_size, dim=dimension, seed=seed)
    )
