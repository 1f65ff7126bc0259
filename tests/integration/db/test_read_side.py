"""The read functions: capture_artifact_state, user_artifacts, get_config, canonical_url,
record_rejections."""

from __future__ import annotations

import asyncpg
import numpy as np
import pytest

from tests.support.db_commands import DIM, as_json, command, new_id, unit
from worker.infrastructure.repository import ArtifactRepository

CANONICAL = [
    ("HTTPS://Example.COM", "https://example.com/"),
    ("https://example.com:443/a?b=1#frag", "https://example.com/a?b=1"),
    ("http://example.com:80/", "http://example.com/"),
    ("http://example.com:8080/A/B", "http://example.com:8080/A/B"),
    ("https://example.com:80/", "https://example.com:80/"),
    ("http://user:secret@Example.com/p", "http://example.com/p"),
    ("http://example.com?q=Z", "http://example.com/?q=Z"),
    ("http://example.com/?", "http://example.com/?"),
    ("http://example.com/p%2Fq/../r", "http://example.com/p%2Fq/../r"),
    ("http://[2001:DB8::1]:80/x", "http://[2001:db8::1]/x"),
    ("http://example.com:/p", "http://example.com/p"),
    ("http://example.com:0080/p", "http://example.com/p"),
    ("http://example.com#only-fragment", "http://example.com/"),
]


@pytest.mark.parametrize(("url", "canonical"), CANONICAL)
async def test_canonical_url(pool: asyncpg.Pool, url: str, canonical: str) -> None:
    assert await pool.fetchval("SELECT capture.canonical_url($1)", url) == canonical
    assert await pool.fetchval("SELECT capture.canonical_url($1)", canonical) == canonical


async def test_artifact_state_of_a_missing_artifact_is_null(repo: ArtifactRepository) -> None:
    assert await repo.artifact_state(new_id(), "https://example.com/never") is None


async def test_artifact_state_and_user_artifacts(repo: ArtifactRepository) -> None:
    rng = np.random.default_rng(1101)
    user = new_id()
    assert await repo.user_artifacts(user) == []
    first = await repo.ingest_with_signal(
        as_json(
            command(
                user_id=user,
                url="https://example.com/x",
                embedding=unit(rng),
                title="X",
                reading_depth=0.7,
            )
        )
    )
    await repo.ingest_with_signal(
        as_json(
            command(
                user_id=user,
                url="https://EXAMPLE.com/x#again",
                embedding=unit(rng),
                reading_depth=0.1,
            )
        )
    )
    state = await repo.artifact_state(user, "HTTPS://example.com:443/x")
    assert state is not None
    assert state["artifact_id"] == first["artifact_id"]
    assert state["engagement_level"] == "read"
    assert state["signal_count"] == 2
    assert state["subspace_id"] == first["subspace_id"]
    assert state["assignment_margin"] is None
    assert state["title"] == "X"  # a later capture without title keeps it
    assert state["url"] == "https://example.com/x"
    listed = await repo.user_artifacts(user)
    assert listed == [state]


async def test_get_config_returns_the_seeded_settings(repo: ArtifactRepository) -> None:
    config = await repo.system_config()
    assert config["engagement.thresholds"] == {"skimmed": 0.2, "read": 0.6, "deep": 1.0}
    assert config["subspace.join_threshold"] == 0.45
    assert config["subspace.max_per_user"] == 32
    assert config["embedding.dim"] == DIM


async def test_record_rejections_keeps_the_first_version(repo: ArtifactRepository) -> None:
    event = new_id()
    first = {"event_id": event, "status": "rejected", "processed_at": "2026-01-01T00:00:00+00:00"}
    later = {**first, "processed_at": "2026-01-02T00:00:00+00:00"}
    other = {"event_id": new_id(), "status": "rejected", "processed_at": "x"}
    assert await repo.record_rejections([first]) == [first]
    assert await repo.record_rejections([other, later]) == [other, first]
    assert await repo.record_rejections([]) == []


async def test_pool_codecs_decode_vectors_and_jsonb(
    repo: ArtifactRepository, pool: asyncpg.Pool
) -> None:
    embedding = unit(np.random.default_rng(1102))
    user = new_id()
    await repo.ingest_with_signal(
        as_json(command(user_id=user, url="https://example.com/codec", embedding=embedding))
    )
    stored = await pool.fetchval(
        "SELECT embedding FROM capture.artifacts WHERE user_id = $1::uuid", user
    )
    np.testing.assert_array_equal(stored.to_numpy(), embedding)  # float4 both ways, exact
    # A dict goes out as JSON and comes back as a dict; a str is taken as JSON text as is.
    assert await pool.fetchval("SELECT $1::jsonb", {"a": [1, 2]}) == {"a": [1, 2]}
    assert await pool.fetchval("SELECT $1::jsonb", '{"b": true}') == {"b": True}
