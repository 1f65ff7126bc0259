"""Traces across processes: `publish` starts one per command, the worker continues it onto
the result record (CAPTURE_OTEL=console: spans go to stderr, the headers to Kafka)."""

from __future__ import annotations

import json
from pathlib import Path

from contracts import headers as H
from tests.e2e.test_replay_cli import cli
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import read_all, wait_for_count
from tests.support.streams import make_stream


def trace_id(headers: tuple[tuple[str, bytes], ...]) -> str:
    (parent,) = [v for k, v in headers if k == H.TRACEPARENT]
    return parent.decode().split("-")[1]


async def test_publish_starts_a_trace_per_command_and_the_result_continues_it(
    worker_setup: WorkerSetup, kafka_bootstrap: str, tmp_path: Path
) -> None:
    stream = make_stream(30, users=3, seed=121)
    assert len(stream.valid) == len(stream.valid_ids)  # no producer retry: one result each
    commands_file = tmp_path / "commands.jsonl"
    commands_file.write_text("\n".join(stream.valid) + "\n")
    traced = {**worker_setup.env, "CAPTURE_OTEL": "console"}
    published = cli(traced, "publish", str(commands_file), "--format", "json")
    assert published.returncode == 0, published.stderr
    assert '"name": "' in published.stderr  # the console exporter printed the spans

    sent = await read_all(kafka_bootstrap, worker_setup.commands)
    traces = {json.loads(r.value or b"")["command_id"]: trace_id(r.headers) for r in sent}
    assert len(set(traces.values())) == len(traces) == len(stream.valid_ids)

    worker = worker_setup.start(CAPTURE_OTEL="console")
    worker.wait_ready()
    results = await wait_for_count(kafka_bootstrap, worker_setup.results, len(stream.valid))
    for result in results:
        assert trace_id(result.headers) == traces[json.loads(result.value or b"")["command_id"]]
    assert worker.terminate() == 0
    assert "capture.db ingest" in worker.tail_log(100_000)
