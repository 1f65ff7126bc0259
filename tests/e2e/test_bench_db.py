"""`capture-worker bench-db`: every mode on the same commands ends in the same state, and with
pg_stat_statements tracking nested statements the typed runs say where the time went;
`--compare` measures variants of the SQL and says which of them changed the outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devkit.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLI = [sys.executable, "-m", "worker.interfaces.cli.main"]
MODES = {"sequential", "batch-20", "typed-20"}


def _bench_db(url: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [*CLI, "bench-db", "--count", "120", "--users", "5", "--batch-size", "20",
         "--dim", "16", "--database-url", url, "--format", "json", *extra],
        capture_output=True, text=True, timeout=500, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_every_mode_with_and_without_the_index_ends_in_one_state(pg_admin_url: str) -> None:
    report = _bench_db(pg_admin_url)
    runs = report["runs"]
    assert {(r["mode"], r["hnsw_index"]) for r in runs} == {
        (m, i) for m in MODES for i in (False, True)
    }
    assert report["same_digest_every_run"] is True
    # The scheduler's exact sum where the kernel keeps it: 10 ms ticks would read 0 here.
    assert report["cpu_clock"] == ("scheduler" if Path("/proc/self/sched").exists() else "ticks")
    for run in runs:
        assert run["commands"] == 120 and run["commands_per_s"] > 0
        assert run["backend_cpu_us_per_command"] > 0
        # The stack's server does not preload pg_stat_statements: no breakdown, no error.
        assert "statements" not in run


@pytest.fixture
async def tracking_server(tmp_path: Path) -> AsyncIterator[str]:
    """A PostgreSQL of its own that preloads pg_stat_statements (track = all); stopped after."""
    port = free_port()
    state = tmp_path / "pg"

    def stack(*args: str) -> None:
        done = subprocess.run(
            [*CLI, "stack", *args, "--state-dir", str(state)],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        stack("start", "postgres", "--postgres-port", str(port))
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        finally:
            await conn.close()
        stack("stop", "postgres")
        stack("start", "postgres", "--postgres-port", str(port))
        yield url
    finally:
        subprocess.run(
            [*CLI, "stack", "stop", "postgres", "--state-dir", str(state)],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip


def test_the_typed_runs_break_the_time_down_by_statement(tracking_server: str) -> None:
    report = _bench_db(tracking_server)
    assert report["same_digest_every_run"] is True
    for run in report["runs"]:
        if not run["mode"].startswith("typed"):
            assert "statements" not in run
            continue
        statements = run["statements"]
        queries = [s["query"] for s in statements]
        # The top-level call, and the statements inside it (track = all).
        assert any("capture.ingest_typed" in q for q in queries), queries
        assert any(q.startswith("INSERT INTO capture.command_ledger") for q in queries), queries
        total = next(s for s in statements if "capture.ingest_typed" in s["query"])
        assert total["calls"] == 6  # 120 commands in batches of 20
        assert all(0 < s["exec_us_per_command"] <= total["exec_us_per_command"] for s in statements)


async def _bench_databases(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'cw_bench_%'")
        return {r[0] for r in rows}
    finally:
        await conn.close()


async def test_compare_measures_each_variant_and_says_which_changed_the_outcome(
    pg_admin_url: str, tmp_path: Path
) -> None:
    # Dropping the foreign keys changes the work, not the result; a join threshold of 0.99
    # makes a subspace of nearly every new artifact: another state.
    no_fk = tmp_path / "no_fk.sql"
    no_fk.write_text(
        "ALTER TABLE capture.signals DROP CONSTRAINT signals_artifact_id_fkey;\n"
        "ALTER TABLE capture.artifacts DROP CONSTRAINT artifacts_subspace_id_fkey;\n"
    )
    threshold = tmp_path / "threshold.sql"
    threshold.write_text(
        "UPDATE capture.system_config SET value = '0.99' WHERE key = 'subspace.join_threshold';\n"
    )
    # No statement at all: the migrated schema again, the noise between two copies.
    same = tmp_path / "same.sql"
    same.write_text("-- nothing changed\n")
    before = await _bench_databases(pg_admin_url)
    report = _bench_db(
        pg_admin_url, "--compare", str(no_fk), "--compare", str(threshold),
        "--compare", str(same), "--passes", "2", "--count", "600",
    )  # fmt: skip
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == ["migrated", "no_fk", "threshold", "same"]
    assert variants["no_fk"]["file"] == str(no_fk)
    for variant in variants.values():
        assert len(variant["backend_cpu_us_per_command"]) == 2
        assert all(x > 0 for x in variant["backend_cpu_us_per_command"])
    assert variants["migrated"]["median_diff_us"] == 0
    for variant in variants.values():
        passes = variant["backend_cpu_us_per_command"]
        base = variants["migrated"]["backend_cpu_us_per_command"]
        diffs = sorted(x - b for x, b in zip(passes, base, strict=True))
        assert variant["median_diff_us"] == pytest.approx((diffs[0] + diffs[1]) / 2, abs=0.11)
    assert variants["migrated"]["same_state_as_migrated"] is True
    assert variants["no_fk"]["same_state_as_migrated"] is True
    assert variants["threshold"]["same_state_as_migrated"] is False
    assert variants["same"]["same_state_as_migrated"] is True
    # Its databases are gone.
    assert await _bench_databases(pg_admin_url) == before

    # A variant that does not apply is named, and leaves nothing behind either.
    broken = tmp_path / "broken.sql"
    broken.write_text("ALTER TABLE capture.no_such_table DROP CONSTRAINT x;\n")
    done = subprocess.run(
        [*CLI, "bench-db", "--count", "20", "--users", "2", "--dim", "16",
         "--database-url", pg_admin_url, "--compare", str(broken)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    message = " ".join(done.stderr.split())  # the console wraps long lines
    assert f"applying {broken}" in message and "no_such_table" in message
    assert await _bench_databases(pg_admin_url) == before
