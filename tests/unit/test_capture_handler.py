"""The application handler against a tiny fake store: classification, order, chunking."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from contracts import ErrorKind
from contracts.commands import MAX_NESTING_DEPTH
from tests.support.fakes import DIM, FakeStore, command, envelope
from worker.application import capture
from worker.application.capture import (
    Limits,
    decode_command,
    handle_capture_batch,
    result_bytes,
)
from worker.application.ports import Envelope, IngestCommand, ResultObject
from worker.application.rejection import readable_ids
from worker.domain.errors import PermanentError
from worker.domain.ids import rejection_event_id

LIMITS = Limits(embedding_dim=DIM, max_message_bytes=2048, db_batch_size=2)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"\xff\xfe not json", ErrorKind.UNDECODABLE),
        (b"[1, 2]", ErrorKind.INVALID),
        (json.dumps(command(embedding=[1.0, 2.0])).encode(), ErrorKind.INVALID),
        (json.dumps(command(reading_depth=1.7)).encode(), ErrorKind.INVALID),
        (json.dumps(command(schema_version=2)).encode(), ErrorKind.UNSUPPORTED_VERSION),
        (json.dumps(command(url="ftp://x/y")).encode(), ErrorKind.INVALID),
        (json.dumps(command(occurred_at="2026-11-26T09:30:00")).encode(), ErrorKind.INVALID),
        (json.dumps(command(embedding=[0, 0, 0, 0])).encode(), ErrorKind.INVALID),
        (b'{"command_id": "x"}' + b" " * 4096, ErrorKind.OVERSIZE),
        (None, ErrorKind.UNDECODABLE),
    ],
)
def test_decode_classifies_each_poison_kind(value: bytes | None, kind: ErrorKind) -> None:
    with pytest.raises(PermanentError) as info:
        decode_command(envelope(value), LIMITS)
    assert info.value.kind is kind


def test_decode_names_the_field() -> None:
    with pytest.raises(PermanentError) as info:
        decode_command(envelope(json.dumps(command(reading_depth=-0.1)).encode()), LIMITS)
    assert info.value.message.startswith("reading_depth:")


def test_key_must_match_user_id() -> None:
    value = json.dumps(command()).encode()
    with pytest.raises(PermanentError, match="record key"):
        decode_command(envelope(value, key=b"someone-else"), LIMITS)


async def test_batch_keeps_order_chunks_and_isolates_refusals() -> None:
    store = FakeStore()
    good = [command() for _ in range(3)]
    refused = command(url="https://example.com/refuse")
    values = [
        json.dumps(good[0]).encode(),
        b"not json",
        json.dumps(good[1]).encode(),
        json.dumps(refused).encode(),
        json.dumps(good[2]).encode(),
    ]
    outcomes = await handle_capture_batch(
        [envelope(v, offset=i) for i, v in enumerate(values)], store=store, limits=LIMITS
    )
    assert [o.envelope.offset for o in outcomes] == [0, 1, 2, 3, 4]
    # Valid commands went to the store in order, two per call (db_batch_size=2).
    assert [len(c) for c in store.calls] == [2, 2]
    assert [str(t.command_id) for c in store.calls for t in c] == [
        good[0]["command_id"],
        good[1]["command_id"],
        refused["command_id"],
        good[2]["command_id"],
    ]
    assert outcomes[1].error is not None and outcomes[1].error.kind is ErrorKind.UNDECODABLE
    assert outcomes[1].result is None  # no readable ids: DLQ only
    assert outcomes[3].error is not None and outcomes[3].error.kind is ErrorKind.CONSTRAINT
    rejected = outcomes[3].result
    assert rejected is not None and rejected["status"] == "rejected"
    assert rejected["error"] == {"kind": "constraint", "message": "url: refused"}
    assert rejected["event_id"] == str(
        rejection_event_id(uuid.UUID(refused["command_id"]), values[3])
    )
    assert [o.error for o in outcomes if o.envelope.offset in (0, 2, 4)] == [None] * 3


class _SlowFirstCall(FakeStore):
    """Notes, when its first call returns, how many records had been validated by then."""

    def __init__(self, decoded: list[int]) -> None:
        super().__init__()
        self.decoded = decoded
        self.validated_during_first_call: int | None = None

    async def ingest_commands(
        self, commands: Sequence[IngestCommand]
    ) -> list[ResultObject | PermanentError]:
        replies = await super().ingest_commands(commands)
        if self.validated_during_first_call is None:
            for _ in range(5):  # the database at work: the event loop runs meanwhile
                await asyncio.sleep(0)
            self.validated_during_first_call = len(self.decoded)
        return replies


async def test_next_chunk_is_validated_while_the_database_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[int] = []

    def counting(envelope: Envelope, limits: Limits) -> Any:
        decoded.append(envelope.offset)
        return decode_command(envelope, limits)

    monkeypatch.setattr(capture, "decode_command", counting)
    store = _SlowFirstCall(decoded)
    values = [json.dumps(command()).encode() for _ in range(5)]
    outcomes = await handle_capture_batch(
        [envelope(v, offset=i) for i, v in enumerate(values)], store=store, limits=LIMITS
    )
    # Chunks of two: the first call was sent after two records were validated, and the
    # next two were validated before it returned; never more than one chunk ahead.
    assert store.validated_during_first_call == 4
    assert [len(c) for c in store.calls] == [2, 2, 1]
    assert [o.envelope.offset for o in outcomes] == [0, 1, 2, 3, 4]
    assert all(o.error is None for o in outcomes)


async def test_redelivered_rejection_is_the_stored_one() -> None:
    store = FakeStore()
    value = json.dumps(command(reading_depth=9)).encode()
    first = await handle_capture_batch([envelope(value)], store=store, limits=LIMITS)
    second = await handle_capture_batch([envelope(value)], store=store, limits=LIMITS)
    assert first[0].result is not None and second[0].result is not None
    assert result_bytes(first[0].result) == result_bytes(second[0].result)


def test_result_bytes_are_canonical() -> None:
    assert result_bytes({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


async def test_a_batch_refused_as_a_whole_is_retried_one_by_one() -> None:
    class WholeCallRefused(FakeStore):
        async def ingest_commands(self, commands: Sequence[IngestCommand]) -> list[Any]:
            if any("\x00" in (c.title or "") for c in commands):
                self.calls.append(list(commands))
                raise PermanentError(
                    ErrorKind.CONSTRAINT, "invalid byte sequence for encoding", sqlstate="22021"
                )
            return await super().ingest_commands(commands)

    store = WholeCallRefused()
    values = [
        json.dumps(command()).encode(),
        json.dumps(command(title="nul \u0000")).encode(),
        json.dumps(command()).encode(),
    ]
    limits = Limits(embedding_dim=DIM, max_message_bytes=2048, db_batch_size=10)
    outcomes = await handle_capture_batch(
        [envelope(v, offset=i) for i, v in enumerate(values)], store=store, limits=limits
    )
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert outcomes[1].error is not None and outcomes[1].error.sqlstate == "22021"


async def test_unknown_fields_never_reach_the_store() -> None:
    """SPEC §3: unknown fields are ignored, even those PostgreSQL could not hold (U+0000)."""
    store = FakeStore()
    value = json.dumps(command(extension="nul \u0000 inside", nested={"a": [1, {"b": None}]}))
    outcomes = await handle_capture_batch([envelope(value.encode())], store=store, limits=LIMITS)
    assert outcomes[0].error is None
    (sent,) = store.calls[0]
    assert sent.url == "https://example.com/a" and struct.unpack(
        ">4f", sent.embedding
    ) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert not hasattr(sent, "extension")


async def test_unknown_fields_nested_within_the_limit_are_ingested() -> None:
    inside = b"[" * MAX_NESTING_DEPTH + b"]" * MAX_NESTING_DEPTH
    value = json.dumps(command(x=0)).encode().replace(b'"x": 0', b'"x": ' + inside)
    outcomes = await handle_capture_batch(
        [envelope(value)],
        store=FakeStore(),
        limits=Limits(embedding_dim=DIM, max_message_bytes=64 * 1024, db_batch_size=2),
    )
    assert outcomes[0].error is None


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 5000])
async def test_json_nested_beyond_the_limit_is_invalid_and_keeps_its_ids(depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    body = command(x=0)
    with_ids = json.dumps(body).encode().replace(b'"x": 0', b'"x": ' + deep)
    assert b'"x": [[[' in with_ids
    outcomes = await handle_capture_batch(
        [envelope(deep, 0, key=b"k"), envelope(with_ids, 1, key=b"k")],
        store=FakeStore(),
        limits=Limits(embedding_dim=DIM, max_message_bytes=64 * 1024, db_batch_size=2),
    )
    assert [o.error.kind if o.error else None for o in outcomes] == [ErrorKind.INVALID] * 2
    assert outcomes[1].error is not None and str(MAX_NESTING_DEPTH) in outcomes[1].error.message
    assert outcomes[0].result is None  # a bare array: no ids to put in a result
    rejected = outcomes[1].result
    assert rejected is not None and rejected["status"] == "rejected"
    assert (rejected["command_id"], rejected["user_id"]) == (body["command_id"], body["user_id"])


def test_ids_are_read_from_the_top_level_only() -> None:
    top = command()
    decoy = {"command_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}
    deep = b"[" * 3000 + json.dumps(decoy).encode() + b"]" * 3000
    value = (
        b'{"x": '
        + deep
        + b', "command_id": "'
        + top["command_id"].encode()
        + b'", "y": "\\"user_id\\": \\"nope\\"", "user_id": "'
        + top["user_id"].encode()
        + b'"}'
    )
    assert readable_ids(value) == (uuid.UUID(top["command_id"]), uuid.UUID(top["user_id"]))


async def test_float32_overflow_is_refused_before_the_database() -> None:
    store = FakeStore()
    value = json.dumps(command(embedding=[1e39, 0.2, 0.3, 0.4])).encode()
    outcomes = await handle_capture_batch([envelope(value)], store=store, limits=LIMITS)
    assert store.calls == []
    error = outcomes[0].error
    # The contract refuses what float32 cannot hold (Python and SQL agree on every shape rule).
    assert error is not None and error.kind is ErrorKind.INVALID
    assert "float32" in error.message
