"""`capture-worker publish` and `tail` as a user runs them, against a real broker.

Each test gets its own topics (unique names, passed through the environment as a
user would) and reads back what actually reached Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from contracts import headers as dlq
from devkit.synthetic import generate_lines
from tests.fixtures.services import MakeTopic
from tests.support.kafka import read_all

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "worker.interfaces.cli.main"]
DIM = 16


@pytest.fixture
async def cli_env(
    kafka_bootstrap: str, topic_name: Callable[..., str], kafka_admin: AIOKafkaAdminClient
) -> AsyncIterator[dict[str, str]]:
    """The environment a user would set: broker, unique topics, a small embedding size.
    Topics the CLI itself creates are deleted afterwards."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CAPTURE_COMMANDS_TOPIC": topic_name("commands"),
        "CAPTURE_RESULTS_TOPIC": topic_name("results"),
        "CAPTURE_DLQ_TOPIC": topic_name("dlq"),
        "CAPTURE_EMBEDDING_DIM": str(DIM),
        "CAPTURE_TOPIC_PARTITIONS": "3",
        "CAPTURE_LOG_FORMAT": "json",
        "COLUMNS": "200",
    }
    yield env
    topics = [
        env[k] for k in ("CAPTURE_COMMANDS_TOPIC", "CAPTURE_RESULTS_TOPIC", "CAPTURE_DLQ_TOPIC")
    ]
    existing = set(await kafka_admin.list_topics())
    if doomed := [t for t in topics if t in existing]:
        with contextlib.suppress(KafkaError, OSError):
            await kafka_admin.delete_topics(doomed)


