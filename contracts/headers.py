"""Headers the worker adds to a dead-letter record (the original headers are kept)."""

ERROR_KIND = "capture.error.kind"
ERROR_MESSAGE = "capture.error.message"
SOURCE_TOPIC = "capture.source.topic"
SOURCE_PARTITION = "capture.source.partition"
SOURCE_OFFSET = "capture.source.offset"
FAILED_AT = "capture.failed_at"
#: Set instead of the value when the original value did not fit the DLQ record: its size.
VALUE_DROPPED = "capture.value.dropped"

#: On every dead-letter record.
ALL = (ERROR_KIND, ERROR_MESSAGE, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, FAILED_AT)
