"""Commands that other installed packages add to `capture-worker` (the devkit's stack, bench,
demo), found through the entry point group `capture_worker.cli`.

The worker never imports those packages by name: a production install that lacks them (or
their extras) simply has fewer commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points

import typer

from worker.core.logging import get_logger

GROUP = "capture_worker.cli"

#: Makes N synthetic command lines: (n, users, seed, dim) -> JSON lines. Set by the devkit.
Generator = Callable[[int, int, int, int], Iterator[str]]

_generator: list[Generator] = []

log = get_logger(__name__)


def provide_generator(generator: Generator) -> None:
    """Offer `publish --generate` a source of synthetic commands."""
    _generator[:] = [generator]


def generator() -> Generator | None:
    return _generator[0] if _generator else None


def load(app: typer.Typer) -> None:
    """Let every installed extension register its commands on `app`."""
    for entry in entry_points(group=GROUP):
        try:
            register = entry.load()
        except ImportError as exc:  # an extension whose own dependencies are missing
            log.debug("extension not loaded", extension=entry.name, error=str(exc))
            continue
        register(app)
