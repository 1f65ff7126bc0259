"""Database commands: `migrate`, `digest`, `show`, and `db create-login`.

The database URL comes from --database-url or the settings: DATABASE_URL (the worker's login)
for `digest` and `show`, CAPTURE_ADMIN_DATABASE_URL (an owner) for `migrate` and
`db create-login`. It holds a password, so it is never printed.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from typing import Annotated, Any, NoReturn, TypeVar
from uuid import UUID

import typer
from rich.table import Table

from worker.core.config import get_settings
from worker.domain.errors import CaptureError
from worker.infrastructure.db import create_pool
from worker.infrastructure.migrations import (
    MigrationStatus,
    apply_migrations,
    load_migrations,
    migration_status,
)
from worker.infrastructure.repository import ArtifactRepository
from worker.infrastructure.roles import WORKER_ROLE, create_login, ensure_login
from worker.interfaces.cli.output import OutputFormat, console, emit_json, fail

T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL (default: DATABASE_URL / the local stack).",
        show_default=False,
    ),
]
AdminUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL of an owner (default: CAPTURE_ADMIN_DATABASE_URL, else DATABASE_URL"
        " when set, else the local stack's superuser).",
        show_default=False,
    ),
]
Format = Annotated[OutputFormat, typer.Option("--format", help="pretty or json.")]


def _url(explicit: str | None) -> str:
    return explicit or get_settings().database_url.get_secret_value()


def _admin_url(explicit: str | None) -> str:
    """Schema changes and roles need an owner: CAPTURE_ADMIN_DATABASE_URL (see Settings)."""
    return explicit or get_settings().admin_url()


def _fail(message: str, code: int = 1) -> NoReturn:
    fail(message, code)
    raise typer.Exit(code)  # fail() exits already; this line tells the type checker


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async operation; capture errors become a one-line message and exit code 1."""
    try:
        return asyncio.run(coro)
    except CaptureError as exc:
        _fail(str(exc))


async def _with_repo(url: str, action: Callable[[ArtifactRepository], Awaitable[T]]) -> T:
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        return await action(ArtifactRepository(pool))
    finally:
        await pool.close()


def _print_artifacts(artifacts: list[dict[str, Any]], output: OutputFormat, title: str) -> None:
    if output is OutputFormat.JSON:
        for artifact in artifacts:
            emit_json(artifact)
        return
    table = Table(title=title)
    for column in ("url", "level", "signals", "subspace", "margin", "last capture"):
        table.add_column(column)
    for a in artifacts:
        margin = a.get("assignment_margin")
        table.add_row(
            a["url"],
            a["engagement_level"],
            str(a["signal_count"]),
            str(a["subspace_id"])[:8],
            "—" if margin is None else f"{margin:.3f}",
            a["last_occurred_at"],
        )
    console.print(table)


def _print_status(statuses: list[MigrationStatus], output: OutputFormat) -> None:
    if output is OutputFormat.JSON:
        for st in statuses:
            at = st.applied_at.isoformat() if st.applied_at else None
            emit_json({**asdict(st), "applied_at": at})
        return
    table = Table(title="migrations")
    for column in ("version", "name", "applied at", "checksum"):
        table.add_column(column)
    for st in statuses:
        checksum = {True: "[green]ok[/]", False: "[red]EDITED[/]", None: "—"}[st.checksum_ok]
        applied = st.applied_at.isoformat(timespec="seconds") if st.applied_at else "pending"
        table.add_row(st.version, st.name, applied, checksum)
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("migrate")
    def migrate(
        database_url: AdminUrl = None,
        dim: Annotated[
            int | None,
            typer.Option(help="Embedding dimension (default CAPTURE_EMBEDDING_DIM).", min=1),
        ] = None,
        status: Annotated[
            bool, typer.Option("--status", help="Only show what is applied; change nothing.")
        ] = False,
        output: Format = OutputFormat.PRETTY,
    ) -> None:
        """Apply the pending sql/migrations; an edited, applied migration is refused."""
        if status:
            _print_status(_run(migration_status(_admin_url(database_url))), output)
            return
        embedding_dim = dim or get_settings().embedding_dim
        names = [m.name for m in load_migrations()]
        applied = _run(apply_migrations(_admin_url(database_url), embedding_dim=embedding_dim))
        before = [n for n in names if n not in applied]
        if output is OutputFormat.JSON:
            emit_json(
                {"applied": applied, "already_applied": before, "embedding_dim": embedding_dim}
            )
            return
        for name in before:
            console.print(f"[dim]already applied[/] {name}")
        for name in applied:
            console.print(f"[green]applied[/] {name}")
        if not applied:
            console.print("[bold]database is up to date[/]")

    @app.command("digest")
    def digest(database_url: DatabaseUrl = None, output: Format = OutputFormat.PRETTY) -> None:
        """Print capture_state_digest(): equal digests mean equal business state."""
        value: str = _run(_with_repo(_url(database_url), lambda r: r.state_digest()))
        if output is OutputFormat.JSON:
            emit_json({"digest": value})
        else:
            console.print(value, highlight=False)

    @app.command("show")
    def show(
        user: Annotated[UUID, typer.Option("--user", help="The user's id.")],
        url: Annotated[
            str | None, typer.Option("--url", help="One artifact (any spelling of its url).")
        ] = None,
        database_url: DatabaseUrl = None,
        output: Format = OutputFormat.PRETTY,
    ) -> None:
        """Artifact state: one artifact with --url, else all of the user's artifacts."""
        dsn = _url(database_url)
        if url is not None:
            found = _run(_with_repo(dsn, lambda r: r.artifact_state(user, url)))
            if found is None:
                _fail(f"no artifact for user {user} at {url}")
            _print_artifacts([found], output, f"artifact of {user}")
            return
        artifacts = _run(_with_repo(dsn, lambda r: r.user_artifacts(user)))
        _print_artifacts(artifacts, output, f"{len(artifacts)} artifact(s) of {user}")

    db_app = typer.Typer(help="Database administration.", no_args_is_help=True)

    @db_app.command("create-login")
    def create_login_command(
        name: Annotated[str, typer.Argument(help="The new login role.")],
        password_env: Annotated[
            str | None,
            typer.Option(help="Read the password from this environment variable (else prompt)."),
        ] = None,
        database_url: AdminUrl = None,
        exists_ok: Annotated[
            bool,
            typer.Option(
                "--exists-ok", help="An existing login keeps its membership, gets this password."
            ),
        ] = False,
    ) -> None:
        """Create a LOGIN role that is a member of capture_worker (EXECUTE on the functions).

        Example: APP_DB_PASSWORD=... capture-worker db create-login capture_app
        --password-env APP_DB_PASSWORD --database-url postgresql://owner@db/app
        """
        if password_env:
            password = os.environ.get(password_env, "")
            if not password:
                _fail(f"environment variable {password_env} is empty or not set", 2)
        else:
            password = getpass.getpass(f"password for {name}: ")
            if password != getpass.getpass("again: "):
                _fail("the passwords differ", 2)
        if not password:
            _fail("an empty password is not allowed", 2)
        make = ensure_login if exists_ok else create_login
        _run(make(_admin_url(database_url), name, password))
        console.print(f"[green]created[/] login {name} in role {WORKER_ROLE}")

    app.add_typer(db_app, name="db")
