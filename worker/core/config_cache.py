"""SystemConfigCache: the database's `system_config`, cached with a TTL, fail-soft.

The worker reads a few tunables (batch size, ...) from the database so they can
change without a redeploy. A failed refresh must never hurt message handling:
the cache keeps serving the last good value (or the caller's default), logs the
failure once, and tries again after the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from worker.core.logging import get_logger

log = get_logger(__name__)

Loader = Callable[[], Awaitable[Mapping[str, Any]]]


class SystemConfigCache:
    def __init__(
        self,
        loader: Loader,
        *,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl_s = ttl_s
        self._clock = clock
        self._values: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._failing = False

    async def refresh(self) -> None:
        """Reload now; on failure keep what we have."""
        try:
            values = await self._loader()
        except Exception as exc:  # fail-soft is the point: any failure keeps the old values
            if not self._failing:
                log.warning(
                    "system_config refresh failed; serving last good values", error=str(exc)
                )
            self._failing = True
        else:
            self._values = dict(values)
            if self._failing:
                log.info("system_config refresh recovered")
            self._failing = False
        # Also after a failure: wait a TTL before the next attempt, so a dead
        # database is not asked once per message.
        self._fetched_at = self._clock()

    async def get(self, key: str, default: Any) -> Any:
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl_s:
            await self.refresh()
        return self._values.get(key, default)

    def peek(self, key: str, default: Any) -> Any:
        """The cached value without touching the database."""
        return self._values.get(key, default)
