"""`capture-worker`: the one console script."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from worker import __version__
from worker.interfaces.cli import db, dlq, extensions, publish, replay, run, status, tail

app = typer.Typer(
    name="capture-worker",
    help="Kafka-to-PostgreSQL capture worker and its operator tools.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"capture-worker {__version__}")
        raise typer.Exit


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Kafka-to-PostgreSQL capture worker and its operator tools."""


run.register(app)
db.register(app)
publish.register(app)
tail.register(app)
replay.register(app)
dlq.register(app)
status.register(app)


def _builtin_commands() -> set[str]:
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    return names | {g.name or "" for g in app.registered_groups}


def main(argv: list[str] | None = None) -> None:
    """The console script. Extensions (the devkit's stack, demo, bench, bench-db) are loaded only
    when the command is not the worker's own, so `capture-worker run` never imports them."""
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)
    if command is None or command not in _builtin_commands():
        extensions.load(app)
    app(args=args)


if __name__ == "__main__":
    main()
