"""The producer every command path uses: safe, and with batches that hold a lane's results."""

from __future__ import annotations

from worker.core.config import Settings
from worker.infrastructure.kafka_client import PRODUCER_BATCH_BYTES, producer_options


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
