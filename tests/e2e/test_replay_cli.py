"""replay, digest, show and migrate as a user runs them: subprocesses against real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg

from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import produce, read_all, wait_for_count
from tests.support.streams import make_stream, reference_digest


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.interfaces.cli.main", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def last_json(stdout: str) -> dict[str, object]:
    return json.loads(stdout.strip().splitlines()[-1])


async def test_reset_replay_of_a_live_run_rebuilds_the_same_digest(
    worker_setup: WorkerSetup, kafka_bootstrap: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    stream = make_stream(1200, users=10, seed=41, duplicates=10, poison=True)
    await produce(kafka_bootstrap, worker_setup.commands, stream.records())
    worker = worker_setup.start()
    worker.wait_ready()
    expected_results = len(stream.valid) + len(stream.readable_poison())
    await wait_for_count(kafka_bootstrap, worker_setup.results, expected_results, timeout_s=120)
    assert worker.terminate() == 0
    live = cli(worker_setup.env, "digest", "--format", "json")
    assert live.returncode == 0, live.stderr
    live_digest = last_json(live.stdout)["digest"]

    target = await fresh_database()
    # Dirty the target first: --reset must empty it.
    await reference_digest(target, make_stream(50, users=2, seed=99).valid)
    replay = cli(
        worker_setup.env,
        "replay",
        "--from-beginning",
        "--reset",
        "--yes",
        "--rebuild-index",
        "--database-url",
        target,
        "--verify",
        str(live_digest),
        "--format",
        "json",
    )
    assert replay.returncode == 0, replay.stderr + replay.stdout
    summary = last_json(replay.stdout)
    assert summary["digest"] == live_digest and summary["verified"] is True
    assert summary["messages"] == len(stream.records())
    assert summary["rejected"] == len(stream.poison)
    # Results are not re-emitted by default.
    assert len(await read_all(kafka_bootstrap, worker_setup.results)) == expected_results

    wrong = cli(
        worker_setup.env,
        "replay",
        "--from-beginning",
        "--database-url",
        target,
        "--verify",
        "0" * 64,
        "--format",
        "json",
    )
    assert wrong.returncode == 1
    assert "digest mismatch" in wrong.stderr

    # The rebuilt index is back (replay dropped it for the load).
    conn = await asyncpg.connect(target)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_indexes"
                " WHERE schemaname = 'capture' AND indexdef ILIKE '%hnsw%'"
            )
            == 1
        )
    finally:
        await conn.close()


async def test_from_timestamp_replays_only_the_later_part_and_can_emit_results(
    worker_setup: WorkerSetup,
    kafka_bootstrap: str,
    fresh_database: Callable[[], Awaitable[str]],
    make_topic: Callable[..., Awaitable[str]],
) -> None:
    early = make_stream(300, users=4, seed=51)
    late = make_stream(200, users=4, seed=52)
    now_ms = int(time.time() * 1000)
    await produce(
        kafka_bootstrap, worker_setup.commands, early.records(), timestamp_ms=now_ms - 3_600_000
    )
    await produce(
        kafka_bootstrap, worker_setup.commands, late.records(), timestamp_ms=now_ms - 60_000
    )
    emitted = await make_topic(3, suffix="replayed")

    target = await fresh_database()
    replay = cli(
        worker_setup.env,
        "replay",
        "--from-timestamp",
        "-30m",
        "--database-url",
        target,
        "--emit-results",
        emitted,
        "--format",
        "json",
    )
    assert replay.returncode == 0, replay.stderr
    summary = last_json(replay.stdout)
    assert summary["messages"] == len(late.valid)
    assert summary["digest"] == await reference_digest(await fresh_database(), late.valid)
    results = await read_all(kafka_bootstrap, emitted)
    assert {json.loads(r.value or b"")["command_id"] for r in results} == late.valid_ids


async def test_migrate_show_and_digest_commands(
    worker_setup: WorkerSetup, kafka_bootstrap: str, pg_admin_url: str
) -> None:
    name = f"cw_cli_{os.getpid()}_{int(time.time())}"
    admin = await asyncpg.connect(pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
        env = {**worker_setup.env, "DATABASE_URL": url, "CAPTURE_ADMIN_DATABASE_URL": url}
        first = cli(env, "migrate", "--format", "json")
        assert first.returncode == 0, first.stderr
        again = cli(env, "migrate", "--format", "json")
        assert again.returncode == 0 and again.stdout != first.stdout  # second run applies nothing

        stream = make_stream(40, users=1, seed=61)
        await reference_digest(url, stream.valid)
        command = json.loads(stream.valid[0])
        upper = command["url"].replace("https://", "HTTPS://", 1) + "#fragment"
        shown = cli(env, "show", "--user", command["user_id"], "--url", upper, "--format", "json")
        assert shown.returncode == 0, shown.stderr
        state = last_json(shown.stdout)
        assert state["signal_count"] >= 1 and state["engagement_level"] in {
            "captured",
            "skimmed",
            "read",
            "deep",
        }
        listing = cli(env, "show", "--user", command["user_id"], "--format", "json")
        assert listing.returncode == 0
        digest = cli(env, "digest")
        assert digest.returncode == 0 and len(digest.stdout.strip()) == 64
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
