"""The worker as a real process against real Kafka and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devkit import stack
from tests.fixtures.database import WorkerLogin
from tests.fixtures.services import in_ci
from tests.support.worker_process import WorkerProcess


@dataclass
class WorkerSetup:
    env: dict[str, str]
    database_url: str
    commands: str
    results: str
    dlq: str
    log_dir: Path
    processes: list[WorkerProcess]

    def start(self, **extra_env: str) -> WorkerProcess:
        index = len(self.processes)
        proc = WorkerProcess(
            env={**self.env, **extra_env}, log_path=self.log_dir / f"worker-{index}.log"
        ).start()
        self.processes.append(proc)
        return proc


@pytest.fixture
async def worker_setup(
    kafka_bootstrap: str,
    make_topic: Callable[..., Awaitable[str]],
    fresh_database: Callable[[], Awaitable[str]],
    worker_login: WorkerLogin,
    tmp_path: Path,
) -> AsyncIterator[WorkerSetup]:
    """A fresh database and fresh topics, and a way to start worker processes on them.

    The workers run as the least-privilege login (`database_url` stays the owner's, for the
    tests' own reads)."""
    database_url = await fresh_database()
    commands = await make_topic(6, suffix="commands")
    results = await make_topic(6, suffix="results")
    dlq = await make_topic(1, suffix="dlq", configs={"max.message.bytes": str(4 * 1024 * 1024)})
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": worker_login.url_for(database_url),
        "CAPTURE_ADMIN_DATABASE_URL": database_url,
        "CAPTURE_COMMANDS_TOPIC": commands,
        "CAPTURE_RESULTS_TOPIC": results,
        "CAPTURE_DLQ_TOPIC": dlq,
        "CAPTURE_CONSUMER_GROUP": f"cw-test-{uuid.uuid4().hex[:8]}",
        "CAPTURE_RETRY_MAX_S": "1.0",
        "CAPTURE_LOG_LEVEL": "INFO",
    }
    setup = WorkerSetup(env, database_url, commands, results, dlq, tmp_path, [])
    yield setup
    for proc in setup.processes:
        proc.kill()


@pytest.fixture
async def native_stack(kafka_bootstrap: str, pg_admin_url: str) -> None:
    """Fault tests stop and start services: only possible on the stack this machine runs."""
    cfg = stack.resolve_config()
    pg = urlsplit(pg_admin_url)
    ours = kafka_bootstrap == cfg.kafka.bootstrap and pg.port == cfg.postgres.port
    if not ours:
        message = "services are not the native stack (`capture-worker stack`), cannot inject faults"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
