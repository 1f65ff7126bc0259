"""The CPU clock bench-db reads a server process with: exact where the kernel says."""

import os
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from devkit.cpu import CpuMeter, ProcessClock, run_time_s


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


def test_per_command_shares_the_cores_over_the_window_given_and_never_above_all_of_them() -> None:
    cores = os.cpu_count() or 1
    start = {"machine": 10.0, "worker": 1.0, "core0": 5.0}
    # 1.5 core-seconds of the machine and 0.3 of the worker's over a 1 s window.
    end = {"machine": 11.5, "worker": 1.3, "core0": 5.75}
    used = CpuMeter.per_command(start, end, 1000, 1.0)
    assert used["worker_us"] == 300.0
    assert used["machine_us"] == 1500.0
    assert used["machine_busy_pct"] == round(min(100.0, 150.0 / cores), 1)
    assert used["core0_busy_pct"] == 75.0
    # Clock ticks of 10 ms against a short window can count more CPU than the cores had.
    short = CpuMeter.per_command(start, end, 1000, 0.01)
    assert short["machine_busy_pct"] == 100.0
    assert short["core0_busy_pct"] == 100.0
