"""Traces through the worker's real path (handler, PostgreSQL, Kafka producer), in process,
into an in-memory span exporter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import headers as H
from tests.fixtures.services import MakeTopic
from tests.support.kafka import produce, read_all
from tests.support.streams import make_stream
from worker.application.capture import BatchProcessor, Limits
from worker.application.ports import Envelope
from worker.application.retry import Backoff
from worker.core import tracing
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository
from worker.infrastructure.result_publisher import OutcomePublisher

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()


@pytest.fixture
def spans() -> AsyncIterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter  # type: ignore[misc]
    finally:
        tracing.use_provider(None)


def trace_id_of(headers: tuple[tuple[str, bytes], ...]) -> str:
    (parent,) = [v for k, v in headers if k == H.TRACEPARENT]
    return parent.decode().split("-")[1]


async def test_a_command_trace_runs_through_database_and_onto_its_result(
    spans: InMemorySpanExporter,
    kafka_bootstrap: str,
    kafka_client_options: dict[str, object],
    make_topic: MakeTopic,
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    commands, results, dlq = [await make_topic(1, suffix=s) for s in ("cmd", "res", "dlq")]
    stream = make_stream(3, users=1, seed=111, poison=True)
    traced, untraced = stream.valid[0], stream.valid[1]
    key = json.loads(traced)["user_id"].encode()
    _, undecodable = stream.poison[0]
    await produce(
        kafka_bootstrap,
        commands,
        [
            (key, traced.encode(), [(H.TRACEPARENT, PARENT)]),
            (key, untraced.encode(), []),
            (key, undecodable, [(H.TRACEPARENT, PARENT)]),
        ],
    )
    records = await read_all(kafka_bootstrap, commands)
    envelopes = [
        Envelope(r.topic, r.partition, r.offset, r.key, r.value, r.headers) for r in records
    ]

    pool = await create_pool(await fresh_database(), max_size=2)
    producer = AIOKafkaProducer(**kafka_client_options, acks="all", enable_idempotence=True)
    await producer.start()
    try:

        async def limits() -> Limits:
            return Limits(embedding_dim=384, max_message_bytes=1 << 20, db_batch_size=100)

        processor = BatchProcessor(
            store=ArtifactRepository(pool),
            publisher=OutcomePublisher(producer, results_topic=results, dlq_topic=dlq),
            limits=limits,
            backoff=Backoff(initial_s=0.1, max_s=1.0),
        )
        processed = await processor.process(envelopes)
        assert not processed.stalled
    finally:
        await producer.stop()
        await pool.close()

    # The result carries the command's trace; a command without one started its own.
    by_command = {
        json.loads(r.value or b"")["command_id"]: r
        for r in await read_all(kafka_bootstrap, results)
    }
    traced_id, untraced_id = (json.loads(line)["command_id"] for line in (traced, untraced))
    assert trace_id_of(by_command[traced_id].headers) == TRACE_ID
    own_trace = trace_id_of(by_command[untraced_id].headers)
    assert own_trace != TRACE_ID
    # The dead letter keeps the command's own traceparent (original headers untouched).
    (letter,) = await read_all(kafka_bootstrap, dlq)
    assert trace_id_of(letter.headers) == TRACE_ID

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    in_trace = [
        s for s in finished if s.context is not None and f"{s.context.trace_id:032x}" == TRACE_ID
    ]
    names = {s.name for s in in_trace}
    assert {f"{commands} process", "capture.validate", "capture.db ingest"} <= names
    assert "capture.publish" in names
    (db_span,) = [
        s
        for s in in_trace
        if s.name == "capture.db ingest"
        and (s.attributes or {}).get("capture.command_id") == traced_id
    ]
    attributes = dict(db_span.attributes or {})
    assert attributes["capture.user_id"] == key.decode()
    assert attributes["messaging.destination.partition.id"] == "0"
    assert attributes["messaging.kafka.offset"] == records[0].offset
    # The process span continues the producer's span: its parent is the header's span id.
    (process,) = [
        s
        for s in in_trace
        if s.name == f"{commands} process"
        and s.parent is not None
        and (s.attributes or {}).get("capture.command_id") == traced_id
    ]
    assert process.parent is not None and f"{process.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert db_span.parent is not None and process.context is not None
    assert db_span.parent.span_id == process.context.span_id
    assert any(
        s.context is not None and f"{s.context.trace_id:032x}" == own_trace for s in finished
    )


def test_tracing_is_off_by_default() -> None:
    assert not tracing.enabled()
    assert tracing.result_headers(Envelope("t", 0, 0, None, None, ())) is None
