"""The capture use case: records in, the database's verdicts out, results and dead letters
published.

For one partition's records, in order (`handle_capture_batch`): decode and validate each one
against the contract, turn the valid ones into typed commands, hand them to the database in
chunks (`CaptureStore.ingest_commands`), and shape an `Outcome` per record. Nothing here
computes what the database computes: levels, subspaces, margins and the ids of accepted
commands all come back from it.

For a fetched batch (`BatchProcessor`): the partitions concurrently, each in order, then one
publish of what succeeded. The order is the delivery guarantee: database transaction committed
-> results and dead letters acknowledged by Kafka -> (the caller) offsets committed; a crash
anywhere before the commit redelivers, and the database's ledger turns a redelivery into the
identical results. A partition whose records fail transiently (its user's rows locked past
`lock_timeout`, or the database down) comes back as a `Stall` saying where to resume and when;
the others go on. No Kafka types here: records arrive as `Envelope`s, results leave through the
`Publisher` port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from contracts import CaptureArtifactCommand, ErrorKind
from contracts.commands import MAX_NESTING_DEPTH, Embedding, pack_float32, parse_uuid
from worker.application.ports import CaptureStore, Envelope, IngestCommand, Publisher, ResultObject
from worker.application.rejection import readable_ids, rejected_result
from worker.application.retry import Backoff
from worker.core import metrics, tracing
from worker.core.logging import get_logger
from worker.domain.errors import CaptureError, PermanentError, TransientError

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one record: a result event to publish and/or a reason to dead-letter it."""

    envelope: Envelope
    result: ResultObject | None
    error: PermanentError | None
    user_id: UUID | None = None
    command_id: UUID | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    embedding_dim: int
    max_message_bytes: int
    db_batch_size: int


def _describe(exc: ValidationError) -> tuple[ErrorKind, str]:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        if any("recursion limit exceeded" in e["msg"] for e in errors):
            # JSON, but deeper than the contract allows (SPEC §3): a shape problem.
            return ErrorKind.INVALID, (
                f"(root): arrays and objects nest deeper than {MAX_NESTING_DEPTH} levels, "
                "the contract's limit (unknown fields included)"
            )
        return ErrorKind.UNDECODABLE, "not valid UTF-8 JSON: " + errors[0]["msg"]
    kind = ErrorKind.INVALID
    parts = []
    for err in errors:
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        if field == "schema_version" and err["type"] == "value_error":
            kind = ErrorKind.UNSUPPORTED_VERSION
        parts.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
    return kind, "; ".join(parts)


def decode_command(envelope: Envelope, limits: Limits) -> CaptureArtifactCommand:
    """The record's command, or PermanentError saying why it can never be one."""
    value = envelope.value
    if value is None:
        raise PermanentError(ErrorKind.UNDECODABLE, "record has no value")
    if len(value) > limits.max_message_bytes:
        raise PermanentError(
            ErrorKind.OVERSIZE,
            f"{len(value)} bytes exceeds the limit of {limits.max_message_bytes}",
        )
    try:
        command = CaptureArtifactCommand.model_validate_json(
            value, context={"embedding_dim": limits.embedding_dim}
        )
    except ValidationError as exc:
        kind, message = _describe(exc)
        raise PermanentError(kind, message) from exc
    key_problem = record_key_problem(envelope.key, command.user_id)
    if key_problem is not None:
        raise PermanentError(ErrorKind.INVALID, key_problem)
    return command


def ingest_command(command: CaptureArtifactCommand) -> IngestCommand:
    """The typed form the database takes: the contract's fields only, the embedding as float32.

    Raises PermanentError(CONSTRAINT) for a number the contract accepts but float32 cannot
    hold (|x| > 3.4e38): the database would refuse it as out of range (SQLSTATE 22003).
    """
    numbers = command.embedding
    if isinstance(numbers, Embedding):  # validated: packed while validating
        embedding = numbers.float32
    else:  # a command built without validation (model_construct)
        try:
            embedding = pack_float32(numbers)
        except OverflowError:
            raise PermanentError(
                ErrorKind.CONSTRAINT,
                "embedding: a number is out of range for type vector (float4)",
                sqlstate="22003",
            ) from None
    return IngestCommand(
        command_id=command.command_id,
        user_id=command.user_id,
        url=command.url,
        title=command.title,
        embedding=embedding,
        reading_depth=command.reading_depth,
        occurred_at=command.occurred_at,
    )


def record_key_problem(key: bytes | None, user_id: UUID) -> str | None:
    """Why the record's key is not `user_id` (as a UUID: case and braces do not matter).

    Ordering per user rests on the key: another key, or none (a null key is partitioned
    without the user), would let this user's commands race on another partition.
    """
    if key is None:
        return "user_id: the record has no key; it must be the user_id"
    try:
        same = parse_uuid(key.decode("ascii")) == user_id
    except (UnicodeDecodeError, ValueError):
        same = False
    return None if same else "user_id: does not match the record key"