async def cli(
    env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI without blocking the event loop the session's fixtures live on."""
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def commands_file(
    tmp_path: Path, n: int, *, bad: dict[int, bytes] | None = None
) -> tuple[Path, list[bytes]]:
    lines = [line.encode() for line in generate_lines(n, users=4, seed=21, dim=DIM)]
    for number, replacement in (bad or {}).items():
        lines[number - 1] = replacement
    path = tmp_path / "commands.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


def too_deep(line: bytes) -> bytes:
    return json.dumps({**json.loads(line), "reading_depth": 1.7}).encode()


# -- publish -------------------------------------------------------------------------------


async def test_publish_with_a_bad_line_reports_it_and_sends_nothing(
    cli_env: dict[str, str], tmp_path: Path, kafka_admin: AIOKafkaAdminClient
) -> None:
    clean, _ = commands_file(tmp_path, 8)
    lines = clean.read_bytes().splitlines()
    path, _ = commands_file(tmp_path, 8, bad={3: too_deep(lines[2]), 7: b"{not json"})

    done = await cli(cli_env, "publish", str(path))

    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "line 3: reading_depth: Input should be less than or equal to 1.5" in stderr
    assert "line 7: (json): Invalid JSON" in stderr
    assert "nothing sent" in stderr
    # Validation happens before Kafka is touched: the topic was not even created.
    assert cli_env["CAPTURE_COMMANDS_TOPIC"] not in await kafka_admin.list_topics()


async def test_publish_skip_invalid_sends_the_valid_lines_as_given(
    cli_env: dict[str, str], tmp_path: Path, kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    clean, _ = commands_file(tmp_path, 30)
    original = clean.read_bytes().splitlines()
    path, lines = commands_file(tmp_path, 30, bad={5: too_deep(original[4])})

    done = await cli(cli_env, "publish", str(path), "--skip-invalid", "--format", "json")

    assert done.returncode == 0, done.stderr.decode()
    assert b"line 5: reading_depth" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["sent"] == 29
    assert summary["invalid"] == 1
    assert summary["topic_created"] is True
    assert sum(summary["partitions"].values()) == 29
    topic = cli_env["CAPTURE_COMMANDS_TOPIC"]
    (described,) = await kafka_admin.describe_topics([topic])
    assert len(described["partitions"]) == 3  # CAPTURE_TOPIC_PARTITIONS

    records = await read_all(kafka_bootstrap, topic)
    expected = [line for i, line in enumerate(lines, start=1) if i != 5]
    assert sorted(r.value for r in records if r.value) == sorted(expected)
    partitions_of_user: dict[bytes, set[int]] = {}
    for r in records:
        assert r.value is not None and r.key is not None
        assert r.key == json.loads(r.value)["user_id"].encode()
        partitions_of_user.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions_of_user.values()), "a user spans partitions"
    # Within a user's partition the file's order is kept.
    for key in partitions_of_user:
        sent = [r.value for r in sorted(records, key=lambda r: r.offset) if r.key == key]
        assert sent == [line for line in expected if json.loads(line)["user_id"].encode() == key]


async def test_publish_reads_stdin_and_generates(
    cli_env: dict[str, str], kafka_bootstrap: str
) -> None:
    lines = list(generate_lines(12, users=2, seed=4, dim=DIM))
    piped = await cli(cli_env, "publish", "-", "--format", "json", stdin="\n".join(lines).encode())
    assert piped.returncode == 0, piped.stderr.decode()
    assert json.loads(piped.stdout)["sent"] == 12

    generated = await cli(
        cli_env, "publish", "--generate", "200", "--users", "9", "--format", "json"
    )
    assert generated.returncode == 0, generated.stderr.decode()
    assert json.loads(generated.stdout)["sent"] == 200
    records = await read_all(kafka_bootstrap, cli_env["CAPTURE_COMMANDS_TOPIC"])
    assert len(records) == 212
    assert len({r.key for r in records}) == 2 + 9


async def test_publish_rate_limits(cli_env: dict[str, str]) -> None:
    started = time.monotonic()
    done = await cli(cli_env, "publish", "--generate", "40", "--rate", "20", "--format", "json")
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["sent"] == 40
    # 40 messages at 20/s with a burst of 1: about two seconds of sending.
    assert summary["seconds"] >= 1.8
    assert time.monotonic() - started >= 1.8


async def test_generate_output_is_deterministic_per_seed(cli_env: dict[str, str]) -> None:
    first = await cli(cli_env, "publish", "--generate", "150", "--seed", "5", "--output", "-")
    again = await cli(cli_env, "publish", "--generate", "150", "--seed", "5", "--output", "-")
    other = await cli(cli_env, "publish", "--generate", "150", "--seed", "6", "--output", "-")
    assert first.returncode == again.returncode == other.returncode == 0
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout
    lines = first.stdout.decode().splitlines()
    assert len(lines) == 150
    assert all(len(json.loads(line)["embedding"]) == DIM for line in lines)
    # stdout carries the commands only, so it pipes straight back into `publish -`.
    assert first.stderr == b""


async def test_generate_dimension_mismatch_is_refused_before_sending(
    cli_env: dict[str, str],
) -> None:
    done = await cli(cli_env, "publish", "--generate", "5", "--dim", "32")
    assert done.returncode == 2
    assert b"CAPTURE_EMBEDDING_DIM=16" in done.stderr


# -- tail ----------------------------------------------------------------------------------

USERS = [str(uuid.UUID(int=i + 1, version=4)) for i in range(3)]


def result_event(i: int, user: str, status: str) -> dict[str, Any]:
    rejected = status == "rejected"
    return {
        "event_id": str(uuid.UUID(int=1000 + i, version=5)),
        "command_id": str(uuid.UUID(int=2000 + i, version=4)),
        "user_id": user,
        "status": status,
        "artifact_id": None if rejected else str(uuid.UUID(int=3000 + i, version=5)),
        "artifact_created": None if rejected else i % 2 == 0,
        "engagement_level": None if rejected else "read",
        "previous_engagement_level": None,
        "subspace_id": None if rejected else str(uuid.UUID(int=4000 + i, version=5)),
        "subspace_created": None if rejected else False,
        "assignment_margin": None if rejected else 0.25,
        "runner_up_subspace_id": None,
        "processed_at": "2026-01-05T08:00:00+00:00",
        "error": {"kind": "conflict", "message": "payload differs"} if rejected else None,
        "schema_version": 1,
    }


async def produce_at(
    options: dict[str, Any],
    topic: str,
    items: list[tuple[bytes, bytes, int, list[tuple[str, bytes]]]],
) -> list[Any]:
    """Produce (key, value, timestamp_ms, headers) and return each record's metadata."""
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, timestamp_ms=ts, headers=headers)
            for key, value, ts, headers in items
        ]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


@pytest.fixture
async def results_topic(
    cli_env: dict[str, str], make_topic: MakeTopic, kafka_client_options: dict[str, Any]
) -> dict[str, Any]:
    """A results topic with 24 events: 3 users, every 4th rejected; the first 12 two hours
    old, the rest ten minutes old, one second apart."""
    topic = await make_topic(partitions=3, suffix="results")
    cli_env["CAPTURE_RESULTS_TOPIC"] = topic
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    events, items = [], []
    for i in range(24):
        event = result_event(i, USERS[i % 3], "rejected" if i % 4 == 3 else "ingested")
        base = now_ms - (7_200_000 if i < 12 else 600_000)
        events.append(event)
        items.append((event["user_id"].encode(), json.dumps(event).encode(), base + i * 1000, []))
    metadata = await produce_at(kafka_client_options, topic, items)
    return {
        "topic": topic,
        "events": events,
        "metadata": metadata,
        "timestamps": [i[2] for i in items],
    }


