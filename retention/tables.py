"""The reference data-plane tables (DESIGN §3) as SQLAlchemy Core objects.

Table and column names come from settings, so a data plane with other names works without
any SQL being built by formatting names. On SQLite, UUIDs are stored as canonical text and
timestamps as fixed-width UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``), which orders like time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import JSON, TypeEngine

from .errors import UsageError


class UUIDType(TypeDecorator[UUID]):
    """Native ``uuid`` on PostgreSQL, canonical 36-character text elsewhere."""

    impl = String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=True))
        return dialect.type_descriptor(String(36))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        uuid = value if isinstance(value, UUID) else UUID(str(value))
        return uuid if dialect.name == "postgresql" else str(uuid)

    def process_result_value(self, value: Any, dialect: Dialect) -> UUID | None:
        if value is None:
            return None
        return value if isinstance(value, UUID) else UUID(str(value))


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz`` on PostgreSQL; aware UTC datetimes in and out everywhere."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware datetimes")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def array_literal(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal (text, cast by the statement to its array type) of
    strings, numbers, UUIDs, aware datetimes and None (NULL). Passing one string instead
    of a list saves the driver dumping every element: a batch's arrays can hold thousands
    of receipts or targets."""
    return "{" + ",".join(_array_element(v) for v in values) + "}"


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        raise TypeError("no booleans in array literals")
    if isinstance(value, datetime):
        if value.utcoffset() is None:  # naive, or a tzinfo without an offset
            raise ValueError("timestamps must be timezone-aware datetimes")
        value = value.isoformat()
    elif isinstance(value, int | float):
        return repr(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_type() -> TypeEngine[Any]:
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


# Columns the worker reads or writes, per table. Other columns may exist and are ignored.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": ("sequence_id", "object_type", "object_id", "project_id", "created"),
    "objects": ("object_type", "object_id", "project_id", "created"),
    "segments": (
        "segment_id",
        "object_type",
        "object_id",
        "project_id",
        "min_created",
        "max_created",
        "row_count",
        "byte_size",
        "object_key",
        "state",
        "unused_at",
    ),
}


# Columns of the reference schema that the worker does not need but may be renamed too.
OPTIONAL_COLUMNS = {"events.id", "events._xact_id", "events.data", "objects.name"}


@dataclass(frozen=True)
class DataPlaneTables:
    events: Table
    objects: Table
    segments: Table
    metadata: MetaData

    def by_role(self, role: str) -> Table:
        return {"events": self.events, "objects": self.objects, "segments": self.segments}[role]


def pg_name(table: Table) -> str:
    """The table's name as PostgreSQL reads it (``"schema"."name"``, every part quoted), as a
    bound value (regclass input). Not the dialect's ``format_table``: that doubles each
    ``%`` for the driver's parameter style, so as a value ``ev%`` named ``ev%%`` (DDL text
    doubles it itself: ``partitions._in_ddl``)."""
    parts = [table.schema, table.name] if table.schema else [table.name]
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def _split(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def build_tables(
    *,
    events: str = "events",
    objects: str = "objects",
    segments: str = "segments",
    columns: dict[str, str] | None = None,
) -> DataPlaneTables:
    """Table objects for the reference schema under the configured names.

    ``columns`` maps ``"events.created"`` (role.column) to the column's real name.
    """
    renamed = columns or {}
    for key in renamed:
        role, _, name = key.partition(".")
        if name not in REQUIRED_COLUMNS.get(role, ()) and key not in OPTIONAL_COLUMNS:
            known = ", ".join(f"{r}.{c}" for r, cs in REQUIRED_COLUMNS.items() for c in cs)
            raise UsageError(f"RETENTION_TABLE_COLUMNS: unknown column {key!r} (known: {known})")

    def col(role: str, name: str, *args: Any, **kwargs: Any) -> Column[Any]:
        real = renamed.get(f"{role}.{name}", name)
        # always quoted: a name SQLAlchemy does not know as reserved (``lateral``,
        # ``returning``) is still one to the server
        return Column(real, *args, key=name, quote=True, **kwargs)

    metadata = MetaData()
    ev_schema, ev_name = _split(events)
    events_table = Table(
        ev_name,
        metadata,
        col(
            "events",
            "sequence_id",
            BigInteger().with_variant(Integer(), "sqlite"),
            Identity(always=True),
            primary_key=True,
        ),
        col("events", "object_type", Text, nullable=False),
        col("events", "object_id", UUIDType, nullable=False),
        col("events", "project_id", UUIDType, nullable=False),
        col("events", "id", Text, nullable=False),
        col("events", "_xact_id", BigInteger, nullable=False),
        col("events", "created", UTCDateTime, nullable=False),
        col("events", "data", _json_type()),
        schema=ev_schema,
        quote=True,
        quote_schema=True,
    )
    Index(
        "events_project_type_created",
        events_table.c.project_id,
        events_table.c.object_type,
        events_table.c.created,
    )
    Index(
        "events_object_created",
        events_table.c.object_type,
        events_table.c.object_id,
        events_table.c.created,
    )
    ob_schema, ob_name = _split(objects)
    objects_table = Table(
        ob_name,
        metadata,
        col("objects", "object_type", Text, primary_key=True),
        col("objects", "object_id", UUIDType, primary_key=True),
        col("objects", "project_id", UUIDType, nullable=False),
        col("objects", "name", Text),
        col("objects", "created", UTCDateTime, nullable=False),
        schema=ob_schema,
        quote=True,
        quote_schema=True,
    )
    sg_schema, sg_name = _split(segments)
    segments_table = Table(
        sg_name,
        metadata,
        col("segments", "segment_id", UUIDType, primary_key=True),
        col("segments", "object_type", Text, nullable=False),
        col("segments", "object_id", UUIDType, nullable=False),
        col("segments", "project_id", UUIDType, nullable=False),
        col("segments", "min_created", UTCDateTime, nullable=False),
        col("segments", "max_created", UTCDateTime, nullable=False),
        col("segments", "row_count", BigInteger, nullable=False),
        col("segments", "byte_size", BigInteger, nullable=False),
        col("segments", "object_key", Text, nullable=False, unique=True),
        col("segments", "state", Text, nullable=False, server_default="live"),
        col("segments", "unused_at", UTCDateTime),
        schema=sg_schema,
        quote=True,
        quote_schema=True,
    )
    return DataPlaneTables(
        events=events_table, objects=objects_table, segments=segments_table, metadata=metadata
    )
