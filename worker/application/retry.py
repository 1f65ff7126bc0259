"""Capped exponential backoff with jitter, for transient failures."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    initial_s: float = 0.2
    max_s: float = 10.0
    max_attempts: int = 0
    """0 means retry forever (the default: a message is never skipped)."""

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry `attempt` (1-based): equal jitter over the capped exponential."""
        capped: float = min(self.max_s, self.initial_s * float(2 ** min(attempt - 1, 30)))
        jitter: float = (rng or random).uniform(0, capped / 2)
        return capped / 2 + jitter

    def gives_up(self, attempt: int) -> bool:
        return self.max_attempts > 0 and attempt >= self.max_attempts
