"""The record key is the user_id as a UUID, and the shape rules the database shares (SPEC §3)."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest

from contracts.results import ErrorKind
from worker.application.capture import Limits, decode_command, record_key_problem
from worker.application.ports import Envelope
from worker.domain.errors import PermanentError

USER = "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10"
LIMITS = Limits(embedding_dim=4, max_message_bytes=1 << 20, db_batch_size=100)


def raw(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "command_id": "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
        "user_id": USER,
        "url": "https://example.com/a",
        "embedding": [0.1, 0.2, 0.3, 0.4],
        "reading_depth": 0.5,
        "occurred_at": "2026-11-26T09:30:00+00:00",
    }
    body.update(overrides)
    return json.dumps(body).encode()


def decode(value: bytes, key: bytes | None = USER.encode()) -> Any:
    return decode_command(Envelope("capture.commands", 0, 0, key, value, ()), LIMITS)


@pytest.mark.parametrize(
    "key",
    [
        USER,
        USER.upper(),
        "{" + USER + "}",
        USER.replace("-", ""),
        "0d7c-3f2a-8e55-4c55-b2a4-1f4a-7c0e-9b10",
    ],
)
def test_any_spelling_of_the_user_id_is_the_same_key(key: str) -> None:
    assert record_key_problem(key.encode(), UUID(USER)) is None
    assert str(decode(raw(), key.encode()).user_id) == USER


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (None, "the record has no key"),
        (b"someone-else", "does not match the record key"),
        (b"1f4a7c0e-9b10-4c55-b2a4-0d7c3f2a8e55", "does not match the record key"),
        (b"\xff\xfe", "does not match the record key"),
        (("urn:uuid:" + USER).encode(), "does not match the record key"),
    ],
)
def test_another_key_or_none_is_invalid(key: bytes | None, problem: str) -> None:
    with pytest.raises(PermanentError) as caught:
        decode(raw(), key)
    assert caught.value.kind is ErrorKind.INVALID and problem in caught.value.message


@pytest.mark.parametrize(
    ("overrides", "kind", "says"),
    [
        ({"url": "https://example.com/a\x01b"}, ErrorKind.INVALID, "control characters"),
        ({"url": "https://example.com/a\u2028b"}, ErrorKind.INVALID, "whitespace"),
        ({"url": "https://example.com/a\x85"}, ErrorKind.INVALID, "control characters"),
        ({"embedding": [3.5e38, 0.1, 0.1, 0.1]}, ErrorKind.INVALID, "float32"),
        ({"embedding": [-1e300, 0.1, 0.1, 0.1]}, ErrorKind.INVALID, "float32"),
        ({"embedding": [1e-50, 0.0, -1e-46, 0.0]}, ErrorKind.INVALID, "all zero"),
        ({"schema_version": None}, ErrorKind.UNSUPPORTED_VERSION, "null"),
        ({"schema_version": 2.0}, ErrorKind.UNSUPPORTED_VERSION, "unsupported"),
        (
            {"command_id": "urn:uuid:5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11"},
            ErrorKind.INVALID,
            "UUID",
        ),
    ],
)
def test_what_the_database_refuses_is_invalid_here(
    overrides: dict[str, Any], kind: ErrorKind, says: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        decode(raw(**overrides))
    assert caught.value.kind is kind and says in caught.value.message


@pytest.mark.parametrize(
    "overrides",
    [
        {"schema_version": 1.0},
        {"schema_version": 1},
        {"embedding": [3.4028234e38, -3.4028234e38, 1e-44, 0.0]},
        {"command_id": "5B0F6C9E-2F6F4D43-9D0E6F1B-8C1F7A11"},
        {"url": "https://example.com/caf\u00e9?q=%20"},
    ],
)
def test_what_the_database_accepts_is_valid_here(overrides: dict[str, Any]) -> None:
    assert decode(raw(**overrides)).schema_version == 1
