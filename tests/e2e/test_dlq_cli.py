"""`capture-worker dlq`: list, show and redrive against a real worker, Kafka and PostgreSQL.

The cause of the dead letters is a rule of the test database (a CHECK constraint refusing one
user's artifacts); once it is dropped, the redriven commands must leave the database exactly
as if the rule had never existed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from contracts import headers as H
from tests.e2e.test_replay_cli import cli
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import produce, read_all, wait_for_count
from tests.support.streams import make_stream, reference_digest
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def dlq(setup: WorkerSetup, *args: str) -> dict[str, Any]:
    done = cli(setup.env, "dlq", *args, "--format", "json")
    assert done.returncode == 0, done.stderr + done.stdout
    (summary,) = json_lines(done.stdout)
    return summary


async def execute_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def digest_of(url: str) -> str:
    pool = await create_pool(url, max_size=1)
    try:
        return await ArtifactRepository(pool).state_digest()
    finally:
        await pool.close()


async def test_refused_commands_are_redriven_once_after_the_cause_is_fixed(
    worker_setup: WorkerSetup, kafka_bootstrap: str, fresh_database: Callable[[], Awaitable[str]]
) -> None:
    stream = make_stream(600, users=6, seed=71, poison=True)
    users = [json.loads(line)["user_id"] for line in stream.valid]
    blocked = next(u for u in users if u.encode() != stream.poison_key)
    blocked_lines = [line for line in stream.valid if json.loads(line)["user_id"] == blocked]
    # The cause: a rule of this database refuses every artifact of one user (SQLSTATE 23514).
    await execute_sql(
        worker_setup.database_url,
        "ALTER TABLE capture.artifacts ADD CONSTRAINT redrive_test_block"
        f" CHECK (user_id <> '{blocked}'::uuid)",
    )
    await produce(kafka_bootstrap, worker_setup.commands, stream.records())
    worker = worker_setup.start()
    worker.wait_ready()
    results_before = len(stream.valid) + len(stream.readable_poison())
    await wait_for_count(kafka_bootstrap, worker_setup.results, results_before)
    dead = len(stream.poison) + len(blocked_lines)
    await wait_for_count(kafka_bootstrap, worker_setup.dlq, dead, timeout_s=60)

    listing = dlq(worker_setup, "list")
    assert listing["total"] == dead
    poison_constraint = sum(1 for kind, _ in stream.poison if kind.value == "constraint")
    assert listing["kinds"]["constraint"]["count"] == len(blocked_lines) + poison_constraint
    assert listing["kinds"]["undecodable"]["count"] == 3
    shown = cli(worker_setup.env, "dlq", "show", "--user", blocked, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert len(json_lines(shown.stdout)) == len(blocked_lines)
    assert all(r["kind"] == "constraint" for r in json_lines(shown.stdout))

    # Dry run (the default): reports, sends nothing, commits nothing.
    commands_before = await read_all(kafka_bootstrap, worker_setup.commands)
    dry = dlq(worker_setup, "redrive", "--kind", "constraint", "--user", blocked)
    assert dry["executed"] is False and dry["would_send"] == len(blocked_lines)
    assert dry["kinds"] == {"constraint": len(blocked_lines)}
    assert len(await read_all(kafka_bootstrap, worker_setup.commands)) == len(commands_before)

    # Fix the cause, then send them back.
    await execute_sql(
        worker_setup.database_url,
        "ALTER TABLE capture.artifacts DROP CONSTRAINT redrive_test_block",
    )
    sent = dlq(worker_setup, "redrive", "--kind", "constraint", "--user", blocked, "--execute")
    assert sent["sent"] == len(blocked_lines) and sent["records"] == dry["records"]
    assert sent["committed"] == {"0": dead}
    await wait_for_count(kafka_bootstrap, worker_setup.results, results_before + len(blocked_lines))
    assert dlq(worker_setup, "list")["total"] == dead  # nothing failed again

    # Byte for byte: key, value, original headers, source partition; provenance added.
    commands = await read_all(kafka_bootstrap, worker_setup.commands)
    letters = {r.offset: r for r in await read_all(kafka_bootstrap, worker_setup.dlq)}
    redriven = _new(commands, commands_before)
    assert len(redriven) == len(blocked_lines)
    for record in redriven:
        provenance = dict(record.headers[-3:])
        assert provenance[H.REDRIVE_COUNT] == b"1"
        letter = letters[int(provenance[H.REDRIVE_FROM].decode().split("@")[1])]
        letter_headers = dict(letter.headers)
        assert (record.key, record.value) == (letter.key, letter.value)
        assert list(record.headers[:-3]) == stream.headers == list(letter.headers[:1])
        assert record.partition == int(letter_headers[H.SOURCE_PARTITION])

    # A second run finds nothing left to send: the group's progress was committed.
    again = dlq(worker_setup, "redrive", "--kind", "constraint", "--user", blocked, "--execute")
    assert again["sent"] == 0 and again["examined"] == 0

    # The state is the one of a run where the rule never existed.
    reference = await reference_digest(await fresh_database(), stream.valid)
    assert await digest_of(worker_setup.database_url) == reference
    assert worker.terminate() == 0


def _new(after: list[Any], before: list[Any]) -> list[Any]:
    seen = {(r.partition, r.offset) for r in before}
    return [r for r in after if (r.partition, r.offset) not in seen]


async def test_loop_guard_stops_a_record_that_keeps_failing(
    worker_setup: WorkerSetup, kafka_bootstrap: str
) -> None:
    stream = make_stream(20, users=2, seed=73, poison=True)
    await produce(kafka_bootstrap, worker_setup.commands, stream.records())
    worker = worker_setup.start()
    worker.wait_ready()
    await wait_for_count(kafka_bootstrap, worker_setup.dlq, len(stream.poison), timeout_s=60)

    # Undecodable bytes fail again whatever is fixed: one redrive, then the guard holds.
    group = ["--group", "loop-guard", "--max-redrives", "1", "--kind", "undecodable"]
    first = dlq(worker_setup, "redrive", *group, "--execute")
    assert first["sent"] == 3
    await wait_for_count(kafka_bootstrap, worker_setup.dlq, len(stream.poison) + 3, timeout_s=60)
    second = dlq(worker_setup, "redrive", *group, "--execute")
    assert second["sent"] == 0 and len(second["over_limit"]) == 3
    letters = await read_all(kafka_bootstrap, worker_setup.dlq)
    again = [dict(r.headers) for r in letters[len(stream.poison) :]]
    assert all(h[H.REDRIVE_COUNT] == b"1" and h[H.ERROR_KIND] == b"undecodable" for h in again)
    assert worker.terminate() == 0
