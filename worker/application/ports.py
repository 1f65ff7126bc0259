"""What the application needs from the outside world, as small Protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from worker.domain.errors import PermanentError

if TYPE_CHECKING:
    from worker.application.capture import Outcome

ResultObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class IngestCommand:
    """A validated command, typed for the database: only the contract's fields, no JSON.

    The embedding is what the database stores: IEEE 754 float32 numbers, big-endian, 4 bytes
    each, in one `bytes` object (the cyclic GC never walks it) instead of a list of Python
    floats. `embedding_dim` is len(embedding) // 4.
    """

    command_id: UUID
    user_id: UUID
    url: str
    title: str | None
    embedding: bytes
    reading_depth: float
    occurred_at: datetime


class CaptureStore(Protocol):
    """The database, command-shaped: the only writes are these calls."""

    async def ingest_commands(
        self, commands: Sequence[IngestCommand]
    ) -> list[ResultObject | PermanentError]:
        """Apply each command in order, in one transaction; a refused one changes nothing.

        Raises PermanentError when the call as a whole was refused (nothing committed).
        """
        ...

    async def record_rejections(self, results: Sequence[ResultObject]) -> list[ResultObject]:
        """Store rejected results by event_id; return the stored (first) versions."""
        ...

    async def system_config(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Envelope:
    """One consumed record, as the application sees it (no Kafka types)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class Publisher(Protocol):
    """Kafka, outcome-shaped: results and dead-letter records, acknowledged when this returns.

    Raises TransientError when Kafka did not acknowledge them all (retry the publish).
    """

    async def publish(self, outcomes: Sequence[Outcome]) -> None: ...
