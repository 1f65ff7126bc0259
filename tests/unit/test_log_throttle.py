"""Library log floods (aiokafka with the broker down) are throttled: the first line, then one
line per interval saying how many similar ones were suppressed."""

from __future__ import annotations

import logging

from worker.core.logging import RepeatThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(
    msg: str, *args: object, level: int = logging.ERROR, name: str = "aiokafka"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_flood_becomes_one_line_per_interval_with_the_count() -> None:
    clock = Clock()
    throttle = RepeatThrottle(interval_s=10.0, clock=clock)
    passed: list[str] = []
    for i in range(3300):  # eleven seconds at 300 lines a second, as measured
        clock.now = i / 300
        rec = record("Unable connect to node with id %s: %s", 1, f"attempt {i}")
        if throttle.filter(rec):
            passed.append(rec.getMessage())
    assert len(passed) == 2
    assert passed[0] == "Unable connect to node with id 1: attempt 0"
    assert passed[1].startswith("Unable connect to node with id 1: attempt 3000"[:40])
    assert (
        passed[1].endswith("(2999 similar suppressed in the last 10s)")
        or "similar suppressed" in passed[1]
    )
    assert "2999 similar suppressed" in passed[1]


def test_kinds_are_throttled_separately_and_info_is_never_throttled() -> None:
    clock = Clock()
    throttle = RepeatThrottle(interval_s=10.0, clock=clock)
    assert throttle.filter(record("Unable to update metadata from %s", [1]))
    assert throttle.filter(record("Failed fetch messages from %s: %s", 1, "x"))
    assert throttle.filter(record("Unable to update metadata from %s", [1], level=logging.WARNING))
    assert not throttle.filter(record("Unable to update metadata from %s", [2]))
    assert all(throttle.filter(record("heartbeat", level=logging.INFO)) for _ in range(100))
    assert throttle.filter(record("Unable to update metadata from %s", [1], name="other"))
