"""The latency phase: its p99 second by second, and the rates `--latency-rate` asks for."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from devkit.cli.bench import _latency_rates, p99_by_second, register


def test_each_second_of_sending_gets_its_own_p99_in_order() -> None:
    start = 1_700_000_000_000  # ms
    steady = [(start + i * 10, 20.0) for i in range(100)]  # second 0: all 20 ms
    stall = [(start + 1000 + i * 10, 300.0 if i < 5 else 25.0) for i in range(100)]  # second 1
    late = [(start + 3000 + i, 30.0) for i in range(10)]  # second 3 (second 2 sent nothing)
    # The pairs come in any order; the windows are by send time.
    result = p99_by_second(late + stall + steady)
    assert len(result) == 3
    assert result[0] == pytest.approx(20.0)
    assert result[1] == pytest.approx(300.0)  # 5 % of the second stalled: its p99 shows it
    assert result[2] == pytest.approx(30.0)


def test_no_commands_no_seconds() -> None:
    assert p99_by_second([]) == []


def test_latency_rates_are_numbers_or_half_in_the_order_given() -> None:
    assert _latency_rates(["1000", "half", "2500.5", "HALF"]) == (1000.0, None, 2500.5, None)


@pytest.mark.parametrize("value", ["0", "0.5", "-3", "fast", "nan", ""])
def test_a_rate_that_is_not_one_is_refused_before_anything_runs(value: str) -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["--latency-rate", "100", "--latency-rate", value])
    assert result.exit_code == 2
    # Rich's error box wraps the message inside its borders.
    message = " ".join(result.output.replace("│", " ").split())
    assert "--latency-rate" in message and "or `half`" in message, message
