"""Where the devkit keeps things outside the work tree (caches, local service state)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Downloaded artefacts (Kafka jars); survives `stack down`."""
    base = os.environ.get("CAPTURE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "capture-worker"
    )
    return Path(base)


def state_dir() -> Path:
    """Data and logs of the local stack."""
    base = os.environ.get("CAPTURE_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state", "capture-worker"
    )
    return Path(base)
