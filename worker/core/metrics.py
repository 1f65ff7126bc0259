"""Prometheus metrics of the worker (served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "capture_messages_total",
    "Commands processed, by outcome.",
    ["status"],
    registry=REGISTRY,
)
DLQ = Counter(
    "capture_dlq_total",
    "Records sent to the dead-letter topic, by error kind.",
    ["kind"],
    registry=REGISTRY,
)
INTERNAL_ERRORS = Counter(
    "capture_internal_errors_total",
    "Unexpected exceptions while handling records (bugs); each is retried, then dead-lettered.",
    registry=REGISTRY,
)
RETRIES = Counter(
    "capture_retries_total",
    "Transient failures that were retried, by stage.",
    ["stage"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "capture_batch_seconds",
    "Time to handle one partition's records of a fetch: database and result publish.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "capture_handler_seconds",
    "Per-message handler latency (batch time divided over its messages).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
RECORD_AGE_SECONDS = Histogram(
    "capture_record_age_seconds",
    "Age of each partition batch's oldest record (now minus its Kafka timestamp): when its lane"
    " takes the batch (stage=taken) and when its results are acknowledged (stage=delivered).",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "capture_batch_size",
    "Messages handled together: one partition's records of a fetch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "capture_consumer_lag",
    "High-water mark minus the next offset to process, per partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
READY = Gauge(
    "capture_ready",
    "1 when Kafka and PostgreSQL are reachable and the consumer runs.",
    registry=REGISTRY,
)
DEPENDENCY_UP = Gauge(
    "capture_dependency_up",
    "1 when the dependency answered its last probe.",
    ["dependency"],
    registry=REGISTRY,
)
DB_CALL_SECONDS = Histogram(
    "capture_db_call_seconds",
    "Time of one call to a capture.* SQL function, by function (ingest_typed: one batch).",
    ["function"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)
DB_CHUNKS_PER_CALL = Histogram(
    "capture_db_chunks_per_call",
    "Lanes' chunks carried by one ingest call (CAPTURE_DB_MAX_CALLS gathers those that wait).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
    registry=REGISTRY,
)
DB_OVERDUE_CHUNKS = Counter(
    "capture_db_overdue_chunks_total",
    "Lanes' chunks that waited CAPTURE_DB_MAX_WAIT_MS for the running ingest calls and then "
    "went beside them (often: the calls run long, an index's inserts or locked rows).",
    registry=REGISTRY,
)
