"""What `dlq redrive` sends back and what it selects (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts import headers as H
from worker.interfaces.cli.dead_letters import (
    DeadLetter,
    RedrivePlan,
    Selection,
    histogram,
    parse_where,
    target_partition,
)

ORIGINAL = [("trace-id", b"\xff raw"), ("traceparent", b"00-ab-cd-01")]


def letter(
    offset: int = 7, *, kind: str = "constraint", extra: tuple[tuple[str, bytes], ...] = ()
) -> DeadLetter:
    return DeadLetter(
        partition=0,
        offset=offset,
        timestamp_ms=0,
        key=b"user-1",
        value=b'{"x": 1}',
        headers=(
            *ORIGINAL,
            *extra,
            (H.ERROR_KIND, kind.encode()),
            (H.ERROR_MESSAGE, b"refused"),
            (H.SOURCE_TOPIC, b"capture.commands"),
            (H.SOURCE_PARTITION, b"3"),
            (H.SOURCE_OFFSET, b"41"),
            (H.FAILED_AT, b"2026-11-26T09:00:00+00:00"),
        ),
    )


def test_redrive_keeps_the_original_headers_and_adds_provenance() -> None:
    at = datetime(2026, 11, 27, tzinfo=UTC)
    assert letter().redrive_headers(at) == [
        *ORIGINAL,
        (H.REDRIVE_COUNT, b"1"),
        (H.REDRIVE_AT, b"2026-11-27T00:00:00+00:00"),
        (H.REDRIVE_FROM, b"0@7"),
    ]


def test_a_second_redrive_replaces_the_first_ones_provenance_and_counts_on() -> None:
    again = letter(9, extra=((H.REDRIVE_COUNT, b"1"), (H.REDRIVE_FROM, b"0@7")))
    assert again.redrive_count == 1
    headers = again.redrive_headers(datetime.now(UTC))
    assert headers[: len(ORIGINAL)] == ORIGINAL
    assert dict(headers)[H.REDRIVE_COUNT] == b"2" and dict(headers)[H.REDRIVE_FROM] == b"0@9"
    assert [name for name, _ in headers].count(H.REDRIVE_COUNT) == 1


def test_loop_guard_and_unsendable_records_are_reported_not_sent() -> None:
    plan = RedrivePlan()
    tired = letter(1, extra=((H.REDRIVE_COUNT, b"3"),))
    dropped = letter(2, extra=((H.VALUE_DROPPED, b"3000000"),))
    assert not plan.consider(tired, Selection(), max_redrives=3)
    assert not plan.consider(dropped, Selection(), max_redrives=3)
    assert plan.consider(letter(3), Selection(), max_redrives=3)
    assert not plan.consider(
        letter(4, kind="invalid"), Selection(kinds=frozenset({"constraint"})), 3
    )
    assert plan.examined == 4
    assert [x.offset for x in plan.send] == [3]
    assert [x.offset for x in plan.over_limit] == [1]
    assert [x.offset for x, _ in plan.unsendable] == [2]


def test_selection_filters() -> None:
    one = letter()
    assert Selection(user="USER-1").accept(one)
    assert not Selection(user="user-2").accept(one)
    assert Selection(since=datetime(2026, 11, 26, 8, tzinfo=UTC)).accept(one)
    assert not Selection(since=datetime(2026, 11, 26, 10, tzinfo=UTC)).accept(one)
    assert Selection(offsets=frozenset({parse_where("7")})).accept(one)
    assert Selection(offsets=frozenset({parse_where("0@7")})).accept(one)
    assert not Selection(offsets=frozenset({parse_where("1@7")})).accept(one)
    with pytest.raises(ValueError, match="PARTITION@OFFSET"):
        parse_where("a@b")


def test_histogram_and_target_partition() -> None:
    stats = histogram([letter(1), letter(2), letter(3, kind="invalid")])
    assert list(stats) == ["constraint", "invalid"]
    assert stats["constraint"].count == 2 and stats["constraint"].source_partitions == {3: 2}
    assert target_partition(letter(), [0, 1, 2, 3]) == 3
    assert target_partition(letter(), [0, 1]) is None  # fewer partitions now: by key
