"""The built wheel is the product: installed into a fresh virtualenv outside the checkout, with
only its runtime dependencies, it migrates a database from the SQL it carries and reads the
digest back -- no checkout, no CAPTURE_SQL_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from worker.infrastructure.db import dsn_with_database
from worker.infrastructure.migrations import load_migrations

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
async def empty_database(pg_admin_url: str) -> AsyncIterator[str]:
    name = f"cw_wheel_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield dsn_with_database(pg_admin_url, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def test_the_wheel_migrates_and_digests_outside_the_checkout(
    empty_database: str, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, REPO, cwd=tmp_path
    )
    (wheel,) = dist.glob("capture_worker-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "pip", "install", "--quiet", wheel, cwd=tmp_path)

    # Only the runtime dependencies came with it: the devkit's extras did not.
    freeze = run(venv / "bin" / "pip", "freeze", cwd=tmp_path).lower()
    assert "numpy" not in freeze and "psutil" not in freeze and "embedded" not in freeze

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CAPTURE_SQL_DIR", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env["DATABASE_URL"] = env["CAPTURE_ADMIN_DATABASE_URL"] = empty_database
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cli = venv / "bin" / "capture-worker"
    migrated = run(cli, "migrate", cwd=outside, env=env)
    for migration in load_migrations():
        assert migration.name in migrated
    digest = run(cli, "digest", cwd=outside, env=env).strip()
    assert len(digest) == 64 and int(digest, 16) >= 0

    # The devkit's commands say which extra they need instead of failing on an import.
    done = subprocess.run(
        [str(cli), "bench"],
        check=False,
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "capture-worker[bench]" in " ".join((done.stdout + done.stderr).split())
    done = subprocess.run(
        [str(cli), "publish", "--generate", "3", "--output", "-"],
        check=False,
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    # Rich wraps at the console's width: compare the words, not the line breaks.
    assert "generator: pip install 'capture-worker[bench]'" in " ".join(done.stderr.split())
