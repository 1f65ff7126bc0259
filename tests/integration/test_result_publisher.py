"""The publisher against a real broker: results go out as record batches per partition, and
must land exactly where (and in the order) one send() per result would have put them."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from contracts import ErrorKind
from tests.fixtures.services import MakeTopic
from tests.support.kafka import read_all
from worker.application.capture import Outcome, result_bytes
from worker.application.ports import Envelope
from worker.domain.errors import PermanentError
from worker.infrastructure.result_publisher import OutcomePublisher


def _outcome(sequence: int, user_id: uuid.UUID, *, padding: int = 160) -> Outcome:
    command_id = uuid.uuid4()
    envelope = Envelope("commands", 0, sequence, str(user_id).encode(), b"{}", ())
    # A result of ~300 bytes: a 4 KB producer batch holds about a dozen.
    result = {
        "command_id": str(command_id),
        "user_id": str(user_id),
        "sequence": sequence,
        "status": "ingested",
        "padding": "x" * padding,
    }
    return Outcome(envelope, result, None, user_id, command_id)


async def test_results_land_on_their_users_partition_in_order_across_many_batches(
    kafka_client_options: dict[str, object], kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    results, dlq = await make_topic(3, suffix="res"), await make_topic(1, suffix="dlq")
    users = [uuid.uuid4() for _ in range(7)]
    # Two results larger than a whole batch, one mid-way through a batch and one first in
    # its publish: each goes alone in a batch of its own, in its place.
    large = {40: 6000, 150: 9000}
    outcomes = [_outcome(i, users[i % len(users)], padding=large.get(i, 160)) for i in range(300)]
    poison = Envelope("commands", 0, 300, b"not-a-user", b"{not json", ())
    outcomes.append(
        Outcome(poison, None, PermanentError(ErrorKind.UNDECODABLE, "not valid UTF-8 JSON"))
    )
    # Small batches, so that every partition's results need several of them.
    producer = AIOKafkaProducer(
        **kafka_client_options, acks="all", enable_idempotence=True, max_batch_size=4096
    )
    await producer.start()
    try:
        publisher = OutcomePublisher(producer, results_topic=results, dlq_topic=dlq)
        await publisher.publish(outcomes[:150])
        await publisher.publish(outcomes[150:])
    finally:
        await producer.stop()

    records = await read_all(kafka_bootstrap, results)
    assert len(records) == 300
    by_partition: dict[int, list[int]] = defaultdict(list)
    partitioner = DefaultPartitioner()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        body = json.loads(record.value or b"")
        sent = outcomes[body["sequence"]]
        assert record.key == str(sent.user_id).encode()
        assert record.value == result_bytes(sent.result or {})
        # Where Kafka's default partitioner (murmur2 of the key) puts that key.
        assert record.partition == partitioner(record.key, [0, 1, 2], [0, 1, 2])
        by_partition[record.partition].append(body["sequence"])
    assert sorted(s for seqs in by_partition.values() for s in seqs) == list(range(300))
    for sequences in by_partition.values():
        assert sequences == sorted(sequences)  # each partition in publish order
    assert len(by_partition) > 1

    (letter,) = await read_all(kafka_bootstrap, dlq)
    assert letter.value == b"{not json"


async def test_results_go_out_without_waiting_for_the_producers_linger(
    kafka_client_options: dict[str, object], make_topic: MakeTopic
) -> None:
    """A result batch is complete when it is handed over: the linger, which lets send() fill
    a batch, would only delay it (by the worker's 5 ms on every result, before this)."""
    results, dlq = await make_topic(2, suffix="res"), await make_topic(1, suffix="dlq")
    linger_s = 20.0
    producer = AIOKafkaProducer(
        **kafka_client_options, acks="all", enable_idempotence=True, linger_ms=int(linger_s * 1000)
    )
    await producer.start()
    try:
        publisher = OutcomePublisher(producer, results_topic=results, dlq_topic=dlq)
        await publisher.publish([_outcome(0, uuid.uuid4())])  # metadata, connections
        users = [uuid.uuid4() for _ in range(5)]
        started = time.monotonic()
        await publisher.publish([_outcome(i, users[i % 5]) for i in range(1, 40)])
        took = time.monotonic() - started
    finally:
        await producer.stop()
    # publish() returns once every result is acknowledged: well before one linger.
    assert took < linger_s / 2, f"the results waited {took:.1f} s for the linger"
