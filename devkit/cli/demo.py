"""`capture-worker demo`: the whole flow on the local stack, in about a minute.

Starts the worker as a real process, publishes generated commands (and a few
poison messages) with the real tools, shows results as they arrive, prints a
summary from the database, then stops the worker the way an orchestrator would
(SIGTERM) and checks that it exited cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Annotated

import asyncpg
import typer
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from devkit.paths import state_dir
from devkit.poison import poison_payloads
from devkit.ports import free_port
from devkit.synthetic import generate_lines
from worker.core.config import Settings, get_settings
from worker.infrastructure.kafka_client import producer_options
from worker.infrastructure.migrations import apply_migrations
from worker.interfaces.cli.output import console, fail

CLI = [sys.executable, "-m", "worker.interfaces.cli.main"]


def _metric(port: int, name: str, label: str = "") -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name + ("{" if label else " ")) and label in line
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


async def _publish_poison(settings: Settings, seed_line: str) -> int:
    first = json.loads(seed_line)
    chosen = poison_payloads(first)[::3]  # a handful of kinds, not all of them
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    try:
        for _, value in chosen:
            await producer.send_and_wait(
                settings.commands_topic, value=value, key=first["user_id"].encode()
            )
    finally:
        await producer.stop()
    return len(chosen)


async def _summary(settings: Settings) -> dict[str, object]:
    conn = await asyncpg.connect(settings.admin_url())  # the tables: the worker's login has none
    try:
        artifacts = await conn.fetchval("SELECT count(*) FROM capture.artifacts")
        signals = await conn.fetchval("SELECT count(*) FROM capture.signals")
        per_user = await conn.fetch(
            "SELECT user_id, count(*) AS n FROM capture.subspaces GROUP BY user_id ORDER BY n DESC"
        )
        levels = await conn.fetch(
            "SELECT engagement_level::text AS level, count(*) AS n FROM capture.artifacts"
            " GROUP BY 1 ORDER BY 1"
        )
        digest = await conn.fetchval("SELECT capture.capture_state_digest()")
    finally:
        await conn.close()
    counts = [int(r["n"]) for r in per_user]
    return {
        "artifacts": artifacts,
        "signals": signals,
        "users": len(counts),
        "subspaces": sum(counts),
        "subspaces_per_user": f"min {min(counts)} / max {max(counts)}" if counts else "-",
        "levels": ", ".join(f"{r['level']} {r['n']}" for r in levels),
        "digest": digest,
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        messages: Annotated[int, typer.Option(help="Generated commands to publish.")] = 2000,
        users: Annotated[int, typer.Option(help="Distinct users in the generated stream.")] = 20,
        seed: Annotated[
            int | None, typer.Option(help="Generator seed (default: new each run).")
        ] = None,
        http_port: Annotated[
            int, typer.Option(help="Worker's health/metrics port (0: pick a free one).")
        ] = 0,
    ) -> None:
        """Run the worker end to end on the local stack and summarise what it did."""
        settings = get_settings()
        http_port = http_port or free_port()
        seed = seed if seed is not None else random.SystemRandom().randrange(1, 1_000_000)
        console.rule("[bold]capture-worker demo")
        applied = asyncio.run(
            apply_migrations(settings.admin_url(), embedding_dim=settings.embedding_dim)
        )
        console.print(
            f"migrations: {len(applied)} applied" if applied else "migrations: up to date"
        )

        log_path = state_dir() / "demo-worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # The worker runs as the least-privilege login of DATABASE_URL (`stack up` made it).
        env = {**os.environ, "CAPTURE_HTTP_PORT": str(http_port), "CAPTURE_LOG_FORMAT": "json"}
        with log_path.open("ab") as log:
            worker = subprocess.Popen([*CLI, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not _ready(http_port):
                if worker.poll() is not None or time.monotonic() > deadline:
                    fail(f"the worker did not become ready; see {log_path}")
                time.sleep(0.2)
            console.print(f"worker ready (pid {worker.pid}, http :{http_port}, log {log_path})")
            before = _metric(http_port, "capture_messages_total", 'status="')

            # Show the first results as they arrive while the rest streams in.
            tail = subprocess.Popen([*CLI, "tail", "--follow", "--max-messages", "8"])
            time.sleep(1.0)  # tail starts at the end: let it take its offsets first
            console.rule(f"publish {messages} generated commands (seed {seed})")
            subprocess.run(
                [
                    *CLI,
                    "publish",
                    "--generate",
                    str(messages),
                    "--users",
                    str(users),
                    "--seed",
                    str(seed),
                ],
                check=True,
            )
            first_line = next(iter(generate_lines(1, users=users, seed=seed)))
            poison = asyncio.run(_publish_poison(settings, first_line))
            console.print(f"and {poison} poison messages (they go to {settings.dlq_topic})")
            console.rule("results as they arrive")
            try:
                tail.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tail.send_signal(signal.SIGINT)
                tail.wait(10)

            expected = messages + poison
            with Progress(
                TextColumn("[bold]processing"), BarColumn(), MofNCompleteColumn(), console=console
            ) as progress:
                task = progress.add_task("", total=expected)
                done, last_change = 0.0, time.monotonic()
                while done < expected and worker.poll() is None:
                    now = _metric(http_port, "capture_messages_total", 'status="') - before
                    if now != done:
                        done, last_change = now, time.monotonic()
                    elif time.monotonic() - last_change > 60:
                        break  # stalled: the summary and the log say more
                    progress.update(task, completed=done, total=max(expected, done))
                    time.sleep(0.3)
            rejected = _metric(http_port, "capture_messages_total", 'status="rejected"')
            dlq = _metric(http_port, "capture_dlq_total", 'kind="')
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(60)

        summary = asyncio.run(_summary(settings))
        table = Table(title="summary", show_header=False)
        table.add_row("processed (this run)", f"{int(done)}")
        table.add_row("rejected → DLQ", f"{int(rejected)} ({int(dlq)} dead-letter records)")
        for key, value in summary.items():
            table.add_row(key.replace("_", " "), str(value))
        table.add_row("worker exit on SIGTERM", "0 (clean)" if code == 0 else f"{code} (NOT clean)")
        console.print(table)
        console.print(
            "next: capture-worker tail --last 3 · capture-worker show --user <id>"
            " · capture-worker replay --help"
        )
        if code != 0 or done < expected:
            raise typer.Exit(1)
