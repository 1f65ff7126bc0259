"""SPEC §4.4: the engagement level comes from reading_depth with thresholds read from
system_config at call time, and the stored level never decreases."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.db_commands import BASE_TIME, as_json, command, level_of, new_id, unit
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository

rng = np.random.default_rng(303)
EMBEDDING = unit(rng)

depths = st.floats(min_value=0.0, max_value=1.5, allow_nan=False, allow_infinity=False)
# The thresholds themselves and their neighbours are where an off-by-one would hide.
edgy_depths = st.one_of(depths, st.sampled_from([0.0, 0.2, 0.6, 1.0, 1.5, 0.19999999, 0.6000001]))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=st.lists(edgy_depths, min_size=1, max_size=8))
async def test_stored_level_is_the_level_of_the_deepest_read(
    repo: ArtifactRepository, sequence: list[float]
) -> None:
    user = new_id()
    url = "https://example.com/engagement"
    running_max = -1.0
    for i, depth in enumerate(sequence):
        result = await repo.ingest_with_signal(
            as_json(
                command(
                    user_id=user,
                    url=url,
                    embedding=EMBEDDING,
                    reading_depth=depth,
                    occurred_at=BASE_TIME + timedelta(seconds=i),
                )
            )
        )
        previous = None if i == 0 else level_of(running_max)
        running_max = max(running_max, depth)
        assert result["previous_engagement_level"] == previous
        assert result["engagement_level"] == level_of(running_max)
        assert result["artifact_created"] is (i == 0)

    state = await repo.artifact_state(user, url)
    assert state is not None
    assert state["engagement_level"] == level_of(max(sequence))
    assert state["signal_count"] == len(sequence)


async def test_signal_rows_keep_their_own_level(
    repo: ArtifactRepository, pool: asyncpg.Pool
) -> None:
    user = new_id()
    for i, depth in enumerate((1.2, 0.1)):
        await repo.ingest_with_signal(
            as_json(
                command(
                    user_id=user,
                    url="https://example.com/own-level",
                    embedding=EMBEDDING,
                    reading_depth=depth,
                    occurred_at=BASE_TIME + timedelta(seconds=i),
                )
            )
        )
    rows = await pool.fetch(
        "SELECT engagement_level::text AS level FROM capture.signals WHERE user_id = $1::uuid"
        " ORDER BY occurred_at",
        user,
    )
    assert [r["level"] for r in rows] == ["deep", "captured"]
    state = await repo.artifact_state(user, "https://example.com/own-level")
    assert state is not None and state["engagement_level"] == "deep"


async def test_changed_thresholds_take_effect_on_the_next_call(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    url = await fresh_database()
    pool = await create_pool(url, max_size=2)
    try:
        repo = ArtifactRepository(pool)
        user = new_id()

        async def level(depth: float, path: str) -> str:
            result = await repo.ingest_with_signal(
                as_json(
                    command(
                        user_id=user,
                        url=f"https://example.com/{path}",
                        embedding=EMBEDDING,
                        reading_depth=depth,
                    )
                )
            )
            return str(result["engagement_level"])

        assert await level(0.5, "before") == "skimmed"
        thresholds = {"skimmed": 0.1, "read": 0.4, "deep": 0.8}
        await pool.execute(
            "UPDATE capture.system_config SET value = $1::jsonb"
            " WHERE key = 'engagement.thresholds'",
            json.dumps(thresholds),
        )
        assert (await repo.system_config())["engagement.thresholds"] == thresholds
        assert await level(0.5, "after") == "read"
        assert await level(0.85, "after-deep") == "deep"
        assert await level(0.05, "after-low") == "captured"
        # Batches read the same settings.
        replies = await repo.ingest_batch(
            [
                as_json(
                    command(
                        user_id=user,
                        url="https://example.com/batch",
                        embedding=EMBEDDING,
                        reading_depth=0.45,
                    )
                )
            ]
        )
        assert isinstance(replies[0], dict) and replies[0]["engagement_level"] == "read"

        # A malformed value falls back to the default instead of refusing commands.
        await pool.execute(
            "UPDATE capture.system_config SET value = '\"oops\"'"
            " WHERE key = 'engagement.thresholds'"
        )
        assert await level(0.65, "fallback") == "read"
    finally:
        await pool.close()
