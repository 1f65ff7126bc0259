"""SPEC §4.5: subspace assignment and margins, checked against an independent numpy model
(tests/support/db_commands.py: SubspaceModel)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest

from tests.support.db_commands import (
    BASE_TIME,
    DIM,
    SubspaceModel,
    artifact_id,
    as_json,
    command,
    new_id,
    stream,
    subspace_id,
    unit,
)
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository

MARGIN_TOLERANCE = 1e-5  # pgvector accumulates in float32


def assert_matches(result: dict[str, Any], expected: Any, *, created: bool) -> None:
    assert result["subspace_id"] == expected.subspace_id
    assert result["runner_up_subspace_id"] == expected.runner_up
    if created:
        assert result["subspace_created"] is expected.created
    if expected.margin is None:
        assert result["assignment_margin"] is None
    else:
        assert result["assignment_margin"] == pytest.approx(expected.margin, abs=MARGIN_TOLERANCE)


async def centroids(pool: asyncpg.Pool, user: str) -> dict[str, tuple[np.ndarray, int]]:
    rows = await pool.fetch(
        "SELECT subspace_id::text AS id, centroid_sum::text AS total, member_count"
        " FROM capture.subspaces WHERE user_id = $1::uuid",
        user,
    )
    return {
        r["id"]: (np.asarray(json.loads(r["total"]), dtype=np.float32), r["member_count"])
        for r in rows
    }


async def test_stream_matches_the_numpy_model(repo: ArtifactRepository, pool: asyncpg.Pool) -> None:
    rng = np.random.default_rng(404)
    users = [new_id() for _ in range(3)]
    commands = stream(rng, users=users, per_user=60, clusters=5)
    model = SubspaceModel()
    created_subspaces = 0
    for cmd in commands:
        expected = model.ingest(cmd["user_id"], cmd["url"], cmd["embedding"])
        result = await repo.ingest_with_signal(as_json(cmd))
        assert result["artifact_id"] == artifact_id(cmd["user_id"], cmd["url"])
        assert_matches(result, expected, created=result["artifact_created"])
        created_subspaces += bool(result["subspace_created"])

    assert created_subspaces > len(users)  # the data really exercises new subspaces, joins too
    for user in users:
        stored = await centroids(pool, user)
        reference = {s.id: s for s in model.users[user]}
        assert set(stored) == set(reference)
        for sid, (total, count) in stored.items():
            assert count == reference[sid].count
            np.testing.assert_allclose(total, reference[sid].total, rtol=1e-5, atol=1e-5)
        # member_count is exactly the number of artifacts assigned there
        rows = await pool.fetch(
            "SELECT subspace_id::text AS id, count(*) AS n FROM capture.artifacts"
            " WHERE user_id = $1::uuid GROUP BY 1",
            user,
        )
        assert {r["id"]: r["n"] for r in rows} == {k: v[1] for k, v in stored.items()}


async def test_first_capture_founds_a_subspace_without_margin(repo: ArtifactRepository) -> None:
    user = new_id()
    result = await repo.ingest_with_signal(
        as_json(
            command(
                user_id=user,
                url="https://example.com/first",
                embedding=unit(np.random.default_rng(1)),
            )
        )
    )
    aid = artifact_id(user, "https://example.com/first")
    assert result["artifact_created"] is True
    assert result["subspace_created"] is True
    assert result["subspace_id"] == subspace_id(aid)
    assert result["assignment_margin"] is None
    assert result["runner_up_subspace_id"] is None
    assert result["previous_engagement_level"] is None


async def test_new_subspace_counts_as_similarity_one(repo: ArtifactRepository) -> None:
    user = new_id()
    a = np.zeros(DIM, dtype=np.float32)
    a[0] = 1.0
    b = np.zeros(DIM, dtype=np.float32)
    b[0], b[1] = 0.3, 1.0  # cosine to a = 0.3/sqrt(1.09) ≈ 0.287 < 0.45: a new subspace
    first = await repo.ingest_with_signal(
        as_json(command(user_id=user, url="https://e.com/a", embedding=a))
    )
    second = await repo.ingest_with_signal(
        as_json(command(user_id=user, url="https://e.com/b", embedding=b))
    )
    cosine = 0.3 / np.sqrt(1.09)
    assert second["subspace_created"] is True
    assert second["runner_up_subspace_id"] == first["subspace_id"]
    assert second["assignment_margin"] == pytest.approx(1.0 - cosine, abs=MARGIN_TOLERANCE)

    c = np.zeros(DIM, dtype=np.float32)
    c[0], c[1] = 1.0, 0.1  # close to a: joins it; runner-up is b's subspace
    third = await repo.ingest_with_signal(
        as_json(command(user_id=user, url="https://e.com/c", embedding=c))
    )
    cos_a = 1.0 / np.sqrt(1.01)
    cos_b = (0.3 + 0.1) / (np.sqrt(1.01) * np.sqrt(1.09))
    assert third["subspace_created"] is False
    assert third["subspace_id"] == first["subspace_id"]
    assert third["runner_up_subspace_id"] == second["subspace_id"]
    assert third["assignment_margin"] == pytest.approx(cos_a - cos_b, abs=MARGIN_TOLERANCE)


async def test_recaptures_never_move_and_never_touch_centroids(
    repo: ArtifactRepository, pool: asyncpg.Pool
) -> None:
    rng = np.random.default_rng(505)
    user = new_id()
    url = "https://Example.com/keep#top"
    first = await repo.ingest_with_signal(
        as_json(command(user_id=user, url=url, embedding=unit(rng)))
    )
    for i in range(5):  # other artifacts change the centroids after it
        await repo.ingest_with_signal(
            as_json(command(user_id=user, url=f"https://example.com/o{i}", embedding=unit(rng)))
        )
    before = await centroids(pool, user)
    for i in range(3):  # other spellings of the same url, another embedding each time
        again = await repo.ingest_with_signal(
            as_json(
                command(
                    user_id=user,
                    url=["https://example.com/keep", "HTTPS://EXAMPLE.COM:443/keep", url][i],
                    embedding=unit(rng),
                    occurred_at=BASE_TIME + timedelta(hours=i + 1),
                )
            )
        )
        assert again["artifact_created"] is False
        assert again["subspace_created"] is False
        assert again["artifact_id"] == first["artifact_id"]
        assert again["subspace_id"] == first["subspace_id"]
        assert again["assignment_margin"] == first["assignment_margin"]
        assert again["runner_up_subspace_id"] == first["runner_up_subspace_id"]
    after = await centroids(pool, user)
    assert after.keys() == before.keys()
    for sid in before:
        assert after[sid][1] == before[sid][1]
        np.testing.assert_array_equal(after[sid][0], before[sid][0])


async def test_max_per_user_caps_subspaces(fresh_database: Callable[[], Awaitable[str]]) -> None:
    url = await fresh_database()
    pool = await create_pool(url, max_size=1)
    try:
        await pool.execute(
            "UPDATE capture.system_config SET value = '3' WHERE key = 'subspace.max_per_user'"
        )
        repo = ArtifactRepository(pool)
        model = SubspaceModel(max_per_user=3)
        rng = np.random.default_rng(606)
        user = new_id()
        # Random directions in 384 dimensions are nearly orthogonal: every one would want its
        # own subspace, so after three they must join the best existing one.
        for i in range(8):
            cmd = command(user_id=user, url=f"https://example.com/cap{i}", embedding=unit(rng))
            expected = model.ingest(user, cmd["url"], cmd["embedding"])
            result = await repo.ingest_with_signal(as_json(cmd))
            assert_matches(result, expected, created=True)
            assert result["subspace_created"] is (i < 3)
        count = await pool.fetchval(
            "SELECT count(*) FROM capture.subspaces WHERE user_id = $1::uuid", user
        )
        members = await pool.fetchval(
            "SELECT sum(member_count) FROM capture.subspaces WHERE user_id = $1::uuid", user
        )
        assert (count, members) == (3, 8)
    finally:
        await pool.close()


async def test_join_threshold_comes_from_system_config(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    url = await fresh_database()
    pool = await create_pool(url, max_size=1)
    try:
        repo = ArtifactRepository(pool)
        user = new_id()
        a = np.zeros(DIM, dtype=np.float32)
        a[0] = 1.0
        b = np.zeros(DIM, dtype=np.float32)
        b[0], b[1] = 1.0, 1.0  # cosine 0.707 to a
        await repo.ingest_with_signal(
            as_json(command(user_id=user, url="https://e.com/1", embedding=a))
        )
        await pool.execute(
            "UPDATE capture.system_config SET value = '0.9' WHERE key = 'subspace.join_threshold'"
        )
        result = await repo.ingest_with_signal(
            as_json(command(user_id=user, url="https://e.com/2", embedding=b))
        )
        assert result["subspace_created"] is True  # 0.707 < 0.9 now
    finally:
        await pool.close()
