"""structlog set-up: JSON lines in production, pretty on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
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


class _Stderr:
    """Whatever `sys.stderr` is when a line is written (a test runner swaps it, and closes the
    one it swapped in), not the one at configuration time."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# With the broker down aiokafka logs about 300 ERROR lines a second (measured: "Unable connect
# to node", "Unable to update metadata", failed fetches and coordinator requests), which buried
# everything else. Library warnings and errors are throttled per message template.
REPEAT_INTERVAL_S = 10.0


@dataclass
class _Seen:
    since: float
    suppressed: int = 0


class RepeatThrottle(logging.Filter):
    """The first WARNING+ record of a kind (logger, level, message template) passes; the same
    kind again within `interval_s` is counted, not logged; the first one after the interval
    passes with "(N similar suppressed in the last Ns)" appended. Lower levels always pass."""

    def __init__(
        self, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.since < self.interval_s:
            seen.suppressed += 1
            return False
        if len(self._seen) > 1000:  # templates are few; this only bounds a pathological case
            self._seen.clear()
        self._seen[key] = _Seen(since=now)
        if seen is not None and seen.suppressed:
            record.msg = (
                f"{record.msg} ({seen.suppressed} similar suppressed in the last "
                f"{now - seen.since:.0f}s)"
            )
        return True


def configure_logging(fmt: Literal["auto", "json", "pretty"] = "auto", level: str = "INFO") -> None:
    pretty = fmt == "pretty" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(
            # Rich's default shows every frame's locals: a command's embedding, a settings
            # object, and seconds of rendering per traceback.
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
        if pretty
        else structlog.processors.JSONRenderer()
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
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # Library loggers (aiokafka, faststream) go through the same renderer.
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared)
    )
    handler.addFilter(RepeatThrottle())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING) if numeric < logging.WARNING else numeric)


def debug_enabled() -> bool:
    """Whether DEBUG lines are emitted: guards per-message logging on the hot path."""
    return _debug


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
