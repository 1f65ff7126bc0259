"""What a rejected record's result says: its ids, when they can be read at all, and the
`rejected` result itself (its event id deterministic, so a redelivered poison message yields the
identical result)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from uuid import UUID

from contracts import CaptureResult, ErrorInfo, ResultStatus
from worker.application.ports import Envelope, ResultObject
from worker.domain.errors import PermanentError
from worker.domain.ids import rejection_event_id

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
