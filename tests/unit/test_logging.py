"""Logging set-up: JSON lines, secrets scrubbed, the DEBUG switch for hot-path lines."""

from __future__ import annotations

import json

import pytest

from worker.core.logging import configure_logging, debug_enabled, get_logger


def test_json_lines_carry_context_and_scrub_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    get_logger("t").warning(
        "command rejected",
        command_id="c-1",
        user_id="u-1",
        partition=3,
        offset=9,
        password="hunter2",
        embedding=[0.1] * 4,
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "command rejected"
    assert (line["command_id"], line["user_id"], line["partition"], line["offset"]) == (
        "c-1",
        "u-1",
        3,
        9,
    )
    assert line["password"] == "***" and line["embedding"] == "***"
    assert not debug_enabled()


def test_debug_switch_follows_the_level() -> None:
    configure_logging("json", "DEBUG")
    try:
        assert debug_enabled()
    finally:
        configure_logging("json", "INFO")


def test_pretty_tracebacks_show_no_locals(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("pretty", "INFO")
    try:
        # A local whose value (not its source line) would only show with the locals.
        secret_embedding = [i / 7 for i in range(8)]  # noqa: F841
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger("t").exception("failed")
        err = capsys.readouterr().err
        assert "ValueError" in err and "boom" in err
        assert "0.14285714" not in err
    finally:
        configure_logging("json", "INFO")
