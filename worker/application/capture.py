"""CaptureArtifact: validate shape, hand the command to the database, shape the result.

Nothing here computes what the database computes: levels, subspaces, margins
and ids of accepted commands all come back from `ingest_batch`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from contracts import CaptureArtifactCommand, CaptureResult, ErrorInfo, ErrorKind, ResultStatus
from contracts.commands import parse_uuid
from worker.application.ports import CaptureStore, Envelope, ResultObject
from worker.core.logging import get_logger
from worker.domain.errors import PermanentError
from worker.domain.ids import rejection_event_id

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


def record_key_problem(key: bytes | None, user_id: UUID) -> str | None:
    """Why the record's key is not `user_id` (as a UUID: case and braces do not matter).

    Ordering per user rests on the key: another key, or none (a null key is partitioned
    without the user), would let this user's commands race on another partition.
    """
    if key is None:
        return "user_id: the record has no key; it must be the user_id"
    if key == str(user_id).encode():  # the usual spelling: no parsing
        return None
    try:
        same = parse_uuid(key.decode("ascii")) == user_id
    except (UnicodeDecodeError, ValueError):
        same = False
    return None if same else "user_id: does not match the record key"


def readable_ids(value: bytes | None) -> tuple[UUID | None, UUID | None]:
    """command_id and user_id of a rejected payload, when they can be read at all."""
    if value is None or len(value) > 16 * 1024 * 1024:
        return None, None
    try:
        data = json.loads(value)
        return UUID(str(data["command_id"])), UUID(str(data["user_id"]))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's stack (a few thousand "[" are
        # enough). Uncaught, it failed the whole batch on every redelivery, forever.
        return None, None


def rejected_result(
    envelope: Envelope, error: PermanentError, command_id: UUID, user_id: UUID
) -> ResultObject:
    result = CaptureResult(
        event_id=rejection_event_id(command_id, envelope.value or b""),
        command_id=command_id,
        user_id=user_id,
        status=ResultStatus.REJECTED,
        processed_at=datetime.now(UTC),
        error=ErrorInfo(kind=error.kind, message=error.message),
    )
    return result.model_dump(mode="json")


def _reject(envelope: Envelope, error: PermanentError) -> Outcome:
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
    """Handle one partition's records, in order. TransientError propagates: retry the whole call."""
    outcomes: list[Outcome | None] = [None] * len(envelopes)
    # Only the ids are kept, not the validated command: its embedding (a list of hundreds of
    # floats) then dies at once instead of living through the database call, where the
    # cyclic GC had to walk every one of them (collections of 100 ms and more).
    accepted: list[tuple[int, UUID, UUID]] = []
    for index, envelope in enumerate(envelopes):
        try:
            command = decode_command(envelope, limits)
        except PermanentError as error:
            outcomes[index] = _reject(envelope, error)
        else:
            accepted.append((index, command.user_id, command.command_id))

    size = max(1, limits.db_batch_size)
    for start in range(0, len(accepted), size):
        chunk = accepted[start : start + size]
        texts = [(envelopes[i].value or b"").decode() for i, _, _ in chunk]
        replies = await _ingest_isolated(store, texts)
        for (index, user_id, command_id), reply in zip(chunk, replies, strict=True):
            envelope = envelopes[index]
            if isinstance(reply, PermanentError):
                outcome = _reject(envelope, reply)
            else:
                outcome = Outcome(envelope, reply, None, user_id, command_id)
            outcomes[index] = outcome

    done = [o for o in outcomes if o is not None]
    return await _store_rejections(done, store)


async def _ingest_isolated(
    store: CaptureStore, texts: list[str]
) -> list[ResultObject | PermanentError]:
    try:
        return await store.ingest_batch(texts)
    except PermanentError as error:
        # The call as a whole was refused (e.g. one payload PostgreSQL cannot
        # even parse as jsonb). Nothing was committed: redo one by one so only
        # the culprit is refused.
        if len(texts) == 1:
            return [error]
        replies: list[ResultObject | PermanentError] = []
        for text in texts:
            replies.extend(await _ingest_isolated(store, [text]))
        return replies


async def _store_rejections(outcomes: list[Outcome], store: CaptureStore) -> list[Outcome]:
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
    """Canonical JSON of a result: the same result always gives the same bytes."""
    return json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
