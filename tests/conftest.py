"""Shared fixtures: real services, databases, and worker processes (tests/fixtures/)."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.database",
    "tests.fixtures.workers",
]
