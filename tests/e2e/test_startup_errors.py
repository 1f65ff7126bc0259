"""A worker that cannot start says why in one line and exits 2 (no traceback, no retry loop)."""

from __future__ import annotations

import json
import socket
import time

from devkit.worker_process import WorkerProcess
from tests.fixtures.workers import WorkerSetup


def test_a_busy_health_port_is_one_line_naming_the_port_and_the_variable(
    worker_setup: WorkerSetup,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = WorkerProcess(
            worker_setup.env, worker_setup.log_dir / "busy.log", http_port=port
        ).start()
        try:
            assert worker.proc is not None
            assert worker.proc.wait(timeout=60) == 2, worker.tail_log()
        finally:
            worker.kill()
    log = worker.log_path.read_text()
    assert "Traceback" not in log
    errors = [json.loads(line) for line in log.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, log
    reason = errors[0]["reason"]
    assert f"127.0.0.1:{port}" in reason and "CAPTURE_HTTP_PORT" in reason
    assert "0 picks one" in reason


def listening_port(worker: WorkerProcess, timeout_s: float = 60.0) -> int:
    """The port of the worker's "http listening" log line, once it is written."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in worker.log_path.read_text().splitlines():
            if '"http listening"' in line:
                port = json.loads(line)["port"]
                assert isinstance(port, int)
                return port
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail_log()
        time.sleep(0.2)
    raise TimeoutError(f"no 'http listening' line in {timeout_s}s:\n{worker.tail_log()}")


def test_port_zero_picks_a_free_port_and_logs_it(worker_setup: WorkerSetup) -> None:
    worker = WorkerProcess(worker_setup.env, worker_setup.log_dir / "zero.log", http_port=0)
    worker.start()
    try:
        worker.http_port = listening_port(worker)
        assert worker.http_port > 0
        worker.wait_ready()
        assert worker.terminate() == 0
    finally:
        worker.kill()
