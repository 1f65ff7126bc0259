"""Settings from the environment (and `.env`); defaults point at `capture-worker stack up`."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA = "127.0.0.1:19092"
# The worker's login (created by `capture-worker stack up`, member of role capture_worker) and
# the owner that migrates; the local stack trusts loopback, so neither needs a password there.
DEFAULT_DATABASE_URL = "postgresql://capture_app@127.0.0.1:15432/capture"
DEFAULT_ADMIN_DATABASE_URL = "postgresql://postgres@127.0.0.1:15432/capture"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """Every knob of the worker and its tools, one place."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    kafka_bootstrap_servers: str = Field(
        DEFAULT_KAFKA, validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS")
    )
    database_url: SecretStr = Field(
        SecretStr(DEFAULT_DATABASE_URL), validation_alias=_env("DATABASE_URL")
    )
    admin_database_url: SecretStr | None = Field(
        None,
        validation_alias=_env("CAPTURE_ADMIN_DATABASE_URL"),
        description="An owner of schema capture, for `migrate`, `db create-login` and "
        "`replay --reset/--rebuild-index`. Default: DATABASE_URL when that is set, else the "
        "local stack's superuser.",
    )
    allow_superuser: bool = Field(
        False,
        validation_alias=_env("CAPTURE_ALLOW_SUPERUSER"),
        description="Let the worker run as a superuser (it refuses by default).",
    )
    commands_topic: str = Field("capture.commands", validation_alias=_env("CAPTURE_COMMANDS_TOPIC"))
    results_topic: str = Field("capture.results", validation_alias=_env("CAPTURE_RESULTS_TOPIC"))
    dlq_topic: str = Field("capture.dlq", validation_alias=_env("CAPTURE_DLQ_TOPIC"))
    consumer_group: str = Field("capture-worker", validation_alias=_env("CAPTURE_CONSUMER_GROUP"))
    embedding_dim: int = Field(384, ge=1, le=16000, validation_alias=_env("CAPTURE_EMBEDDING_DIM"))
    max_message_bytes: int = Field(
        1024 * 1024, ge=1024, validation_alias=_env("CAPTURE_MAX_MESSAGE_BYTES")
    )
    topic_partitions: int = Field(6, ge=1, validation_alias=_env("CAPTURE_TOPIC_PARTITIONS"))
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", validation_alias=_env("CAPTURE_AUTO_OFFSET_RESET")
    )
    batch_size: int = Field(200, ge=1, le=10000, validation_alias=_env("CAPTURE_BATCH_SIZE"))
    # How long a poll waits when no partition has records (FastStream then sleeps as long
    # again): a partition resumed meanwhile waits for it, so it adds to latency, not batching.
    # 10 ms: an idle worker polls ~50 times a second (4.5% of a core here; 20 ms: 3.4%).
    batch_linger_ms: int = Field(10, ge=0, validation_alias=_env("CAPTURE_BATCH_LINGER_MS"))
    # Room for a whole fetch of every partition (see partition_fetch_bytes): a poll cut short
    # leaves the rest of a partition's fetch to be dropped and fetched again.
    max_poll_records: int = Field(
        3000, ge=1, le=100000, validation_alias=_env("CAPTURE_MAX_POLL_RECORDS")
    )
    producer_linger_ms: int = Field(
        5,
        ge=0,
        validation_alias=_env("CAPTURE_PRODUCER_LINGER_MS"),
        description="How long the producer waits to fill a batch before sending it.",
    )
    internal_error_attempts: int = Field(
        5,
        ge=1,
        validation_alias=_env("CAPTURE_INTERNAL_ERROR_ATTEMPTS"),
        description="Tries of a record whose handling raised an unexpected exception (a bug)"
        " before it is dead-lettered as kind `internal` (or the worker stops, see below).",
    )
    on_internal_error: Literal["dead-letter", "stop"] = Field(
        "dead-letter",
        validation_alias=_env("CAPTURE_ON_INTERNAL_ERROR"),
        description="After the last try: `dead-letter` the record and go on (Kafka Connect's"
        " errors.tolerance=all), or `stop` the worker with exit code 3 (never skipping).",
    )
    commit_interval_ms: int = Field(
        100,
        ge=0,
        validation_alias=_env("CAPTURE_COMMIT_INTERVAL_MS"),
        description="Least time between two offset commits; what is processed meanwhile goes "
        "out in the next one. A crash redelivers at most this much more (the ledger makes that "
        "harmless); 0 commits as soon as the previous commit returns.",
    )
    fetch_partition_bytes: int | None = Field(
        None,
        ge=1024,
        validation_alias=_env("CAPTURE_FETCH_PARTITION_BYTES"),
        description="Bytes fetched per partition and request. Default: about one "
        "CAPTURE_BATCH_SIZE batch of commands of CAPTURE_EMBEDDING_DIM numbers. A partition "
        "pauses while two batches' worth of its records wait for its lane.",
    )
    fetch_min_bytes: int = Field(
        1,
        ge=1,
        le=64 * 1024 * 1024,
        validation_alias=_env("CAPTURE_FETCH_MIN_BYTES"),
        description="Bytes of new records a fetch waits for, up to CAPTURE_FETCH_MAX_WAIT_MS. "
        "1: the broker answers at the first record, the lowest latency; at a low steady rate "
        "each fetch then carries a record or two and the worker and the broker spend the most "
        "CPU per command. More trades latency for CPU (docs/scaling.md).",
    )
    fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=10_000,
        validation_alias=_env("CAPTURE_FETCH_MAX_WAIT_MS"),
        description="Longest the broker holds a fetch for CAPTURE_FETCH_MIN_BYTES, or while "
        "no partition asked for has records; a partition resumed meanwhile waits for that "
        "fetch to return before its own is sent.",
    )
    db_pool_size: int = Field(10, ge=1, validation_alias=_env("CAPTURE_DB_POOL_SIZE"))
    db_warm_connections: int | None = Field(
        None,
        ge=0,
        validation_alias=_env("CAPTURE_DB_WARM_CONNECTIONS"),
        description="Connections opened and warmed (the ingest compiled and planned, in a "
        "transaction rolled back) before the worker reports ready. Default: one per lane, "
        "CAPTURE_TOPIC_PARTITIONS, at most CAPTURE_DB_POOL_SIZE; 0 for none.",
    )
    db_max_calls: int = Field(
        0,
        ge=0,
        validation_alias=_env("CAPTURE_DB_MAX_CALLS"),
        description="Ingest calls running at once while calls are small. A lane's chunk that "
        "comes while they all run waits and goes with the others waiting, in one call: fewer, "
        "larger calls when the database is busy. Commands that fill a call (the batch size) "
        "go at once whatever runs, so a drain calls as often as without a limit. 0: no "
        "limit, each lane calls on its own.",
    )
    db_max_wait_ms: int = Field(
        50,
        ge=1,
        validation_alias=_env("CAPTURE_DB_MAX_WAIT_MS"),
        description="With CAPTURE_DB_MAX_CALLS: how long a chunk waits at most for the running "
        "calls; then it goes beside them, with the chunks waiting behind it. So a call that "
        "runs long (an index's inserts, a user's locked rows) holds the other lanes this long "
        "at most.",
    )
    db_lock_timeout_ms: int = Field(
        2000,
        ge=0,
        validation_alias=_env("CAPTURE_DB_LOCK_TIMEOUT_MS"),
        description="PostgreSQL lock_timeout of the worker's sessions; a user whose rows stay "
        "locked longer is retried later while other partitions go on. 0 waits forever.",
    )
    db_pooler: Literal["none", "transaction"] = Field(
        "none",
        validation_alias=_env("CAPTURE_DB_POOLER"),
        description="`transaction` when DATABASE_URL points at a pooler in transaction mode "
        "(PgBouncer, Supavisor): no named prepared statements, and no lock_timeout startup "
        "parameter (set it on the login role instead).",
    )
    config_ttl_s: float = Field(30.0, gt=0, validation_alias=_env("CAPTURE_CONFIG_TTL_S"))
    shutdown_timeout_s: float = Field(
        30.0, gt=0, validation_alias=_env("CAPTURE_SHUTDOWN_TIMEOUT_S")
    )
    retry_initial_s: float = Field(0.2, gt=0, validation_alias=_env("CAPTURE_RETRY_INITIAL_S"))
    retry_max_s: float = Field(10.0, gt=0, validation_alias=_env("CAPTURE_RETRY_MAX_S"))
    retry_max_attempts: int = Field(
        0,
        ge=0,
        validation_alias=_env("CAPTURE_RETRY_MAX_ATTEMPTS"),
        description="0 retries transient failures forever",
    )
    http_host: str = Field("127.0.0.1", validation_alias=_env("CAPTURE_HTTP_HOST"))
    http_port: int = Field(8080, ge=0, le=65535, validation_alias=_env("CAPTURE_HTTP_PORT"))
    log_format: Literal["auto", "json", "pretty"] = Field(
        "auto", validation_alias=_env("CAPTURE_LOG_FORMAT")
    )
    log_level: str = Field("INFO", validation_alias=_env("CAPTURE_LOG_LEVEL"))

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias=_env("KAFKA_SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, validation_alias=_env("KAFKA_SASL_MECHANISM")
    )
    kafka_sasl_username: str | None = Field(None, validation_alias=_env("KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(
        None, validation_alias=_env("KAFKA_SASL_PASSWORD")
    )
    kafka_ssl_cafile: str | None = Field(None, validation_alias=_env("KAFKA_SSL_CAFILE"))
    kafka_retry_backoff_ms: int = Field(
        500,
        ge=10,
        validation_alias=_env("CAPTURE_KAFKA_RETRY_BACKOFF_MS"),
        description="Wait before aiokafka retries a failed request or reconnects (its default "
        "is 100 ms: with the broker down, a reconnect storm and ~300 log lines a second).",
    )

    def admin_url(self) -> str:
        """The URL for schema changes and admin functions (see admin_database_url)."""
        if self.admin_database_url is not None:
            return self.admin_database_url.get_secret_value()
        if "database_url" in self.model_fields_set:
            return self.database_url.get_secret_value()
        return DEFAULT_ADMIN_DATABASE_URL

    @property
    def kafka_bootstrap_list(self) -> list[str]:
        """`host:port` entries of KAFKA_BOOTSTRAP_SERVERS (comma-separated): FastStream takes a
        string as one single server, so a cluster's list must be split."""
        return [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]

    @property
    def warm_connections(self) -> int:
        """How many connections to warm before the worker reports ready."""
        wanted = self.db_warm_connections
        return min(self.topic_partitions if wanted is None else wanted, self.db_pool_size)

    @property
    def record_room_bytes(self) -> int:
        """Room for the largest record the worker must still read and dead-letter.

        Twice the command limit: an oversize command has to reach the DLQ, not get stuck
        in a fetch or a topic that refuses it.
        """
        return 2 * self.max_message_bytes + 64 * 1024


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
