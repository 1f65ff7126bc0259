"""Command-shaped access to the capture functions: one method per SQL function, no generic save.

Every method is one statement in its own implicit transaction (but `warm_up`, whose calls are
rolled back), and every driver error comes out as PermanentError (the command is refused) or
TransientError (retry), see db_errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from contracts.commands import pack_float32
from worker.application.ports import IngestCommand
from worker.core import metrics
from worker.core.logging import get_logger
from worker.domain.errors import PermanentError
from worker.infrastructure.db import vector_binary
from worker.infrastructure.db_errors import batch_element, translate_db_errors

log = get_logger(__name__)

_INGEST_TYPED = "SELECT capture.ingest_typed($1, $2, $3, $4, $5, $6, $7, $8)"


class ArtifactRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ingest_with_signal(self, command_json: str) -> dict[str, Any]:
        """Ingest one command given as its raw JSON text; returns the CaptureResult object."""
        with translate_db_errors("ingest_with_signal"):
            result: dict[str, Any] = await self._pool.fetchval(
                "SELECT capture.ingest_with_signal($1::jsonb)", command_json
            )
        return result

    async def ingest_batch(
        self, commands_json: Sequence[str]
    ) -> list[dict[str, Any] | PermanentError]:
        """Ingest several commands in one call and one transaction, results in the same order.

        A command the database refused comes back as a PermanentError in its slot (the others
        committed); an error that concerns the whole call (connection, deadlock, ...) raises
        TransientError and nothing was committed.
        """
        if not commands_json:
            return []
        # The elements are JSON texts already: join them rather than parse and re-encode.
        payload = "[" + ",".join(commands_json) + "]"
        with (
            translate_db_errors("ingest_batch"),
            metrics.DB_CALL_SECONDS.labels(function="ingest_batch").time(),
        ):
            elements: list[dict[str, Any]] = await self._pool.fetchval(
                "SELECT capture.ingest_batch($1::jsonb)", payload
            )
        return [batch_element(e) for e in elements]

    async def ingest_commands(
        self, commands: Sequence[IngestCommand]
    ) -> list[dict[str, Any] | PermanentError]:
        """The typed, binary form of ingest_batch: same results, no JSON parsed in PostgreSQL.

        The batch is written without a subtransaction per command; when a write fails
        unexpectedly (rare: a concurrent claim of the same command_id by another user) the
        call is repeated with each command isolated. PermanentError only when even that was
        refused as a whole (a value PostgreSQL cannot bind, e.g. U+0000 in a text).
        """
        if not commands:
            return []
        arguments = typed_arguments(commands)
        try:
            with (
                translate_db_errors("ingest_typed"),
                metrics.DB_CALL_SECONDS.labels(function="ingest_typed").time(),
            ):
                elements: list[dict[str, Any]] = await self._pool.fetchval(
                    _INGEST_TYPED, *arguments, False
                )
        except PermanentError as error:
            log.info(
                "typed batch refused as a whole, repeating it with each command isolated",
                reason=error.message,
                sqlstate=error.sqlstate,
                commands=len(commands),
            )
            with (
                translate_db_errors("ingest_typed"),
                metrics.DB_CALL_SECONDS.labels(function="ingest_typed").time(),
            ):
                elements = await self._pool.fetchval(_INGEST_TYPED, *arguments, True)
        return [batch_element(e) for e in elements]

    async def warm_up(self, connections: int, *, embedding_dim: int) -> None:
        """Open `connections` connections and run the typed ingest on each, then roll it back.

        A connection's first ingest compiles the functions and plans each of their statements
        for the session (~100 ms of server CPU); six lanes' first calls after a start did it
        together, and the first results came a few hundred milliseconds late. Done here before
        the worker reports ready, on a user of its own (a new UUID) in a transaction that is
        rolled back: nothing is stored. The calls take the paths a batch takes: an artifact
        and its subspace created, another joining that subspace, a new signal on a stored
        artifact, a repeat answered by the ledger.
        """
        if connections <= 0:
            return
        started = time.perf_counter()
        held: list[PoolConnectionProxy] = []
        try:
            with translate_db_errors("warm_up"):
                # All held at once: a connection released early would be warmed again.
                for _ in range(connections):
                    held.append(await self._pool.acquire())
                # Every call ends before its connection is released, whatever the others do.
                outcomes = await asyncio.gather(
                    *(_rolled_back_ingest(conn, embedding_dim) for conn in held),
                    return_exceptions=True,
                )
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome
        finally:
            for conn in held:
                await self._pool.release(conn)
        log.info(
            "database connections warmed",
            connections=connections,
            ms=round((time.perf_counter() - started) * 1000),
        )

    async def record_rejections(self, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store rejected results by event_id (first one wins); return the stored versions."""
        if not results:
            return []
        with translate_db_errors("record_rejections"):
            stored: list[dict[str, Any]] = await self._pool.fetchval(
                "SELECT capture.record_rejections($1::jsonb)", list(results)
            )
        return stored

    async def state_digest(self) -> str:
        with translate_db_errors("capture_state_digest"):
            digest: str = await self._pool.fetchval("SELECT capture.capture_state_digest()")
        return digest

    async def artifact_state(self, user_id: UUID | str, url: str) -> dict[str, Any] | None:
        """The artifact the user captured at `url` (any spelling of it), or None."""
        with translate_db_errors("capture_artifact_state"):
            state: dict[str, Any] | None = await self._pool.fetchval(
                "SELECT capture.capture_artifact_state($1::uuid, $2)", str(user_id), url
            )
        return state

    async def user_artifacts(self, user_id: UUID | str) -> list[dict[str, Any]]:
        with translate_db_errors("user_artifacts"):
            artifacts: list[dict[str, Any]] = await self._pool.fetchval(
                "SELECT capture.user_artifacts($1::uuid)", str(user_id)
            )
        return artifacts

    async def system_config(self) -> dict[str, Any]:
        """The whole system_config table as one object (for the fail-soft config cache)."""
        with translate_db_errors("get_config"):
            config: dict[str, Any] = await self._pool.fetchval("SELECT capture.get_config()")
        return config

    async def reset_state(self) -> None:
        """Admin only: empty business state and ledger (the worker's role cannot do this)."""
        with translate_db_errors("reset_state"):
            await self._pool.execute("SELECT capture.reset_state()")

    async def drop_embedding_index(self) -> None:
        """Admin only: drop the HNSW index before a bulk replay (recreate it afterwards)."""
        with translate_db_errors("drop_embedding_index"):
            await self._pool.execute("SELECT capture.drop_embedding_index()")

    async def create_embedding_index(self, *, build_timeout_s: float = 3600.0) -> None:
        """Admin only: (re)build the HNSW index; a no-op when it exists.

        Building over a large table takes minutes, hence its own timeout.
        """
        with translate_db_errors("create_embedding_index"):
            await self._pool.execute(
                "SELECT capture.create_embedding_index()", timeout=build_timeout_s
            )


