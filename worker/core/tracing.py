"""OpenTelemetry traces from the producer to the result: off unless asked for, free when off.

On when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (OTLP over HTTP, the SDK's own environment
variables apply) or `CAPTURE_OTEL=console` (spans on stderr); it needs the `otel` extra.
Otherwise every hook below returns at its first line and nothing is imported.

The worker handles commands in batches, but a trace follows one command: each command gets
a `process` span whose parent is the `traceparent` header it arrived with (a new trace when
it has none), and under it `capture.validate`, `capture.db ingest` (the shared call's
start and end, on every command of the batch) and `capture.publish`. The `process` span's
context travels on as the `traceparent` header of the command's result record (and of its
dead letter when the command did not carry one already; original headers are never touched).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from contracts import headers as H
from worker.core.logging import get_logger

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from worker.application.capture import Outcome
    from worker.application.ports import Envelope

log = get_logger(__name__)

Key = tuple[str, int, int]
_MAX_OPEN = 100_000  # spans of commands that stalled and were never seen again are dropped

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_open: dict[Key, Span] = {}


def enabled() -> bool:
    return _tracer is not None


def configure(service_name: str) -> bool:
    """Turn tracing on when the environment asks for it; True when it is on."""
    console = os.environ.get("CAPTURE_OTEL", "").strip().lower() == "console"
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not console and not endpoint:
        return False
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional extra
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            ConsoleSpanExporter,
        )
    except ImportError:
        log.warning("tracing asked for, but opentelemetry is missing: install capture-worker[otel]")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if console:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    log.info("tracing on", console=console, endpoint=endpoint or None)
    return True


def use_provider(provider: TracerProvider | None) -> None:
    """Trace through this provider (tests give one with an in-memory exporter); None: off."""
    global _tracer, _provider  # noqa: PLW0603 - one process-wide switch, like logging's
    _provider = provider
    _tracer = provider.get_tracer("capture-worker") if provider is not None else None
    _open.clear()


def shutdown() -> None:
    """Flush what is buffered (at exit)."""
    if _provider is not None:
        _provider.shutdown()


def _key(envelope: Envelope) -> Key:
    return (envelope.topic, envelope.partition, envelope.offset)


def _carrier(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    return {
        name: (raw or b"").decode("latin-1")
        for name, raw in headers
        if name in (H.TRACEPARENT, H.TRACESTATE)
    }


def _inject(span: Span) -> list[tuple[str, bytes]]:
    from opentelemetry.trace import set_span_in_context  # noqa: PLC0415
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    return [(name, value.encode()) for name, value in carrier.items()]


def consumed(envelopes: Sequence[Envelope]) -> None:
    """Open each command's `process` span, child of the trace its headers carry."""
    if _tracer is None:
        return
    from opentelemetry.trace import SpanKind  # noqa: PLC0415
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    if len(_open) > _MAX_OPEN:
        _open.clear()
    propagator = TraceContextTextMapPropagator()
    for envelope in envelopes:
        stale = _open.pop(_key(envelope), None)
        if stale is not None:  # redelivered after a stall: that attempt ends here
            stale.end()
        parent = propagator.extract(_carrier(envelope.headers))
        _open[_key(envelope)] = _tracer.start_span(
            f"{envelope.topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": envelope.topic,
                "messaging.destination.partition.id": str(envelope.partition),
                "messaging.kafka.offset": envelope.offset,
            },
        )


def _child(name: str, envelope: Envelope, start_ns: int, end_ns: int, **attributes: Any) -> None:
    assert _tracer is not None
    from opentelemetry.trace import SpanKind, set_span_in_context  # noqa: PLC0415

    parent = _open.get(_key(envelope))
    if parent is None:
        return
    kind = SpanKind.CLIENT if name.startswith("capture.db") else SpanKind.INTERNAL
    if name == "capture.publish":
        kind = SpanKind.PRODUCER
    span = _tracer.start_span(
        name,
        context=set_span_in_context(parent),
        kind=kind,
        start_time=start_ns,
        attributes={
            "messaging.destination.partition.id": str(envelope.partition),
            "messaging.kafka.offset": envelope.offset,
            **{k: v for k, v in attributes.items() if v is not None},
        },
    )
    span.end(end_time=end_ns)


