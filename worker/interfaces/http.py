"""/healthz, /readyz and /metrics on a tiny asyncio HTTP server (no web framework needed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.core import metrics
from worker.core.logging import get_logger
from worker.domain.errors import ConfigurationError

log = get_logger(__name__)

Probe = Callable[[], Awaitable[None]]


@dataclass
class Health:
    """Dependency state as the probes last saw it."""

    probes: dict[str, Probe] = field(default_factory=dict)
    up: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: Partitions held by an internal error ("topic[partition]" -> why): not ready meanwhile.
    stalled: dict[str, str] = field(default_factory=dict)
    consuming: bool = False
    interval_s: float = 1.0
    timeout_s: float = 3.0

    @property
    def ready(self) -> bool:
        return self.consuming and bool(self.up) and all(self.up.values()) and not self.stalled

    async def check_once(self) -> None:
        for name, probe in self.probes.items():
            try:
                await asyncio.wait_for(probe(), self.timeout_s)
            except Exception as exc:  # any failure means "down"; the reason is reported
                if self.up.get(name, True):
                    log.warning("dependency down", dependency=name, error=repr(exc))
                self.up[name] = False
                self.errors[name] = repr(exc)
            else:
                if self.up.get(name) is False:
                    log.info("dependency up again", dependency=name)
                self.up[name] = True
                self.errors.pop(name, None)
            metrics.DEPENDENCY_UP.labels(dependency=name).set(1 if self.up[name] else 0)
        metrics.READY.set(1 if self.ready else 0)

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval_s)

    def report(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "consuming": self.consuming,
            "dependencies": {
                name: {"up": up, **({"error": self.errors[name]} if name in self.errors else {})}
                for name, up in self.up.items()
            },
            **({"stalled_partitions": dict(self.stalled)} if self.stalled else {}),
        }

    def partition_stalled(self, topic: str, partition: int, reason: str | None) -> None:
        """Name a partition held by an internal error (reason None: it moves again)."""
        key = f"{topic}[{partition}]"
        if reason is None:
            self.stalled.pop(key, None)
        else:
            self.stalled[key] = reason
        metrics.READY.set(1 if self.ready else 0)


async def _respond(
    writer: asyncio.StreamWriter, status: str, body: bytes, content_type: str
) -> None:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


def make_handler(
    health: Health,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/healthz":
                await _respond(writer, "200 OK", b'{"status":"ok"}', "application/json")
            elif path == "/readyz":
                body = json.dumps(health.report()).encode()
                status = "200 OK" if health.ready else "503 Service Unavailable"
                await _respond(writer, status, body, "application/json")
            elif path == "/metrics":
                await _respond(
                    writer, "200 OK", generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST
                )
            else:
                await _respond(writer, "404 Not Found", b"not found\n", "text/plain")
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return handle


async def start_http(health: Health, host: str, port: int) -> asyncio.Server:
    """Listen on host:port (0: a free port, logged); ConfigurationError when it cannot."""
    try:
        server = await asyncio.start_server(make_handler(health), host, port)
    except OSError as exc:  # taken, not ours to bind, no such address: one line, not a traceback
        raise ConfigurationError(
            f"cannot listen on {host}:{port} for /healthz, /readyz and /metrics: "
            f"{exc.strerror or exc}; set CAPTURE_HTTP_PORT to a free port "
            "(0 picks one and logs it) or CAPTURE_HTTP_HOST"
        ) from exc
    bound = server.sockets[0].getsockname()
    log.info("http listening", host=bound[0], port=bound[1])
    return server
