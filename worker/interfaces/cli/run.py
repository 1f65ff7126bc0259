"""`capture-worker run`: the worker process."""

from __future__ import annotations

import asyncio
import gc
from typing import Annotated

import typer

from worker.core import tracing
from worker.core.config import Settings, get_settings
from worker.core.logging import configure_logging, get_logger
from worker.domain.errors import ConfigurationError
from worker.interfaces.http import start_http
from worker.interfaces.kafka.app import StartupAborted, build_worker

log = get_logger(__name__)


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        http_port: Annotated[
            int | None,
            typer.Option(
                help="Port of /healthz, /readyz and /metrics"
                " (default CAPTURE_HTTP_PORT, 8080; 0 picks one)."
            ),
        ] = None,
    ) -> None:
        """Consume commands, ingest them in batches (capture.ingest_typed: the same effects as
        ingest_with_signal per command, one transaction per batch), publish results; stops
        cleanly on SIGTERM."""
        settings = get_settings()
        if http_port is not None:
            settings = settings.model_copy(update={"http_port": http_port})
        configure_logging(settings.log_format, settings.log_level)
        code = asyncio.run(_run(settings))
        raise typer.Exit(code)


async def _run(settings: Settings) -> int:
    tracing.configure("capture-worker")
    worker = build_worker(settings)
    # What exists by now (modules, schemas, the app) lives as long as the process; frozen, it is
    # out of the cyclic GC's reach, and a full collection walks only what the work allocates.
    gc.collect()
    gc.freeze()
    try:
        server = await start_http(worker.health, settings.http_host, settings.http_port)
    except ConfigurationError as exc:
        log.error("worker cannot start", reason=str(exc))
        return 2
    try:
        await worker.app.run()
    except StartupAborted as exc:  # SIGTERM/SIGINT before start-up completed: a clean stop
        log.info("worker stopped before start-up completed", reason=str(exc))
    except ConfigurationError as exc:  # retrying cannot fix it: one clear line, exit 2
        log.error("worker cannot start", reason=str(exc))
        return 2
    finally:
        server.close()
        await server.wait_closed()
        tracing.shutdown()
    log.info("worker stopped", exit_code=worker.exit_code)
    return worker.exit_code
