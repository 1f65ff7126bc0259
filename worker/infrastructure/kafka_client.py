"""aiokafka connection options from Settings, shared by the worker and the tools."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from worker.application.ports import Envelope
from worker.core.config import Settings


class KeyHashPartitioner:
    """Kafka's default partitioner (murmur2 of the key), remembering each key's hash.

    aiokafka's murmur2 is pure Python, run for every record sent: a twentieth of the worker's
    CPU, for keys (user ids) that repeat all the time.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Any) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


def connection_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_list,
        "security_protocol": settings.kafka_security_protocol,
        # aiokafka's 100 ms retried a lost broker about 10 times a second per client and loop.
        "retry_backoff_ms": settings.kafka_retry_backoff_ms,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    return options


#: A producer batch (one partition's records in one request) holds up to this much. aiokafka's
#: 16 KB default held ~25 result events: a batch of 400 results to one partition then took
#: 16 sequential produce requests, each waiting for acks=all, a third of a lane's time.
PRODUCER_BATCH_BYTES = 512 * 1024


def producer_options(settings: Settings) -> dict[str, Any]:
    """A safe producer: every write acknowledged by all in-sync replicas, no duplicates."""
    max_request = settings.max_message_bytes + 64 * 1024
    return {
        **connection_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": max_request,
        # A record larger than a batch still goes, alone in its own.
        "max_batch_size": min(PRODUCER_BATCH_BYTES, max_request),
        "linger_ms": settings.producer_linger_ms,
        "partitioner": KeyHashPartitioner(),
    }


def envelopes(records: Sequence[ConsumerRecord[Any, Any]]) -> list[Envelope]:
    """Kafka records as the application sees them."""
    return [
        Envelope(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in records
    ]


class PartitionBatches:
    """Records to one topic as one record batch per partition, sent by `send_all` (or when
    full): a record batch per partition and request, where a `send()` per record cost aiokafka
    a coroutine, a partition lookup, a future and its callback each, and lingered each
    partition's batch on a timer of its own. `sent` holds a future per batch sent.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._open: dict[int, BatchBuilder] = {}
        self.sent: list[asyncio.Future[Any]] = []

    def __bool__(self) -> bool:
        """Records appended and not sent yet."""
        return bool(self._open)

    async def append(
        self,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> int:
        """Add a record to `partition`'s batch; its timestamp (ms), stamped now."""
        batch = self._open.get(partition)
        if batch is not None:
            stamped = batch.append(key=key, value=value, timestamp=None, headers=headers)
            if stamped is not None:
                return int(stamped.timestamp)
            # Full (max_batch_size, and so closed): send it, and go on in a new one.
            await self._send(partition, batch)
        # A new batch takes its first record whatever its size, as send() does.
        batch = self._open[partition] = self._producer.create_batch()
        stamped = batch.append(key=key, value=value, timestamp=None, headers=headers)
        return int(stamped.timestamp)

    async def send_all(self) -> None:
        for partition, batch in self._open.items():
            await self._send(partition, batch)
        self._open.clear()

    async def _send(self, partition: int, batch: BatchBuilder) -> None:
        # Complete: aiokafka holds an open batch for the producer's linger (meant for send()
        # to fill it), ~5 ms on every record; a closed one goes with the next request.
        batch.close()
        self.sent.append(await self._producer.send_batch(batch, self._topic, partition=partition))
