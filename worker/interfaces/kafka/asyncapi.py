"""AsyncAPI entry point: `faststream docs gen worker.interfaces.kafka.asyncapi:app --yaml`.

Building the worker opens no connection, so documentation needs no running service.
"""

from worker.core.config import Settings
from worker.interfaces.kafka.app import build_worker

app = build_worker(Settings()).app