class _RollBack(Exception):
    """Ends the warm-up's transaction: asyncpg rolls back a transaction left by an exception."""


async def _rolled_back_ingest(conn: PoolConnectionProxy, embedding_dim: int) -> None:
    user = uuid4()
    first, second, third = uuid4(), uuid4(), uuid4()
    embedding = pack_float32([1.0] * embedding_dim)
    now = datetime.now(UTC)

    def command(command_id: UUID, url: str) -> IngestCommand:
        return IngestCommand(command_id, user, url, None, embedding, 0.5, now)

    one = command(first, "https://warm-up.invalid/1")
    calls = [
        [one],
        [command(second, "https://warm-up.invalid/2"), command(third, one.url), one],
    ]
    try:
        async with conn.transaction():
            for commands in calls:
                await conn.fetchval(_INGEST_TYPED, *typed_arguments(commands), False)
            raise _RollBack
    except _RollBack:
        pass


def typed_arguments(commands: Sequence[IngestCommand]) -> tuple[list[Any], ...]:
    """The first seven arguments of capture.ingest_typed: one array per field."""
    return (
        [c.command_id for c in commands],
        [c.user_id for c in commands],
        [c.url for c in commands],
        [c.title for c in commands],
        [vector_binary(c.embedding) for c in commands],
        [c.reading_depth for c in commands],
        [c.occurred_at for c in commands],
    )
