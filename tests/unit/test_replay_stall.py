"""replay redoes a stalled partition itself (the worker would pause it): nothing is dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.fakes import OTHER_USER as FREE_USER
from tests.support.fakes import USER as LOCKED_USER
from tests.support.fakes import FakePublisher, FakeStore, limits, record
from worker.application.capture import BatchProcessor
from worker.application.ports import IngestCommand
from worker.application.retry import Backoff
from worker.domain.errors import TransientError
from worker.infrastructure.kafka_client import envelopes
from worker.interfaces.cli.replay import _process_fully


class LockedTwice(FakeStore):
    """The locked user's rows time out twice, then are free."""

    def __init__(self) -> None:
        super().__init__(locked={LOCKED_USER})
        self.failures = 0

    async def ingest_commands(self, commands: Sequence[IngestCommand]) -> list[Any]:
        try:
            return await super().ingest_commands(commands)
        except TransientError:
            self.failures += 1
            if self.failures >= 2:
                self.locked.clear()
            raise


async def test_stalled_partition_is_redone_until_it_succeeds() -> None:
    records = [record(0, i, LOCKED_USER) for i in range(3)] + [
        record(1, i, FREE_USER) for i in range(4)
    ]
    published = FakePublisher()
    store = LockedTwice()

    processor = BatchProcessor(
        store=store, publisher=published, limits=limits, backoff=Backoff(initial_s=0.01, max_s=0.02)
    )
    await _process_fully(processor, envelopes(records))
    assert store.failures == 2
    done = sorted((o.envelope.partition, o.envelope.offset) for o in published.outcomes)
    assert done == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
