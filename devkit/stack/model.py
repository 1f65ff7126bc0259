"""Value types shared by the local services: what `stack status` and `stack up` report."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

State = Literal["running", "unresponsive", "stopped"]

#: Receives short human-readable progress lines ("kafka: downloading jars"); the CLI shows them
#: in a spinner, the test fixtures ignore them.
Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class ServiceStatus:
    """One local service as seen now (or right after `start`)."""

    name: str
    state: State
    pid: int | None
    endpoint: str
    version: str
    log: Path
    details: Mapping[str, str] = field(default_factory=dict)
    already_running: bool = False
    elapsed_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "running": self.state == "running",
            "pid": self.pid,
            "endpoint": self.endpoint,
            "version": self.version,
            "log": str(self.log),
            **dict(self.details),
        }


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Silence a client library's connection-refused noise while a probe polls a starting server."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
