"""The typed, binary ingest (`ingest_typed`, migrations 0005 and 0006) against the reference.

`ingest_with_signal(jsonb)` is the contract. The same streams (poison the database refuses,
conflicts, repeats, several interleavings of the users) go through the reference one command
at a time and through `ingest_typed` in batches; every result must be equal after removing the
wall clock (`processed_at`), every refusal equal in kind, SQLSTATE and message, and the two
databases must end with the same `capture_state_digest`.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import numpy as np

from tests.support.db_commands import (
    BASE_TIME,
    TYPED_INGEST,
    as_json,
    command,
    interleave,
    new_id,
    stream,
    strip_clock,
    table_counts,
    typed,
    unit,
)
from worker.domain.errors import PermanentError
from worker.infrastructure.db import create_pool
from worker.infrastructure.db_errors import batch_element
from worker.infrastructure.repository import ArtifactRepository, typed_arguments

Normalised = tuple[Any, ...]

_DEPTH_RANGE = re.compile(r"^(reading_depth: must be between 0\.0 and 1\.5, got )(\S+)$")


def normalise(reply: dict[str, Any] | PermanentError) -> Normalised:
    """Without the wall clock; and the one message that quotes a number: the reference quotes
    the JSON text as written ("7.0"), the typed path the float8 it got ("7")."""
    if isinstance(reply, PermanentError):
        message = reply.message
        match = _DEPTH_RANGE.match(message)
        if match is not None:
            message = f"{match.group(1)}{float(match.group(2))!r}"
        return ("refused", reply.kind.value, reply.sqlstate, message)
    return ("ingested", tuple(sorted(strip_clock(reply).items())))


async def through_reference(url: str, commands: Sequence[dict[str, Any]]) -> tuple[list[Any], str]:
    pool = await create_pool(url, max_size=1)
    try:
        repo = ArtifactRepository(pool)
        out: list[Normalised] = []
        for c in commands:
            try:
                out.append(normalise(await repo.ingest_with_signal(as_json(c))))
            except PermanentError as error:
                out.append(normalise(error))
        return out, await repo.state_digest()
    finally:
        await pool.close()


async def through_typed(
    url: str, commands: Sequence[dict[str, Any]], batch: int
) -> tuple[list[Any], str]:
    """The fast path itself (isolate => false): the repository's isolated retry would hide
    a fast-path mistake that makes a write fail."""
    pool = await create_pool(url, max_size=1)
    try:
        repo = ArtifactRepository(pool)
        out: list[Normalised] = []
        for start in range(0, len(commands), batch):
            chunk = [typed(c) for c in commands[start : start + batch]]
            elements = await pool.fetchval(TYPED_INGEST, *typed_arguments(chunk))
            out.extend(normalise(batch_element(e)) for e in elements)
        return out, await repo.state_digest()
    finally:
        await pool.close()


def mixed_stream(seed: int) -> list[dict[str, Any]]:
    """Valid commands of 5 users with re-captures, then repeats, conflicts and SQL poison."""
    rng = np.random.default_rng(seed)
    users = [new_id() for _ in range(5)]
    commands = stream(rng, users=users, per_user=40, clusters=3)
    pick = random.Random(seed)
    extra: list[dict[str, Any]] = []
    for original in pick.sample(commands, 12):
        extra.append(dict(original))  # a redelivery: the stored result again
    for original in pick.sample(commands, 8):  # the id reused with another payload
        extra.append({**original, "reading_depth": round(1.5 - original["reading_depth"], 3)})
    for original in pick.sample(commands, 3):  # the id reused by another user
        other = pick.choice([u for u in users if u != original["user_id"]])
        extra.append({**original, "user_id": other})
    vector = [float(x) for x in unit(rng)]

    def poison(user: str, **fields: Any) -> dict[str, Any]:
        """Values the contract's model would refuse, given to SQL anyway: defence in depth."""
        body = {"url": f"https://poison.example.com/{new_id()}", "embedding": vector, **fields}
        return command(user_id=user, **body)

    for user in users:
        extra += [
            poison(user, url="https://poison.example.com/a\x01b"),
            poison(user, url="ftp://poison.example.com/a"),
            poison(user, url="https://:8080/no-host"),
            poison(user, url="https://poison.example.com/" + "a" * 2100),
            poison(user, title="t" * 513),
            poison(user, reading_depth=1.75),
            poison(user, embedding=vector[:-1]),
            poison(user, embedding=[1e-50] * len(vector)),  # all zero once in float32
        ]
        # A later valid command of the same user after its poison, at a new url.
        extra.append(
            command(
                user_id=user,
                url=f"https://after.example.com/{new_id()}",
                embedding=vector,
                occurred_at=BASE_TIME,
            )
        )
    # Right behind their originals (so inside the same batch): a repeat, then a conflict, then
    # a poison command with the same id, then the same repeat once more.
    near: list[dict[str, Any]] = []
    chosen = {id(c) for c in pick.sample(commands, 6)}
    for c in commands:
        near.append(c)
        if id(c) in chosen:
            near += [
                dict(c),
                {**c, "title": "another payload"},
                {**c, "reading_depth": 7.0},
                dict(c),
            ]
    # Each user's extras go after that user's stream, so every user's order is kept as given.
    return near + extra


