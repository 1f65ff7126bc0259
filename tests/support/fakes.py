"""The fakes of the unit tests, one copy each: the ports (`CaptureStore`, `Publisher`), aiokafka's
consumer as the worker uses it, and records. `tests/unit/test_port_conformance.py` proves each
fake exposes the same port as the real adapter.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

from contracts import ErrorKind
from worker.application.capture import Limits, Outcome
from worker.application.ports import Envelope, IngestCommand, ResultObject
from worker.domain.errors import PermanentError, TransientError

DIM = 4
TOPIC = "cmds"
USER = "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10"
OTHER_USER = "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11"


def command(**overrides: Any) -> dict[str, Any]:
    """A valid command of dimension DIM (fresh command_id), with fields overridden."""
    base = {
        "command_id": str(uuid.uuid4()),
        "user_id": USER,
        "url": "https://example.com/a",
        "embedding": [0.1, 0.2, 0.3, 0.4],
        "reading_depth": 0.5,
        "occurred_at": "2026-11-26T09:30:00+00:00",
    }
    base.update(overrides)
    return base


def envelope(
    value: bytes | None, offset: int = 0, key: bytes | None = None, partition: int = 0
) -> Envelope:
    """An Envelope keyed by the value's user_id when it has one."""
    if key is None and value is not None:
        try:
            key = json.loads(value)["user_id"].encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            key = None
    return Envelope(TOPIC, partition, offset, key, value, (("trace", b"\xff"),))


def record(
    partition: int, offset: int, user: str = USER, **fields: Any
) -> ConsumerRecord[Any, Any]:
    """A consumed Kafka record holding a valid command of `user`."""
    value = json.dumps(command(user_id=user, **fields)).encode()
    return ConsumerRecord(
        TOPIC, partition, offset, 0, 0, user.encode(), value, None, len(value), len(value), []
    )


async def limits() -> Limits:
    return Limits(embedding_dim=DIM, max_message_bytes=4096, db_batch_size=10)


class FakeStore:
    """A CaptureStore that ingests in memory.

    Refuses commands whose url contains "refuse" (CONSTRAINT); raises a lock timeout for users
    in `locked` (contention), and `bug` (an unexpected exception) for urls containing "bug",
    `bug_times` times per command (forever when None).
    """

    def __init__(
        self,
        *,
        locked: set[str] | None = None,
        bug: Exception | None = None,
        bug_times: int | None = None,
    ) -> None:
        self.calls: list[list[IngestCommand]] = []
        self.ingested: list[str] = []
        self.rejections: dict[str, ResultObject] = {}
        self.locked = locked or set()
        self.bug = bug or RuntimeError("a bug")
        self.bug_times = bug_times
        self.bugs: dict[str, int] = {}

    async def ingest_commands(
        self, commands: Sequence[IngestCommand]
    ) -> list[ResultObject | PermanentError]:
        self.calls.append(list(commands))
        if any(str(c.user_id) in self.locked for c in commands):
            raise TransientError(
                "ingest_batch: lock not available", sqlstate="55P03", contention=True
            )
        for c in commands:
            if "bug" in c.url:
                seen = self.bugs.get(str(c.command_id), 0)
                if self.bug_times is None or seen < self.bug_times:
                    self.bugs[str(c.command_id)] = seen + 1
                    raise self.bug
        out: list[ResultObject | PermanentError] = []
        for c in commands:
            if "refuse" in c.url:
                out.append(PermanentError(ErrorKind.CONSTRAINT, "url: refused", sqlstate="22023"))
            else:
                self.ingested.append(str(c.command_id))
                out.append({"command_id": str(c.command_id), "status": "ingested"})
        return out

    async def record_rejections(self, results: Sequence[ResultObject]) -> list[ResultObject]:
        return [self.rejections.setdefault(r["event_id"], r) for r in results]

    async def system_config(self) -> Mapping[str, Any]:
        return {}


class FakePublisher:
    """A Publisher that keeps what it was given; fails (TransientError) `failures` times first."""

    def __init__(self, failures: int = 0) -> None:
        self.outcomes: list[Outcome] = []
        self.failures = failures

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientError("publish: broker unavailable")
        self.outcomes += outcomes


class FakeConsumer:
    """aiokafka's AIOKafkaConsumer as the worker uses it: assignment, pause/resume, seek, commit.

    Like aiokafka, a partition not assigned raises IllegalStateError on pause/seek/resume.
    """

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.positions: dict[TopicPartition, int] = {}
        self.paused_now: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.release = asyncio.Event()  # clear it to hold commits in flight
        self.release.set()

    def _check(self, tp: TopicPartition) -> None:
        if tp not in self.assigned:
            raise IllegalStateError(f"No current assignment for partition {tp}")

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check(tp)
        self.positions[tp] = offset

    def pause(self, tp: TopicPartition) -> None:
        self._check(tp)
        self.paused_now.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self._check(tp)
        self.paused_now.discard(tp)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.release.wait()
        self.commits.append(dict(offsets))
