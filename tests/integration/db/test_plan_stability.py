"""A connection makes `_typed_batch`'s plans once (force_generic_plan) and keeps them until an
ANALYZE of a table they read invalidates them, so a plan made while the tables looked empty
must still read only the batch's own rows once the tables are large. Migration 0008's header
tells the failure this guards against: a nested loop over a materialised full index scan,
which read the whole ledger and every artifact on every call, so that a worker's calls grew
slower with the tables until the next ANALYZE.

The measure is the tuples each table gave up during one call (`pg_stat_xact_user_tables`, read
before and after the call in its own transaction), not a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import numpy as np

from tests.support.db_commands import TYPED_INGEST, new_id, stream, table_counts, typed
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import typed_arguments

_READ = """
    SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0) AS n
    FROM pg_stat_xact_user_tables WHERE schemaname = 'capture'
"""
_TABLES = "capture.command_ledger, capture.artifacts, capture.subspaces, capture.signals"
MAX_SUBSPACES_PER_USER = 32  # system_config's subspace.max_per_user


async def test_a_plan_made_on_empty_tables_reads_only_the_batchs_rows_when_they_are_large(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    url = await fresh_database()
    rng = np.random.default_rng(808)
    commands = [
        typed(c) for c in stream(rng, users=[new_id() for _ in range(8)], per_user=250, clusters=4)
    ]
    grown, probe = commands[:1900], commands[1900:1920]

    admin = await asyncpg.connect(url)
    pool = await create_pool(url, min_size=1, max_size=1)  # one connection: one plan cache
    try:
        # What autovacuum or an operator leaves behind on an empty table: statistics that say
        # it is empty (not "never analysed", which the planner treats as ten pages).
        await admin.execute(f"VACUUM ANALYZE {_TABLES}")
        empty = await admin.fetch(
            "SELECT relname, reltuples FROM pg_class WHERE oid = ANY ($1::regclass[])",
            [t.strip() for t in _TABLES.split(",")],
        )
        assert {r["relname"]: r["reltuples"] for r in empty} == {
            "command_ledger": 0,
            "artifacts": 0,
            "subspaces": 0,
            "signals": 0,
        }

        async with pool.acquire() as conn:
            await conn.fetchval(
                TYPED_INGEST, *typed_arguments(grown[:10])
            )  # the plans are made here
            for start in range(10, len(grown), 100):
                await conn.fetchval(TYPED_INGEST, *typed_arguments(grown[start : start + 100]))
            async with conn.transaction():
                before = {r["relname"]: r["n"] for r in await conn.fetch(_READ)}
                replies = await conn.fetchval(TYPED_INGEST, *typed_arguments(probe))
                after = {r["relname"]: r["n"] for r in await conn.fetch(_READ)}
        sizes = await table_counts(admin)
    finally:
        await pool.close()
        await admin.close()

    assert all(r["status"] == "ingested" for r in replies)
    read = {table: after[table] - before.get(table, 0) for table in after}
    # The premise: the tables are now far larger than a batch.
    assert sizes["command_ledger"] >= 1900 and sizes["artifacts"] >= 10 * len(probe), sizes
    # A probe per command (and the artifacts' update reads what it updates): bounded by the
    # batch, whatever the tables' size.
    assert read["command_ledger"] <= len(probe), read
    assert read["artifacts"] <= 2 * len(probe), read
    # Each new artifact compares itself with its user's subspaces, at most the cap of them.
    assert read["subspaces"] <= len(probe) * (MAX_SUBSPACES_PER_USER + 1), read
