"""The one SQLSTATE mapping (worker/infrastructure/db_errors.py): permanent vs transient."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg.exceptions import InternalClientError

from contracts.results import ErrorKind
from worker.domain.errors import ConfigurationError, PermanentError, TransientError
from worker.infrastructure.db_errors import (
    batch_element,
    classify,
    is_connection_error,
    translate_db_errors,
)


def pg_error(sqlstate: str, message: str = "boom") -> asyncpg.PostgresError:
    """An asyncpg server error as the driver builds it from an ErrorResponse."""
    exc = asyncpg.PostgresError.new({"C": sqlstate, "M": message, "S": "ERROR"})
    assert exc.sqlstate == sqlstate
    return exc


@pytest.mark.parametrize(
    "sqlstate", ["22023", "22P02", "22003", "22007", "22008", "22001", "23502", "23505", "23514"]
)
def test_class_22_and_23_are_permanent_constraint(sqlstate: str) -> None:
    error = classify(pg_error(sqlstate, "embedding: expected 384 dimensions, got 3"))
    assert isinstance(error, PermanentError)
    assert error.kind is ErrorKind.CONSTRAINT
    assert error.sqlstate == sqlstate
    assert error.message == "embedding: expected 384 dimensions, got 3"


def test_cw409_is_permanent_conflict() -> None:
    error = classify(pg_error("CW409", "command_id x: already processed with a different payload"))
    assert isinstance(error, PermanentError)
    assert error.kind is ErrorKind.CONFLICT
    assert error.sqlstate == "CW409"


@pytest.mark.parametrize(
    ("sqlstate", "reason"),
    [
        ("08006", "connection failure"),
        ("08001", "connection failure"),
        ("40001", "serialization failure"),
        ("40P01", "deadlock"),
        ("53300", "out of resources"),
        ("53200", "out of resources"),
        ("55P03", "lock not available"),
        ("57014", "cancelled"),
        ("57P01", "shutting down"),
        ("57P02", "crashed"),
        ("57P03", "not accepting connections"),
    ],
)
def test_retryable_states_are_transient(sqlstate: str, reason: str) -> None:
    error = classify(pg_error(sqlstate), "ingest_batch")
    assert isinstance(error, TransientError)
    assert error.sqlstate == sqlstate
    assert reason in error.reason and error.reason.startswith("ingest_batch:")


@pytest.mark.parametrize(
    ("sqlstate", "contention"),
    [("55P03", True), ("40001", True), ("40P01", True), ("08006", False), ("57P01", False)],
)
def test_contention_is_told_apart_from_an_unreachable_database(
    sqlstate: str, contention: bool
) -> None:
    # Lost races stall one user's partition; only the others mark the database as down.
    error = classify(pg_error(sqlstate))
    assert isinstance(error, TransientError)
    assert error.contention is contention


def test_a_refused_batch_element_becomes_a_permanent_error() -> None:
    assert batch_element({"status": "accepted"}) == {"status": "accepted"}
    conflict = batch_element({"error": {"sqlstate": "CW409", "message": "reused"}})
    assert isinstance(conflict, PermanentError)
    assert conflict.kind is ErrorKind.CONFLICT and conflict.message == "reused"
    refused = batch_element({"error": {"kind": "constraint", "sqlstate": "22023", "message": "x"}})
    assert isinstance(refused, PermanentError) and refused.kind is ErrorKind.CONSTRAINT


@pytest.mark.parametrize("sqlstate", ["42883", "42501", "3F000", "XX000", "0A000"])
def test_anything_else_is_transient_and_says_why(sqlstate: str) -> None:
    # A missing function or privilege must never dead-letter a message: retry until fixed.
    error = classify(pg_error(sqlstate))
    assert isinstance(error, TransientError)
    assert "missing migration or privilege" in error.reason


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        OSError("network unreachable"),
        TimeoutError(),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        InternalClientError("protocol"),
    ],
)
def test_driver_and_network_errors_are_transient(exc: Exception) -> None:
    with pytest.raises(TransientError) as caught, translate_db_errors("digest"):
        raise exc
    assert caught.value.__cause__ is exc  # always raised `from` the original


def test_translate_raises_permanent_from_the_original() -> None:
    original = pg_error("22P02")
    with pytest.raises(PermanentError) as caught, translate_db_errors():
        raise original
    assert caught.value.__cause__ is original


def test_capture_errors_and_bugs_pass_through_untouched() -> None:
    with pytest.raises(ConfigurationError), translate_db_errors():
        raise ConfigurationError("edited migration")
    with pytest.raises(KeyError), translate_db_errors():
        raise KeyError("a bug in our code is not a database error")


def test_connection_errors_are_recognised() -> None:
    assert is_connection_error(pg_error("08006"))
    assert is_connection_error(pg_error("57P01"))
    assert is_connection_error(OSError())
    assert not is_connection_error(pg_error("40P01"))
    assert not is_connection_error(pg_error("22023"))


def test_cw412_wrong_isolation_is_a_configuration_error_retried_never_dead_lettered() -> None:
    error = classify(pg_error("CW412", "capture.ingest_batch must run in READ COMMITTED"))
    assert isinstance(error, TransientError) and not isinstance(error, PermanentError)
    assert "configuration error" in error.reason and "READ COMMITTED" in error.reason
    assert error.sqlstate == "CW412"
