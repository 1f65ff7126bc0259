"""The one place where database driver errors become capture errors, by SQLSTATE.

    SQLSTATE class 22 (data exception)      -> PermanentError(CONSTRAINT)  the data is refused
    SQLSTATE class 23 (integrity violation) -> PermanentError(CONSTRAINT)
    CW409 (raised by ingest_with_signal)    -> PermanentError(CONFLICT)    id reused, new payload
    55P03, class 40 (lost a race for rows)  -> TransientError(contention=True)
    CW412 (ingest outside READ COMMITTED)   -> TransientError              misconfigured session
    anything else, connection/OS/timeouts   -> TransientError              retry, never skip

`ingest_batch` reports a refused command inside its result array (`batch_element`), with
the SQLSTATE it caught; the same table applies.

Only the first three may dead-letter a message. Everything else is retried, including errors
that are a misconfiguration (CW412, a missing migration, a missing privilege): the command is
not at fault, skipping it because the deployment is broken would lose it, and retrying waits
for the fix (CAPTURE_RETRY_MAX_ATTEMPTS bounds the wait with exit code 3).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import asyncpg
from asyncpg.exceptions import InternalClientError

from contracts.results import ErrorKind
from worker.domain.errors import CaptureError, PermanentError, TransientError

CONFLICT_SQLSTATE = "CW409"
# The kinds ingest_batch names in a refused element's error object.
_ELEMENT_KINDS = {"constraint": ErrorKind.CONSTRAINT, "conflict": ErrorKind.CONFLICT}
ISOLATION_SQLSTATE = "CW412"

_TRANSIENT_REASONS: dict[str, str] = {
    ISOLATION_SQLSTATE: "configuration error: the ingest functions need READ COMMITTED"
    " (check default_transaction_isolation of the role and database)",
    "40001": "serialization failure",
    "40P01": "deadlock detected",
    "55P03": "lock not available",
    "57014": "statement cancelled (timeout)",
    "57P01": "server shutting down",
    "57P02": "server crashed",
    "57P03": "server not accepting connections yet",
}
_TRANSIENT_CLASSES: dict[str, str] = {
    "08": "connection failure",
    "40": "transaction rollback",
    "53": "server out of resources",
}


def is_connection_error(exc: BaseException) -> bool:
    """True when the connection itself is gone or unusable (the pool should drop it)."""
    if isinstance(exc, OSError | asyncpg.InterfaceError):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")


def classify(exc: BaseException, operation: str = "database call") -> CaptureError:
    """The capture error for a driver exception (the caller raises it `from exc`)."""
    if isinstance(exc, CaptureError):
        return exc
    sqlstate: str | None = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError) and sqlstate:
        message = _message(exc)
        if sqlstate == CONFLICT_SQLSTATE:
            return PermanentError(ErrorKind.CONFLICT, message, sqlstate=sqlstate)
        if sqlstate[:2] in ("22", "23"):
            return PermanentError(ErrorKind.CONSTRAINT, message, sqlstate=sqlstate)
        reason = _TRANSIENT_REASONS.get(sqlstate) or _TRANSIENT_CLASSES.get(sqlstate[:2])
        if reason is None:
            reason = "unexpected database error (a missing migration or privilege?)"
        return TransientError(
            f"{operation}: {reason} [SQLSTATE {sqlstate}]: {message}",
            sqlstate=sqlstate,
            contention=_is_contention(sqlstate),
        )
    if isinstance(exc, TimeoutError):
        return TransientError(f"{operation}: timed out")
    if isinstance(exc, OSError):
        return TransientError(f"{operation}: cannot reach the database: {exc}")
    return TransientError(f"{operation}: database driver error {type(exc).__name__}: {exc}")


@contextmanager
def translate_db_errors(operation: str = "database call") -> Iterator[None]:
    """Re-raise driver, connection and timeout errors as capture errors, `from` the original.

    Other exceptions (bugs in our own code) pass through untouched.
    """
    try:
        yield
    except CaptureError:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, InternalClientError, OSError) as exc:
        raise classify(exc, operation) from exc


def _message(exc: asyncpg.PostgresError) -> str:
    # The server's primary message; asyncpg's str() may append detail/hint lines.
    message = getattr(exc, "message", None)
    return str(message) if message else str(exc)


def batch_element(element: Mapping[str, Any]) -> dict[str, Any] | PermanentError:
    """One element of ingest_batch's reply: the result object, or why the command was refused."""
    error = element.get("error")
    if not error:
        return dict(element)
    sqlstate = error.get("sqlstate")
    kind = _ELEMENT_KINDS.get(error.get("kind", ""))
    if kind is None:
        kind = ErrorKind.CONFLICT if sqlstate == CONFLICT_SQLSTATE else ErrorKind.CONSTRAINT
    return PermanentError(kind, str(error.get("message", "")), sqlstate=sqlstate)


def _is_contention(sqlstate: str) -> bool:
    """Lost a race for this user's rows (lock timeout, deadlock, serialization failure): says
    nothing about the database being down."""
    return sqlstate == "55P03" or sqlstate[:2] == "40"
