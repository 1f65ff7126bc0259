"""A connection keeps each plpgsql statement's plan until an ANALYZE or a VACUUM of a table it
reads invalidates it, so a plan made while the tables looked empty must still read only the
call's own rows once the tables are large. Migrations 0008 (the typed batch) and 0009 (the
JSON path and record_rejections) tell the failures this guards against: a sequential scan, or
a nested loop over a materialised full index scan, either of which read the whole table on
every call, so that the calls grew slower with the tables until the next ANALYZE. And 0010: a
bitmap scan of a user's subspaces, which read the index entries of every dead version again
on every lookup until the next VACUUM. And 0011: the typed batch reads its users' subspaces
once per call and writes each changed one once, instead of once per new artifact.

The measure is the tuples each table gave up during one call (`pg_stat_xact_user_tables`, read
before and after the call in its own transaction), not a time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import numpy as np
from asyncpg.pool import PoolConnectionProxy

from tests.support.db_commands import (
    TYPED_INGEST,
    as_json,
    new_id,
    stream,
    table_counts,
    typed,
)
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import typed_arguments

# Counters of this transaction, as (name, n) rows: the rows each table gave up.
_READ = """
    SELECT relname AS name, seq_tup_read + coalesce(idx_tup_fetch, 0) AS n
    FROM pg_stat_xact_user_tables WHERE schemaname = 'capture'
"""
_TABLES = "capture.command_ledger, capture.artifacts, capture.subspaces, capture.signals"
MAX_SUBSPACES_PER_USER = 32  # system_config's subspace.max_per_user


async def _vacuum_empty(admin: asyncpg.Connection, tables: str) -> None:
    """What autovacuum or an operator leaves behind on an empty table: statistics that say it
    is empty (not "never analysed", which the planner treats as ten pages)."""
    await admin.execute(f"VACUUM ANALYZE {tables}")
    names = [t.strip() for t in tables.split(",")]
    empty = await admin.fetch(
        "SELECT relname, reltuples FROM pg_class WHERE oid = ANY ($1::regclass[])", names
    )
    assert {r["relname"]: r["reltuples"] for r in empty} == {
        name.removeprefix("capture."): 0 for name in names
    }


@asynccontextmanager
async def _connections(url: str) -> AsyncIterator[tuple[asyncpg.Connection, PoolConnectionProxy]]:
    """An admin connection, and one pooled connection (one plan cache) with the worker's
    codecs."""
    admin = await asyncpg.connect(url)
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            yield admin, conn
    finally:
        await pool.close()
        await admin.close()


@asynccontextmanager
async def _vacuumed(
    url: str, tables: str
) -> AsyncIterator[tuple[asyncpg.Connection, PoolConnectionProxy]]:
    """`_connections(url)`, after `_vacuum_empty(tables)`."""
    async with _connections(url) as (admin, conn):
        await _vacuum_empty(admin, tables)
        yield admin, conn


async def _counted(
    conn: PoolConnectionProxy, counters: str, call: Callable[[], Awaitable[Any]]
) -> tuple[Any, dict[str, int]]:
    """`call`'s reply, and by how much each of the `counters` (name, n) rose while it ran, in
    its own transaction."""
    async with conn.transaction():
        before = {r["name"]: r["n"] for r in await conn.fetch(counters)}
        reply = await call()
        after = {r["name"]: r["n"] for r in await conn.fetch(counters)}
    return reply, {name: after[name] - before.get(name, 0) for name in after}


async def _rows_read(
    conn: PoolConnectionProxy, call: Callable[[], Awaitable[Any]]
) -> tuple[Any, dict[str, int]]:
    """`call`'s reply, and the rows each table gave up while it ran."""
    return await _counted(conn, _READ, call)


def _bounded_by(read: dict[str, int], commands: int, *, artifact_reads: int = 2) -> None:
    """A probe per command (and each update reads what it updates), whatever the tables' size;
    each new artifact compares itself with its user's subspaces, at most the cap of them."""
    assert read.get("command_ledger", 0) <= commands, read
    assert read.get("artifacts", 0) <= artifact_reads * commands, read
    assert read.get("subspaces", 0) <= commands * (MAX_SUBSPACES_PER_USER + 1), read


