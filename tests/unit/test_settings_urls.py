"""Which database URL each tool uses: the worker's login, or an owner for schema changes."""

from __future__ import annotations

import pytest

from worker.core.config import DEFAULT_ADMIN_DATABASE_URL, DEFAULT_DATABASE_URL, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "CAPTURE_ADMIN_DATABASE_URL", "CAPTURE_ALLOW_SUPERUSER"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_defaults_are_the_stack_login_and_its_superuser() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url.get_secret_value() == DEFAULT_DATABASE_URL
    assert "capture_app@" in DEFAULT_DATABASE_URL
    assert settings.admin_url() == DEFAULT_ADMIN_DATABASE_URL
    assert settings.allow_superuser is False


def test_an_explicit_database_url_is_the_admin_url_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://owner@db.example.com/app")
    assert Settings(_env_file=None).admin_url() == "postgresql://owner@db.example.com/app"  # type: ignore[call-arg]


def test_the_admin_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://capture_app@db/app")
    monkeypatch.setenv("CAPTURE_ADMIN_DATABASE_URL", "postgresql://owner@db/app")
    monkeypatch.setenv("CAPTURE_ALLOW_SUPERUSER", "1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.admin_url() == "postgresql://owner@db/app"
    assert settings.database_url.get_secret_value() == "postgresql://capture_app@db/app"
    assert settings.allow_superuser is True


def test_replay_resets_as_the_admin_and_replays_as_the_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.interfaces.cli.replay import target_url  # noqa: PLC0415 - the CLI module

    monkeypatch.setenv("DATABASE_URL", "postgresql://capture_app@db/app")
    monkeypatch.setenv("CAPTURE_ADMIN_DATABASE_URL", "postgresql://owner@db/app")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert target_url(settings, reset=True) == "postgresql://owner@db/app"
    assert target_url(settings, reset=False) == "postgresql://capture_app@db/app"
