"""The CPU clock bench-db reads a server process with: exact where the kernel says."""

import os
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from devkit.cpu import ProcessClock, run_time_s


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_clock_counts_cpu_spent_and_agrees_with_the_tick_count() -> None:
    clock = ProcessClock(psutil.Process())
    ticks_before = sum(psutil.Process().cpu_times()[:2])
    before = clock.seconds()
    _spin(0.2)
    spent = clock.seconds() - before
    ticks = sum(psutil.Process().cpu_times()[:2]) - ticks_before
    assert spent >= 0.2
    # Both count the same CPU (the ticks all threads', the test's other threads idle); the
    # ticks within two of their 10 ms, and some margin.
    assert abs(spent - ticks) < 0.05


def test_a_millisecond_reads_as_such_where_the_kernel_keeps_the_scheduler_sum() -> None:
    clock = ProcessClock(psutil.Process())
    exact = Path("/proc/self/sched").exists()
    assert clock.exact is exact
    if not exact:
        assert run_time_s(os.getpid()) is None
        return
    before = clock.seconds()
    _spin(0.001)
    spent = clock.seconds() - before
    # Under a tick: psutil's clock would mostly read 0 here.
    assert 0.001 <= spent < 0.009


def test_a_process_that_is_gone_has_no_scheduler_sum() -> None:
    child = psutil.Popen(["true"])
    child.wait()
    assert run_time_s(child.pid) is None
