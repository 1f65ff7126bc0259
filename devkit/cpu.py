"""Where a phase's CPU went: the worker, PostgreSQL, Kafka and the whole machine.

For the bench's e2e: one sample when the phase starts, one when it ends, and the difference
per command. PostgreSQL is the postmaster, its live children (backends, walwriter,
checkpointer, autovacuum workers) and the children it has reaped; it is found through its
`postmaster.pid`, so only a server on this machine that this user may read is counted (the
local stack). Kafka is every `kafka.Kafka` JVM on the machine. What is not found is left out
of the report rather than guessed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]


def _own_and_reaped(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def _tree(process: psutil.Process) -> float:
    total = _own_and_reaped(process)
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def run_time_s(pid: int) -> float | None:
    """Seconds PID's main thread has run on a core, to the nanosecond; None where the kernel
    does not say (a PostgreSQL backend has no other thread).

    `/proc/PID/stat` (what psutil reads) counts in clock ticks of 10 ms: a run of a few
    hundred commands at some 60 µs each can read as 0 or 1 tick. The scheduler's own sum in
    `/proc/PID/sched` (kernels built with CONFIG_SCHED_DEBUG) is exact.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
            if line.startswith("se.sum_exec_runtime"):
                return float(line.split(":", 1)[1]) / 1000  # milliseconds there
    return None


@dataclass
class ProcessClock:
    """CPU seconds of one process: the scheduler's exact sum, else psutil's clock ticks.

    Which one is decided once, so that two readings to subtract never come from both.
    """

    process: psutil.Process
    exact: bool = field(init=False)

    def __post_init__(self) -> None:
        self.exact = run_time_s(self.process.pid) is not None

    def seconds(self) -> float:
        if self.exact:
            exact = run_time_s(self.process.pid)
            if exact is None:
                raise psutil.NoSuchProcess(self.process.pid)
            return exact
        times = self.process.cpu_times()
        return float(times.user + times.system)


async def postmaster_pid(admin_url: str) -> int | None:
    """The local server's postmaster, or None when it is not readable from here."""
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(admin_url)
        try:
            data_dir = await conn.fetchval("SHOW data_directory")
        finally:
            await conn.close()
        first = (Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    return None


def kafka_pids() -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if "kafka.Kafka" in cmdline:
            found.append(process.pid)
    return found


def kafka_uptime_s() -> float | None:
    """Seconds since the youngest local Kafka JVM started; None when none runs here."""
    started = []
    for pid in kafka_pids():
        with contextlib.suppress(psutil.Error):
            started.append(psutil.Process(pid).create_time())
    return round(time.time() - max(started), 1) if started else None


def _busy(times: Any) -> float:  # psutil's scputimes
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuMeter:
    """CPU seconds of the worker, PostgreSQL, Kafka and the machine between two samples."""

    #: The worker's processes (several with the bench's `--workers`), counted together.
    workers: Sequence[int]
    postmaster: int | None
    kafka: list[int]
    #: Also this process (without its children): the bench's own publisher and reader.
    own: bool = False

    def sample(self) -> dict[str, float]:
        """CPU seconds so far of each part found, by name."""
        seconds: dict[str, float] = {"machine": _busy(psutil.cpu_times())}
        # Each core's too: with PostgreSQL on cores of its own (devkit/affinity.py), whether
        # the database's cores or the others' were the ones short of time.
        for core, times in enumerate(psutil.cpu_times(percpu=True)):
            seconds[f"core{core}"] = _busy(times)
        parts: list[tuple[str, list[int], bool]] = [
            ("worker", list(self.workers), False),
            ("postgresql", [self.postmaster] if self.postmaster else [], True),
            ("kafka", self.kafka, False),
        ]
        if self.own:
            times = psutil.Process().cpu_times()
            seconds["bench"] = float(times.user + times.system)
        for name, pids, tree in parts:
            with contextlib.suppress(psutil.Error):
                if pids:
                    processes = [psutil.Process(pid) for pid in pids]
                    seconds[name] = sum(_tree(p) if tree else _own_and_reaped(p) for p in processes)
        return seconds

    @staticmethod
    def per_command(
        start: dict[str, float], end: dict[str, float], commands: int, wall_s: float
    ) -> dict[str, float]:
        """µs of CPU per command for each part, and the machine's busy share of its cores."""
        report = {
            f"{name}_us": round((end[name] - before) / commands * 1e6, 1)
            for name, before in start.items()
            if name in end and not name.startswith("core")
        }
        # Clock ticks (10 ms) against the wall clock: a short phase can read over 100.
        busy = (end["machine"] - start["machine"]) / (wall_s * (os.cpu_count() or 1))
        report["machine_busy_pct"] = round(100 * min(1.0, busy), 1)
        for name, before in start.items():
            if name.startswith("core") and name in end:
                share = min(1.0, (end[name] - before) / wall_s)
                report[f"{name}_busy_pct"] = round(100 * share, 1)
        return report
