"""The wire contract of capture-worker: the one definition of every message field.

`CaptureArtifactCommand` (v1) is what producers send on the commands topic,
`CaptureResult` (v1) what the worker emits per processed command, and
`headers` names the `capture.*` headers of dead-letter records.
"""

from contracts.commands import (
    DEFAULT_EMBEDDING_DIM,
    SCHEMA_VERSION,
    CaptureArtifactCommand,
)
from contracts.results import CaptureResult, EngagementLevel, ErrorInfo, ErrorKind, ResultStatus

__all__ = [
    "DEFAULT_EMBEDDING_DIM",
    "SCHEMA_VERSION",
    "CaptureArtifactCommand",
    "CaptureResult",
    "EngagementLevel",
    "ErrorInfo",
    "ErrorKind",
    "ResultStatus",
]
