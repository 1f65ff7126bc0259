"""KeyHashPartitioner sends every key where Kafka's default partitioner does."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.infrastructure.kafka_client import KeyHashPartitioner


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=30),
    partitions=st.integers(1, 64),
)
def test_same_partition_as_the_default_partitioner(keys: list[bytes], partitions: int) -> None:
    ours = KeyHashPartitioner(max_keys=8)  # small: the cache also empties itself on the way
    all_partitions = list(range(partitions))
    for key in keys + keys:  # the second time from the cache
        expected = DefaultPartitioner()(key, all_partitions, all_partitions)
        assert ours(key, all_partitions, all_partitions) == expected


def test_a_cached_key_follows_a_change_in_the_partition_count() -> None:
    ours = KeyHashPartitioner()
    key = b"0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10"
    for count in (6, 12, 6, 7):
        partitions = list(range(count))
        assert ours(key, partitions, partitions) == DefaultPartitioner()(key, partitions, [])


def test_no_key_goes_to_an_available_partition() -> None:
    assert KeyHashPartitioner()(None, [0, 1, 2], [2]) == 2
