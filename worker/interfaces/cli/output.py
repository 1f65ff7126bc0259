"""Output helpers shared by the CLI commands: people get rich, machines get JSON lines."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


class OutputFormat(StrEnum):
    PRETTY = "pretty"
    JSON = "json"


def emit_json(obj: Any) -> None:
    """One JSON object per line on stdout, flushed, so it pipes into jq as it comes."""
    sys.stdout.write(json.dumps(obj, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
