"""`tail`'s Kafka-free parts: decoding, filters, start offsets, the json and pretty forms."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndTimestamp

from contracts import headers as dlq
from worker.interfaces.cli.tail import (
    Filters,
    Start,
    Status,
    as_json_object,
    decode_headers,
    decode_value,
    start_offsets,
)
from worker.interfaces.cli.tail_render import pretty_line

USER = "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10"
RESULT = {
    "event_id": "8d9f0c55-2b1e-3a44-9f61-6c0f1e2d3a4b",
    "command_id": "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
    "user_id": USER,
    "status": "ingested",
    "artifact_id": "2f1b7c0e-9a55-4c1d-8e2a-7b6c5d4e3f21",
    "artifact_created": True,
    "engagement_level": "deep",
    "previous_engagement_level": "read",
    "subspace_id": "6a5b4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d",
    "subspace_created": False,
    "assignment_margin": 0.2134,
    "error": None,
}


def record(
    value: bytes | None,
    *,
    key: bytes | None = USER.encode(),
    headers: list[tuple[str, bytes]] | None = None,
    partition: int = 2,
    offset: int = 41,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="capture.results",
        partition=partition,
        offset=offset,
        timestamp=1_795_000_000_123,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers or [],
    )


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def test_decode_value_prefers_json_then_text_then_base64() -> None:
    assert decode_value(b'{"a": 1}') == ({"a": 1}, "json")
    assert decode_value(b"[1, 2]") == ([1, 2], "json")
    assert decode_value(b"not json") == ("not json", "text")
    assert decode_value(b"\xff\xfe") == (base64.b64encode(b"\xff\xfe").decode(), "base64")
    assert decode_value(None) == (None, "null")


def test_decode_headers_text_base64_and_repeats() -> None:
    decoded = decode_headers([("a", b"1"), ("b", b"\xff"), ("a", b"2"), ("a", b"3")])
    assert decoded == {"a": ["1", "2", "3"], "b": "base64:/w=="}


def test_filters_on_user_and_status() -> None:
    rejected = {**RESULT, "status": "rejected"}
    assert Filters().accept(RESULT, None)
    assert Filters(user=USER.upper()).accept(RESULT, None)
    assert not Filters(user="someone-else").accept(RESULT, None)
    assert Filters(status=Status.REJECTED).accept(rejected, None)
    assert not Filters(status=Status.REJECTED).accept(RESULT, None)
    assert not Filters(user=USER, status=Status.REJECTED).accept(RESULT, None)
    # Dead letters have no parsed user: the record key (the original key) stands in.
    assert Filters(user=USER).accept("b64...", USER.encode())
    assert not Filters(status=Status.INGESTED).accept("b64...", USER.encode())


def test_json_form_merges_the_value_and_adds_kafka_metadata() -> None:
    obj = as_json_object(record(json.dumps(RESULT).encode()), RESULT, "json")
    assert obj["status"] == "ingested"
    assert obj["_kafka"] == {
        "topic": "capture.results",
        "partition": 2,
        "offset": 41,
        "timestamp": iso(1_795_000_000_123),
        "key": USER,
        "headers": {},
    }


def test_json_form_keeps_undecodable_values_and_keys_recoverable() -> None:
    raw = b"\xff\x00 poison"
    value, how = decode_value(raw)
    obj = as_json_object(record(raw, key=b"\xfe"), value, how)
    assert base64.b64decode(obj["_value_base64"]) == raw
    assert obj["_kafka"]["key"] == "base64:/g=="
    assert as_json_object(record(b"plain"), "plain", "text")["_value_text"] == "plain"
    assert as_json_object(record(b"[1]"), [1], "json")["_value"] == [1]


class FakeConsumer:
    def __init__(self, beginning: dict[TopicPartition, int], found: dict[TopicPartition, Any]):
        self.beginning = beginning
        self.found = found
        self.asked: dict[TopicPartition, int] = {}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.beginning[tp] for tp in tps}

    async def offsets_for_times(
        self, times: dict[TopicPartition, int]
    ) -> dict[TopicPartition, Any]:
        self.asked = times
        return {tp: self.found.get(tp) for tp in times}


A, B = TopicPartition("t", 0), TopicPartition("t", 1)
END = {A: 100, B: 3}


async def test_start_offsets_for_every_mode() -> None:
    consumer = FakeConsumer({A: 10, B: 0}, {A: OffsetAndTimestamp(42, 5)})
    tps = [A, B]
    assert await start_offsets(consumer, tps, Start(), END) == {A: 10, B: 0}  # type: ignore[arg-type]
    assert await start_offsets(consumer, tps, Start(beginning=True, follow=True), END) == {  # type: ignore[arg-type]
        A: 10,
        B: 0,
    }
    assert await start_offsets(consumer, tps, Start(follow=True), END) == END  # type: ignore[arg-type]
    assert await start_offsets(consumer, tps, Start(last=5), END) == {A: 95, B: 0}  # type: ignore[arg-type]
    # No record at/after the time in B: start at its end.
    assert await start_offsets(consumer, tps, Start(timestamp_ms=7), END) == {A: 42, B: 3}  # type: ignore[arg-type]
    assert consumer.asked == {A: 7, B: 7}


def test_start_describes_itself_for_the_help_of_users() -> None:
    assert Start().describe() == "from the beginning"
    assert Start(follow=True).describe() == "new events only"
    assert Start(last=3).describe() == "last 3 per partition"
    assert Start(timestamp_ms=0).describe().startswith("from 1970-01-01T00:00:00")


def render(rec: ConsumerRecord[bytes, bytes]) -> str:
    value, how = decode_value(rec.value)
    return pretty_line(rec, value, how, decode_headers(rec.headers), iso).plain


def test_pretty_result_line() -> None:
    line = render(record(json.dumps(RESULT).encode()))
    assert line.startswith(f"{iso(1_795_000_000_123)[:-1].replace('T', ' ')} p2@41 ingested")
    assert "user=0d7c3f2a" in line
    assert "read→deep" in line
    assert "artifact=2f1b7c0e new" in line
    assert "subspace=6a5b4c3d" in line and "subspace=6a5b4c3d new" not in line
    assert "margin=0.213" in line


def test_pretty_rejected_line_shows_the_error() -> None:
    rejected = {**RESULT, "status": "rejected", "error": {"kind": "conflict", "message": "x\ny"}}
    line = render(record(json.dumps(rejected).encode()))
    assert "rejected" in line and "conflict: x\\ny" in line
    assert "\n" not in line


def test_pretty_dead_letter_line_shows_the_capture_headers() -> None:
    headers = [
        (dlq.ERROR_KIND, b"invalid"),
        (dlq.ERROR_MESSAGE, b"embedding: must not be all zero"),
        (dlq.SOURCE_TOPIC, b"capture.commands"),
        (dlq.SOURCE_PARTITION, b"4"),
        (dlq.SOURCE_OFFSET, b"1234"),
    ]
    line = render(record(b"\xff\xfe", headers=headers))
    assert "DLQ" in line
    assert "invalid: embedding: must not be all zero" in line
    assert "from capture.commands[4]@1234" in line
    assert "2B base64" in line


def test_pretty_command_and_other_lines() -> None:
    command = {
        "user_id": USER,
        "command_id": "c0ffee00-0000",
        "url": "https://a.example/x",
        "reading_depth": 0.5,
    }
    assert "command" in render(record(json.dumps(command).encode()))
    assert "depth=0.5 https://a.example/x" in render(record(json.dumps(command).encode()))
    other = render(record(b"x" * 500))
    assert "text" in other and other.endswith("…") and len(other) < 220


def test_pretty_line_does_not_interpret_markup_in_content() -> None:
    line = render(record(b"[bold red]not a style[/]"))
    assert "[bold red]not a style[/]" in line
