"""Start-up waits for its dependencies, says so in /readyz, and still stops when asked to."""

from __future__ import annotations

import asyncio

import pytest

from worker.application.retry import Backoff
from worker.interfaces.http import Health
from worker.interfaces.kafka.app import StartupAborted, _retry


async def test_waiting_for_a_refusing_dependency_ends_on_an_exit_request() -> None:
    health, stop = Health(), asyncio.Event()

    async def refused() -> None:
        raise OSError("connection refused")

    waiting = asyncio.create_task(
        _retry("kafka", refused, Backoff(initial_s=30, max_s=30), health=health, stop=stop)
    )
    await asyncio.sleep(0.05)
    assert health.report()["dependencies"] == {
        "kafka": {"up": False, "error": "OSError('connection refused')"}
    }
    stop.set()
    with pytest.raises(StartupAborted):
        await asyncio.wait_for(waiting, 1)


async def test_an_attempt_that_hangs_is_interrupted_too() -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(
        _retry("postgresql", lambda: asyncio.sleep(60), Backoff(), health=Health(), stop=stop)
    )
    await asyncio.sleep(0.05)
    stop.set()
    with pytest.raises(StartupAborted):
        await asyncio.wait_for(waiting, 1)


async def test_success_marks_the_dependency_up() -> None:
    health = Health()

    async def answer() -> str:
        return "ok"

    assert await _retry("kafka", answer, Backoff(), health=health, stop=asyncio.Event()) == "ok"
    assert health.up == {"kafka": True}
