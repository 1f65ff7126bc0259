"""The bench's e2e clock starts at `WorkerProcess.wait_ready`'s time: never after the worker
turned ready, even when its busy event loop answers /readyz late."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devkit.worker_process import WorkerProcess


class _Readiness:
    def __init__(self) -> None:
        self.ready_since: float | None = None


@pytest.fixture
def health(tmp_path: Path) -> Iterator[tuple[WorkerProcess, _Readiness]]:
    state = _Readiness()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ready = state.ready_since is not None
            if ready:
                time.sleep(0.2)  # a worker busy with its first batch answers late
            self.send_response(200 if ready else 503)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WorkerProcess(env={}, log_path=tmp_path / "log", http_port=server.server_port), state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_ready_time_is_not_after_the_worker_turned_ready(
    health: tuple[WorkerProcess, _Readiness],
) -> None:
    worker, state = health

    def turn_ready() -> None:
        time.sleep(0.3)
        state.ready_since = time.time()

    flipper = threading.Thread(target=turn_ready)
    flipper.start()
    started = worker.wait_ready(timeout_s=30)
    flipper.join()
    assert state.ready_since is not None
    assert started <= state.ready_since
    # The poll before the flip, not an arbitrary early time (generous: a loaded machine).
    assert started > state.ready_since - 2.0
