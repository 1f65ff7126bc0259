"""A randomized fault soak in the spirit of Jepsen's nemesis (`make soak MINUTES=10 SEED=n`).

A steady stream goes through three workers on a three-node Kafka cluster while a seeded
schedule, one fault at a time, SIGKILLs or stops a Kafka node, SIGKILLs a worker, or stops
PostgreSQL, and brings each back after a while. At the end: lost=0, doubled=0 (counted from
the database against a direct load of the same commands), one DLQ record per poison message,
and the state digest equals that of a clean `capture-worker replay --reset` of the command
topic into an empty database. The seed and the schedule are printed first, so a failing run
can be replayed with `SEED=<seed>`.

Needs the native stack's PostgreSQL (it stops it); the cluster is its own, on free ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit import stack
from devkit.worker_process import WorkerProcess
from tests.fixtures.cluster import (
    Cluster,
    cluster_setup,
    create_topics,
)
from tests.fixtures.database import WorkerLogin
from tests.support.kafka_io import feed
from tests.support.scenario import (
    Scenario,
    add_stream_with_poison,
    applied,
    ready,
    topics_of,
    wait_done,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent, digest_of, tally

MINUTES = float(os.environ.get("CAPTURE_SOAK_MINUTES") or 10)
SEED = int(os.environ.get("CAPTURE_SOAK_SEED") or random.SystemRandom().randrange(1, 10**6))
RATE_PER_S = 20  # commands per second: steady, well under the worker's capacity here
FAULTS = ("kill-broker", "stop-broker", "kill-worker", "stop-postgres")

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.soak,
    pytest.mark.usefixtures("native_stack"),
    pytest.mark.timeout(int(MINUTES * 60) + 1800),
]


@dataclass
class Fault:
    at_s: float  # seconds after the stream started
    kind: str
    target: int  # kafka node id, or worker slot (0-2); 0 for postgres
    down_s: float

    def line(self) -> str:
        what = {
            "kill-broker": f"SIGKILL kafka node {self.target}",
            "stop-broker": f"stop kafka node {self.target} (SIGTERM)",
            "kill-worker": f"SIGKILL worker {self.target}",
            "stop-postgres": "stop PostgreSQL",
        }[self.kind]
        return f"t={self.at_s:6.1f}s  {what:<34} back after {self.down_s:4.1f}s"


def schedule(seed: int, minutes: float) -> list[Fault]:
    """Faults one after the other: each waits 10-40 s after the previous one healed."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = rng.uniform(10, 30)
    end = minutes * 60 - 20
    while t < end:
        kind = rng.choice(FAULTS)
        target = rng.randint(1, 3) if "broker" in kind else rng.randint(0, 2)
        down = {
            "kill-broker": rng.uniform(5, 25),
            "stop-broker": rng.uniform(5, 30),
            "kill-worker": rng.uniform(1, 8),
            "stop-postgres": rng.uniform(2, 12),
        }[kind]
        faults.append(Fault(round(t, 1), kind, target if kind != "stop-postgres" else 0, down))
        t += down + rng.uniform(10, 40)
    return faults


async def test_soak(
    kafka_cluster: Cluster,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
    tmp_path: Path,
    worker_login: WorkerLogin,
) -> None:
    plan = schedule(SEED, MINUTES)
    print(f"\nsoak: seed {SEED}, {MINUTES:g} min, {len(plan)} faults (SEED={SEED} replays it)")
    for fault in plan:
        print("  " + fault.line())

    rng = random.Random(SEED)
    names = await create_topics(kafka_cluster)
    setup = cluster_setup(kafka_cluster, names, await fresh_database(), tmp_path, worker_login)
    topics = topics_of(setup)
    sent = Sent()
    commands = int(MINUTES * 60 * RATE_PER_S)
    add_stream_with_poison(sent, make_stream(commands, users=40, seed=SEED).valid, rng)
    pg = stack.resolve_config()
    workers: list[WorkerProcess] = []
    began = time.monotonic()
    try:
        workers = [setup.start() for _ in range(3)]
        for worker in workers:
            await ready(worker, 180)
        chunk = RATE_PER_S  # one second of stream per chunk
        feeder = asyncio.create_task(feed(topics, sent.items, chunk=chunk, pause_s=1.0))
        began = time.monotonic()
        executed: list[str] = []
        for fault in plan:
            delay = fault.at_s - (time.monotonic() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            start = time.monotonic() - began
            progress = await applied(setup.database_url)
            if fault.kind == "kill-broker":
                kafka_cluster.kill(fault.target)
                await asyncio.sleep(fault.down_s)
                await kafka_cluster.start(fault.target)
            elif fault.kind == "stop-broker":
                await kafka_cluster.stop(fault.target)
                await asyncio.sleep(fault.down_s)
                await kafka_cluster.start(fault.target)
            elif fault.kind == "kill-worker":
                workers[fault.target].kill()
                await asyncio.sleep(fault.down_s)
                workers[fault.target] = setup.start()
            else:
                await stack.down(pg, services=["postgres"])
                await asyncio.sleep(fault.down_s)
                await stack.up(pg, services=["postgres"])
            healed = time.monotonic() - began
            executed.append(
                f"{fault.line()}  [ran {start:.1f}-{healed:.1f}s at {progress} applied]"
            )
            print("  done: " + executed[-1], flush=True)
        assert await feeder == len(sent.items)
        fed_s = time.monotonic() - began
        await wait_done(topics, sent, setup.database_url, workers=tuple(workers), timeout_s=900)
        for worker in workers:
            assert worker.terminate() == 0, worker.tail_log()
        summary = await tally(
            sent,
            topics,
            database_url=setup.database_url,
            reference_url=await fresh_database(),
            faults=len(plan),
        )
        live_digest = await digest_of(setup.database_url)
        replayed = await _replay(setup.env, await fresh_database())
        print(
            f"\nsoak seed {SEED}: {len(plan)} faults over {fed_s:.0f}s of stream, "
            f"{summary.line()}\n  live digest   {live_digest}\n  replay digest {replayed}"
        )
        for line in executed:
            print("  " + line)
        assert replayed == live_digest, "a clean replay --reset does not rebuild the same state"
        scenario.finish(f"soak: seed {SEED}, {MINUTES:g} min", summary, sent, faults=len(plan))
    finally:
        for worker in [*workers, *setup.processes]:
            worker.kill()
        await stack.up(pg, services=["postgres"])  # whatever happened, leave it running


async def _replay(env: dict[str, str], target: str) -> str:
    """`capture-worker replay --from-beginning --reset` of the command topic into `target`."""
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "worker.interfaces.cli.main",
            "replay",
            *("--from-beginning", "--reset", "--yes", "--rebuild-index"),
            *("--database-url", target, "--format", "json"),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return str(json.loads(result.stdout.strip().splitlines()[-1])["digest"])