_OFF: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def validating(envelope: Envelope) -> contextlib.AbstractContextManager[None]:
    """A `capture.validate` span around one command's decoding."""
    return _OFF if _tracer is None else _validating(envelope)


@contextlib.contextmanager
def _validating(envelope: Envelope) -> Iterator[None]:
    start = time.time_ns()
    try:
        yield
    finally:
        _child("capture.validate", envelope, start, time.time_ns())


def db_call(
    envelopes: Sequence[Envelope], chunk: Sequence[tuple[int, UUID, UUID]]
) -> contextlib.AbstractContextManager[None]:
    """One database call for `chunk` ((index into envelopes, user_id, command_id) each): a
    `capture.db ingest` span in each command's trace, with its ids."""
    return _OFF if _tracer is None else _db_call(envelopes, chunk)


@contextlib.contextmanager
def _db_call(
    envelopes: Sequence[Envelope], chunk: Sequence[tuple[int, UUID, UUID]]
) -> Iterator[None]:
    start = time.time_ns()
    try:
        yield
    finally:
        end = time.time_ns()
        for index, user_id, command_id in chunk:
            _child(
                "capture.db ingest",
                envelopes[index],
                start,
                end,
                **{
                    "db.system.name": "postgresql",
                    "db.operation.name": "capture.ingest_typed",
                    "capture.batch_size": len(chunk),
                    "capture.command_id": str(command_id),
                    "capture.user_id": str(user_id),
                },
            )


def result_headers(envelope: Envelope) -> list[tuple[str, bytes]] | None:
    """`traceparent` of the command's `process` span, for its result record (None when off)."""
    if _tracer is None:
        return None
    span = _open.get(_key(envelope))
    return _inject(span) if span is not None else None


def dead_letter_headers(envelope: Envelope) -> list[tuple[str, bytes]]:
    """For a dead letter: the trace's headers, unless the command carried its own already."""
    if _tracer is None or _carrier(envelope.headers):
        return []
    return result_headers(envelope) or []


def now_ns() -> int:
    return time.time_ns() if _tracer is not None else 0


def published(outcomes: Sequence[Outcome], start_ns: int) -> None:
    """Everything acknowledged: a `capture.publish` span each, then close each command's trace."""
    if _tracer is None:
        return
    end = time.time_ns()
    for outcome in outcomes:
        envelope = outcome.envelope
        _child(
            "capture.publish",
            envelope,
            start_ns,
            end,
            **{
                "capture.command_id": str(outcome.command_id) if outcome.command_id else None,
                "capture.user_id": str(outcome.user_id) if outcome.user_id else None,
                "capture.status": "rejected" if outcome.error is not None else "ingested",
                "capture.error.kind": outcome.error.kind.value if outcome.error else None,
            },
        )
        span = _open.pop(_key(envelope), None)
        if span is not None:
            if outcome.command_id is not None:
                span.set_attribute("capture.command_id", str(outcome.command_id))
            if outcome.user_id is not None:
                span.set_attribute("capture.user_id", str(outcome.user_id))
            span.end(end_time=end)


def new_trace_headers(topic: str, key: bytes | None) -> list[tuple[str, bytes]] | None:
    """For `publish`: a new trace per command, its `traceparent` to send along (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry.context import Context  # noqa: PLC0415
    from opentelemetry.trace import SpanKind  # noqa: PLC0415

    span = _tracer.start_span(
        f"{topic} publish",
        context=Context(),  # a root: one trace per command
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.kafka.message.key": (key or b"").decode("utf-8", "replace"),
        },
    )
    try:
        return _inject(span)
    finally:
        span.end()
