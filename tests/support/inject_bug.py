"""Preloaded into a worker process (WorkerProcess(preload=...)): a handler bug on every record
whose value contains MARKER, as an unexpected exception from the application's decoding."""

from __future__ import annotations

from typing import Any

from worker.application import capture

MARKER = b"inject-handler-bug"

_decode = capture.decode_command


def _buggy_decode(envelope: Any, limits: Any) -> Any:
    if envelope.value is not None and MARKER in envelope.value:
        raise ZeroDivisionError("injected handler bug")
    return _decode(envelope, limits)


capture.decode_command = _buggy_decode
