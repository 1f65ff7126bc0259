"""`--from-timestamp` values: RFC 3339, or a duration back from now like -1h, -15m, -2d."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^-?(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_timestamp(text: str, *, now: datetime | None = None) -> datetime:
    """An aware datetime; naive RFC 3339 input is refused rather than guessed."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 timestamp nor a duration like -1h"
        ) from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2026-11-26T09:00:00Z)")
    return parsed


def to_millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
