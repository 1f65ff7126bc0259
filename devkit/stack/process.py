"""Process plumbing of the local stack: detached start, pid checks, stop by pid, locks, state files.

Everything here is blocking; the async orchestration in `manager.py` calls it through
`asyncio.to_thread` where it may wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped]


class StackError(Exception):
    """A local service could not be prepared, started, probed or stopped; the message says why."""


# Children we spawned ourselves: kept so that they can be reaped (no zombies, no ResourceWarning).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, kw_only=True)
class RunAs:
    """The system user a service runs as (PostgreSQL refuses to run as root)."""

    name: str
    uid: int
    gid: int


def pid_alive(pid: int | None) -> bool:
    """True when `pid` names a live process; zombies count as dead (and are reaped if ours)."""
    if pid is None or pid <= 0:
        return False
    try:
        status = psutil.Process(pid).status()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if status == psutil.STATUS_ZOMBIE:
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def cmdline(pid: int) -> list[str]:
    try:
        return [str(part) for part in psutil.Process(pid).cmdline()]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def process_matches(pid: int | None, *needles: str) -> bool:
    """True when `pid` is alive and its command line mentions every needle (guards pid reuse)."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    line = " ".join(cmdline(pid))
    return all(needle in line for needle in needles)


def find_processes(*needles: str) -> list[int]:
    """Live processes whose command line mentions every needle (a service without pid file)."""
    found: list[int] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(str(part) for part in (proc.info.get("cmdline") or []))
        pid = int(proc.info["pid"])
        if pid != os.getpid() and all(n in line for n in needles) and pid_alive(pid):
            found.append(pid)
    return found


def spawn_detached(
    argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start `argv` in its own session, stdout+stderr appended to `log_path`; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    _children[child.pid] = child
    return child.pid


def run(
    argv: Sequence[str],
    *,
    log_path: Path,
    what: str,
    cwd: Path | None = None,
    run_as: RunAs | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> None:
    """Run a set-up command to completion, output appended to `log_path`; StackError on failure.

    Output goes to a file, not a pipe: `pg_ctl start` leaves a server behind that could
    otherwise hold the pipe open.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{what} timed out after {timeout:.0f}s; see {log_path}") from exc
        except FileNotFoundError as exc:
            raise StackError(f"{what}: {argv[0]} not found") from exc
    if result.returncode != 0:
        raise StackError(
            f"{what} failed (exit {result.returncode}); see {log_path}:\n{tail(log_path)}"
        )


def signal_process(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process, or to its whole group when it leads one (its JVM threads,
    the server's backends)."""
    with contextlib.suppress(ProcessLookupError):
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return
        if group == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def terminate(
    pid: int, *, timeout: float, first_signal: signal.Signals = signal.SIGTERM, what: str
) -> None:
    """Stop `pid`: `first_signal`, wait up to `timeout`, then SIGKILL; StackError if it survives."""
    if not pid_alive(pid):
        return
    signal_process(pid, first_signal)
    if wait_gone(pid, timeout):
        return
    signal_process(pid, signal.SIGKILL)
    if not wait_gone(pid, 10):
        raise StackError(f"{what} (pid {pid}) survived SIGKILL")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_closed(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while port_open(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Mapping[str, Any], *, private: bool = False) -> None:
    """Write atomically; `private` keeps the file readable by its owner only (it holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    fh: IO[str]
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def blocking_file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, for code already running in a worker thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def file_lock(
    path: Path, *, wait_s: float = 600, what: str = "the stack"
) -> AsyncIterator[None]:
    """An exclusive lock between processes (two `stack up` at once), polled without blocking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"timed out waiting for another process using {what} ({path})"
                    ) from exc
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
