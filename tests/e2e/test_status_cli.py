"""`capture-worker status` against a real worker group, Kafka and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from tests.e2e.test_replay_cli import cli
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import produce, wait_for_count
from tests.support.streams import make_stream


def status(setup: WorkerSetup, *args: str) -> tuple[int, dict[str, Any]]:
    done = cli(setup.env, "status", *args, "--format", "json", timeout=60)
    assert done.returncode in (0, 1), done.stderr + done.stdout
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


async def test_status_shows_lag_members_dlq_and_readiness(
    worker_setup: WorkerSetup, kafka_bootstrap: str
) -> None:
    stream = make_stream(500, users=6, seed=81, poison=True)
    await produce(kafka_bootstrap, worker_setup.commands, stream.records())
    sent = len(stream.records())

    # Nobody consumed yet: everything is lag, and --max-lag fails the check.
    code, before = status(worker_setup, "--max-lag", "0")
    assert code == 1 and before["lag"] == sent and before["members"] == []
    assert all(p["committed"] is None for p in before["partitions"])
    assert sum(p["end"] for p in before["partitions"]) == sent
    assert status(worker_setup, "--max-lag", str(sent))[0] == 0

    worker = worker_setup.start()
    worker.wait_ready()
    await wait_for_count(
        kafka_bootstrap, worker_setup.results, len(stream.valid) + len(stream.readable_poison())
    )
    address = f"127.0.0.1:{worker.http_port}"
    deadline = time.monotonic() + 60
    while True:  # offsets are committed in the background shortly after the results
        code, after = status(worker_setup, "--max-lag", "0", "--http", address)
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0 and after["lag"] == 0, after
    assert after["state"] == "Stable"
    (member,) = after["members"]
    assert sorted(member["partitions"]) == sorted(f"{worker_setup.commands}[{p}]" for p in range(6))
    for partition in after["partitions"]:  # an empty partition has nothing to commit
        assert partition["committed"] == (partition["end"] or None)
    assert after["dlq_size"] == len(stream.poison)
    (probe,) = after["workers"]
    assert probe["ready"] is True and probe["answer"]["consuming"] is True

    # --watch refreshes until interrupted; with --format json one object per refresh.
    watch = ("status", "--watch", "--interval", "0.3", "--format", "json")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "worker.interfaces.cli.main", *watch],
        env={**os.environ, **worker_setup.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        lines = [watcher.stdout.readline() for _ in range(3)]
        assert all(
            json.loads(line)["group"] == worker_setup.env["CAPTURE_CONSUMER_GROUP"]
            for line in lines
        )
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)

    assert worker.terminate() == 0
    # The worker is gone: its group is empty and its address no longer answers.
    code, gone = status(worker_setup, "--http", address)
    assert gone["members"] == [] and gone["workers"][0]["ready"] is False
