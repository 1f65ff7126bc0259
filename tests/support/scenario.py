"""What the fault-injection scenarios share: the scenario record (its summary row), waiting on
workers and results, counting what was applied, and driving the local stack.

The rows are printed as a table at the end of the run by tests/reliability/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from devkit.poison import poison_payloads
from devkit.worker_process import WorkerProcess
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka_io import Topics, count, uncommitted
from tests.support.tally import Sent, Summary, readable_command_id, tally

VALID_HEADERS = [("trace-id", b"t-1")]
POISON_HEADERS = [("trace-id", b"\xff\xfe raw")]  # not UTF-8: must reach the DLQ untouched


@dataclass
class Row:
    nodeid: str
    title: str
    summary: Summary | None  # None: the scenario failed before it could count
    seconds: float


@dataclass
class Scenario:
    """What a test reports: its title, and its summary line once it has one."""

    nodeid: str
    rows: list[Row]
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    def finish(self, title: str, summary: Summary, sent: Sent, *, faults: int) -> None:
        """Record the summary line (so the table shows failures too), then assert on it."""
        self.finished = True
        self.rows.append(Row(self.nodeid, title, summary, time.monotonic() - self.started))
        print(f"\n{title}: {summary.line()}")
        assert not summary.problems, "\n".join(summary.problems)
        assert summary.line() == summary.expected_line(sent, faults)

    async def conclude(
        self,
        title: str,
        sent: Sent,
        topics: Topics,
        *,
        database_url: str,
        fresh_database: Callable[[], Awaitable[str]],
        faults: int,
        stop: Sequence[WorkerProcess] = (),
    ) -> Summary:
        """How every scenario ends: the workers in `stop` exit cleanly (0, after SIGTERM), then
        the tally against a fresh database fed the same valid commands, recorded and asserted."""
        for worker in stop:
            assert worker.terminate() == 0, worker.tail_log()
        summary = await tally(
            sent,
            topics,
            database_url=database_url,
            reference_url=await fresh_database(),
            faults=faults,
        )
        self.finish(title, summary, sent, faults=faults)
        return summary


def topics_of(setup: WorkerSetup) -> Topics:
    return Topics(
        setup.env["KAFKA_BOOTSTRAP_SERVERS"],
        setup.commands,
        setup.results,
        setup.dlq,
        setup.env["CAPTURE_CONSUMER_GROUP"],
    )


def assert_alive(*workers: WorkerProcess) -> None:
    """A worker we did not kill must still be running: a crash is a failure of the scenario."""
    for worker in workers:
        assert worker.proc is not None
        code = worker.proc.poll()
        assert code is None, f"worker died unexpectedly (exit {code}):\n{worker.tail_log()}"


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout_s: float,
    what: str,
    workers: tuple[WorkerProcess, ...] = (),
    poll_s: float = 0.2,
) -> None:
    """Poll a condition; fail fast when one of `workers` dies while we wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        assert_alive(*workers)
        if time.monotonic() >= deadline:
            logs = "\n".join(w.tail_log(15) for w in workers)
            raise TimeoutError(f"{what}: not reached after {timeout_s}s\n{logs}")
        await asyncio.sleep(poll_s)


async def ready(worker: WorkerProcess, timeout_s: float = 60.0) -> None:
    # WorkerProcess.wait_ready sleeps synchronously; a thread keeps this loop (feeders) going.
    await asyncio.to_thread(worker.wait_ready, timeout_s)


def add_stream_with_poison(sent: Sent, lines: list[str], rng: random.Random) -> None:
    """The valid lines in order, with every poison kind of SPEC §6 at random places after the
    first line (the conflict poison reuses its command id: same key, so it must follow it)."""
    first = json.loads(lines[0])
    poison = poison_payloads(first)
    at = dict(zip(sorted(rng.sample(range(1, len(lines)), len(poison))), poison, strict=True))
    for index, line in enumerate(lines):
        if index in at:
            kind, value = at[index]
            sent.add_poison(
                value, {kind.value}, key=first["user_id"].encode(), headers=POISON_HEADERS
            )
        sent.add_valid([line], VALID_HEADERS)


async def applied(database_url: str) -> int:
    """Signal rows so far: the database's own progress counter (one per accepted command);
    -1 while the database does not answer (the scenario may have stopped it)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return -1
    try:
        return int(await conn.fetchval("SELECT count(*) FROM capture.signals"))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return -1
    finally:
        await conn.close()


async def wait_applied(
    database_url: str, at_least: int, *, workers: tuple[WorkerProcess, ...], timeout_s: float
) -> None:
    """Until the database has applied `at_least` commands (a scenario's "mid-stream")."""

    async def reached() -> bool:
        return await applied(database_url) >= at_least

    await wait_until(reached, timeout_s=timeout_s, what=f"{at_least} applied", workers=workers)


async def stack(*args: str) -> None:
    """`capture-worker stack ...` as an operator runs it (a thread: it takes seconds)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker.interfaces.cli.main", "stack", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"stack {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@dataclass
class ReadinessWatch:
    """Samples a worker's /readyz in the background: did it report `dependency` down?"""

    worker: WorkerProcess
    dependency: str
    down_seen: bool = False
    samples: int = 0
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            report = await asyncio.to_thread(self.worker.readiness)
            self.samples += 1
            deps = report.get("dependencies") if report else None
            if isinstance(deps, dict) and not report.get("ready"):
                state = deps.get(self.dependency)
                if isinstance(state, dict) and state.get("up") is False:
                    self.down_seen = True
            await asyncio.sleep(0.25)

    def __enter__(self) -> ReadinessWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def wait_done(
    topics: Topics,
    sent: Sent,
    database_url: str,
    *,
    workers: tuple[WorkerProcess, ...],
    timeout_s: float = 180.0,
) -> None:
    """Until every valid command is applied, every record with readable ids has its result,
    every poison record its dead letter, and the group has committed all of it."""
    total = len(sent.valid_ids)
    results_due = sum(1 for _, value, _ in sent.items if readable_command_id(value) is not None)

    progress = ""

    async def done() -> bool:
        nonlocal progress
        counts = (
            await applied(database_url),
            await count(topics, topics.results),
            await count(topics, topics.dlq),
            await uncommitted(topics),
        )
        progress = (
            f"applied {counts[0]}/{total}, results {counts[1]}/{results_due}, "
            f"dlq {counts[2]}/{sent.poison_count}, uncommitted {counts[3]}"
        )
        return (
            counts[0] >= total
            and counts[1] >= results_due
            and counts[2] >= sent.poison_count
            and counts[3] == 0
        )

    try:
        await wait_until(
            done, timeout_s=timeout_s, what="stream fully processed", workers=workers, poll_s=0.5
        )
    except TimeoutError as exc:
        raise TimeoutError(f"{progress}\n{exc}") from None
