"""docs/asyncapi.json is generated from the app; it must not drift from the code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_asyncapi_matches_the_app(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "faststream",
            "docs",
            "gen",
            "worker.interfaces.kafka.asyncapi:app",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    fresh = json.loads(out.read_text())
    checked_in = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    assert fresh == checked_in, "docs/asyncapi.json is stale: run `make docs`"
    channels = fresh["channels"]
    assert {c["address"] for c in channels.values()} == {
        "capture.commands",
        "capture.results",
        "capture.dlq",
    }
    assert "CaptureArtifactCommand" in fresh["components"]["schemas"]
    assert "CaptureResult" in fresh["components"]["schemas"]
