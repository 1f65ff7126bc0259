"""Shared fixtures: real services, databases, and worker processes (tests/fixtures/)."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.database",
    "tests.fixtures.workers",
    "tests.fixtures.cluster",
]


def pytest_configure(config: object) -> None:
    # JSON log lines, as the worker writes them in production (structlog's unconfigured
    # default renders rich tracebacks with every local, slowly).
    from worker.core.logging import configure_logging  # noqa: PLC0415

    configure_logging("json", "INFO")
