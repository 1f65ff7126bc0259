"""`capture-worker run` as a child process: the one helper the tests and the benchmark share.

It takes its own free health port, writes its JSON log to a file, and is stopped by SIGTERM
(`terminate`, `stop`) or SIGKILL of its whole process group (`kill`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devkit.ports import free_port


class WorkerExited(RuntimeError):
    """The worker process ended while it was waited for."""


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    http_port: int = field(default_factory=free_port)
    #: A module imported before the worker starts (tests use it to inject faults in-process).
    preload: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    #: The largest resident set size `watch_rss` sampled, in bytes.
    peak_rss: int = 0

    def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            **self.env,
            "CAPTURE_HTTP_PORT": str(self.http_port),
            "CAPTURE_LOG_FORMAT": "json",
        }
        if self.preload is None:
            command = [sys.executable, "-m", "worker.interfaces.cli.main", "run"]
        else:
            script = (
                f"import importlib, runpy; importlib.import_module({self.preload!r}); "
                "runpy.run_module('worker.interfaces.cli.main', run_name='__main__')"
            )
            command = [sys.executable, "-c", script, "run"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def watch_rss(self, interval_s: float = 0.05) -> None:
        """Sample the process's RSS into `peak_rss` until cancelled."""
        import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 (a devkit extra)

        while True:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    rss = int(psutil.Process(self.proc.pid).memory_info().rss)
                    self.peak_rss = max(self.peak_rss, rss)
            await asyncio.sleep(interval_s)

    def alive(self) -> None:
        """Raise WorkerExited (with the log's tail) when the process has ended."""
        if self.proc is not None and self.proc.poll() is not None:
            raise WorkerExited(f"worker exited with {self.proc.returncode}:\n{self.tail_log()}")

    def get(self, path: str, timeout_s: float = 3.0) -> tuple[int, str]:
        """(status, body) of a GET on the health port; (0, "") when nothing answers."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def readiness(self) -> dict[str, object]:
        status, body = self.get("/readyz")
        answer: dict[str, object] = json.loads(body) if status else {}
        return answer

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Block until /readyz answers 200; returns a wall-clock time no later than the moment
        the worker turned ready: when the last poll that found it not ready was sent (this
        poll's, if the first one found it ready).

        Not when the 200 arrived: the worker's event loop answers /readyz, and once it is
        ready it consumes at once, so that answer can come tens of milliseconds late (results
        of a waiting stream were stored before it) and a clock started then would not count
        the worker's first batch.
        """
        deadline = time.monotonic() + timeout_s
        not_ready_at: float | None = None
        while time.monotonic() < deadline:
            self.alive()
            asked = time.time()
            if self.ready():
                return asked if not_ready_at is None else not_ready_at
            not_ready_at = asked
            time.sleep(0.005)
        raise TimeoutError(f"worker not ready in {timeout_s}s:\n{self.tail_log()}")

    async def wait_ready_async(self, timeout_s: float = 60.0) -> float:
        """`wait_ready` for an event loop that must keep running meanwhile."""
        return await asyncio.to_thread(self.wait_ready, timeout_s)

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's samples whose label text contains `labels`."""
        return metric_sum(self.metrics(), name, labels)

    def metrics(self) -> str:
        """The worker's /metrics now: read several values of one moment with `metric_sum`."""
        return self.get("/metrics")[1]

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for the exit code (a clean stop commits and leaves the group)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    async def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within `timeout_s`; never raises."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            await asyncio.to_thread(self.terminate, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def metric_sum(body: str, name: str, labels: str = "") -> float:
    """Sum of the samples of `name` in a /metrics text whose label text contains `labels`."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and (line[len(name)] in "{ ") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class WorkerGroup:
    """Worker processes of one consumer group, started and stopped together (the bench's
    `--workers`): each takes its share of the partitions."""

    processes: list[WorkerProcess]

    def start(self) -> WorkerGroup:
        for process in self.processes:
            process.start()
        return self

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.processes if p.proc is not None]

    @property
    def peak_rss(self) -> int:
        """The largest peak of one process."""
        return max((p.peak_rss for p in self.processes), default=0)

    @property
    def total_peak_rss(self) -> int:
        """The processes' peaks added up: at most what they held together."""
        return sum(p.peak_rss for p in self.processes)

    async def watch_rss(self, interval_s: float = 0.05) -> None:
        await asyncio.gather(*(p.watch_rss(interval_s) for p in self.processes))

    def alive(self) -> None:
        for process in self.processes:
            process.alive()

    async def wait_ready_async(self, timeout_s: float = 60.0) -> float:
        """When the last of them turned ready (see WorkerProcess.wait_ready)."""
        ready = await asyncio.gather(*(p.wait_ready_async(timeout_s) for p in self.processes))
        return max(ready)

    def metrics(self) -> str:
        """Every process's /metrics, one after the other: `metric_sum` adds them up."""
        return "\n".join(p.metrics() for p in self.processes)

    async def stop(self, timeout_s: float = 60.0) -> None:
        await asyncio.gather(*(p.stop(timeout_s) for p in self.processes))
