"""Header names of capture-worker records: the one place they are spelled.

The worker adds the `capture.error.*`, `capture.source.*` and `capture.failed_at` headers to a
dead-letter record (the original headers are kept, in front of them). `capture-worker dlq
redrive` sends a dead letter back with its original headers plus the `capture.redrive.*` ones.
"""

ERROR_KIND = "capture.error.kind"
ERROR_MESSAGE = "capture.error.message"
SOURCE_TOPIC = "capture.source.topic"
SOURCE_PARTITION = "capture.source.partition"
SOURCE_OFFSET = "capture.source.offset"
FAILED_AT = "capture.failed_at"
VALUE_DROPPED = "capture.value.dropped"
"""On a dead letter whose value was too large even for the DLQ: the dropped value's size."""

#: On every dead-letter record.
ALL = (ERROR_KIND, ERROR_MESSAGE, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, FAILED_AT)

REDRIVE_COUNT = "capture.redrive.count"
"""How many times this record was sent back from the DLQ (1 on the first redrive)."""
REDRIVE_AT = "capture.redrive.at"
"""When it was last sent back (RFC 3339, UTC)."""
REDRIVE_FROM = "capture.redrive.from"
"""The dead letter it was sent back from: `<dlq partition>@<dlq offset>`."""

REDRIVE = (REDRIVE_COUNT, REDRIVE_AT, REDRIVE_FROM)

ADDED_BY_WORKER = (*ALL, VALUE_DROPPED, *REDRIVE)
"""Everything capture-worker adds; what remains of a dead letter's headers is the producer's."""

TRACEPARENT = "traceparent"
"""W3C trace context (OpenTelemetry): on commands from `publish`, on results and dead letters."""
TRACESTATE = "tracestate"
