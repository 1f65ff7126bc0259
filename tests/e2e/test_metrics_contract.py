"""A running worker's /metrics carries every metric the alert rules and the dashboard use."""

from __future__ import annotations

from devkit.worker_process import metric_sum
from tests.fixtures.workers import WorkerSetup
from tests.support.kafka import produce, wait_for_count
from tests.support.promql import (
    alert_expressions,
    dashboard_expressions,
    exported_names,
    metric_names,
)
from tests.support.scenario import wait_until
from tests.support.streams import make_stream


async def test_rules_and_dashboard_use_only_what_a_running_worker_exports(
    worker_setup: WorkerSetup, kafka_bootstrap: str
) -> None:
    stream = make_stream(50, users=2, seed=91, poison=True)
    await produce(kafka_bootstrap, worker_setup.commands, stream.records())
    worker = worker_setup.start()
    worker.wait_ready()
    await wait_for_count(
        kafka_bootstrap, worker_setup.results, len(stream.valid) + len(stream.readable_poison())
    )
    status, body = worker.get("/metrics")
    assert status == 200
    exported = exported_names(body)
    used = {name for expr in alert_expressions().values() for name in metric_names(expr)}
    used |= {
        name
        for exprs in dashboard_expressions().values()
        for expr in exprs
        for name in metric_names(expr)
    }
    assert "capture_internal_errors_total" in used
    assert used <= exported, f"used but not on /metrics: {sorted(used - exported)}"
    # Not only declared: the series the rules watch carry samples on a live worker.
    samples = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line[:1] != "#"}
    for name in ("capture_ready", "capture_consumer_lag", "capture_messages_total",
                 "capture_dlq_total", "capture_dependency_up", "capture_db_call_seconds_bucket",
                 "capture_internal_errors_total"):  # fmt: skip
        assert name in samples, name
    # Each batch's oldest command, when taken and when delivered: the stream was published
    # before the worker started, so some time passed, and less than the test's deadline.
    # (A batch's delivery is counted just after its results are acknowledged: wait for it.)
    ages: dict[tuple[str, str], float] = {}

    async def every_batch_delivered() -> bool:
        scrape = worker.metrics()  # every value of one moment
        ages.update(
            (
                (stage, part),
                metric_sum(scrape, f"capture_record_age_seconds_{part}", f'stage="{stage}"'),
            )
            for stage in ("taken", "delivered")
            for part in ("count", "sum")
        )
        count = ages[("taken", "count")]
        return count >= 1 and ages[("delivered", "count")] == count

    await wait_until(every_batch_delivered, timeout_s=60, what="every batch delivered")
    assert 0 < ages[("taken", "sum")] <= ages[("delivered", "sum")]
    assert ages[("delivered", "sum")] < 600 * ages[("delivered", "count")]
    assert worker.terminate() == 0