def reject(envelope: Envelope, error: PermanentError) -> Outcome:
    command_id, user_id = readable_ids(envelope.value)
    result = (
        rejected_result(envelope, error, command_id, user_id)
        if command_id is not None and user_id is not None
        else None
    )
    log.warning(
        "command rejected",
        kind=error.kind.value,
        reason=error.message,
        command_id=str(command_id) if command_id else None,
        user_id=str(user_id) if user_id else None,
        topic=envelope.topic,
        partition=envelope.partition,
        offset=envelope.offset,
    )
    return Outcome(envelope, result, error, user_id, command_id)


async def handle_capture_batch(
    envelopes: Sequence[Envelope], *, store: CaptureStore, limits: Limits
) -> list[Outcome]:
    """Handle one partition's records, in order. TransientError propagates: retry the whole call.

    The records are validated one database chunk at a time, and the next chunk while the
    database works on the current one. Validating a whole fetched batch first (hundreds of
    records per partition) held every lane's first call back by the others' validation, and a
    lane's validation and its database calls never overlapped.
    """
    outcomes: list[Outcome | None] = [None] * len(envelopes)
    tracing.consumed(envelopes)
    size = max(1, limits.db_batch_size)
    position = 0

    def next_chunk() -> list[tuple[int, IngestCommand]]:
        """The next `size` valid commands (with their index); the invalid ones met on the way
        get their outcome. Only the typed form is kept, not the validated command: its
        embedding (hundreds of Python floats) then dies at once instead of living through the
        database call, where the cyclic GC had to walk every one of them."""
        nonlocal position
        chunk: list[tuple[int, IngestCommand]] = []
        while position < len(envelopes) and len(chunk) < size:
            index, envelope = position, envelopes[position]
            position += 1
            try:
                with tracing.validating(envelope):
                    command = ingest_command(decode_command(envelope, limits))
            except PermanentError as error:
                outcomes[index] = reject(envelope, error)
            else:
                chunk.append((index, command))
        return chunk

    chunk = next_chunk()
    while chunk:
        call = asyncio.ensure_future(_ingest_chunk(store, envelopes, chunk))
        try:
            await asyncio.sleep(0)  # the call is sent before the next chunk is validated
            following = next_chunk()
        except BaseException:
            # A bug while validating, or the lane cancelled: the call is not left behind.
            with contextlib.suppress(BaseException):
                await call
            raise
        replies = await call
        for (index, command), reply in zip(chunk, replies, strict=True):
            envelope = envelopes[index]
            if isinstance(reply, PermanentError):
                outcomes[index] = reject(envelope, reply)
            else:
                outcomes[index] = Outcome(
                    envelope, reply, None, command.user_id, command.command_id
                )
        chunk = following

    done = [o for o in outcomes if o is not None]
    return await store_rejections(done, store)


async def _ingest_chunk(
    store: CaptureStore, envelopes: Sequence[Envelope], chunk: list[tuple[int, IngestCommand]]
) -> list[ResultObject | PermanentError]:
    with tracing.db_call(envelopes, [(i, c.user_id, c.command_id) for i, c in chunk]):
        return await _ingest_isolated(store, [c for _, c in chunk])


async def _ingest_isolated(
    store: CaptureStore, commands: list[IngestCommand]
) -> list[ResultObject | PermanentError]:
    try:
        return await store.ingest_commands(commands)
    except PermanentError as error:
        # The call as a whole was refused (e.g. a text with U+0000, which PostgreSQL cannot
        # even bind). Nothing was committed: redo one by one so only the culprit is refused.
        if len(commands) == 1:
            return [error]
        replies: list[ResultObject | PermanentError] = []
        for command in commands:
            replies.extend(await _ingest_isolated(store, [command]))
        return replies


async def store_rejections(outcomes: list[Outcome], store: CaptureStore) -> list[Outcome]:
    # The database keeps the first version of each rejection, so a redelivered
    # poison message yields the identical result event (same processed_at).
    pending = [i for i, o in enumerate(outcomes) if o.error is not None and o.result is not None]
    if not pending:
        return outcomes
    stored = await store.record_rejections([outcomes[i].result or {} for i in pending])
    merged = list(outcomes)
    for i, result in zip(pending, stored, strict=True):
        o = merged[i]
        merged[i] = Outcome(o.envelope, result, o.error, o.user_id, o.command_id)
    return merged


def result_bytes(result: dict[str, Any]) -> bytes:
    """Canonical JSON of a result: the same result always gives the same bytes.

    Compact, keys sorted, UTF-8 as is. orjson: json.dumps was a twentieth of the worker's CPU.
    """
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS)


# -- a fetched batch, partition by partition ---------------------------------------------------

PartitionKey = tuple[str, int]


def by_partition(records: Sequence[Envelope]) -> dict[PartitionKey, list[Envelope]]:
    """Records grouped by (topic, partition), each group in the order given."""
    groups: dict[PartitionKey, list[Envelope]] = {}
    for r in records:
        groups.setdefault((r.topic, r.partition), []).append(r)
    return groups


