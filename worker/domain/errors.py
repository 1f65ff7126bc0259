"""The one exception tree of capture-worker.

    CaptureError
    ├── PermanentError      the command can never succeed: dead-letter it (kind says why)
    ├── TransientError      a dependency failed: retry the same command later, never skip it
    ├── ConfigurationError  the worker cannot run as configured: stop and say why
    ├── RetriesExhausted    CAPTURE_RETRY_MAX_ATTEMPTS reached (worker.application.capture)
    └── StartupAborted      asked to stop while start-up waited (worker.interfaces.kafka.app)

Driver errors (asyncpg, aiokafka) are translated into these once, at the
infrastructure boundary, and raised `from` the original exception.
"""

from __future__ import annotations

from contracts.results import ErrorKind


class CaptureError(Exception):
    """Root of every error this package raises on purpose."""


class PermanentError(CaptureError):
    """The command is bad: retrying cannot help."""

    def __init__(self, kind: ErrorKind, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.sqlstate = sqlstate


class TransientError(CaptureError):
    """A dependency is unavailable or the transaction lost a race: retry."""

    def __init__(
        self, reason: str, *, sqlstate: str | None = None, contention: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate
        #: Lost a race for a user's rows: that user's partition waits, the database is fine.
        self.contention = contention


class ConfigurationError(CaptureError):
    """The worker cannot start as configured (wrong schema, missing migration, ...)."""
