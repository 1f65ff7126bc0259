"""The worker runs as a least-privilege login and refuses a superuser unless allowed (SPEC §4)."""

from __future__ import annotations

import json
import time

from tests.fixtures.workers import WorkerSetup


def test_a_superuser_database_url_is_refused_with_the_way_out(worker_setup: WorkerSetup) -> None:
    worker = worker_setup.start(DATABASE_URL=worker_setup.database_url)  # the owner: superuser
    assert worker.proc is not None
    code = worker.proc.wait(timeout=60)
    assert code == 2, worker.tail_log()
    errors = [
        json.loads(line)
        for line in worker.log_path.read_text().splitlines()
        if line.startswith("{") and '"error"' in line
    ]
    assert len(errors) == 1, worker.tail_log()
    reason = errors[0]["reason"]
    assert "a superuser" in reason
    assert "capture-worker db create-login" in reason and "CAPTURE_ALLOW_SUPERUSER=1" in reason
    assert "waiting for dependency" not in worker.log_path.read_text()  # no retry loop


def test_allowed_superuser_and_the_login_both_start(worker_setup: WorkerSetup) -> None:
    allowed = worker_setup.start(
        DATABASE_URL=worker_setup.database_url, CAPTURE_ALLOW_SUPERUSER="1"
    )
    allowed.wait_ready()
    assert allowed.terminate() == 0
    login = worker_setup.start()  # the fixture's DATABASE_URL: the capture_worker login
    started = time.monotonic()
    login.wait_ready()
    assert time.monotonic() - started < 60
    assert login.terminate() == 0
