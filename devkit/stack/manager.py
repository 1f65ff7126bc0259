"""The local stack as a whole: resolve its settings, start, stop, restart, report, export env.

Settings come, strongest first, from explicit arguments (CLI options), `CAPTURE_STACK_*`
environment variables, what the state dir recorded at the last start, and the defaults
(Kafka 127.0.0.1:19092 with its controller on 19093, PostgreSQL 127.0.0.1:15432) that
`worker.core.config` points at.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from devkit import paths as core_paths
from devkit.stack import kafka, postgres, process
from devkit.stack.kafka import KafkaConfig, KafkaPaths, SaslPlain
from devkit.stack.model import Progress, ServiceStatus, no_progress
from devkit.stack.postgres import PostgresConfig, PostgresPaths
from devkit.stack.process import StackError

ServiceName = Literal["kafka", "postgres"]
SERVICES: tuple[ServiceName, ...] = ("kafka", "postgres")

ENV_KAFKA_PORT = "CAPTURE_STACK_KAFKA_PORT"
ENV_KAFKA_CONTROLLER_PORT = "CAPTURE_STACK_KAFKA_CONTROLLER_PORT"
ENV_KAFKA_VERSION = "CAPTURE_STACK_KAFKA_VERSION"
ENV_KAFKA_BROKERS = "CAPTURE_STACK_KAFKA_BROKERS"
ENV_KAFKA_AUTH = "CAPTURE_STACK_KAFKA_AUTH"
ENV_KAFKA_USERNAME = "CAPTURE_STACK_KAFKA_USERNAME"
ENV_KAFKA_PASSWORD = "CAPTURE_STACK_KAFKA_PASSWORD"  # noqa: S105 - a variable name
ENV_POSTGRES_PORT = "CAPTURE_STACK_POSTGRES_PORT"
ENV_POSTGRES_VERSION = "CAPTURE_STACK_POSTGRES_VERSION"

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    state_dir: Path
    cache_dir: Path
    kafka: KafkaConfig
    postgres: PostgresConfig

    def client_env(self) -> dict[str, str]:
        """What the worker and the tools need to reach this stack (see worker.core.config)."""
        password = postgres.worker_password(PostgresPaths.under(self.state_dir))
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            # The worker runs as its least-privilege login; migrations and admin tools as the
            # superuser (see worker.core.config).
            "DATABASE_URL": self.postgres.worker_dsn(password),
            "CAPTURE_ADMIN_DATABASE_URL": self.postgres.dsn(),
            "KAFKA_SECURITY_PROTOCOL": self.kafka.security_protocol,
        }
        if self.kafka.auth:
            env |= {
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": self.kafka.auth.username,
                "KAFKA_SASL_PASSWORD": self.kafka.auth.password,
            }
        return env

    def shell_exports(self) -> str:
        """Lines for `eval "$(capture-worker stack env)"`."""
        lines = [f"export {k}={shlex.quote(v)}" for k, v in self.client_env().items()]
        if not self.kafka.auth:
            lines.append("unset KAFKA_SASL_MECHANISM KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD")
        return "\n".join(lines)


def _first(*values: T | None) -> T | None:
    return next((v for v in values if v is not None), None)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise StackError(f"{name} must be a port number, got {raw!r}") from exc


def _env_bool(environ: Mapping[str, str], name: str) -> bool | None:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return None
    return raw in ("1", "true", "yes", "on")


def resolve_config(
    *,
    state_dir: Path | None = None,
    cache_dir: Path | None = None,
    kafka_port: int | None = None,
    kafka_controller_port: int | None = None,
    kafka_brokers: int | None = None,
    postgres_port: int | None = None,
    postgres_version: str | None = None,
    kafka_auth: bool | None = None,
    kafka_username: str | None = None,
    kafka_password: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> StackConfig:
    env = os.environ if environ is None else environ
    state = (state_dir or core_paths.state_dir()).expanduser().resolve()
    cache = (cache_dir or core_paths.cache_dir()).expanduser().resolve()
    rec_k = kafka.recorded_config(KafkaPaths.under(state))
    rec_p = postgres.recorded_config(PostgresPaths.under(state))

    port = _first(kafka_port, _env_int(env, ENV_KAFKA_PORT), rec_k.port if rec_k else None) or 19092
    same_port = rec_k is not None and rec_k.port == port
    controller = (
        _first(
            kafka_controller_port,
            _env_int(env, ENV_KAFKA_CONTROLLER_PORT),
            rec_k.controller_port if rec_k and same_port else None,
        )
        or port + 1
    )
    rec_auth = rec_k.auth if rec_k else None
    auth: SaslPlain | None = None
    if _first(kafka_auth, _env_bool(env, ENV_KAFKA_AUTH), rec_auth is not None):
        auth = SaslPlain(
            username=_first(
                kafka_username,
                env.get(ENV_KAFKA_USERNAME) or None,
                rec_auth.username if rec_auth else None,
            )
            or "capture",
            password=_first(
                kafka_password,
                env.get(ENV_KAFKA_PASSWORD) or None,
                rec_auth.password if rec_auth else None,
            )
            or secrets.token_urlsafe(18),
        )
    version = env.get(ENV_KAFKA_VERSION) or (rec_k.version if rec_k else kafka.KAFKA_VERSION)
    pg_port = (
        _first(postgres_port, _env_int(env, ENV_POSTGRES_PORT), rec_p.port if rec_p else None)
        or 15432
    )
    pg_version = (
        _first(
            postgres_version,
            env.get(ENV_POSTGRES_VERSION) or None,
            rec_p.version if rec_p else None,
        )
        or postgres.DEFAULT_VERSION
    )
    if pg_version not in postgres.VERSIONS:
        raise StackError(
            f"PostgreSQL {pg_version} is not available; choose one of "
            f"{', '.join(sorted(postgres.VERSIONS))}"
        )
    brokers = (
        _first(kafka_brokers, _env_int(env, ENV_KAFKA_BROKERS), rec_k.brokers if rec_k else None)
        or 1
    )
    if brokers not in (1, 3):
        raise StackError(f"--brokers must be 1 or 3, got {brokers}")
    kcfg = KafkaConfig(
        port=port, controller_port=controller, version=version, auth=auth, brokers=brokers
    )
    ports = [*kcfg.all_ports, pg_port]
    for value in ports:
        if not 0 < value < 65536:
            raise StackError(f"port {value} is out of range")
    if len(set(ports)) != len(ports):
        raise StackError(
            "kafka nodes (client port + 2(n-1), controller port + 2(n-1)) and postgres need "
            f"different ports, got {ports}"
        )
    return StackConfig(
        state_dir=state,
        cache_dir=cache,
        kafka=kcfg,
        postgres=PostgresConfig(port=pg_port, version=pg_version),
    )


async def _gather(steps: Sequence[Awaitable[T]]) -> list[T]:
    """Run side by side; a failure of one does not stop the other; errors raised together."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if not isinstance(error, Exception):
            raise error
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise StackError("\n".join(str(e) for e in errors))
    return [r for r in results if not isinstance(r, BaseException)]


