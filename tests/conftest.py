"""Shared fixtures: real services (fixtures/services.py) and databases (fixtures/database.py)."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.database"]
