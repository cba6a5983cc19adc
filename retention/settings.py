"""Settings from the environment (names are the contract, DESIGN §7) and CLI overrides."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .errors import UsageError
from .models import MAX_RETENTION_DAYS, as_utc

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """``90s``, ``10m``, ``24h``, ``7d`` or a plain number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"invalid duration {value!r} (use 90s, 10m, 24h, 7d or seconds)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be finite and not negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {value!r}: too long") from None


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "retention"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        # Only the documented names are read: no generic DATABASE_URL or NOW from the
        # environment. Empty variables count as unset (templated manifests leave them empty).
        extra="ignore",
        case_sensitive=True,
        frozen=True,
        env_ignore_empty=True,
    )

    database_url: str | None = Field(
        default=None, validation_alias=_env("RETENTION_DATABASE_URL", "PG_URL")
    )
    state_dir: Path = Field(
        default_factory=default_state_dir, validation_alias=_env("RETENTION_STATE_DIR")
    )
    policy_dir: Path = Field(
        default=Path("policies"), validation_alias=_env("RETENTION_POLICY_DIR")
    )
    batch_size: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        validation_alias=_env("RETENTION_BATCH_SIZE"),
    )
    max_runtime: Duration | None = Field(
        default=None, validation_alias=_env("RETENTION_MAX_RUNTIME")
    )
    grace_period: Duration = Field(
        default=timedelta(hours=24),
        validation_alias=_env("RETENTION_GRACE_PERIOD"),
    )
    min_retention_days: float | None = Field(
        default=None,
        ge=0,
        le=MAX_RETENTION_DAYS,
        allow_inf_nan=False,
        validation_alias=_env("RETENTION_MIN_RETENTION_DAYS"),
    )
    resume_max_age: Duration = Field(
        default=timedelta(hours=24),
        validation_alias=_env("RETENTION_RESUME_MAX_AGE"),
    )
    max_delete_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        validation_alias=_env("RETENTION_MAX_DELETE_FRACTION"),
    )
    max_delete_rows: int | None = Field(
        default=None, ge=0, validation_alias=_env("RETENTION_MAX_DELETE_ROWS")
    )
    max_delete_bytes: int | None = Field(
        default=None, ge=0, validation_alias=_env("RETENTION_MAX_DELETE_BYTES")
    )
    max_run_rows: int | None = Field(
        default=None, ge=0, validation_alias=_env("RETENTION_MAX_RUN_ROWS")
    )
    max_run_bytes: int | None = Field(
        default=None, ge=0, validation_alias=_env("RETENTION_MAX_RUN_BYTES")
    )
    max_policy_shrink: float = Field(
        default=0.5,
        ge=0,
        le=1,
        allow_inf_nan=False,
        validation_alias=_env("RETENTION_MAX_POLICY_SHRINK"),
    )
    plan_max_age: Duration = Field(
        default=timedelta(hours=24), validation_alias=_env("RETENTION_PLAN_MAX_AGE")
    )
    reconnect_timeout: Duration = Field(
        default=timedelta(seconds=60), validation_alias=_env("RETENTION_RECONNECT_TIMEOUT")
    )
    max_clock_skew: Duration = Field(
        default=timedelta(minutes=5), validation_alias=_env("RETENTION_MAX_CLOCK_SKEW")
    )
    delete_strategy: str = Field(
        default="auto",
        pattern="^(auto|keyset|blocks)$",
        validation_alias=_env("RETENTION_DELETE_STRATEGY"),
    )
    block_sweep_fraction: float = Field(
        default=0.05, ge=0, le=1, validation_alias=_env("RETENTION_BLOCK_SWEEP_FRACTION")
    )
    partition_action: str = Field(
        default="drop",
        pattern="^(drop|detach|off)$",
        validation_alias=_env("RETENTION_PARTITION_ACTION"),
    )
    sweep_blocks: int = Field(  # heap blocks (8 KiB) of the first block-sweep batch
        default=256, ge=1, le=65_536, validation_alias=_env("RETENTION_SWEEP_BLOCKS")
    )
    block_sweep_min_rows: int = Field(
        default=100_000, ge=0, validation_alias=_env("RETENTION_BLOCK_SWEEP_MIN_ROWS")
    )
    sweep_unit_blocks: int = Field(  # heap blocks per work unit of the block sweep
        default=16_384, ge=1, validation_alias=_env("RETENTION_SWEEP_UNIT_BLOCKS")
    )
    plan_connections: int = Field(  # 2: a large table's counts split over two sessions
        default=2, ge=1, le=2, validation_alias=_env("RETENTION_PLAN_CONNECTIONS")
    )
    sweep_connections: int = Field(  # connections of one process sharing the block sweep
        default=1, ge=1, le=16, validation_alias=_env("RETENTION_SWEEP_CONNECTIONS")
    )
    worker_stale: Duration = Field(
        default=timedelta(seconds=60), validation_alias=_env("RETENTION_WORKER_STALE")
    )
    join_wait: Duration = Field(
        default=timedelta(seconds=120), validation_alias=_env("RETENTION_JOIN_WAIT")
    )
    batch_target_seconds: float = Field(
        default=0.2, gt=0, le=60, validation_alias=_env("RETENTION_BATCH_TARGET_SECONDS")
    )
    lock_retries: int = Field(
        default=5, ge=0, le=100, validation_alias=_env("RETENTION_LOCK_RETRIES")
    )
    lock_timeout: Duration = Field(
        default=timedelta(seconds=30), validation_alias=_env("RETENTION_LOCK_TIMEOUT")
    )
    statement_timeout: Duration = Field(
        default=timedelta(minutes=15), validation_alias=_env("RETENTION_STATEMENT_TIMEOUT")
    )
    now: datetime | None = Field(default=None, validation_alias=_env("RETENTION_NOW"))
    # Table and column names of the reference schema (DESIGN §3, §7).
    table_events: str = Field(default="events", validation_alias=_env("RETENTION_TABLE_EVENTS"))
    table_objects: str = Field(default="objects", validation_alias=_env("RETENTION_TABLE_OBJECTS"))
    table_segments: str = Field(
        default="segments", validation_alias=_env("RETENTION_TABLE_SEGMENTS")
    )
    table_columns: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        validation_alias=_env("RETENTION_TABLE_COLUMNS"),
        description="renamed columns, 'events.created=ts,objects.created=born'",
    )
    # Object storage of segment files (DESIGN §3). Unset: segments are reported, not marked.
    object_store_url: str | None = Field(
        default=None, validation_alias=_env("RETENTION_OBJECT_STORE_URL")
    )
    s3_endpoint: str | None = Field(default=None, validation_alias=_env("RETENTION_S3_ENDPOINT"))
    s3_region: str | None = Field(default=None, validation_alias=_env("RETENTION_S3_REGION"))
    s3_access_key_id: str | None = Field(
        default=None, validation_alias=_env("RETENTION_S3_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=_env("RETENTION_S3_SECRET_ACCESS_KEY")
    )
    s3_allow_http: bool = Field(default=False, validation_alias=_env("RETENTION_S3_ALLOW_HTTP"))
    object_store_options: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        validation_alias=_env("RETENTION_OBJECT_STORE_OPTIONS"),
        description="more store options as JSON, e.g. GCS or Azure credentials",
    )
    object_store_timeout: Duration = Field(
        default=timedelta(seconds=60), validation_alias=_env("RETENTION_OBJECT_STORE_TIMEOUT")
    )
    object_store_max_retries: int = Field(
        default=3, ge=0, le=20, validation_alias=_env("RETENTION_OBJECT_STORE_MAX_RETRIES")
    )
    sweep_batch_size: int = Field(
        default=1000, ge=1, le=1000, validation_alias=_env("RETENTION_SWEEP_BATCH_SIZE")
    )
    # The control plane (DESIGN §6). Unset URL: local policy files only.
    api_url: str | None = Field(default=None, validation_alias=_env("BRAINTRUST_API_URL"))
    org_name: str | None = Field(default=None, validation_alias=_env("BRAINTRUST_ORG_NAME"))
    service_token: SecretStr | None = Field(
        default=None, validation_alias=_env("RETENTION_SERVICE_TOKEN")
    )
    service_token_file: Path | None = Field(
        default=None, validation_alias=_env("RETENTION_SERVICE_TOKEN_FILE")
    )
    api_ca_bundle: Path | None = Field(
        default=None, validation_alias=_env("RETENTION_API_CA_BUNDLE")
    )
    api_connect_timeout: Duration = Field(
        default=timedelta(seconds=5), validation_alias=_env("RETENTION_API_CONNECT_TIMEOUT")
    )
    api_read_timeout: Duration = Field(
        default=timedelta(seconds=30), validation_alias=_env("RETENTION_API_READ_TIMEOUT")
    )
    api_max_attempts: int = Field(
        default=5, ge=1, le=20, validation_alias=_env("RETENTION_API_MAX_ATTEMPTS")
    )
    api_backoff_initial: Duration = Field(
        default=timedelta(seconds=0.5), validation_alias=_env("RETENTION_API_BACKOFF_INITIAL")
    )
    api_backoff_max: Duration = Field(
        default=timedelta(seconds=30), validation_alias=_env("RETENTION_API_BACKOFF_MAX")
    )
    api_page_size: int = Field(
        default=1000, ge=1, le=10_000, validation_alias=_env("RETENTION_API_PAGE_SIZE")
    )
    api_max_pages: int = Field(
        default=1000, ge=1, le=1_000_000, validation_alias=_env("RETENTION_API_MAX_PAGES")
    )
    rate_limit_max_requests: int = Field(
        default=100, ge=0, validation_alias=_env("OUTBOUND_RATE_LIMIT_MAX_REQUESTS")
    )
    rate_limit_window_minutes: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        validation_alias=_env("OUTBOUND_RATE_LIMIT_WINDOW_MINUTES"),
    )
    audit: bool = Field(default=False, validation_alias=_env("RETENTION_AUDIT"))
    log_format: str = Field(
        default="auto", pattern="^(auto|json|text)$", validation_alias=_env("RETENTION_LOG_FORMAT")
    )
    stop_timeout: Duration = Field(
        default=timedelta(seconds=10), validation_alias=_env("RETENTION_STOP_TIMEOUT")
    )
    metrics_textfile: Path | None = Field(
        default=None, validation_alias=_env("RETENTION_METRICS_TEXTFILE")
    )
    pushgateway_url: str | None = Field(
        default=None, validation_alias=_env("RETENTION_PUSHGATEWAY_URL")
    )
    metrics_port: int = Field(
        default=9464, ge=0, le=65535, validation_alias=_env("RETENTION_METRICS_PORT")
    )
    schedule: str | None = Field(default=None, validation_alias=_env("RETENTION_SCHEDULE"))
    schedule_tz: str = Field(default="UTC", validation_alias=_env("RETENTION_SCHEDULE_TZ"))
    schedule_jitter: Duration = Field(
        default=timedelta(0), validation_alias=_env("RETENTION_SCHEDULE_JITTER")
    )
    log_level: str = Field(default="INFO", validation_alias=_env("RETENTION_LOG_LEVEL"))

    @field_validator("now")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-11-27T03:00:00Z")
        return as_utc(value)

    @field_validator("object_store_options", mode="before")
    @classmethod
    def _store_options(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ValueError("expected a JSON object of strings") from None
            if not isinstance(parsed, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
            ):
                raise ValueError("expected a JSON object of strings")
            return parsed
        return value

    @field_validator("table_columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for item in filter(None, (part.strip() for part in value.split(","))):
                key, sep, name = item.partition("=")
                if not sep or "." not in key or not name.strip():
                    raise ValueError(f"expected table.column=name, got {item!r}")
                pairs[key.strip()] = name.strip()
            return pairs
        return value

    @property
    def embedded_database_path(self) -> Path:
        return self.state_dir / "retention.sqlite3"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.embedded_database_path}"

    @property
    def policy_dir_required(self) -> bool:
        """The default folder may be absent; a configured one must exist."""
        return "policy_dir" in self.model_fields_set


_ENV_NAMES = {
    "database_url": "RETENTION_DATABASE_URL",
    "table_columns": "RETENTION_TABLE_COLUMNS",
}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with non-None ``overrides`` (CLI flags) on top.

    ``overrides`` are keyed by field name (``batch_size=…``).
    """
    fields = Settings.model_fields
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    given = {_alias(name): v for name, v in overrides.items() if v is not None}
    # `from None`: a validation error can carry the rejected input, which may be a secret.
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        raise UsageError(f"invalid setting {_env_name(field)}: {error['msg']}") from None
    except SettingsError as exc:
        raise UsageError(f"invalid settings: {str(exc).splitlines()[0]}") from None


def _alias(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    assert isinstance(alias, AliasChoices)
    return str(alias.choices[0])


def _env_name(field: str) -> str:
    """The environment variable of a field (errors name the alias or the field)."""
    upper = field.upper()
    if upper.startswith(("RETENTION_", "PG_", "BRAINTRUST_", "OUTBOUND_")):
        return upper
    return _ENV_NAMES.get(field, f"RETENTION_{upper}")
