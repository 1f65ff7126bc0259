"""Scenario 7: security. The worker runs as a least-privilege database login and talks to a
Kafka that requires SASL/PLAIN; hostile strings are only data; secrets stay out of its logs
and metrics; wrong Kafka credentials stop nothing but the worker's progress.

The SASL broker is a second stack (its own ports and state dir, `stack start kafka
--kafka-auth`): switching the shared broker to SASL would disturb every other test. PostgreSQL
is the shared server: its local auth is `trust`, so the login's password is not checked there,
but the worker must still never print it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkit.poison import poison_payloads
from devkit.ports import free_port
from devkit.worker_process import WorkerProcess
from tests.fixtures.services import unavailable
from tests.support.kafka_io import Topics, feed
from tests.support.scenario import (
    POISON_HEADERS,
    VALID_HEADERS,
    Scenario,
    applied,
    assert_alive,
    ready,
    wait_done,
    wait_until,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent

pytestmark = pytest.mark.reliability

CLI = [sys.executable, "-m", "worker.interfaces.cli.main"]
SASL_USER = "capture"
SEED = 7712


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A second, SASL/PLAIN-only Kafka; aiokafka options for it (with the right password)."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        unavailable("SASL Kafka", "java not found: install a JDK 17+")
    port, controller, unused_pg = (free_port() for _ in range(3))
    password = "sasl-" + secrets.token_urlsafe(12)
    state = str(tmp_path_factory.mktemp("sasl-stack"))
    where = ["--state-dir", state]
    started = cli(
        "stack", "start", "kafka", "--kafka-auth", "--kafka-username", SASL_USER,
        "--kafka-password", password, "--kafka-port", str(port),
        "--kafka-controller-port", str(controller), "--postgres-port", str(unused_pg), *where,
    )  # fmt: skip
    try:
        if started.returncode != 0:
            unavailable("SASL Kafka", f"stack start kafka --kafka-auth: {started.stderr[-2000:]}")
        yield {
            "bootstrap_servers": f"127.0.0.1:{port}",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": SASL_USER,
            "sasl_plain_password": password,
        }
    finally:
        cli("stack", "down", "--purge", *where)


@pytest.fixture
async def sasl_topics(sasl_kafka: dict[str, Any]) -> AsyncIterator[Topics]:
    tag = uuid.uuid4().hex[:8]
    names = [f"sec-{tag}-commands", f"sec-{tag}-results", f"sec-{tag}-dlq"]
    admin = AIOKafkaAdminClient(**sasl_kafka)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(names[0], 6, 1),
                NewTopic(names[1], 6, 1),
                NewTopic(names[2], 1, 1, topic_configs={"max.message.bytes": str(4 * 2**20)}),
            ]
        )
        options = {k: v for k, v in sasl_kafka.items() if k != "bootstrap_servers"}
        yield Topics(sasl_kafka["bootstrap_servers"], *names, f"sec-{tag}", options)
        await admin.delete_topics(names)
    finally:
        await admin.close()


def as_login(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def assert_no_table_access(login_url: str, admin_url: str) -> None:
    """The login may not read or write any table; writes go through the functions only."""
    admin = await asyncpg.connect(admin_url)
    try:
        tables = [
            (r["tablename"], r["column"])
            for r in await admin.fetch(
                "SELECT c.relname AS tablename, a.attname AS column FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = 1"
                " WHERE n.nspname = 'capture' AND c.relkind IN ('r', 'p')"
            )
        ]
    finally:
        await admin.close()
    assert len(tables) >= 6, tables
    conn = await asyncpg.connect(login_url)
    try:
        for table, column in tables:
            for statement in (
                f'INSERT INTO capture."{table}" DEFAULT VALUES',
                f'UPDATE capture."{table}" SET "{column}" = "{column}"',
                f'DELETE FROM capture."{table}"',
                f'TRUNCATE capture."{table}"',
                f'SELECT * FROM capture."{table}" LIMIT 1',
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT capture.reset_state()")
    finally:
        await conn.close()


def hostile(base: dict[str, Any], marker: Path, n: int) -> dict[str, Any]:
    """A valid command whose url and title are full of SQL and shell metacharacters."""
    url = (
        f"https://evil.example.com/{n}/a';DROP%20TABLE%20capture.artifacts;--"
        f"/$(touch${{IFS}}{marker})/`touch${{IFS}}{marker}`/x|y&z>w<v"
        f"?q=1'%20OR%20'1'='1&r=\\\"%00;select+pg_sleep(10)#frag'\""
    )
    title = (
        f"Robert'); DROP TABLE capture.signals; -- $(touch {marker}) `touch {marker}` "
        '; rm -rf / || true && echo "$HOME" > /dev/null \\ %s %n {0} ${PATH} \' " \u2603'
    )
    return {**base, "command_id": str(uuid.UUID(int=SEED * 1000 + n)), "url": url, "title": title}


async def test_least_privilege_sasl_hostile_strings_secrets_and_wrong_credentials(
    sasl_kafka: dict[str, Any],
    sasl_topics: Topics,
    fresh_database: Callable[[], Awaitable[str]],
    pg_admin_url: str,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    topics = sasl_topics
    admin_url = await fresh_database()
    login = f"cw_rel_{uuid.uuid4().hex[:10]}"
    db_password = "db-" + secrets.token_urlsafe(12)
    sasl_password = sasl_kafka["sasl_plain_password"]
    marker = tmp_path / "pwned"

    created = cli(
        "db", "create-login", login, "--password-env", "CW_REL_DB_PASSWORD",
        "--database-url", admin_url, env={"CW_REL_DB_PASSWORD": db_password},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert db_password not in created.stdout + created.stderr
    login_url = as_login(admin_url, login, db_password)
    try:
        await assert_no_table_access(login_url, admin_url)
        await run_phases(
            topics, admin_url, login, login_url, db_password, sasl_password, marker, tmp_path,
            fresh_database, scenario,
        )  # fmt: skip
    finally:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            # The fresh database may still hold the login's sessions: end them first.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", login
            )
            await conn.execute(f'DROP ROLE IF EXISTS "{login}"')
        finally:
            await conn.close()


async def run_phases(
    topics: Topics,
    admin_url: str,
    login: str,
    login_url: str,
    db_password: str,
    sasl_password: str,
    marker: Path,
    log_dir: Path,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    lines = make_stream(600, users=6, seed=SEED).valid
    bases = {json.loads(line)["user_id"]: json.loads(line) for line in lines}
    nasty = [hostile(base, marker, n) for n, base in enumerate(bases.values())]
    first, second = Sent(), Sent()  # `second` gets everything; `first` the first half only
    rng = random.Random(SEED)
    poison = dict(
        zip(rng.sample(range(1, 300), 8), poison_payloads(json.loads(lines[0]))[:8], strict=True)
    )
    for index, line in enumerate(lines):
        for sent in (first, second) if index < 300 else (second,):
            if index in poison:
                kind, value = poison[index]
                key = json.loads(lines[0])["user_id"].encode()
                sent.add_poison(value, {kind.value}, key=key, headers=POISON_HEADERS)
            if index == 100:
                sent.add_valid([json.dumps(c) for c in nasty], VALID_HEADERS)
            sent.add_valid([line], VALID_HEADERS)
    later = second.items[len(first.items) :]

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": SASL_USER,
        "KAFKA_SASL_PASSWORD": sasl_password,
        "DATABASE_URL": login_url,
        "CAPTURE_COMMANDS_TOPIC": topics.commands,
        "CAPTURE_RESULTS_TOPIC": topics.results,
        "CAPTURE_DLQ_TOPIC": topics.dlq,
        "CAPTURE_CONSUMER_GROUP": topics.group,
        "CAPTURE_RETRY_MAX_S": "1.0",
        # The most talkative level: a secret that leaks anywhere leaks here.
        "CAPTURE_LOG_LEVEL": "DEBUG",
    }
    secrets_ = (db_password, sasl_password, login_url)

    def assert_no_secrets(worker: WorkerProcess) -> None:
        texts = {
            "log": worker.log_path.read_text(errors="replace"),
            "/metrics": worker.get("/metrics")[1],
            "/readyz": worker.get("/readyz")[1],
        }
        for where, text in texts.items():
            for secret in secrets_:
                assert secret not in text, f"a secret appears in the worker's {where}"

    # -- 1. right credentials, least-privilege login -----------------------------------------
    worker = WorkerProcess(env, log_dir / "worker-right.log").start()
    await ready(worker)
    await feed(topics, first.items)
    await wait_done(topics, first, admin_url, workers=(worker,), timeout_s=90)
    conn = await asyncpg.connect(admin_url)
    try:
        database = urlsplit(admin_url).path.lstrip("/")
        users = await conn.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name = 'capture-worker'",
            database,
        )
        assert {r["usename"] for r in users} == {login}
        for table in ("artifacts", "signals", "command_ledger"):
            assert await conn.fetchval("SELECT to_regclass($1)", f"capture.{table}") is not None
    finally:
        await conn.close()
    for command in nasty:
        shown = cli(
            "show", "--user", command["user_id"], "--url", command["url"],
            "--format", "json", "--database-url", admin_url,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        artifact = json.loads(shown.stdout)
        assert (artifact["url"], artifact["title"]) == (command["url"], command["title"])
    assert not marker.exists(), "a shell ran a command from a url or title"
    assert_no_secrets(worker)
    assert worker.terminate() == 0, worker.tail_log()

    # -- 2. wrong SASL password: stays up, says why, is not ready, processes nothing ---------
    done_before = await applied(admin_url)
    await feed(topics, later)
    wrong = WorkerProcess(
        {**env, "KAFKA_SASL_PASSWORD": "wrong-" + secrets.token_urlsafe(8)},
        log_dir / "worker-wrong.log",
    ).start()
    began = time.monotonic()

    async def says_why() -> bool:
        return "Authentication failed" in wrong.log_path.read_text(errors="replace")

    await wait_until(
        says_why, timeout_s=30, what="an authentication error logged", workers=(wrong,)
    )
    while time.monotonic() - began < 10:  # long enough for several retries: no crash loop
        assert_alive(wrong)
        status, body = wrong.get("/readyz")
        assert status == 503, (status, body)
        await asyncio.sleep(0.5)
    assert await applied(admin_url) == done_before
    assert wrong.proc is not None
    pid = wrong.proc.pid
    assert_no_secrets(wrong)
    try:
        # A worker stuck waiting for Kafka must still stop when asked to.
        assert wrong.terminate(timeout_s=15) == 0, wrong.tail_log()
    except subprocess.TimeoutExpired:
        wrong.kill()
        pytest.fail(f"SIGTERM did not stop a worker waiting for Kafka (pid {pid})")
    faults = 1

    # -- 3. right credentials again: everything left is processed ----------------------------
    worker = WorkerProcess(env, log_dir / "worker-again.log").start()
    await wait_done(topics, second, admin_url, workers=(worker,), timeout_s=90)
    assert_no_secrets(worker)
    await scenario.conclude(
        "security: login role, SASL, hostile strings",
        second,
        topics,
        database_url=admin_url,
        fresh_database=fresh_database,
        faults=faults,
        stop=(worker,),
    )
