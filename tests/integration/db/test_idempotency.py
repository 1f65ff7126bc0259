"""SPEC §4.1: a command_id seen before returns the stored result and changes nothing;
the same id with another payload is a conflict (CW409) and changes nothing either."""

from __future__ import annotations

import json

import asyncpg
import numpy as np
import pytest

from contracts import CaptureResult
from contracts.results import ErrorKind
from tests.support.db_commands import (
    as_json,
    command,
    md5_uuid,
    new_id,
    table_counts,
    unit,
)
from worker.domain.errors import PermanentError
from worker.infrastructure.repository import ArtifactRepository

rng = np.random.default_rng(101)


async def test_redelivery_returns_the_stored_result_and_writes_nothing(
    repo: ArtifactRepository, pool: asyncpg.Pool
) -> None:
    cmd = command(user_id=new_id(), url="https://example.com/idem", embedding=unit(rng))
    first = await repo.ingest_with_signal(as_json(cmd))
    CaptureResult.model_validate(first)  # the wire contract of SPEC §5
    assert first["status"] == "ingested" and first["error"] is None
    assert first["event_id"] == md5_uuid(f"capture.result:{cmd['command_id']}")
    before = await table_counts(pool)

    # The same command, re-serialised differently: other key order, extra whitespace,
    # numbers spelled differently, an unknown field, the time in another offset.
    again = {k: v for k, v in reversed(list(cmd.items())) if k != "embedding"}
    again["reading_depth"] = 0.50
    again["occurred_at"] = "2026-03-01T13:00:00+01:00"
    again["command_id"] = cmd["command_id"].upper()
    again["unknown_future_field"] = {"x": 1}
    # 9 significant digits: other text, the same float4 values.
    embedding = "[" + ", ".join(f"{x:.9g}" for x in cmd["embedding"]) + "]"
    text = json.dumps(again, indent=2)[:-1].rstrip() + f',\n  "embedding": {embedding}\n}}'
    assert text != as_json(cmd)
    second = await repo.ingest_with_signal(text)

    assert second == first  # byte-identical after normalisation, processed_at included
    assert await table_counts(pool) == before
    signals = await pool.fetchval(
        "SELECT count(*) FROM capture.signals WHERE signal_id = $1::uuid", cmd["command_id"]
    )
    assert signals == 1


async def test_same_id_other_payload_is_a_conflict_and_changes_nothing(
    repo: ArtifactRepository, pool: asyncpg.Pool
) -> None:
    cmd = command(user_id=new_id(), url="https://example.com/conflict", embedding=unit(rng))
    original = await repo.ingest_with_signal(as_json(cmd))
    digest = await repo.state_digest()

    for change in (
        {"reading_depth": 0.9},
        {"url": "https://example.com/other"},
        {"title": "a title now"},
        {"occurred_at": "2026-03-01T12:00:01+00:00"},
        {"embedding": unit(rng).tolist()},
        {"user_id": new_id()},
    ):
        with pytest.raises(PermanentError) as caught:
            await repo.ingest_with_signal(as_json({**cmd, **change}))
        assert caught.value.kind is ErrorKind.CONFLICT
        assert caught.value.sqlstate == "CW409"
        assert cmd["command_id"] in caught.value.message

    assert await repo.state_digest() == digest
    assert await repo.ingest_with_signal(as_json(cmd)) == original


async def test_conflicting_id_in_raw_sql_is_sqlstate_cw409(pool: asyncpg.Pool) -> None:
    cmd = command(user_id=new_id(), url="https://example.com/raw", embedding=unit(rng))
    await pool.fetchval("SELECT capture.ingest_with_signal($1::jsonb)", as_json(cmd))
    with pytest.raises(asyncpg.PostgresError) as caught:
        await pool.fetchval(
            "SELECT capture.ingest_with_signal($1::jsonb)", as_json({**cmd, "reading_depth": 1})
        )
    assert caught.value.sqlstate == "CW409"
