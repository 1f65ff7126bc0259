"""The producer every command path uses: safe, and with batches that hold a lane's results;
the consumer's fetch settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.core.config import Settings
from worker.infrastructure.kafka_client import PRODUCER_BATCH_BYTES, producer_options
from worker.interfaces.kafka.app import build_worker


def test_the_producer_is_safe_and_its_batches_hold_hundreds_of_results() -> None:
    options = producer_options(Settings())
    assert options["acks"] == "all" and options["enable_idempotence"] is True
    # A lane publishes up to a few hundred ~700-byte result events to one partition at once:
    # with aiokafka's 16 KB default that was one request per 25 of them, each awaiting acks.
    assert options["max_batch_size"] == PRODUCER_BATCH_BYTES >= 400 * 700


def test_a_batch_never_exceeds_what_a_request_may_carry() -> None:
    small = Settings.model_validate({"CAPTURE_MAX_MESSAGE_BYTES": 32 * 1024})
    options = producer_options(small)
    assert options["max_batch_size"] == options["max_request_size"] < PRODUCER_BATCH_BYTES


def test_the_consumer_fetches_with_the_settings_fetch_wait_and_minimum() -> None:
    def fetch_args(settings: Settings) -> dict[str, Any]:
        (subscriber,) = build_worker(settings).broker.subscribers
        # What FastStream hands to AIOKafkaConsumer when the subscriber starts.
        args: dict[str, Any] = subscriber._connection_args  # type: ignore[attr-defined]
        return args

    default = fetch_args(Settings())
    assert default["fetch_min_bytes"] == 1 and default["fetch_max_wait_ms"] == 20
    waiting = fetch_args(
        Settings.model_validate(
            {"CAPTURE_FETCH_MIN_BYTES": "131072", "CAPTURE_FETCH_MAX_WAIT_MS": "10"}
        )
    )
    assert waiting["fetch_min_bytes"] == 131072 and waiting["fetch_max_wait_ms"] == 10


@pytest.mark.parametrize(
    "setting",
    [{"CAPTURE_FETCH_MIN_BYTES": "0"}, {"CAPTURE_FETCH_MAX_WAIT_MS": "0"},
     {"CAPTURE_FETCH_MAX_WAIT_MS": "60000"}],
)  # fmt: skip
def test_a_fetch_setting_out_of_range_is_refused(setting: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate(setting)
