"""capture-worker: Kafka commands in, one atomic PostgreSQL call each, result events out."""

__version__ = "0.1.0"
