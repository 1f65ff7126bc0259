"""`capture-worker`: the one console script."""

from __future__ import annotations

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
def main(
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
# stack, demo, bench, bench-db: the devkit's, when it is installed with its extras.
extensions.load(app)


if __name__ == "__main__":
    app()
