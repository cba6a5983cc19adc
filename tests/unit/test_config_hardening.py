"""Only the documented names are read, and no message carries a secret."""

from __future__ import annotations

import pytest

from retention.db import parse_database_url
from retention.errors import UsageError
from retention.settings import load_settings


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("RETENTION_", "BRAINTRUST_", "OUTBOUND_")) or name in (
            "PG_URL",
            "DATABASE_URL",
            "NOW",
            "BATCH_SIZE",
            "MIN_RETENTION_DAYS",
            "POLICY_DIR",
        ):
            monkeypatch.delenv(name, raising=False)


def test_generic_names_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://other@host/prod")
    monkeypatch.setenv("NOW", "2020-01-01T00:00:00Z")
    monkeypatch.setenv("BATCH_SIZE", "7")
    monkeypatch.setenv("MIN_RETENTION_DAYS", "0")
    monkeypatch.setenv("database_url", "postgresql://other@host/prod")
    settings = load_settings()
    assert settings.database_url is None
    assert settings.now is None
    assert settings.batch_size == 1000
    assert settings.min_retention_days is None


def test_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_DATABASE_URL", "")
    monkeypatch.setenv("PG_URL", "postgresql://u@db/braintrust")
    monkeypatch.setenv("RETENTION_BATCH_SIZE", "")
    settings = load_settings()
    assert settings.database_url == "postgresql://u@db/braintrust"
    assert settings.batch_size == 1000


def test_flags_override_by_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_BATCH_SIZE", "5")
    assert load_settings(batch_size=9).batch_size == 9
    with pytest.raises(TypeError):
        load_settings(no_such_setting=1)


@pytest.mark.parametrize(
    "raw",
    [
        "admin:hunter2@db.example/prod",
        "postgresql:/admin:hunter2@db/prod",
        "mysql://admin:hunter2@db/prod",
        "postgresql://admin:hunter2@db:notaport/prod",
        "  hunter2  ",
    ],
)
def test_rejected_urls_never_echo_secrets(raw: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_database_url(raw)
    assert "hunter2" not in caught.value.message
    assert caught.value.exit_code == 2


def test_display_hides_passwords_in_every_place() -> None:
    database = parse_database_url(
        "postgresql://admin:hunter2@db/prod?password=hunter3&sslpassword=hunter4&sslmode=require"
    )
    shown = database.display
    assert "hunter" not in shown
    assert "sslmode=require" in shown and "db/prod" in shown
