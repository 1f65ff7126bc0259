"""replay redoes a stalled partition itself (the worker would pause it): nothing is dropped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.unit.test_partition_stall import FREE_USER, LOCKED_USER, Published, record
from worker.application.batch import BatchProcessor
from worker.application.capture import Limits
from worker.application.ports import IngestCommand
from worker.application.retry import Backoff
from worker.domain.errors import TransientError
from worker.interfaces.cli.replay import _process_fully


class LockedTwice:
    """The locked user's rows time out twice, then are free."""

    def __init__(self) -> None:
        self.failures = 0

    async def ingest_commands(self, typed: Sequence[IngestCommand]) -> list[Any]:
        commands = [{"user_id": str(c.user_id), "command_id": str(c.command_id)} for c in typed]
        if any(c["user_id"] == LOCKED_USER for c in commands) and self.failures < 2:
            self.failures += 1
            raise TransientError("ingest_batch: lock not available", sqlstate="55P03")
        return [{"command_id": c["command_id"], "status": "ingested"} for c in commands]

    async def record_rejections(self, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(results)

    async def system_config(self) -> Mapping[str, Any]:
        return {}


async def test_stalled_partition_is_redone_until_it_succeeds() -> None:
    records = [record(0, i, LOCKED_USER) for i in range(3)] + [
        record(1, i, FREE_USER) for i in range(4)
    ]
    published = Published()
    store = LockedTwice()

    async def limits() -> Limits:
        return Limits(embedding_dim=4, max_message_bytes=4096, db_batch_size=10)

    processor = BatchProcessor(
        store=store, publisher=published, limits=limits, backoff=Backoff(initial_s=0.01, max_s=0.02)
    )
    await _process_fully(processor, records)
    assert store.failures == 2
    done = sorted((o.envelope.partition, o.envelope.offset) for o in published.outcomes)
    assert done == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
