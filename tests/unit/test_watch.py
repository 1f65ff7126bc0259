"""`--watch` loops: SIGINT or SIGTERM stops them between two refreshes, never inside one."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from worker.interfaces.cli.watch import watch


@pytest.fixture(autouse=True)
def interactive_signals() -> Iterator[None]:
    """Python's own dispositions, whatever this run inherited (a background job: SIGINT off)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def _send(sig: signal.Signals = signal.SIGINT) -> None:
    os.kill(os.getpid(), sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_during_a_refresh_lets_it_finish_then_stops(sig: signal.Signals) -> None:
    shown: list[str] = []

    def take() -> str:
        _send(sig)
        time.sleep(0.05)  # the handler has run by now; with Python's default we'd be gone
        return "refreshed"

    assert watch("first", take, shown.append, interval=0.01) == "refreshed"
    assert shown == ["first", "refreshed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_ctrl_c_during_the_wait_stops_without_another_refresh() -> None:
    shown: list[str] = []

    def take() -> str:
        pytest.fail("refreshed after Ctrl-C")

    timer = threading.Timer(0.1, _send)
    started = time.monotonic()
    timer.start()
    try:
        assert watch("first", take, shown.append, interval=120) == "first"
    finally:
        timer.cancel()
    # Not the two minutes' wait: Ctrl-C cut it short (a generous bound, not a measurement).
    assert time.monotonic() - started < 60
    assert shown == ["first"]


def test_a_second_ctrl_c_interrupts_the_refresh() -> None:
    def take() -> str:
        _send()
        _send()  # the default handler again: KeyboardInterrupt here
        time.sleep(0.05)
        return "never returned"

    assert watch("first", take, lambda _: None, interval=0.01) == "first"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_stops_a_watch_started_with_sigint_ignored() -> None:
    # What a background job of a non-interactive shell inherits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def take() -> str:
        _send()
        time.sleep(0.05)
        return "refreshed"

    assert watch("first", take, lambda _: None, interval=0.01) == "refreshed"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
