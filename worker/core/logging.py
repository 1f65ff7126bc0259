"""structlog set-up: JSON lines in production, pretty on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

_debug = False

_SECRET_KEYS = frozenset(
    {"password", "sasl_password", "database_url", "admin_database_url", "dsn", "embedding"}
)


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Belt and braces: callers never pass these, but a stray kwarg must not leak.
    for key in _SECRET_KEYS.intersection(event):
        event[key] = "***"
    return event


def configure_logging(fmt: Literal["auto", "json", "pretty"] = "auto", level: str = "INFO") -> None:
    pretty = fmt == "pretty" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer()
    )
    if not pretty:
        shared.append(structlog.processors.format_exc_info)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    global _debug  # noqa: PLW0603 - one process-wide switch, set once at start-up
    _debug = numeric <= logging.DEBUG
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Library loggers (aiokafka, faststream) go through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING) if numeric < logging.WARNING else numeric)


def debug_enabled() -> bool:
    """Whether DEBUG lines are emitted: guards per-message logging on the hot path."""
    return _debug


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
