"""`.ci/run` makes a missing service a failure whoever runs it: it exports CI=true itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_run_exports_ci_true_before_running_make(tmp_path: Path) -> None:
    # A fake `make` on PATH records the CI it sees; nothing real runs.
    fake = tmp_path / "make"
    fake.write_text('#!/usr/bin/env bash\necho "CI=${CI:-unset} $*" >> "$RECORD"\n')
    fake.chmod(0o755)
    record = tmp_path / "record"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"PATH": f"{tmp_path}:{env['PATH']}", "RECORD": str(record)}
    subprocess.run([str(ROOT / ".ci" / "run")], env=env, check=True, timeout=60)
    calls = record.read_text().splitlines()
    assert calls[0].startswith("CI=true test"), calls