def parse_lines(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


async def test_tail_json_reads_the_results_topic_to_its_end(
    cli_env: dict[str, str], results_topic: dict[str, Any]
) -> None:
    # No TOPIC argument: CAPTURE_RESULTS_TOPIC; no position flag: from the beginning.
    done = await cli(cli_env, "tail", "--format", "json", timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    shown = parse_lines(done.stdout)
    assert sorted(e["event_id"] for e in shown) == sorted(
        e["event_id"] for e in results_topic["events"]
    )
    by_id = {e["event_id"]: e for e in results_topic["events"]}
    for item in shown:
        meta = item.pop("_kafka")
        assert item == by_id[item["event_id"]]
        assert meta["topic"] == results_topic["topic"]
        assert meta["key"] == item["user_id"]
        assert meta["timestamp"].endswith("Z")
    # Kafka order is kept within each partition.
    for partition in range(3):
        offsets = [
            e["_kafka"]["offset"]
            for e in parse_lines(done.stdout)
            if e["_kafka"]["partition"] == partition
        ]
        assert offsets == sorted(offsets)


async def test_tail_filters_by_user_and_status(
    cli_env: dict[str, str], results_topic: dict[str, Any]
) -> None:
    events = results_topic["events"]
    by_user = await cli(cli_env, "tail", "--user", USERS[1], "--format", "json")
    assert {e["event_id"] for e in parse_lines(by_user.stdout)} == {
        e["event_id"] for e in events if e["user_id"] == USERS[1]
    }
    rejected = await cli(cli_env, "tail", "--status", "rejected", "--format", "json")
    assert {e["event_id"] for e in parse_lines(rejected.stdout)} == {
        e["event_id"] for e in events if e["status"] == "rejected"
    }
    both = await cli(
        cli_env, "tail", "--user", USERS[0], "--status", "ingested", "--format", "json"
    )
    assert {e["event_id"] for e in parse_lines(both.stdout)} == {
        e["event_id"] for e in events if e["user_id"] == USERS[0] and e["status"] == "ingested"
    }
    pretty = await cli(cli_env, "tail", "--status", "rejected")
    lines = pretty.stdout.decode().splitlines()
    assert len(lines) == 6
    assert all(" rejected " in line and "conflict: payload differs" in line for line in lines)


async def test_tail_from_timestamp_absolute_and_relative(
    cli_env: dict[str, str], results_topic: dict[str, Any]
) -> None:
    events, stamps = results_topic["events"], results_topic["timestamps"]
    cut = stamps[5]
    since = datetime.fromtimestamp(cut / 1000, UTC).isoformat(timespec="milliseconds")
    absolute = await cli(cli_env, "tail", "--from-timestamp", since, "--format", "json")
    assert absolute.returncode == 0, absolute.stderr.decode()
    assert {e["event_id"] for e in parse_lines(absolute.stdout)} == {
        e["event_id"] for e, ts in zip(events, stamps, strict=True) if ts >= cut
    }
    relative = await cli(cli_env, "tail", "--from-timestamp", "-1h", "--format", "json")
    assert {e["event_id"] for e in parse_lines(relative.stdout)} == {
        e["event_id"] for e in events[12:]
    }
    future = await cli(
        cli_env, "tail", "--from-timestamp", "2099-01-01T00:00:00Z", "--format", "json"
    )
    assert future.returncode == 0 and future.stdout == b""
    naive = await cli(cli_env, "tail", "--from-timestamp", "2026-01-01T00:00:00")
    assert naive.returncode == 2


async def test_tail_last_n_per_partition_and_max_messages(
    cli_env: dict[str, str], results_topic: dict[str, Any]
) -> None:
    per_partition: dict[int, list[str]] = {}
    for event, meta in zip(results_topic["events"], results_topic["metadata"], strict=True):
        per_partition.setdefault(meta.partition, []).append(event["event_id"])
    expected = {eid for ids in per_partition.values() for eid in ids[-2:]}
    last = await cli(cli_env, "tail", "--last", "2", "--format", "json")
    assert last.returncode == 0, last.stderr.decode()
    assert {e["event_id"] for e in parse_lines(last.stdout)} == expected

    limited = await cli(cli_env, "tail", "--max-messages", "5", "--format", "json")
    assert len(parse_lines(limited.stdout)) == 5

    clash = await cli(cli_env, "tail", "--last", "2", "--from-beginning")
    assert clash.returncode == 2


async def test_tail_shows_dead_letters_with_headers_and_raw_values(
    cli_env: dict[str, str], make_topic: MakeTopic, kafka_client_options: dict[str, Any]
) -> None:
    topic = await make_topic(partitions=1, suffix="dlq")
    poison = b"\xff\xfe not utf-8"
    headers = [
        (dlq.ERROR_KIND, b"undecodable"),
        (dlq.ERROR_MESSAGE, b"not UTF-8"),
        (dlq.SOURCE_TOPIC, b"capture.commands"),
        (dlq.SOURCE_PARTITION, b"2"),
        (dlq.SOURCE_OFFSET, b"77"),
        (dlq.FAILED_AT, b"2026-01-05T08:00:00+00:00"),
    ]
    now = int(time.time() * 1000)
    await produce_at(
        kafka_client_options,
        topic,
        [
            (USERS[0].encode(), poison, now, headers),
            (USERS[1].encode(), b'{"user_id": "x", "reading_depth": 9}', now, headers),
        ],
    )
    done = await cli(cli_env, "tail", topic, "--format", "json")
    assert done.returncode == 0, done.stderr.decode()
    first, second = parse_lines(done.stdout)
    assert first["_kafka"]["headers"][dlq.ERROR_KIND] == "undecodable"
    assert first["_kafka"]["headers"][dlq.SOURCE_OFFSET] == "77"
    assert base64.b64decode(first["_value_base64"]) == poison
    assert second["reading_depth"] == 9
    # The key is the original user id, so --user finds dead letters too.
    mine = await cli(cli_env, "tail", topic, "--user", USERS[0], "--format", "json")
    assert [e["_kafka"]["offset"] for e in parse_lines(mine.stdout)] == [0]
    pretty = await cli(cli_env, "tail", topic)
    assert "DLQ" in pretty.stdout.decode()
    assert "undecodable: not UTF-8 from capture.commands[2]@77" in pretty.stdout.decode()


async def test_tail_follow_shows_only_new_records_and_stops_on_sigint(
    cli_env: dict[str, str], make_topic: MakeTopic, kafka_client_options: dict[str, Any]
) -> None:
    topic = await make_topic(partitions=2, suffix="follow")
    now = int(time.time() * 1000)
    old = result_event(0, USERS[0], "ingested")
    await produce_at(kafka_client_options, topic, [(b"k", json.dumps(old).encode(), now, [])])

    proc = subprocess.Popen(
        [*CLI, "tail", topic, "--follow", "--format", "json"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        # The tail takes its end offsets some time after starting: keep producing fresh
        # events until one shows up.
        deadline = time.monotonic() + 60
        i = 1
        while b"\n" not in seen and time.monotonic() < deadline:
            event = result_event(i, USERS[1], "ingested")
            await produce_at(
                kafka_client_options, topic, [(b"k", json.dumps(event).encode(), now, [])]
            )
            await asyncio.sleep(0.5)
            seen += proc.stdout.read() or b""
            i += 1
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert b"\n" in seen, "no new event shown within 60 s"
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 15)
        rest = proc.stdout.read() or b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    shown = parse_lines(seen + rest)
    assert old["event_id"] not in {e["event_id"] for e in shown}, (
        "--follow alone shows new records only"
    )
    assert all(e["user_id"] == USERS[1] for e in shown)
    assert b"Traceback" not in (proc.stderr.read() if proc.stderr else b"")


async def test_tail_of_a_missing_topic_fails_clearly(cli_env: dict[str, str]) -> None:
    done = await cli(cli_env, "tail", f"missing-{uuid.uuid4().hex[:8]}")
    assert done.returncode == 1
    assert b"does not exist" in done.stderr


async def test_tail_of_an_empty_topic_ends_at_once(
    cli_env: dict[str, str], make_topic: MakeTopic
) -> None:
    topic = await make_topic(partitions=2, suffix="empty")
    started = time.monotonic()
    done = await cli(cli_env, "tail", topic, "--format", "json", timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b""
    assert time.monotonic() - started < 20
