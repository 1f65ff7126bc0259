"""Refresh until Ctrl-C (or SIGTERM), and stop between two refreshes, never inside one."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT or SIGTERM asks the loop to stop; a second one gets the handler from before.

    Handlers of our own, whatever was there: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and `status --watch` then ignored it for
    good (the suite failed three runs in a row when run in the background). `tail --follow`
    does the same with the event loop's handlers.

    And not asyncio.run's translation: a refresh runs its Kafka clients under asyncio.run,
    which turns SIGINT into a cancellation of the refresh, raised as KeyboardInterrupt only if
    it comes back out. aiokafka's close() awaits its own cancelled task inside
    `suppress(CancelledError)`, which swallows ours too when it lands there. With a handler
    in place asyncio.run leaves SIGINT alone: the refresh in progress ends and closes its
    clients as usual, and the loop stops after it.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig in self._previous:
            self._restore(sig)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self._restore(signum)

    def _restore(self, sig: int) -> None:
        # None: a handler set outside Python, which signal() cannot put back; the default then.
        previous = self._previous[sig]
        signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def sleep(self, seconds: float) -> None:
        """time.sleep, cut short once a stop was asked for (a handler does not wake sleep)."""
        deadline = time.monotonic() + seconds
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))


def watch(first: T, take: Callable[[], T], show: Callable[[T], None], interval: float) -> T:
    """Show `first`, then a new `take()` every `interval` seconds until stopped; the last one.

    A stop signal during a refresh lets it finish and shows it; a second Ctrl-C interrupts it.
    """
    current = first
    with contextlib.suppress(KeyboardInterrupt), StopSignals() as stop:
        while True:
            show(current)
            stop.sleep(interval)
            if stop.requested:
                break
            current = take()
    return current
