"""Shared fixtures: real services (tests/fixtures/services.py) and databases (tests/fixtures/database.py)."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.database"]
