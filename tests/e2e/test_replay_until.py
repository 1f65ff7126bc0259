"""`replay --until`: the state as of a moment equals a live run that saw only that much."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from tests.e2e.test_replay_cli import cli, last_json
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import produce, wait_for_count
from tests.support.streams import make_stream


async def test_replay_until_the_middle_equals_a_live_run_of_the_first_half(
    worker_setup: WorkerSetup, kafka_bootstrap: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    first = make_stream(400, users=6, seed=101)
    second = make_stream(400, users=6, seed=102)
    now_ms = int(time.time() * 1000)
    first_at, second_at = now_ms - 2 * 3_600_000, now_ms - 3_600_000
    await produce(kafka_bootstrap, worker_setup.commands, first.records(), timestamp_ms=first_at)

    # The live run, fed only the first half.
    worker = worker_setup.start()
    worker.wait_ready()
    await wait_for_count(kafka_bootstrap, worker_setup.results, len(first.valid))
    assert worker.terminate() == 0
    live = cli(worker_setup.env, "digest", "--format", "json")
    assert live.returncode == 0, live.stderr
    live_digest = last_json(live.stdout)["digest"]

    await produce(kafka_bootstrap, worker_setup.commands, second.records(), timestamp_ms=second_at)
    middle = datetime.fromtimestamp((first_at + second_at) / 2000, UTC).isoformat()

    target = await fresh_database()
    replay = cli(
        worker_setup.env, "replay", "--until", middle, "--database-url", target, "--format", "json"
    )
    assert replay.returncode == 0, replay.stderr + replay.stdout
    summary = last_json(replay.stdout)
    assert summary["messages"] == len(first.records())
    assert summary["digest"] == live_digest

    # A duration works too (-90m lies between the halves), and the whole topic differs.
    again = cli(
        worker_setup.env,
        "replay",
        "--until",
        "-90m",
        "--reset",
        "--yes",
        "--database-url",
        target,
        "--format",
        "json",
    )
    assert again.returncode == 0, again.stderr
    assert last_json(again.stdout)["digest"] == live_digest
    everything = cli(
        worker_setup.env,
        "replay",
        "--until",
        "-1m",
        "--reset",
        "--yes",
        "--database-url",
        target,
        "--format",
        "json",
    )
    assert last_json(everything.stdout)["messages"] == len(first.records()) + len(second.records())
    assert last_json(everything.stdout)["digest"] != live_digest


async def test_replay_until_refuses_the_live_database_unless_reset_yes_names_it(
    worker_setup: WorkerSetup,
) -> None:
    live = worker_setup.database_url
    unnamed = cli(worker_setup.env, "replay", "--until", "-1h")
    assert unnamed.returncode == 2 and "--database-url" in unnamed.stderr
    named = cli(worker_setup.env, "replay", "--until", "-1h", "--database-url", live)
    assert named.returncode == 2 and "live database" in named.stderr
    half = cli(worker_setup.env, "replay", "--until", "-1h", "--database-url", live, "--reset")
    assert half.returncode == 2 and "live database" in half.stderr
