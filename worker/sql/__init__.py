"""The SQL that ships with the package: `migrations/NNNN_name.sql`, read through
importlib.resources so an installed wheel migrates as a checkout does (the top-level `sql/`
of a checkout is a link to this folder: one copy)."""

from __future__ import annotations

import os
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path


def migrations() -> Traversable:
    """The migrations folder: CAPTURE_SQL_DIR/migrations when set, else the package's own."""
    explicit = os.environ.get("CAPTURE_SQL_DIR")
    if explicit:
        return Path(explicit) / "migrations"
    return files(__package__) / "migrations"