class RetriesExhausted(CaptureError):
    """CAPTURE_RETRY_MAX_ATTEMPTS reached: the worker stops rather than skip a message."""


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition whose records of this batch failed transiently: where to resume, and when."""

    offset: int
    delay_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Processed:
    """Outcomes of the partitions that succeeded, and the partitions to retry. `process`
    returns them published; `handle` leaves the publishing to its caller."""

    outcomes: list[Outcome]
    stalled: Mapping[PartitionKey, Stall] = field(default_factory=dict)


@dataclass
class BatchProcessor:
    store: CaptureStore
    publisher: Publisher
    limits: Callable[[], Awaitable[Limits]]
    backoff: Backoff
    on_transient: Callable[[str], None] = lambda _: None
    on_success: Callable[[], None] = lambda: None
    _attempts: dict[PartitionKey, int] = field(default_factory=dict)

    async def process(self, records: Sequence[Envelope]) -> Processed:
        """Handle each partition, then publish what succeeded; nothing is ever skipped."""
        processed = await self.handle(records)
        await self.publish(processed.outcomes, records)
        return processed

    async def handle(self, records: Sequence[Envelope]) -> Processed:
        """The database's part: every partition's outcomes, not published yet.

        A partition whose handling failed transiently comes back in `stalled` (the caller
        rewinds and pauses it, `PartitionHold`), whatever the others did: a database that is
        down stalls them all, one user's locked rows only their own partition.
        """
        partitions = by_partition(records)
        limits = await self.limits()
        outcomes, failures = await _per_partition(partitions, self.store, limits)
        stalled = self._stalled(failures, partitions)
        for key in partitions.keys() - stalled.keys():
            self._attempts.pop(key, None)
        return Processed(outcomes, stalled)

    async def publish(self, outcomes: Sequence[Outcome], records: Sequence[Envelope]) -> None:
        """Publish `outcomes` (of `records`), retried with backoff while Kafka fails.

        Only the publishing is repeated: the database's part is done, and its results would
        come back the same from the ledger. RetriesExhausted after the last attempt.
        """
        attempt = 0
        while True:
            try:
                await self.publisher.publish(outcomes)
            except TransientError as exc:
                attempt += 1
                metrics.RETRIES.labels(stage="publish").inc()
                self.on_transient("publish")
                if self.backoff.gives_up(attempt):
                    raise RetriesExhausted(exc.reason) from exc
                delay = self.backoff.delay(attempt)
                first = records[0]
                log.warning(
                    "transient failure, retrying",
                    reason=exc.reason,
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                    topic=first.topic,
                    partition=first.partition,
                    offset=first.offset,
                    messages=len(records),
                )
                await asyncio.sleep(delay)
            else:
                if outcomes:
                    self.on_success()
                return

    async def dead_letter(self, envelope: Envelope, error: PermanentError) -> None:
        """Dead-letter one record the worker cannot handle (its rejected result too, when its
        ids can be read), without handing it to the database's ingest."""
        outcomes = await store_rejections([reject(envelope, error)], self.store)
        await self.publisher.publish(outcomes)

    def _stalled(
        self,
        failures: Mapping[PartitionKey, TransientError],
        partitions: Mapping[PartitionKey, list[Envelope]],
    ) -> dict[PartitionKey, Stall]:
        """Count an attempt per failed partition (attempts survive across batches, so the
        backoff grows until that partition succeeds) and give each its delay."""
        stalled: dict[PartitionKey, Stall] = {}
        for key, exc in failures.items():
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            metrics.RETRIES.labels(stage="database").inc()
            if not exc.contention:  # a lock wait says nothing about the database being down
                self.on_transient("database")
            if self.backoff.gives_up(attempt):
                raise RetriesExhausted(exc.reason) from exc
            delay = self.backoff.delay(attempt)
            first = partitions[key][0]
            log.warning(
                "transient failure, retrying",
                reason=exc.reason,
                attempt=attempt,
                retry_in_s=round(delay, 2),
                topic=first.topic,
                partition=first.partition,
                offset=first.offset,
                messages=len(partitions[key]),
            )
            stalled[key] = Stall(first.offset, delay, exc.reason)
        return stalled


async def _per_partition(
    groups: Mapping[PartitionKey, list[Envelope]], store: CaptureStore, limits: Limits
) -> tuple[list[Outcome], dict[PartitionKey, TransientError]]:
    """Partitions concurrently, each in order; a transient failure of one spares the others."""
    keys = list(groups)
    replies = await asyncio.gather(
        *(handle_capture_batch(groups[k], store=store, limits=limits) for k in keys),
        return_exceptions=True,
    )
    outcomes: list[Outcome] = []
    failures: dict[PartitionKey, TransientError] = {}
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, TransientError):
            failures[key] = reply
        elif isinstance(reply, BaseException):
            raise reply  # a bug (or a cancellation): the caller rewinds the whole batch
        else:
            outcomes += reply
    return outcomes, failures
