"""SPEC §4.2 and the digest: the same command stream into empty databases gives the same
ids and the same digest, however the users are interleaved (each user's order kept), and
whether it is ingested one call at a time or in batches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np

from tests.support.db_commands import (
    artifact_id,
    as_json,
    command,
    interleave,
    md5_uuid,
    new_id,
    stream,
    strip_clock,
    subspace_id,
    unit,
)
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository


async def ingest(
    url: str, commands: list[dict[str, Any]], *, batch: int | None = None
) -> tuple[str, dict[str, dict[str, Any]]]:
    pool = await create_pool(url, max_size=1)
    try:
        repo = ArtifactRepository(pool)
        results: dict[str, dict[str, Any]] = {}
        texts = [as_json(c) for c in commands]
        if batch is None:
            for c, t in zip(commands, texts, strict=True):
                results[c["command_id"]] = strip_clock(await repo.ingest_with_signal(t))
        else:
            for i in range(0, len(texts), batch):
                replies = await repo.ingest_batch(texts[i : i + batch])
                for c, r in zip(commands[i : i + batch], replies, strict=True):
                    assert isinstance(r, dict)
                    results[c["command_id"]] = strip_clock(r)
        return await repo.state_digest(), results
    finally:
        await pool.close()


async def test_same_stream_same_digest_in_any_per_user_order(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    rng = np.random.default_rng(1001)
    commands = stream(rng, users=[new_id() for _ in range(4)], per_user=30, clusters=3)
    commands.append(dict(commands[5]))  # a producer retry: same command_id, same payload

    digest_a, results_a = await ingest(await fresh_database(), commands)
    digest_b, results_b = await ingest(await fresh_database(), interleave(commands, seed=1))
    digest_c, results_c = await ingest(
        await fresh_database(), interleave(commands, seed=2), batch=16
    )

    assert digest_a == digest_b == digest_c
    assert results_a == results_b == results_c  # same ids, levels, subspaces, margins


async def test_digest_sees_every_kind_of_change(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    url = await fresh_database()
    pool = await create_pool(url, max_size=1)
    try:
        repo = ArtifactRepository(pool)
        empty = await repo.state_digest()
        assert empty == await repo.state_digest()
        rng = np.random.default_rng(1002)
        user = new_id()
        seen = {empty}
        for depth in (0.1, 0.9):  # a new artifact, then a deeper re-read
            await repo.ingest_with_signal(
                as_json(
                    command(
                        user_id=user,
                        url="https://example.com/d",
                        embedding=unit(rng),
                        reading_depth=depth,
                    )
                )
            )
            seen.add(await repo.state_digest())
        assert len(seen) == 3
        # Wall-clock bookkeeping is not state: rewriting processed_at changes nothing.
        before = await repo.state_digest()
        await pool.execute(
            "UPDATE capture.command_ledger SET processed_at = processed_at - interval '1 day',"
            " result = jsonb_set(result, '{processed_at}', '\"2000-01-01T00:00:00+00:00\"')"
        )
        assert await repo.state_digest() == before
        # ... and the session's settings do not leak into it.
        async with pool.acquire() as conn:
            await conn.execute("SET TimeZone = 'America/New_York'; SET extra_float_digits = 0")
            assert await conn.fetchval("SELECT capture.capture_state_digest()") == before
            await conn.execute("RESET ALL")
        await repo.reset_state()
        assert await repo.state_digest() == empty
    finally:
        await pool.close()


async def test_ids_are_derived_from_natural_keys(pool: asyncpg.Pool) -> None:
    rng = np.random.default_rng(1003)
    cmd = command(user_id=new_id(), url="HTTP://Example.COM:80", embedding=unit(rng))
    result = await ArtifactRepository(pool).ingest_with_signal(as_json(cmd))
    aid = artifact_id(cmd["user_id"], "http://example.com/")
    assert result["artifact_id"] == aid
    assert result["subspace_id"] == subspace_id(aid)
    assert result["event_id"] == md5_uuid(f"capture.result:{cmd['command_id']}")
    signal = await pool.fetchval(
        "SELECT artifact_id::text FROM capture.signals WHERE signal_id = $1::uuid",
        cmd["command_id"],
    )
    assert signal == aid
