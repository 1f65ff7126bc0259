"""SystemConfigCache over the real repository: last good value while system_config is unreadable."""

from __future__ import annotations

import asyncpg

from worker.core.config_cache import SystemConfigCache
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_serves_last_good_value_while_table_is_unreadable(fresh_database) -> None:  # type: ignore[no-untyped-def]
    url = await fresh_database()
    admin = await asyncpg.connect(url)
    pool = await create_pool(url, max_size=2)
    try:
        repo = ArtifactRepository(pool)
        await admin.execute(
            "INSERT INTO capture.system_config(key, value) VALUES ('worker.db_batch_size', '64')"
        )
        clock = Clock()
        cache = SystemConfigCache(repo.system_config, ttl_s=5, clock=clock)
        assert await cache.get("worker.db_batch_size", 100) == 64

        await admin.execute("ALTER TABLE capture.system_config RENAME TO system_config_gone")
        clock.now = 6
        assert await cache.get("worker.db_batch_size", 100) == 64  # fail-soft: last good value
        assert await cache.get("subspace.join_threshold", None) == 0.45  # seeded value still served

        await admin.execute("ALTER TABLE capture.system_config_gone RENAME TO system_config")
        await admin.execute(
            "UPDATE capture.system_config SET value = '32' WHERE key = 'worker.db_batch_size'"
        )
        clock.now = 12
        assert await cache.get("worker.db_batch_size", 100) == 32  # recovered, new value
    finally:
        await pool.close()
        await admin.close()
