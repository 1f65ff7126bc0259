"""CaptureArtifact: validate shape, hand the command to the database, shape the result.

Nothing here computes what the database computes: levels, subspaces, margins
and ids of accepted commands all come back from the store (`capture.ingest_typed`).
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from contracts import CaptureArtifactCommand, CaptureResult, ErrorInfo, ErrorKind, ResultStatus
from contracts.commands import MAX_NESTING_DEPTH
from worker.application.ports import CaptureStore, Envelope, IngestCommand, ResultObject
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
    if envelope.key is not None and envelope.key != str(command.user_id).encode():
        # Ordering per user rests on the key; a mismatch would let this user's
        # commands race on another partition.
        raise PermanentError(ErrorKind.INVALID, "user_id: does not match the record key")
    return command


@functools.lru_cache(maxsize=8)
def _float32_be(dim: int) -> struct.Struct:
    return struct.Struct(f">{dim}f")


def ingest_command(command: CaptureArtifactCommand) -> IngestCommand:
    """The typed form the database takes: the contract's fields only, the embedding as float32.

    Raises PermanentError(CONSTRAINT) for a number the contract accepts but float32 cannot
    hold (|x| > 3.4e38): the database would refuse it as out of range (SQLSTATE 22003).
    """
    # struct packs 4x faster than array("f", ...) here, big-endian as the database wants it,
    # and refuses a number that would round to infinity.
    try:
        embedding = _float32_be(len(command.embedding)).pack(*command.embedding)
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


# Tokens of a JSON text that matter for its nesting: strings (skipped whole) and brackets.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[][{}]')
_COLON_STRING = re.compile(rb'\s*:\s*("(?:[^"\\]|\\.)*")')


def _top_level_strings(value: bytes, keys: frozenset[bytes]) -> dict[bytes, str]:
    """The string members named `keys` of a top-level JSON object, at any nesting depth.

    A flat scan instead of a parser: a document nested deeper than any parser's stack still
    yields its ids. Only used on rejected payloads the parser could not take.
    """
    found: dict[bytes, str] = {}
    depth = 0
    for token in _JSON_TOKENS.finditer(value):
        text = token.group()
        if text[0] == 0x22:  # a string
            if depth == 1 and text[1:-1] in keys:
                member = _COLON_STRING.match(value, token.end())
                if member is not None:
                    found.setdefault(text[1:-1], json.loads(member.group(1)))
        elif text in (b"[", b"{"):
            depth += 1
        else:
            depth -= 1
    return found


_ID_KEYS = frozenset({b"command_id", b"user_id"})


def readable_ids(value: bytes | None) -> tuple[UUID | None, UUID | None]:
    """command_id and user_id of a rejected payload, when they can be read at all."""
    if value is None or len(value) > 16 * 1024 * 1024:
        return None, None
    try:
        try:
            data = json.loads(value)
        except RecursionError:
            # Nested deeper than json's stack: read the two top-level strings by a flat scan.
            data = {k.decode(): v for k, v in _top_level_strings(value, _ID_KEYS).items()}
        return UUID(str(data["command_id"])), UUID(str(data["user_id"]))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
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
    # Only the typed form is kept, not the validated command: its embedding (a list of
    # hundreds of floats) then dies at once instead of living through the database call, where
    # the cyclic GC had to walk every one of them (collections of 100 ms and more).
    accepted: list[tuple[int, IngestCommand]] = []
    for index, envelope in enumerate(envelopes):
        try:
            command = ingest_command(decode_command(envelope, limits))
        except PermanentError as error:
            outcomes[index] = _reject(envelope, error)
        else:
            accepted.append((index, command))

    size = max(1, limits.db_batch_size)
    for start in range(0, len(accepted), size):
        chunk = accepted[start : start + size]
        replies = await _ingest_isolated(store, [c for _, c in chunk])
        for (index, command), reply in zip(chunk, replies, strict=True):
            envelope = envelopes[index]
            if isinstance(reply, PermanentError):
                outcome = _reject(envelope, reply)
            else:
                outcome = Outcome(envelope, reply, None, command.user_id, command.command_id)
            outcomes[index] = outcome

    done = [o for o in outcomes if o is not None]
    return await _store_rejections(done, store)


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
