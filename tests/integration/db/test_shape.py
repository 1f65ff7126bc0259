"""SPEC §4.7: bad shape straight into SQL raises SQLSTATE class 22/23, names the field, and
writes nothing; ingest_batch isolates a bad element while the others commit."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import numpy as np
import pytest

from contracts.results import ErrorKind
from tests.support.db_commands import DIM, as_json, command, new_id, table_counts, unit
from worker.domain.errors import PermanentError
from worker.infrastructure.repository import ArtifactRepository

rng = np.random.default_rng(202)
GOOD = command(user_id=new_id(), url="https://example.com/shape", embedding=unit(rng))


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != field}


def embedding_with(index: int, value: Any) -> list[Any]:
    values: list[Any] = list(GOOD["embedding"])
    values[index] = value
    return values


# (case id, command as JSON text, expected SQLSTATE, field named in the message)
CASES: list[tuple[str, str, str, str]] = [
    ("wrong dimension", as_json({**GOOD, "embedding": [0.1, 0.2, 0.3]}), "22023", "embedding"),
    ("NaN string", as_json({**GOOD, "embedding": embedding_with(5, "NaN")}), "22P02", "embedding"),
    (
        "Infinity string",
        as_json({**GOOD, "embedding": embedding_with(0, "Infinity")}),
        "22P02",
        "embedding",
    ),
    # Valid JSON numbers outside float4's range: rejected as out of range.
    (
        "number beyond float4",
        as_json(GOOD).replace(str(GOOD["embedding"][3]), "1e39", 1),
        "22003",
        "embedding",
    ),
    (
        "negative beyond float4",
        as_json(GOOD).replace(str(GOOD["embedding"][3]), "-3.5e38", 1),
        "22003",
        "embedding",
    ),
    ("all-zero embedding", as_json({**GOOD, "embedding": [0.0] * DIM}), "22023", "embedding"),
    ("embedding not an array", as_json({**GOOD, "embedding": "0.1,0.2"}), "22023", "embedding"),
    ("depth 1.7", as_json({**GOOD, "reading_depth": 1.7}), "22003", "reading_depth"),
    ("depth -0.1", as_json({**GOOD, "reading_depth": -0.1}), "22003", "reading_depth"),
    ("depth as string", as_json({**GOOD, "reading_depth": "0.5"}), "22023", "reading_depth"),
    ("missing command_id", as_json(without("command_id")), "23502", "command_id"),
    ("missing user_id", as_json(without("user_id")), "23502", "user_id"),
    ("missing url", as_json(without("url")), "23502", "url"),
    ("missing embedding", as_json(without("embedding")), "23502", "embedding"),
    ("missing reading_depth", as_json(without("reading_depth")), "23502", "reading_depth"),
    ("missing occurred_at", as_json(without("occurred_at")), "23502", "occurred_at"),
    ("null user_id", as_json({**GOOD, "user_id": None}), "23502", "user_id"),
    ("bad uuid", as_json({**GOOD, "command_id": "not-a-uuid"}), "22P02", "command_id"),
    ("bad user uuid", as_json({**GOOD, "user_id": "1234"}), "22P02", "user_id"),
    (
        "timestamp without offset",
        as_json({**GOOD, "occurred_at": "2026-03-01T12:00:00"}),
        "22007",
        "occurred_at",
    ),
    ("date only", as_json({**GOOD, "occurred_at": "2026-03-01"}), "22007", "occurred_at"),
    (
        "impossible date",
        as_json({**GOOD, "occurred_at": "2026-02-30T12:00:00Z"}),
        "22008",
        "occurred_at",
    ),
    ("non-http url", as_json({**GOOD, "url": "ftp://example.com/file"}), "22023", "url"),
    ("url without host", as_json({**GOOD, "url": "https:///path"}), "22023", "url"),
    ("url with whitespace", as_json({**GOOD, "url": "https://example.com/a b"}), "22023", "url"),
    ("url too long", as_json({**GOOD, "url": "https://example.com/" + "a" * 2100}), "22001", "url"),
    ("title too long", as_json({**GOOD, "title": "t" * 513}), "22001", "title"),
    ("title not a string", as_json({**GOOD, "title": 5}), "22023", "title"),
    ("schema_version 2", as_json({**GOOD, "schema_version": 2}), "22023", "schema_version"),
    ("not an object", json.dumps([GOOD]), "22023", "command"),
]


@pytest.mark.parametrize(
    ("text", "sqlstate", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_shape_is_refused_in_sql_and_writes_nothing(
    pool: asyncpg.Pool, text: str, sqlstate: str, field: str
) -> None:
    before = await table_counts(pool)
    with pytest.raises(asyncpg.PostgresError) as caught:
        await pool.fetchval("SELECT capture.ingest_with_signal($1::jsonb)", text)
    assert caught.value.sqlstate == sqlstate
    assert caught.value.sqlstate[:2] in ("22", "23")
    assert str(caught.value).startswith(f"{field}:"), str(caught.value)
    assert await table_counts(pool) == before


async def test_dimension_message_names_expected_and_actual(repo: ArtifactRepository) -> None:
    with pytest.raises(PermanentError) as caught:
        await repo.ingest_with_signal(as_json({**GOOD, "embedding": [0.1, 0.2, 0.3]}))
    assert caught.value.kind is ErrorKind.CONSTRAINT
    assert caught.value.message == f"embedding: expected {DIM} dimensions, got 3"


async def test_good_command_passes_after_all_the_refusals(repo: ArtifactRepository) -> None:
    result = await repo.ingest_with_signal(as_json(GOOD))
    assert result["status"] == "ingested"


async def test_batch_isolates_refused_elements(
    repo: ArtifactRepository, pool: asyncpg.Pool
) -> None:
    user = new_id()
    first = command(user_id=user, url="https://example.com/b1", embedding=unit(rng))
    second = command(user_id=user, url="https://example.com/b2", embedding=unit(rng))
    bad = {
        **command(user_id=user, url="https://example.com/b3", embedding=unit(rng)),
        "reading_depth": 7,
    }
    await repo.ingest_with_signal(as_json(first))
    clash = {**first, "reading_depth": 1.2}  # same command_id, another payload
    before = await table_counts(pool)

    replies = await repo.ingest_batch(
        [as_json(bad), as_json(second), as_json(clash), "[1, 2]", as_json(first)]
    )

    assert len(replies) == 5
    assert isinstance(replies[0], PermanentError) and replies[0].kind is ErrorKind.CONSTRAINT
    assert replies[0].sqlstate == "22003" and replies[0].message.startswith("reading_depth:")
    assert isinstance(replies[1], dict) and replies[1]["status"] == "ingested"
    assert isinstance(replies[2], PermanentError) and replies[2].kind is ErrorKind.CONFLICT
    assert isinstance(replies[3], PermanentError) and replies[3].kind is ErrorKind.CONSTRAINT
    assert isinstance(replies[4], dict) and replies[4]["command_id"] == first["command_id"]
    after = await table_counts(pool)
    # Only `second` left a trace: one artifact, one signal, one ledger row.
    assert after["signals"] == before["signals"] + 1
    assert after["artifacts"] == before["artifacts"] + 1
    assert after["command_ledger"] == before["command_ledger"] + 1
    assert await repo.artifact_state(user, bad["url"]) is None


async def test_batch_error_elements_in_raw_sql(pool: asyncpg.Pool) -> None:
    reply = await pool.fetchval(
        "SELECT capture.ingest_batch($1::jsonb)", json.dumps([{"command_id": "x", "user_id": "y"}])
    )
    assert reply == [
        {
            "command_id": "x",
            "error": {"kind": "constraint", "message": "url: required", "sqlstate": "23502"},
        }
    ]


async def test_batch_that_is_not_an_array_fails_whole(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.PostgresError) as caught:
        await pool.fetchval("SELECT capture.ingest_batch($1::jsonb)", as_json(GOOD))
    assert caught.value.sqlstate == "22023"
