"""`bench --database-cores`: the local stack's PostgreSQL on cores of its own, Kafka and this
process on the rest, and every process and thread back on its own set afterwards
(devkit.affinity.split_cores), on the real servers."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from devkit import affinity, cpu


def _threads_of(pid: int) -> set[frozenset[int]]:
    """The distinct core sets of a process's threads."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def _child_cores() -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(*sorted(os.sched_getaffinity(0)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(core) for core in out.stdout.split()]


@pytest.fixture
async def servers(pg_admin_url: str) -> tuple[int, list[int]]:
    """The local stack's postmaster and Kafka JVMs (the split is for a stack on this machine)."""
    available = os.sched_getaffinity(0)
    assert len(available) >= 2, f"a split needs two cores; this process may use {available}"
    postmaster = await cpu.postmaster_pid(pg_admin_url)
    kafka = cpu.kafka_pids()
    assert postmaster is not None and kafka, "PostgreSQL and Kafka must run on this machine"
    return postmaster, kafka


async def test_postgresql_and_the_rest_on_cores_of_their_own_then_back(
    servers: tuple[int, list[int]], pg_admin_url: str
) -> None:
    postmaster, kafka = servers
    split = affinity.plan(1, os.sched_getaffinity(0))
    before = {pid: _threads_of(pid) for pid in [postmaster, os.getpid(), *kafka]}
    existing = await asyncpg.connect(pg_admin_url)  # a backend from before the split
    try:
        old_backend = await existing.fetchval("SELECT pg_backend_pid()")
        old_before = _threads_of(old_backend)
        with affinity.split_cores(split, postmaster=postmaster, kafka=kafka):
            fresh = await asyncpg.connect(pg_admin_url)  # forked by the postmaster meanwhile
            try:
                new_backend = await fresh.fetchval("SELECT pg_backend_pid()")
                # A backend that reads and writes runs on the database's core only.
                await fresh.execute("SELECT count(*) FROM pg_class")
                assert _threads_of(new_backend) == {split.database}
            finally:
                await fresh.close()
            assert _threads_of(old_backend) == {split.database}
            assert _threads_of(postmaster) == {split.database}
            for jvm in kafka:  # every thread of the broker, not only its main one
                assert _threads_of(jvm) == {split.others}
            assert _threads_of(os.getpid()) == {split.others}
            # What the bench starts (the worker, Connect, publishers) inherits the others' set.
            assert _child_cores() == sorted(split.others)
        assert _threads_of(old_backend) == old_before
    finally:
        await existing.close()
    for pid, sets in before.items():
        assert _threads_of(pid) == sets, pid
    assert _child_cores() == sorted(os.sched_getaffinity(0))


async def test_everything_goes_back_when_the_run_fails(
    servers: tuple[int, list[int]],
) -> None:
    postmaster, kafka = servers
    split = affinity.plan(1, os.sched_getaffinity(0))
    before = {pid: _threads_of(pid) for pid in [postmaster, os.getpid(), *kafka]}
    with (
        pytest.raises(RuntimeError, match="a phase failed"),
        affinity.split_cores(split, postmaster=postmaster, kafka=kafka),
    ):
        assert _threads_of(postmaster) == {split.database}
        raise RuntimeError("a phase failed")
    for pid, sets in before.items():
        assert _threads_of(pid) == sets, pid
