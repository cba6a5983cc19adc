"""Settings from the environment (DESIGN §7): the env var names are the contract."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.errors import ExitCode, UsageError
from retention.settings import load_settings, parse_duration

ENV_PREFIXES = ("RETENTION_", "PG_URL", "BRAINTRUST_", "OUTBOUND_RATE_LIMIT_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RETENTION_* or PG_URL from the outside world; state under tmp_path."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


# --------------------------------------------------------------------------------------
# parse_duration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("3600", timedelta(hours=1)),
        ("1.5", timedelta(seconds=1.5)),
        ("1.5h", timedelta(minutes=90)),
        ("0.5d", timedelta(hours=12)),
        (" 10m ", timedelta(minutes=10)),
    ],
)
def test_parse_duration_text(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, timedelta(0)),
        (3600, timedelta(hours=1)),
        (2.5, timedelta(seconds=2.5)),
        (0.0, timedelta(0)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_parse_duration_numbers(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "abc",
        "10x",
        "10 minutes",
        "1w",
        "h",
        "-5",
        "-5m",
        "5m30s",
        "1,5h",
        "inf",
        "nan",
        -1,
        -0.5,
        True,
        False,
        None,
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_parse_duration_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match=r"(?i)duration|nan|inf"):
        parse_duration(value)


def test_parse_duration_rejects_negative_numbers_saying_so() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-30)


def test_parse_duration_rejects_durations_too_long_to_represent() -> None:
    """A value timedelta cannot hold is a ValueError like any other bad duration."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration("99999999999999999999d")


# --------------------------------------------------------------------------------------
# load_settings: defaults
# --------------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.resolved_database_url == (
        f"sqlite:///{tmp_path / 'state' / 'retention' / 'retention.sqlite3'}"
    )
    assert settings.policy_dir == Path("policies")
    assert settings.policy_dir_required is False
    assert settings.batch_size == 1000
    assert settings.max_runtime is None
    assert settings.grace_period == timedelta(hours=24)
    assert settings.min_retention_days is None
    assert settings.now is None
    assert settings.table_events == "events"
    assert settings.table_objects == "objects"
    assert settings.table_segments == "segments"
    assert settings.table_columns == {}


# --------------------------------------------------------------------------------------
# load_settings: environment
# --------------------------------------------------------------------------------------


def test_database_url_from_retention_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_DATABASE_URL", "postgresql://u@db/retention")
    assert load_settings().database_url == "postgresql://u@db/retention"
    assert load_settings().resolved_database_url == "postgresql://u@db/retention"


def test_database_url_falls_back_to_pg_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_URL", "postgres://u@pg/brainstore")
    assert load_settings().database_url == "postgres://u@pg/brainstore"


def test_retention_database_url_wins_over_pg_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_URL", "postgres://u@pg/brainstore")
    monkeypatch.setenv("RETENTION_DATABASE_URL", "postgresql://u@db/retention")
    assert load_settings().database_url == "postgresql://u@db/retention"


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("RETENTION_BATCH_SIZE", "250", "batch_size", 250),
        ("RETENTION_BATCH_SIZE", "1", "batch_size", 1),
        ("RETENTION_MAX_RUNTIME", "10m", "max_runtime", timedelta(minutes=10)),
        ("RETENTION_MAX_RUNTIME", "3600", "max_runtime", timedelta(hours=1)),
        ("RETENTION_GRACE_PERIOD", "0", "grace_period", timedelta(0)),
        ("RETENTION_GRACE_PERIOD", "7d", "grace_period", timedelta(days=7)),
        ("RETENTION_GRACE_PERIOD", "90s", "grace_period", timedelta(seconds=90)),
        ("RETENTION_MIN_RETENTION_DAYS", "2.5", "min_retention_days", 2.5),
        ("RETENTION_MIN_RETENTION_DAYS", "0", "min_retention_days", 0.0),
        (
            "RETENTION_POLICY_DIR",
            "/etc/retention/policies",
            "policy_dir",
            Path("/etc/retention/policies"),
        ),
        ("RETENTION_TABLE_EVENTS", "bt_events", "table_events", "bt_events"),
        ("RETENTION_TABLE_OBJECTS", "bt_objects", "table_objects", "bt_objects"),
        ("RETENTION_TABLE_SEGMENTS", "bt_segments", "table_segments", "bt_segments"),
    ],
)
def test_environment_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(), field) == expected


def test_policy_dir_from_environment_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_POLICY_DIR", "/etc/retention/policies")
    assert load_settings().policy_dir_required is True


def test_policy_dir_from_flag_is_required() -> None:
    assert load_settings(policy_dir=Path("mine")).policy_dir_required is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-27T03:00:00Z", datetime(2026, 11, 27, 3, 0, tzinfo=UTC)),
        ("2026-11-27T03:00:00+00:00", datetime(2026, 11, 27, 3, 0, tzinfo=UTC)),
        ("2026-11-27T05:00:00+02:00", datetime(2026, 11, 27, 3, 0, tzinfo=UTC)),
    ],
)
def test_now_with_offset_is_pinned_in_utc(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: datetime
) -> None:
    monkeypatch.setenv("RETENTION_NOW", value)
    now = load_settings().now
    assert now == expected
    assert now is not None and now.utcoffset() == timedelta(0)