def _lock_path(cfg: StackConfig) -> Path:
    return cfg.state_dir / ".lock"


async def _start_one(
    name: ServiceName, cfg: StackConfig, progress: Progress
) -> list[ServiceStatus]:
    if name == "kafka":
        return await kafka.start(
            cfg.kafka, state_dir=cfg.state_dir, cache_dir=cfg.cache_dir, progress=progress
        )
    return [await postgres.start(cfg.postgres, state_dir=cfg.state_dir, progress=progress)]


def _stop_one(name: ServiceName, cfg: StackConfig) -> int | None:
    if name == "kafka":
        return kafka.stop_all(cfg.state_dir)
    return postgres.stop(PostgresPaths.under(cfg.state_dir))


async def up(
    cfg: StackConfig,
    *,
    services: Iterable[ServiceName] = SERVICES,
    progress: Progress = no_progress,
) -> list[ServiceStatus]:
    """Start what is not running (idempotent); returns once each answers a real request."""
    async with process.file_lock(_lock_path(cfg)):
        started = await _gather([_start_one(name, cfg, progress) for name in services])
    return [s for group in started for s in group]


async def down(
    cfg: StackConfig, *, services: Iterable[ServiceName] = SERVICES, purge: bool = False
) -> dict[ServiceName, int | None]:
    """Stop, wait until the processes are gone; `purge` also deletes their data.

    Returns the pid each service had (None: it was not running).
    """
    names = list(services)
    async with process.file_lock(_lock_path(cfg)):
        pids = await _gather([asyncio.to_thread(_stop_one, name, cfg) for name in names])
        if purge:  # data, logs and recorded settings: the next `up` starts from scratch
            for name in names:
                shutil.rmtree(cfg.state_dir / name, ignore_errors=True)
    return dict(zip(names, pids, strict=True))


async def restart(
    cfg: StackConfig,
    *,
    services: Iterable[ServiceName] = SERVICES,
    progress: Progress = no_progress,
) -> list[ServiceStatus]:
    """Stop then start (fault-injection tests use this for one service at a time)."""
    names = list(services)
    await down(cfg, services=names)
    return await up(cfg, services=names, progress=progress)


async def status(cfg: StackConfig, *, probe: bool = True) -> list[ServiceStatus]:
    """Each service (each Kafka node): running (and answering), unresponsive (process alive,
    no answer), stopped. A cluster's rows say which node leads the controller quorum."""
    ppaths = PostgresPaths.under(cfg.state_dir)
    kpids = {n: kafka.running_pid(KafkaPaths.under(cfg.state_dir, n)) for n in cfg.kafka.nodes}
    ppid = postgres.running_pid(ppaths)

    async def answer(alive: bool, check: Awaitable[bool]) -> bool | None:
        if not (alive and probe):
            if asyncio.iscoroutine(check):
                check.close()
            return None
        return await check

    *kready, pready = await asyncio.gather(
        *(answer(kpids[n] is not None, kafka.probe_node(cfg.kafka, n)) for n in cfg.kafka.nodes),
        answer(ppid is not None, postgres.probe(cfg.postgres)),
    )
    return [
        *kafka.status(
            cfg.kafka, cfg.state_dir, ready=dict(zip(cfg.kafka.nodes, kready, strict=True))
        ),
        postgres.status(cfg.postgres, ppaths, ready=pready),
    ]
