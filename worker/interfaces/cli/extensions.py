"""What other installed packages add to `capture-worker`: commands (the devkit's stack, bench,
demo), found through the entry point group `capture_worker.cli`, and the synthetic command
generator behind `publish --generate` (group `capture_worker.generators`, name `synthetic`).

The worker never imports those packages by name: a production install that lacks them (or
their extras) simply has fewer commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points

import typer

from worker.core.logging import get_logger

GROUP = "capture_worker.cli"
GENERATORS = "capture_worker.generators"

#: Makes N synthetic command lines: (n, users, seed, dim) -> JSON lines. Set by the devkit.
Generator = Callable[[int, int, int, int], Iterator[str]]

log = get_logger(__name__)


def generator() -> Generator | None:
    """The installed synthetic generator, or None (the devkit or its numpy is missing)."""
    for entry in entry_points(group=GENERATORS, name="synthetic"):
        try:
            found: Generator = entry.load()
        except ImportError as exc:
            log.debug("generator not loaded", error=str(exc))
            continue
        return found
    return None


def load(app: typer.Typer) -> None:
    """Let every installed extension register its commands on `app`."""
    for entry in entry_points(group=GROUP):
        try:
            register = entry.load()
        except ImportError as exc:  # an extension whose own dependencies are missing
            log.debug("extension not loaded", extension=entry.name, error=str(exc))
            continue
        register(app)