async def test_typed_ingest_equals_the_reference_command_by_command(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    for seed, batch in ((3, 7), (4, 50), (5, 100), (7, 10_000)):
        commands = interleave(mixed_stream(seed), seed)
        reference, reference_digest = await through_reference(await fresh_database(), commands)
        results, digest = await through_typed(await fresh_database(), commands, batch)
        assert len(results) == len(reference)
        for index, (mine, theirs) in enumerate(zip(results, reference, strict=True)):
            assert mine == theirs, f"seed {seed}, command {index}: {commands[index]['url'][:80]}"
        assert digest == reference_digest
        kinds = {r[1] for r in reference if r[0] == "refused"}
        assert kinds == {"constraint", "conflict"}, kinds  # the stream did exercise both


async def test_the_isolated_path_equals_the_reference_too(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    commands = interleave(mixed_stream(11), 11)
    reference, reference_digest = await through_reference(await fresh_database(), commands)
    url = await fresh_database()
    pool = await create_pool(url, max_size=1)
    try:
        results: list[Normalised] = []
        for start in range(0, len(commands), 60):
            chunk = [typed(c) for c in commands[start : start + 60]]
            elements = await pool.fetchval(
                "SELECT capture.ingest_typed($1, $2, $3, $4, $5, $6, $7, true)",
                *typed_arguments(chunk),
            )
            results.extend(normalise(batch_element(e)) for e in elements)
        digest = await ArtifactRepository(pool).state_digest()
    finally:
        await pool.close()
    assert results == reference
    assert digest == reference_digest


async def test_a_stream_split_between_the_paths_ends_in_the_same_state(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """Either path reads the other's ledger: a repeat through the other path is a repeat."""
    commands = interleave(mixed_stream(6), 6)
    reference, reference_digest = await through_reference(await fresh_database(), commands)
    url = await fresh_database()
    half = len(commands) // 2
    first, _ = await through_typed(url, commands[:half], 30)
    second, _ = await through_reference(url, commands[half:])
    again, digest = await through_typed(url, commands, 40)  # everything once more
    assert first + second == reference
    assert digest == reference_digest
    assert [r for r in again if r[0] == "ingested"] == [r for r in reference if r[0] == "ingested"]


async def _subtransactions_after(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    """Subtransactions with an xid that the call left in its (still open) transaction."""
    async with conn.transaction():
        await conn.fetchval(sql, *args)
        count: int = await conn.fetchval(
            "SELECT subxact_count FROM pg_stat_get_backend_subxact("
            " (SELECT b FROM pg_stat_get_backend_idset() b"
            "  WHERE pg_stat_get_backend_pid(b) = pg_backend_pid()))"
        )
    return count


async def test_the_common_case_takes_no_subtransaction(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    rng = np.random.default_rng(8)
    commands = stream(rng, users=[new_id() for _ in range(3)], per_user=30)
    pool = await create_pool(await fresh_database(), max_size=1)
    try:
        async with pool.acquire() as conn:
            half = len(commands) // 2
            json_batch = "[" + ",".join(as_json(c) for c in commands[:half]) + "]"
            by_json = await _subtransactions_after(
                conn, "SELECT capture.ingest_batch($1::jsonb)", json_batch
            )
            columns = typed_arguments([typed(c) for c in commands[half:]])
            by_typed = await _subtransactions_after(conn, TYPED_INGEST, *columns)
    finally:
        await pool.close()
    assert by_json == half  # the reference: one per command that wrote
    assert by_typed == 0


async def test_a_write_that_fails_unexpectedly_is_redone_isolated(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """Another user's uncommitted claim on a command_id is only seen when writing."""
    url = await fresh_database()
    rng = np.random.default_rng(9)
    mine = stream(rng, users=[new_id()], per_user=6)
    theirs = command(
        user_id=new_id(),
        url="https://example.com/theirs",
        embedding=unit(rng),
        command_id=mine[3]["command_id"],
    )
    pool = await create_pool(url, max_size=3)
    try:
        repo = ArtifactRepository(pool)
        async with pool.acquire() as other:
            transaction = other.transaction()
            await transaction.start()
            await other.fetchval("SELECT capture.ingest_with_signal($1::jsonb)", as_json(theirs))
            pending = asyncio.ensure_future(repo.ingest_commands([typed(c) for c in mine]))
            await asyncio.sleep(0.5)  # let it reach the ledger insert and wait on `other`
            assert not pending.done()
            await transaction.commit()
            replies = await asyncio.wait_for(pending, 60)
        statuses = [r.kind.value if isinstance(r, PermanentError) else r["status"] for r in replies]
        assert statuses == ["ingested"] * 3 + ["conflict"] + ["ingested"] * 2
        counts = await table_counts(pool)
        assert counts["signals"] == 6  # five of mine and theirs; the refused one wrote nothing
        assert counts["command_ledger"] == 6
    finally:
        await pool.close()


async def test_a_text_postgresql_cannot_hold_refuses_the_call_as_a_whole(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """U+0000 cannot even be bound: PermanentError for the call, nothing written."""
    rng = np.random.default_rng(10)
    commands = stream(rng, users=[new_id()], per_user=3)
    commands[1]["title"] = "nul \x00 inside"
    pool = await create_pool(await fresh_database(), max_size=1)
    try:
        repo = ArtifactRepository(pool)
        try:
            await repo.ingest_commands([typed(c) for c in commands])
        except PermanentError as error:
            assert error.kind.value == "constraint"
        else:
            raise AssertionError("a U+0000 in a text was accepted")
        assert (await table_counts(pool))["signals"] == 0
    finally:
        await pool.close()


TYPED_FUNCTIONS = ["ingest_typed", "_typed_batch", "_refusal"]


async def test_the_typed_functions_pin_pg_temp_last(db_url: str) -> None:
    """A caller's temp tables can never stand in for ours (pg_temp is searched first otherwise)."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT p.proname, p.prosecdef, p.proconfig,"
            " has_function_privilege('capture_worker', p.oid, 'EXECUTE') AS worker_may,"
            " has_function_privilege('public', p.oid, 'EXECUTE') AS public_may"
            " FROM pg_proc p WHERE p.pronamespace = 'capture'::regnamespace"
            " AND p.proname = ANY($1::text[])",
            TYPED_FUNCTIONS,
        )
    finally:
        await conn.close()
    assert sorted(r["proname"] for r in rows) == sorted(TYPED_FUNCTIONS)
    for row in rows:
        (path,) = [c for c in row["proconfig"] if c.startswith("search_path=")]
        assert path.removeprefix("search_path=").split(", ")[-1] == "pg_temp", row
        assert not row["public_may"]
        # Only the entry point runs with the owner's rights, and only it is the worker's.
        assert row["prosecdef"] == row["worker_may"] == (row["proname"] == "ingest_typed")


async def _scans(conn: asyncpg.Connection) -> tuple[int, int]:
    """(sequential, index) scans of the ledger and the artifacts so far, this session's included."""
    await conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once this call ends
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT sum(seq_scan)::bigint AS seq, sum(idx_scan)::bigint AS idx"
        " FROM pg_stat_user_tables WHERE schemaname = 'capture'"
        " AND relname IN ('artifacts', 'command_ledger')"
    )
    return int(row["seq"]), int(row["idx"])


async def test_a_batch_probes_the_indexes_even_on_statistics_of_an_empty_table(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """The session caches each statement's plan, made on the statistics of that moment. Planned
    after a TRUNCATE (a table that looks like ten pages), the batch's lookups in the ledger and
    the artifacts must still be index probes, not a read of the whole table per batch."""
    rng = np.random.default_rng(12)
    commands = [typed(c) for c in stream(rng, users=[new_id() for _ in range(4)], per_user=60)]
    pool = await create_pool(await fresh_database(), max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT capture.reset_state()")
            # The session's plans are made here, on statistics that still say empty, and kept.
            for start in range(0, 160, 20):
                await conn.fetchval(TYPED_INGEST, *typed_arguments(commands[start : start + 20]))
            seq_before, idx_before = await _scans(conn)
            await conn.fetchval(TYPED_INGEST, *typed_arguments(commands[160:]))
            seq_after, idx_after = await _scans(conn)
    finally:
        await pool.close()
    assert idx_after - idx_before >= len(commands) - 160  # a probe per command, at least
    assert seq_after == seq_before
