"""`publish`'s Kafka-free parts: line reading, validation messages, the token bucket."""

from __future__ import annotations

import io
import json

import pytest

from devkit.synthetic import generate_lines
from worker.core.config import Settings
from worker.interfaces.cli.publish import PublishReport, TokenBucket, check_lines, numbered_lines

DIM = 8
SETTINGS = Settings(CAPTURE_EMBEDDING_DIM=DIM, CAPTURE_MAX_MESSAGE_BYTES=2048)


def lines(n: int) -> list[bytes]:
    return [line.encode() for line in generate_lines(n, users=3, seed=11, dim=DIM)]


def test_numbered_lines_skip_blanks_keep_numbers_and_strip_line_endings() -> None:
    stream = io.BytesIO(b'{"a":1}\r\n\n   \n{"b":2}\n{"c":3}')
    assert list(numbered_lines(stream)) == [(1, b'{"a":1}'), (4, b'{"b":2}'), (5, b'{"c":3}')]


def test_valid_lines_become_records_keyed_by_user_with_untouched_bytes() -> None:
    raw = lines(5)
    # A producer may write upper-case uuids and extra spaces: the bytes are kept as given,
    # the key is the canonical uuid so the user's partition never depends on spelling.
    command = json.loads(raw[0])
    raw[0] = json.dumps({**command, "user_id": command["user_id"].upper()}, indent=None).encode()
    checked = check_lines(enumerate(raw, start=1), settings=SETTINGS)
    assert not checked.errors
    assert [r.value for r in checked.records] == raw
    assert checked.records[0].key == command["user_id"].encode()
    assert all(r.key == json.loads(r.value)["user_id"].lower().encode() for r in checked.records)


def test_every_invalid_line_is_reported_with_its_number_field_and_reason() -> None:
    raw = lines(6)
    bad = json.loads(raw[1])
    raw[1] = json.dumps({**bad, "reading_depth": 1.7, "url": "ftp://x.example.com/"}).encode()
    raw[3] = b'{"command_id": "truncated'
    raw[4] = b"[1, 2, 3]"
    raw[5] = json.dumps({**bad, "padding": "x" * 2048}).encode()
    checked = check_lines(enumerate(raw, start=1), settings=SETTINGS)
    messages = [str(e) for e in checked.errors]
    assert checked.invalid_lines == 4
    assert [r.line for r in checked.records] == [1, 3]
    assert "line 2: url: must be an http(s) URL" in messages
    assert "line 2: reading_depth: Input should be less than or equal to 1.5" in messages
    assert any(m.startswith("line 4: (json): Invalid JSON") for m in messages)
    assert any(m.startswith("line 5: (value): ") for m in messages)
    assert any(m.startswith("line 6: (size): ") and "2048-byte limit" in m for m in messages)


def test_embedding_dimension_comes_from_settings() -> None:
    raw = lines(1)
    checked = check_lines([(1, raw[0])], settings=Settings(CAPTURE_EMBEDDING_DIM=384))
    assert [str(e) for e in checked.errors] == [
        "line 1: embedding: must have exactly 384 numbers, got 8"
    ]


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_token_bucket_holds_the_average_rate_after_the_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(50, burst=5, clock=time.clock, sleep=time.sleep)
    for _ in range(505):
        await bucket.take()
    # 5 free in the burst, then 500 at 50/s = 10 s.
    assert time.now - 100.0 == pytest.approx(10.0)
    assert max(time.slept) <= 1 / 50 + 1e-9


async def test_token_bucket_refills_while_idle_but_not_beyond_the_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(10, burst=2, clock=time.clock, sleep=time.sleep)
    for _ in range(2):
        await bucket.take()
    assert time.slept == []
    time.now += 60  # a long pause earns at most `burst` tokens
    for _ in range(3):
        await bucket.take()
    assert time.slept == [pytest.approx(0.1)]


async def test_token_bucket_sleeps_once_per_tick_at_high_rates_not_per_record() -> None:
    time = FakeTime()
    bucket = TokenBucket(2000, burst=1, tick_s=0.005, clock=time.clock, sleep=time.sleep)
    for _ in range(2001):
        await bucket.take()
    assert time.now - 100.0 == pytest.approx(1.0, abs=0.005)  # the rate holds
    # A sleep per 5 ms tick of 10 records (9 when the float sums fall a hair short), not per record.
    assert 2000 / 10 <= len(time.slept) <= 2000 / 9 + 1
    assert max(time.slept) <= 0.005 + 1e-9


def test_token_bucket_refuses_a_non_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_report_json_is_stable() -> None:
    report = PublishReport("t", sent=10, partitions={2: 4, 0: 6}, seconds=2.0, invalid=1)
    assert report.as_json() == {
        "topic": "t",
        "sent": 10,
        "failed": 0,
        "invalid": 1,
        "partitions": {"0": 6, "2": 4},
        "seconds": 2.0,
        "rate": 5.0,
        "topic_created": False,
        "first_error": None,
    }
