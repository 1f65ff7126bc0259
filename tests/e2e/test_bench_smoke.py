"""`capture-worker bench` runs end to end and reports sane numbers (a smoke test, not a timing).

The numbers of a 300-command run on a shared machine say nothing about performance; the test
only checks that every phase ran, that the report has its shape, and that the run cleaned up.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from devkit import cpu

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "worker.interfaces.cli.main"]


async def _bench(
    kafka_bootstrap: str, pg_admin_url: str, *args: str, settings: dict[str, str] | None = None
) -> dict[str, Any]:
    """`bench ARGS --format json` as a child process, `settings` in its (and so its worker's)
    environment; its report (it must exit 0)."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": pg_admin_url,
        "CAPTURE_LOG_FORMAT": "json",
        **(settings or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "bench",
        *args,
        "--format",
        "json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 600)
    finally:
        if proc.returncode is None:  # timed out: stop the bench, whatever happens
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


async def _nothing_left_behind(
    report: dict[str, Any], pg_admin_url: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    run_id = report["run_id"]
    conn = await asyncpg.connect(pg_admin_url)
    try:
        left = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", f"cw_bench_{run_id}%"
        )
    finally:
        await conn.close()
    assert left == []
    assert not [t for t in await kafka_admin.list_topics() if run_id in t]


def _positive(report: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = report[key]
        assert isinstance(value, int | float) and value > 0, (key, value)


@pytest.mark.timeout(
    660
)  # a generous deadline: a loaded 2-core machine runs it several times slower
async def test_bench_reports_every_measure_as_one_json_object(
    kafka_bootstrap: str, pg_admin_url: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    report = await _bench(
        kafka_bootstrap,
        pg_admin_url,
        "--messages", "300",
        "--naive-messages", "100",
        "--latency-seconds", "2",
        "--latency-rate", "150",
        "--latency-rate", "half",
        "--rounds", "2",
    )  # fmt: skip

    assert report["messages"] == 300
    assert report["naive_messages"] == 100
    assert report["hnsw_index"] is True
    _positive(report, "b_sql_per_s", "b_kafka_per_s", "e2e_per_s", "naive_per_s")
    assert set(report["ratios"]) == {"e2e/b_sql", "e2e/naive"}
    assert all(r > 0 for r in report["ratios"].values())
    # Two rounds, each e2e paired with its own b_sql; the report gives their medians.
    rounds = report["rounds"]
    assert len(rounds) == 2
    for pair in rounds:
        _positive(pair, "b_sql_per_s", "e2e_per_s")
        assert pair["e2e/b_sql"] == pytest.approx(pair["e2e_per_s"] / pair["b_sql_per_s"], 0.01)
    assert report["e2e_per_s"] == pytest.approx(sum(r["e2e_per_s"] for r in rounds) / 2, 0.01)
    assert report["ratios"]["e2e/b_sql"] == pytest.approx(
        sum(r["e2e/b_sql"] for r in rounds) / 2, 0.01
    )
    latency = report["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # At the rate asked for first, not half the e2e rate: 2 s at 150/s.
    assert latency["rate_per_s"] == 150 and latency["messages"] == 300
    assert latency["half_e2e"] is False
    # Then a phase at half the e2e rate, on commands of its own: every one has its result.
    first, half = report["latency_by_rate"]
    assert first == latency
    assert half["half_e2e"] is True
    assert half["rate_per_s"] == pytest.approx(report["e2e_per_s"] / 2, abs=0.1)
    assert half["messages"] == max(1, round(half["rate_per_s"] * 2))
    assert 0 <= half["p50"] <= half["p99"] <= half["max"]
    # Its p99 second by second: the commands were sent over about two seconds.
    by_second = latency["p99_by_second"]
    assert 2 <= len(by_second) <= 4
    assert all(0 <= p99 <= latency["max"] for p99 in by_second)
    # The worker ended in the very state PostgreSQL alone produced from the same commands.
    assert report["same_state"] is True
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["postgresql"] and machine["kafka"]
    assert machine["kafka_uptime_s"] > 0  # the stack's broker runs here: its age is known
    # The stack's PostgreSQL and Kafka run on this machine: each part's CPU is found and counted.
    # The bench's own share too: in e2e only its reader runs (it may not use one clock tick of
    # a short phase), in the latency phase its publisher as well.
    for used, parts in (
        (report["e2e_cpu"], ("worker_us", "postgresql_us", "kafka_us", "machine_us")),
        (latency["cpu"], ("worker_us", "postgresql_us", "kafka_us", "bench_us", "machine_us")),
    ):
        for part in parts:
            assert used[part] > 0, (part, used)
        assert used["bench_us"] >= 0
        assert 0 < used["machine_busy_pct"] <= 100
    # The worker's mean batch at the steady rate: records per partition batch, so at least one
    # and at most all of them.
    assert 1 <= latency["batch_mean"] <= latency["messages"]
    # The worker's own count of where the time went: a batch's oldest command was taken by
    # its lane, then its result acknowledged, within the phase's worst latency.
    ages = latency["batch_oldest_age_ms"]
    assert 0 <= ages["taken"] <= ages["delivered"] <= latency["max"] + 50
    # By default each lane calls the database on its own: no call is shared, none counted.
    assert report["worker_settings"]["db_max_calls"] == 0
    assert latency["chunks_per_db_call"] is None

    # Nothing of the run is left behind.
    await _nothing_left_behind(report, pg_admin_url, kafka_admin)


@pytest.mark.timeout(660)
async def test_bench_measures_the_debezium_peer_beside_the_worker(
    kafka_bootstrap: str, pg_admin_url: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    """`--peer debezium-jdbc`: Kafka Connect runs the sink on the same commands, every row lands
    (the phase waits for all of them), and the report pairs its rate with the worker's.

    With `--database-cores 1`: PostgreSQL on a core of its own for the run, then back on all.
    With `--workers 2`: two worker processes in one group drain the stream, which the bench
    holds back in a transaction until their group has formed."""
    postmaster = await cpu.postmaster_pid(pg_admin_url)
    assert postmaster is not None, "the stack's PostgreSQL must run on this machine"
    cores = sorted(os.sched_getaffinity(postmaster))
    assert len(cores) >= 2, f"--database-cores 1 needs two cores; PostgreSQL may use {cores}"
    report = await _bench(
        kafka_bootstrap,
        pg_admin_url,
        "--messages", "300",
        "--naive-messages", "20",
        "--latency-seconds", "1",
        "--no-index",
        "--peer", "debezium-jdbc",
        "--peer-tasks", "2",
        "--peer-tasks", "1",
        "--database-cores", "1",
        "--workers", "2",
        settings={"CAPTURE_DB_MAX_CALLS": "2", "CAPTURE_DB_MAX_WAIT_MS": "20"},
    )  # fmt: skip

    # Both processes together ingested every command once: the state PostgreSQL alone made.
    assert report["same_state"] is True
    assert report["workers"] == 2
    assert report["workers_peak_rss_mib"] > report["worker_peak_rss_mib"] > 0
    # The worker ran with the setting given to the bench, and counted its calls' chunks.
    assert report["worker_settings"]["db_max_calls"] == 2
    assert report["worker_settings"]["db_max_wait_ms"] == 20
    assert report["latency_ms"]["chunks_per_db_call"] >= 1
    peer = report["peer"]
    assert peer["versions"] == {"debezium": "3.6.0.Final", "connect": "4.1.1"}
    # Warm (after as many commands) and cold (from a fresh Connect's tasks running).
    for measure in ("per_s", "per_s_cold"):
        assert set(peer[measure]) == {"2", "1"}
        assert all(rate > 0 for rate in peer[measure].values())
    (round_,) = report["rounds"]
    for tasks, rate in round_["peer_per_s"].items():
        assert peer["e2e/peer"][tasks] == pytest.approx(report["e2e_per_s"] / rate, 0.01)
        assert peer["e2e/peer_by_round"][tasks] == [peer["e2e/peer"][tasks]]
    for tasks, rate in round_["peer_cold_per_s"].items():
        assert peer["e2e/peer_cold"][tasks] == pytest.approx(report["e2e_per_s"] / rate, 0.01)
    assert peer["jvms"] == 1
    assert set(peer["peak_rss_mib"]) == {"2", "1"}
    assert all(mib > 0 for mib in peer["peak_rss_mib"].values())

    # The split it ran with, each core's busy share beside it, and the server back on all cores.
    allowed = sorted(os.sched_getaffinity(0))
    assert report["machine"]["cpu_split"] == {"postgresql": allowed[:1], "others": allowed[1:]}
    for core in range(len(psutil.cpu_times(percpu=True))):
        assert 0 <= report["e2e_cpu"][f"core{core}_busy_pct"] <= 100
    assert sorted(os.sched_getaffinity(postmaster)) == cores

    await _nothing_left_behind(report, pg_admin_url, kafka_admin)


@pytest.mark.timeout(660)
async def test_bench_measures_the_peer_as_a_connect_cluster(
    kafka_bootstrap: str, pg_admin_url: str, kafka_admin: AIOKafkaAdminClient
) -> None:
    """`--peer-workers 2`: the sink on two Connect JVMs in distributed mode, its two tasks one on
    each (the bench fails when they do not spread), every row landed; the cluster's own topics
    are dropped with the run's."""
    report = await _bench(
        kafka_bootstrap,
        pg_admin_url,
        "--messages", "300",
        "--naive-messages", "20",
        "--latency-seconds", "1",
        "--no-index",
        "--peer", "debezium-jdbc",
        "--peer-tasks", "2",
        "--peer-workers", "2",
    )  # fmt: skip
    peer = report["peer"]
    assert peer["jvms"] == 2 and "distributed" in peer["name"]
    assert peer["per_s"]["2"] > 0 and peer["per_s_cold"]["2"] > 0
    assert peer["peak_rss_mib"]["2"] > 0  # both JVMs' peaks, added up
    await _nothing_left_behind(report, pg_admin_url, kafka_admin)


async def test_a_split_that_leaves_no_core_for_the_rest_is_refused_before_anything_runs(
    kafka_bootstrap: str, pg_admin_url: str
) -> None:
    cores = len(os.sched_getaffinity(0))
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "bench",
        "--database-cores",
        str(cores),
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": pg_admin_url,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    message = " ".join(err.decode().split())
    assert f"--database-cores {cores}: this process may use {cores} core(s)" in message
