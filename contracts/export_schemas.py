"""Write the JSON Schemas of the wire contract: `python -m contracts.export_schemas`.

The checked-in files under `contracts/schemas/` are what non-Python producers and
consumers read; `tests/unit/test_contracts.py` fails when they drift from the models.
`--check` exits 1 instead of writing, for CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.commands import CaptureArtifactCommand
from contracts.results import CaptureResult

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

MODELS: dict[str, type[BaseModel]] = {
    "capture_artifact_command.v1.json": CaptureArtifactCommand,
    "capture_result.v1.json": CaptureResult,
}


def schema_of(filename: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    # `$id` is the file name so that tools resolving relative references find siblings.
    return {"$schema": DRAFT, "$id": filename, **schema}


def render(schema: dict[str, Any]) -> str:
    """Stable text: sorted keys, indent 2, trailing newline, so diffs show real changes."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered_schemas() -> dict[str, str]:
    """File name -> the text it must hold."""
    return {name: render(schema_of(name, model)) for name, model in MODELS.items()}


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    stale = []
    for name, text in rendered_schemas().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_schemas().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        stale = stale_files()
        for name in stale:
            print(f"stale: contracts/schemas/{name} (run `make schemas`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas():
        print(f"wrote {path.relative_to(SCHEMA_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
