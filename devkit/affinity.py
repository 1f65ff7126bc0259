"""PostgreSQL on cores of its own for a bench run, as if the database had its own machine.

On one machine every part of the pipeline (the worker, Kafka, the bench's publisher, the peer's
JVM, PostgreSQL) takes its CPU from the same cores, so a part that costs CPU slows the database
as much as its own work. In production the database usually runs elsewhere. `bench
--database-cores N` gives the local stack's PostgreSQL the first N of the cores this process may
use and everything else the rest: the postmaster and every process under it (new backends
inherit the postmaster's set), every thread of every Kafka JVM, and this process, whose children
(the worker, Kafka Connect, the publishers) inherit its set. Everything goes back to the set it
had when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]


class SplitError(Exception):
    """The cores cannot be split as asked."""


@dataclass(frozen=True, slots=True)
class CoreSplit:
    database: frozenset[int]
    others: frozenset[int]

    def report(self) -> dict[str, list[int]]:
        return {"postgresql": sorted(self.database), "others": sorted(self.others)}


def plan(database_cores: int, available: Iterable[int]) -> CoreSplit:
    """The first `database_cores` of `available` for PostgreSQL, the rest for the others."""
    cores = sorted(available)
    if not 0 < database_cores < len(cores):
        raise SplitError(
            f"--database-cores {database_cores}: this process may use {len(cores)} core(s) "
            f"({', '.join(map(str, cores))}); PostgreSQL needs at least one and the others "
            "at least one"
        )
    return CoreSplit(frozenset(cores[:database_cores]), frozenset(cores[database_cores:]))


def _threads(pid: int) -> list[int]:
    """Every thread of a process (affinity is per thread on Linux)."""
    with contextlib.suppress(OSError):
        return [int(tid) for tid in os.listdir(Path("/proc") / str(pid) / "task")]
    return []


def _set(pid: int, cores: frozenset[int]) -> None:
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, cores)
        except ProcessLookupError:  # a thread or a process ended meanwhile (a backend leaving)
            continue
        except PermissionError as exc:  # another user's process, without CAP_SYS_NICE
            raise SplitError(f"--database-cores: cannot move process {pid}: {exc}") from exc


def _tree(pid: int) -> list[int]:
    """A process and everything under it, as found now."""
    with contextlib.suppress(psutil.Error):
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    return []


@contextlib.contextmanager
def split_cores(split: CoreSplit, *, postmaster: int, kafka: Iterable[int]) -> Iterator[None]:
    """PostgreSQL (`postmaster` and its tree) on `split.database`; Kafka's JVMs and this process
    on `split.others`; each back on the set it had before, at the end."""
    own = os.getpid()
    kafka = list(kafka)
    # Each process's set as its main thread has it now; the whole tree gets it back.
    before = {pid: frozenset(os.sched_getaffinity(pid)) for pid in [own, postmaster, *kafka]}
    try:
        for pid in _tree(postmaster):
            _set(pid, split.database)
        for pid in [own, *kafka]:
            _set(pid, split.others)
        yield
    finally:
        for pid in _tree(postmaster):
            _set(pid, before[postmaster])
        for pid in [own, *kafka]:
            _set(pid, before[pid])
