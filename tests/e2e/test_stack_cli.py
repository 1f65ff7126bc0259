"""`capture-worker stack` as a user runs it: a second stack on other ports and its own state dir
(the jar cache is shared), up twice, status, env, restart kafka, down, nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devkit.stack.process import pid_alive, port_open
from tests.fixtures.services import unavailable

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "worker.interfaces.cli.main", "stack"]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        unavailable("native stack", "java not found: install a JDK 17+")
    kafka_port, controller_port, pg_port = free_ports(3)
    state = tmp_path_factory.mktemp("stack-state")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CAPTURE_STACK_", "KAFKA_", "PG"))
        and k not in ("DATABASE_URL", "CAPTURE_ADMIN_DATABASE_URL")
    }
    env |= {
        "CAPTURE_STATE_DIR": str(state),  # CAPTURE_CACHE_DIR stays: the jars are shared
        "CAPTURE_STACK_KAFKA_PORT": str(kafka_port),
        "CAPTURE_STACK_KAFKA_CONTROLLER_PORT": str(controller_port),
        "CAPTURE_STACK_POSTGRES_PORT": str(pg_port),
    }
    try:
        yield env
    finally:
        cli(env, "down", "--purge", timeout=120)


async def login_role(url: str) -> tuple[str, bool, bool]:
    """Who the URL logs in as: name, superuser?, member of capture_worker?"""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT current_user AS name, rolsuper, pg_has_role('capture_worker', 'MEMBER') AS m"
            " FROM pg_roles WHERE rolname = current_user"
        )
        assert row is not None
        return str(row["name"]), bool(row["rolsuper"]), bool(row["m"])
    finally:
        await conn.close()


def status(env: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(cli(env, "status", "--format", "json")))
    services: dict[str, Any] = data["services"]
    return services


def test_up_is_idempotent_status_env_restart_and_down_leaves_nothing(
    stack_env: dict[str, str],
) -> None:
    env = stack_env
    kafka_port = int(env["CAPTURE_STACK_KAFKA_PORT"])
    pg_port = int(env["CAPTURE_STACK_POSTGRES_PORT"])

    ok(cli(env, "up"))

    began = time.monotonic()
    again = ok(cli(env, "up"))
    assert time.monotonic() - began < 10
    assert again.count("already running") == 2, again

    services = status(env)
    assert {name: s["state"] for name, s in services.items()} == {
        "kafka": "running",
        "postgres": "running",
    }
    assert services["kafka"]["endpoint"] == f"127.0.0.1:{kafka_port}"
    assert services["postgres"]["endpoint"] == f"127.0.0.1:{pg_port}"
    assert services["kafka"]["version"].startswith("4.")
    assert Path(services["kafka"]["log"]).is_file()
    pids = {name: s["pid"] for name, s in services.items()}
    assert all(pid_alive(pid) for pid in pids.values())

    exports = ok(cli(env, "env"))
    assert f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port}" in exports
    admin_url = f"postgresql://postgres@127.0.0.1:{pg_port}/capture"
    assert f"export CAPTURE_ADMIN_DATABASE_URL={admin_url}" in exports
    # The worker gets the least-privilege login, its password kept in the state dir (0600).
    password_file = Path(env["CAPTURE_STATE_DIR"]) / "postgres" / "worker-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    login_url = f"postgresql://capture_app:{password}@127.0.0.1:{pg_port}/capture"
    assert f"export DATABASE_URL={login_url}" in exports
    assert asyncio.run(login_role(login_url)) == ("capture_app", False, True)

    ok(cli(env, "restart", "kafka"))
    after = status(env)
    assert after["kafka"]["state"] == "running"
    assert after["kafka"]["pid"] != pids["kafka"]
    assert not pid_alive(pids["kafka"])
    assert after["postgres"]["pid"] == pids["postgres"]
    pids["kafka"] = after["kafka"]["pid"]

    down = ok(cli(env, "down"))
    assert "stopped" in down
    assert not any(pid_alive(pid) for pid in pids.values())
    ports = (kafka_port, int(env["CAPTURE_STACK_KAFKA_CONTROLLER_PORT"]), pg_port)
    assert not any(port_open("127.0.0.1", port) for port in ports)
    assert {s["state"] for s in status(env).values()} == {"stopped"}
