"""The local stack behind `capture-worker stack`: Kafka 4.x (KRaft) and PostgreSQL + pgvector
on loopback, no Docker. The CLI and the test fixtures use this same API.

    cfg = resolve_config()              # options > CAPTURE_STACK_* env > recorded > defaults
    await up(cfg)                       # idempotent; returns when both answer real requests
    cfg.client_env()                    # KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, ...
    await restart(cfg, services=["kafka"])
    await down(cfg)

Every failure is a `StackError` whose message says what to do (and names the log to read).
"""

from devkit.stack.kafka import KAFKA_VERSION, KafkaConfig, SaslPlain
from devkit.stack.manager import (
    SERVICES,
    ServiceName,
    StackConfig,
    down,
    resolve_config,
    restart,
    status,
    up,
)
from devkit.stack.model import Progress, ServiceStatus
from devkit.stack.postgres import PostgresConfig
from devkit.stack.process import StackError

__all__ = [
    "KAFKA_VERSION",
    "SERVICES",
    "KafkaConfig",
    "PostgresConfig",
    "Progress",
    "SaslPlain",
    "ServiceName",
    "ServiceStatus",
    "StackConfig",
    "StackError",
    "down",
    "resolve_config",
    "restart",
    "status",
    "up",
]
