"""SystemConfigCache: TTL, and fail-soft when the table cannot be read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.core.config_cache import SystemConfigCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_serves_last_good_value_while_loader_fails() -> None:
    clock = Clock()
    state: dict[str, Any] = {"fail": False, "value": 7, "calls": 0}

    async def loader() -> Mapping[str, Any]:
        state["calls"] += 1
        if state["fail"]:
            raise ConnectionError("database down")
        return {"worker.db_batch_size": state["value"]}

    cache = SystemConfigCache(loader, ttl_s=10, clock=clock)
    assert await cache.get("worker.db_batch_size", 1) == 7
    state.update(fail=True, value=99)
    clock.now = 11
    assert await cache.get("worker.db_batch_size", 1) == 7  # last good value
    calls = state["calls"]
    clock.now = 12
    assert await cache.get("worker.db_batch_size", 1) == 7
    assert state["calls"] == calls  # a failure also waits a TTL before the next try
    state["fail"] = False
    clock.now = 22
    assert await cache.get("worker.db_batch_size", 1) == 99


async def test_default_when_never_loaded() -> None:
    async def loader() -> Mapping[str, Any]:
        raise TimeoutError

    cache = SystemConfigCache(loader, ttl_s=10, clock=Clock())
    assert await cache.get("missing", 42) == 42