def test_now_without_offset_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_NOW", "2026-11-27T03:00:00")
    with pytest.raises(UsageError) as info:
        load_settings()
    assert "RETENTION_NOW" in info.value.message
    assert "RETENTION_RETENTION_" not in info.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("events.created=ts", {"events.created": "ts"}),
        (
            "events.created=ts, objects.created = born",
            {"events.created": "ts", "objects.created": "born"},
        ),
    ],
)
def test_table_columns_from_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: dict[str, str]
) -> None:
    monkeypatch.setenv("RETENTION_TABLE_COLUMNS", value)
    assert load_settings().table_columns == expected


def test_table_columns_from_keyword() -> None:
    settings = load_settings(table_columns="events.created=ts,segments.byte_size=size")
    assert settings.table_columns == {"events.created": "ts", "segments.byte_size": "size"}


# --------------------------------------------------------------------------------------
# load_settings: keyword overrides (CLI flags) beat the environment
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "field", "override", "expected"),
    [
        (
            "RETENTION_DATABASE_URL",
            "postgresql://env/db",
            "database_url",
            "sqlite:///flag.db",
            "sqlite:///flag.db",
        ),
        ("PG_URL", "postgresql://env/db", "database_url", "sqlite:///flag.db", "sqlite:///flag.db"),
        ("RETENTION_BATCH_SIZE", "10", "batch_size", 5, 5),
        ("RETENTION_MAX_RUNTIME", "1h", "max_runtime", "90s", timedelta(seconds=90)),
        ("RETENTION_GRACE_PERIOD", "24h", "grace_period", "0", timedelta(0)),
        ("RETENTION_MIN_RETENTION_DAYS", "3", "min_retention_days", 1.5, 1.5),
        ("RETENTION_POLICY_DIR", "/env", "policy_dir", Path("/flag"), Path("/flag")),
        ("RETENTION_TABLE_EVENTS", "env_events", "table_events", "flag_events", "flag_events"),
        (
            "RETENTION_NOW",
            "2026-01-01T00:00:00Z",
            "now",
            datetime(2026, 11, 27, 3, 0, tzinfo=UTC),
            datetime(2026, 11, 27, 3, 0, tzinfo=UTC),
        ),
    ],
)
def test_keyword_overrides_beat_environment(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    field: str,
    override: object,
    expected: object,
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(**{field: override}), field) == expected


def test_none_overrides_leave_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_BATCH_SIZE", "10")
    assert load_settings(batch_size=None).batch_size == 10


# --------------------------------------------------------------------------------------
# load_settings: invalid values are usage errors naming the env var
# --------------------------------------------------------------------------------------

INVALID_ENV = {
    "batch not a number": ("RETENTION_BATCH_SIZE", "lots"),
    "batch zero": ("RETENTION_BATCH_SIZE", "0"),
    "batch negative": ("RETENTION_BATCH_SIZE", "-5"),
    "batch fractional": ("RETENTION_BATCH_SIZE", "1.5"),
    "batch too large": ("RETENTION_BATCH_SIZE", "1000001"),
    "max runtime word": ("RETENTION_MAX_RUNTIME", "soon"),
    "max runtime negative": ("RETENTION_MAX_RUNTIME", "-10m"),
    "grace unit": ("RETENTION_GRACE_PERIOD", "1w"),
    "grace negative": ("RETENTION_GRACE_PERIOD", "-1"),
    "grace huge": ("RETENTION_GRACE_PERIOD", "99999999999999999999d"),
    "floor negative": ("RETENTION_MIN_RETENTION_DAYS", "-1"),
    "floor nan": ("RETENTION_MIN_RETENTION_DAYS", "nan"),
    "floor inf": ("RETENTION_MIN_RETENTION_DAYS", "inf"),
    "floor word": ("RETENTION_MIN_RETENTION_DAYS", "one"),
    "now naive": ("RETENTION_NOW", "2026-11-27T03:00:00"),
    "now garbage": ("RETENTION_NOW", "tomorrow"),
    "columns without =": ("RETENTION_TABLE_COLUMNS", "events.created"),
    "columns without table": ("RETENTION_TABLE_COLUMNS", "created=ts"),
    "columns without name": ("RETENTION_TABLE_COLUMNS", "events.created="),
}


@pytest.mark.parametrize(("name", "value"), list(INVALID_ENV.values()), ids=list(INVALID_ENV))
def test_invalid_environment_value_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as info:
        load_settings()
    message = info.value.message
    assert f"invalid setting {name}:" in message
    assert info.value.exit_code == ExitCode.USAGE == 2


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [
        ("batch_size", "lots", "RETENTION_BATCH_SIZE"),
        ("grace_period", "-1", "RETENTION_GRACE_PERIOD"),
        ("max_runtime", "soon", "RETENTION_MAX_RUNTIME"),
        ("min_retention_days", -2, "RETENTION_MIN_RETENTION_DAYS"),
        ("now", datetime(2026, 11, 27, 3, 0), "RETENTION_NOW"),
        ("table_columns", "bad", "RETENTION_TABLE_COLUMNS"),
    ],
)
def test_invalid_override_is_a_usage_error_naming_the_setting(
    field: str, value: object, name: str
) -> None:
    with pytest.raises(UsageError) as info:
        load_settings(**{field: value})
    assert f"invalid setting {name}:" in info.value.message


def test_usage_error_message_does_not_leak_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the setting's name and the problem: a mistyped secret never reaches a log."""
    monkeypatch.setenv("RETENTION_BATCH_SIZE", "s3cr3t-token")
    with pytest.raises(UsageError) as info:
        load_settings()
    assert "s3cr3t-token" not in info.value.message


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.batch_size = 5  # type: ignore[misc]