def _commands(seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return stream(rng, users=[new_id() for _ in range(8)], per_user=250, clusters=4)


async def test_a_plan_made_on_empty_tables_reads_only_the_batchs_rows_when_they_are_large(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    url = await fresh_database()
    commands = [typed(c) for c in _commands(808)]
    grown, probe = commands[:1900], commands[1900:1920]

    async with _vacuumed(url, _TABLES) as (admin, conn):
        await conn.fetchval(TYPED_INGEST, *typed_arguments(grown[:10]))  # the plans are made here
        for start in range(10, len(grown), 100):
            await conn.fetchval(TYPED_INGEST, *typed_arguments(grown[start : start + 100]))
        replies, read = await _rows_read(
            conn, lambda: conn.fetchval(TYPED_INGEST, *typed_arguments(probe))
        )
        sizes = await table_counts(admin)

    assert all(r["status"] == "ingested" for r in replies)
    # The premise: the tables are now far larger than a batch.
    assert sizes["command_ledger"] >= 1900 and sizes["artifacts"] >= 10 * len(probe), sizes
    _bounded_by(read, len(probe))


async def test_the_json_paths_plans_made_on_empty_tables_read_only_their_commands_rows(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """ingest_with_signal and ingest_batch share _ingest, and so its plans on a connection."""
    url = await fresh_database()
    texts = [as_json(c) for c in _commands(909)]
    grown, single, batch = texts[:1900], texts[1900], texts[1901:1911]

    async with _vacuumed(url, _TABLES) as (admin, conn):
        for text in grown[:10]:  # the plans are made here (generic from the sixth call)
            await conn.fetchval("SELECT capture.ingest_with_signal($1::jsonb)", text)
        for start in range(10, len(grown), 100):
            await conn.fetchval(
                "SELECT capture.ingest_batch($1::jsonb)",
                "[" + ",".join(grown[start : start + 100]) + "]",
            )
        one, read_one = await _rows_read(
            conn, lambda: conn.fetchval("SELECT capture.ingest_with_signal($1::jsonb)", single)
        )
        many, read_many = await _rows_read(
            conn,
            lambda: conn.fetchval(
                "SELECT capture.ingest_batch($1::jsonb)", "[" + ",".join(batch) + "]"
            ),
        )
        sizes = await table_counts(admin)

    assert one["status"] == "ingested"
    assert all(r["status"] == "ingested" for r in many), many
    assert sizes["command_ledger"] >= 1900 and sizes["artifacts"] >= 200, sizes
    # Per command, _ingest reads its artifact, updates it, and the signal's foreign key
    # checks it: three reads of one row.
    _bounded_by(read_one, 1, artifact_reads=3)
    _bounded_by(read_many, len(batch), artifact_reads=3)


async def test_record_rejections_plan_made_on_an_empty_table_reads_only_its_results(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    url = await fresh_database()

    def rejections(n: int) -> str:
        rejected = {"status": "rejected", "error": {"kind": "invalid"}}
        return json.dumps([{"event_id": new_id(), **rejected} for _ in range(n)])

    record = "SELECT capture.record_rejections($1::jsonb)"
    async with _vacuumed(url, "capture.rejections") as (admin, conn):
        for _ in range(8):  # the plans are made here (generic from the sixth call)
            await conn.fetchval(record, rejections(2))
        for _ in range(20):
            await conn.fetchval(record, rejections(100))
        probe = rejections(3)
        stored, read = await _rows_read(conn, lambda: conn.fetchval(record, probe))
        sizes = await table_counts(admin)

    assert stored == json.loads(probe)
    assert sizes["rejections"] >= 2000, sizes
    # One probe per result; 0004's join read the whole table on every call.
    assert read["rejections"] <= 3, read


# The index's tuples returned in this transaction (pg_stat_user_indexes.idx_tup_read's pending
# part: there is no pg_stat_xact_user_indexes view).
_SUBSPACE_ENTRIES = """
    SELECT 'entries' AS name,
           pg_stat_get_xact_tuples_returned('capture.subspaces_user_idx'::regclass) AS n
"""


async def test_a_users_subspaces_are_looked_up_without_the_entries_of_their_dead_versions(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """Every new artifact looks up its user's subspaces and updates the one it joins; a version
    that did not fit on its page leaves a dead index entry behind, hundreds per user between two
    vacuums. A plain index scan marks such an entry when it meets it, and later scans skip it; a
    bitmap scan never marks one. Before 0010 the lookup was a bitmap scan (on a new database,
    as here, and on analysed tables with tens of subspaces per user): 219 entries read per
    lookup for 3 live subspaces.
    Autovacuum is off for the table, as it is, in effect, between its rounds."""
    url = await fresh_database()
    rng = np.random.default_rng(1010)
    users = [new_id(), new_id()]
    commands = stream(rng, users=users, per_user=600, clusters=3, recapture=0.0)
    for i, c in enumerate(commands):
        c["url"] = f"{c['url']}?n={i}"  # every command a new artifact, so every one a lookup
    *grown, sweep, typed_probe, json_probe = commands
    ingest_json = "SELECT capture.ingest_with_signal($1::jsonb)"

    async with _connections(url) as (admin, conn):
        await admin.execute("ALTER TABLE capture.subspaces SET (autovacuum_enabled = off)")
        # Through the JSON path, which updates a subspace for each new artifact (the typed
        # batch writes each once per call: far fewer versions).
        for start in range(0, len(grown), 100):
            texts = [as_json(c) for c in grown[start : start + 100]]
            await conn.fetchval(
                "SELECT capture.ingest_batch($1::jsonb)", "[" + ",".join(texts) + "]"
            )
        # One lookup of the user's subspaces after the last batch's commit: from here on a
        # lookup meets only the versions that died since the previous one (a command's).
        await conn.fetchval(ingest_json, as_json(sweep))
        # This connection's counters reach the shared statistics when it goes idle next.
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        moved = await admin.fetchval(
            "SELECT n_tup_upd - n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relid = 'capture.subspaces'::regclass"
        )
        live = await admin.fetchval(
            "SELECT count(*) FROM capture.subspaces WHERE user_id = $1::uuid", users[1]
        )
        typed_reply, typed_read = await _counted(
            conn,
            _SUBSPACE_ENTRIES,
            lambda: conn.fetchval(TYPED_INGEST, *typed_arguments([typed(typed_probe)])),
        )
        json_reply, json_read = await _counted(
            conn, _SUBSPACE_ENTRIES, lambda: conn.fetchval(ingest_json, as_json(json_probe))
        )

    assert typed_reply[0]["artifact_created"] and json_reply["artifact_created"]
    # The premise: far more versions moved to another page (each leaving a dead entry behind)
    # than the user has subspaces.
    assert moved >= 50 * live, (moved, live)
    # Its live subspaces, and at most the one version that died since the previous lookup.
    assert typed_read["entries"] <= live + 1, (typed_read, live, moved)
    assert json_read["entries"] <= live + 1, (json_read, live, moved)


_SUBSPACE_WORK = """
    SELECT x.name, x.n FROM pg_stat_xact_user_tables s,
         LATERAL (VALUES ('read', s.seq_tup_read + coalesce(s.idx_tup_fetch, 0)),
                         ('updated', s.n_tup_upd)) AS x(name, n)
    WHERE s.relid = 'capture.subspaces'::regclass
"""


async def test_a_typed_batch_reads_its_users_subspaces_once_and_writes_each_once(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """A partition's batch holds many new artifacts of the same user. Each used to read all of
    the user's subspaces and write a new version of the one it joined; since 0011 the batch
    reads them once and writes each changed one once, with the same results (the differential
    tests hold the typed batch to the JSON path's digest)."""
    url = await fresh_database()
    rng = np.random.default_rng(1111)
    user = new_id()
    commands = [typed(c) for c in stream(rng, users=[user], per_user=140, clusters=3)]
    grown, probe = commands[:100], commands[100:]

    async with _connections(url) as (_, conn):
        await conn.fetchval(TYPED_INGEST, *typed_arguments(grown))
        before_count = await conn.fetchval(
            "SELECT count(*) FROM capture.subspaces WHERE user_id = $1::uuid", user
        )
        replies, work = await _counted(
            conn, _SUBSPACE_WORK, lambda: conn.fetchval(TYPED_INGEST, *typed_arguments(probe))
        )

    created = sum(1 for r in replies if r["artifact_created"])
    joined = [r for r in replies if r["artifact_created"] and not r["subspace_created"]]
    # The premise: many new artifacts joined the user's few subspaces in this one call.
    assert len(joined) >= 3 * before_count, (len(joined), before_count)
    # Read once, and once more by the write-back's probe; each new artifact's foreign key
    # checks its subspace. 0010 read them all for every new artifact: 155 rows here, not 37.
    assert work["read"] <= 2 * before_count + created, work
    # Each changed subspace written once (0010: once per new artifact that joined it).
    assert work["updated"] <= before_count, work
