"""Create the worker's topics when missing; existing ones are left as they are."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

_TOPIC_ALREADY_EXISTS = 36


async def cluster_replication_factor(admin: AIOKafkaAdminClient) -> int:
    """3 where the cluster has the brokers for it, else as many as it has."""
    brokers = (await admin.describe_cluster()).get("brokers", [])
    return max(1, min(3, len(brokers)))


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int | None = None,
    max_message_bytes: int | None = None,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create each missing topic (with `configs`, topic settings); return the names created.

    Without a replication factor, the cluster decides (`cluster_replication_factor`): one
    on a single local broker, three in production. Three replicas come with
    min.insync.replicas=2.
    """
    existing = set(await admin.list_topics())
    configs = dict(configs or {})
    if max_message_bytes:
        configs["max.message.bytes"] = str(max_message_bytes)
    missing = [name for name in dict.fromkeys(names) if name not in existing]
    if not missing:
        return []
    if replication_factor is None:
        replication_factor = await cluster_replication_factor(admin)
    if replication_factor >= 3:
        # acks=all then waits for two copies and still succeeds with one replica down.
        configs["min.insync.replicas"] = "2"
    response = await admin.create_topics(
        [NewTopic(name, partitions, replication_factor, topic_configs=configs) for name in missing]
    )
    created: list[str] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code == 0:
            created.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            message = entry[2] if len(entry) > 2 else ""
            raise RuntimeError(f"could not create topic {name}: error {code} {message}")
    return created
