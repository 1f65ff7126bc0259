"""How many database connections the worker warms before it reports ready."""

from __future__ import annotations

import pytest

from worker.core.config import Settings

_NAMES = ("CAPTURE_DB_WARM_CONNECTIONS", "CAPTURE_DB_POOL_SIZE", "CAPTURE_TOPIC_PARTITIONS")


def _settings(monkeypatch: pytest.MonkeyPatch, **env: int) -> Settings:
    for name in _NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_by_default_one_per_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(monkeypatch).warm_connections == 6  # six partitions, a pool of ten
    assert _settings(monkeypatch, CAPTURE_TOPIC_PARTITIONS=3).warm_connections == 3


def test_never_more_than_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(monkeypatch, CAPTURE_DB_POOL_SIZE=4).warm_connections == 4
    many = _settings(monkeypatch, CAPTURE_DB_WARM_CONNECTIONS=12, CAPTURE_DB_POOL_SIZE=8)
    assert many.warm_connections == 8


def test_zero_warms_none(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(monkeypatch, CAPTURE_DB_WARM_CONNECTIONS=0).warm_connections == 0
