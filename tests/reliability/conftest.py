"""Fault-injection scenarios: real worker processes, real Kafka and PostgreSQL, faults in between.

Each scenario ends with a one-line summary (tests/support/tally.py); the lines are collected
here and printed as a table at the end of the run (`make reliability`, `make test`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.scenario import Row, Scenario

_ROWS = pytest.StashKey[list[Row]]()


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    rows = request.config.stash.setdefault(_ROWS, [])
    it = Scenario(request.node.nodeid, rows)
    yield it
    if not it.finished:  # failed (or timed out) on the way: still one row in the table
        name = request.node.name.removeprefix("test_").replace("_", " ")
        rows.append(Row(it.nodeid, name, None, time.monotonic() - it.started))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(_ROWS, [])
    if not rows:
        return
    outcome: dict[str, str] = {}
    for status in ("failed", "error", "passed"):
        for report in terminalreporter.stats.get(status, []):
            if getattr(report, "when", "call") == "call" or status != "passed":
                outcome.setdefault(report.nodeid, status)
    terminalreporter.section("reliability summary")
    header = (
        "| scenario | sent | applied | lost | doubled | dlq | faults | redelivered "
        "| time (s) | result |"
    )
    terminalreporter.write_line(header)
    terminalreporter.write_line("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        s = row.summary
        counts = (
            [s.sent, s.applied, s.lost, s.doubled, s.dlq, s.faults, s.redelivered]
            if s is not None
            else ["-"] * 7
        )
        cells = [row.title, *counts, f"{row.seconds:.0f}", outcome.get(row.nodeid, "?")]
        terminalreporter.write_line("| " + " | ".join(str(c) for c in cells) + " |")
