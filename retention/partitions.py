"""Partitions of a declaratively partitioned ``events`` table (PostgreSQL).

Where ``events`` is range-partitioned on ``created``, a partition whose every row has
expired for its target goes whole: dropped (or detached, ``RETENTION_PARTITION_ACTION``)
instead of deleted row by row. Which partitions may go is decided twice: by the bound (its
upper end is at or before the latest cutoff), then row by row in the dropping transaction,
with writes to the partition locked out: every row must belong to a target with a cutoff,
be older than it (an experiment's row: belong to an experiment created before it) and not
belong to a held object. A row kept
by a policy, a hold or the absence of a policy keeps the whole partition (its expired rows
then go by the row path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Connection,
    MetaData,
    Table,
    and_,
    bindparam,
    case,
    cast,
    column,
    func,
    literal,
    select,
    table,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.types import BigInteger, DateTime

from .blocksweep import SweepSet, target_arrays
from .dataplane import reviewed_only
from .models import ObjectType
from .tables import DataPlaneTables, pg_name

_UPPER = re.compile(r"\bTO \('([^']*)'\)$")


@dataclass(frozen=True)
class Partition:
    schema: str
    name: str
    upper: datetime | None  # every row is older than this (None: no such bound is known)
    oid: int = 0  # the table, as listed; ``still_a_leaf`` checks that it still is one
    bound: str = ""  # its partition bound, as listed


@dataclass(frozen=True)
class PartitionContents:
    """What a partition holds: expired rows per target, and rows kept."""

    expired: dict[tuple[UUID, str], int]
    kept: int  # rows that no target expires


def _name(conn: Connection, tables: DataPlaneTables) -> str:
    """The events table as regclass input."""
    return pg_name(tables.events)


def _rel(conn: Connection, tables: DataPlaneTables) -> Any:
    return cast(bindparam("rel", _name(conn, tables)), REGCLASS)


def leaves(conn: Connection, tables: DataPlaneTables) -> list[Partition]:
    """The leaf partitions of ``events`` ([] when it is not partitioned)."""
    tree = func.pg_partition_tree(_rel(conn, tables)).table_valued(
        "relid", "parentrelid", "isleaf", "level"
    )
    pg_class = table(
        "pg_class",
        column("oid"),
        column("relname"),
        column("relnamespace"),
        column("relpartbound"),
        schema="pg_catalog",
    )
    pg_namespace = table("pg_namespace", column("oid"), column("nspname"), schema="pg_catalog")
    rows = conn.execute(
        select(
            pg_namespace.c.nspname,
            pg_class.c.relname,
            tree.c.level,
            func.pg_get_expr(pg_class.c.relpartbound, pg_class.c.oid),
            cast(pg_class.c.oid, BigInteger),
        )
        .select_from(tree)
        .join(pg_class, pg_class.c.oid == tree.c.relid)
        .join(pg_namespace, pg_namespace.c.oid == pg_class.c.relnamespace)
        .where(tree.c.isleaf)
        .order_by(pg_namespace.c.nspname, pg_class.c.relname)
    ).all()
    if not rows:
        return []
    on_created = _created_key(conn, tables)
    found = []
    for schema, name, level, bound, oid in rows:
        upper = None
        match = _UPPER.search(bound or "")
        if on_created and level == 1 and match:
            value = cast(literal(match.group(1)), DateTime(timezone=True))
            # TO ('infinity') is no bound a row is older than (nor a Python datetime)
            upper = conn.execute(select(case((func.isfinite(value), value)))).scalar_one()
        found.append(
            Partition(schema=schema, name=name, upper=upper, oid=int(oid), bound=bound or "")
        )
    return found


def still_a_leaf(conn: Connection, tables: DataPlaneTables, part: Partition) -> bool:
    """Is ``part`` (locked by the caller) still the partition of ``events`` it was when
    listed: the same table under the same name, attached with the same bound, and not being
    detached (``DETACH ... CONCURRENTLY`` half done)? Someone may have detached it to keep
    it, renamed it or swapped another table in since."""
    name = pg_name(_ddl_table(part))
    found = conn.execute(
        text(
            "SELECT count(*) FROM pg_catalog.pg_inherits i "
            "JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhrelid = CAST(:oid AS oid) AND c.oid = to_regclass(:name) "
            "AND i.inhparent = CAST(:rel AS regclass) "
            "AND pg_get_expr(c.relpartbound, c.oid) = :bound "
            # inhdetachpending is PostgreSQL 14+; read through jsonb so older servers work
            "AND NOT coalesce((to_jsonb(i) ->> 'inhdetachpending')::boolean, false)"
        ),
        {"oid": part.oid, "name": name, "rel": _name(conn, tables), "bound": part.bound},
    ).scalar_one()
    return bool(found)


def waiting_on(conn: Connection, part: Partition) -> int:
    """Sessions waiting for a lock on ``part`` (writers queued behind the caller's lock)."""
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'relation' "
                "AND relation = CAST(:oid AS oid) AND NOT granted"
            ),
            {"oid": part.oid},
        ).scalar_one()
    )


def bound_parent_wait(conn: Connection) -> None:
    """For the rest of the transaction, wait for a lock at most half of ``deadlock_timeout``
    (and never longer than the lock_timeout already set).

    Dropping a locked partition then asks for the parent's lock, the opposite order from a
    writer (parent, then partition). A writer that queued after ``waiting_on`` looked has
    waited less than this when the worker gives up, so PostgreSQL's deadlock check never
    fires in the writer: the worker is the one that gives way."""
    conn.exec_driver_sql(
        "SELECT set_config('lock_timeout', (CASE WHEN cur > 0 AND cur < half THEN cur "
        "ELSE half END)::text || 'ms', true) FROM (SELECT "
        "(SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'lock_timeout') "
        "AS cur, "
        "greatest((SELECT setting::bigint FROM pg_catalog.pg_settings "
        "WHERE name = 'deadlock_timeout') "
        "/ 2, 1) AS half) s"
    )


def _created_key(conn: Connection, tables: DataPlaneTables) -> bool:
    row = conn.execute(
        text(
            "SELECT p.partstrat = 'r' AND p.partnatts = 1 AND a.attname = :col "
            "FROM pg_catalog.pg_partitioned_table p JOIN pg_catalog.pg_attribute a "
            "ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
            "WHERE p.partrelid = CAST(:rel AS regclass)"
        ),
        {"col": tables.events.c.created.name, "rel": _name(conn, tables)},
    ).scalar()
    return bool(row)


def _part_table(tables: DataPlaneTables, part: Partition) -> Any:
    ev = tables.events
    return table(
        part.name,
        *(column(c.name, c.type) for c in ev.c),
        schema=part.schema,
    )


def contents(
    conn: Connection, tables: DataPlaneTables, part: Partition, sweep: SweepSet
) -> PartitionContents:
    """Per target, how many rows of ``part`` have expired; and how many rows nothing expires.

    Counted per target from the index (the ``(project_id, object_type, created)`` index
    answers logs and dataset targets without reading the heap), then against the
    partition's total: every row not counted expired for its own target is kept.
    """
    ev = tables.events
    rows = _part_table(tables, part)
    c = {col.key: rows.c[col.name] for col in ev.c}
    held = c["object_id"].not_in(sorted(sweep.held)) if sweep.held else true()
    expired: dict[tuple[UUID, str], int] = {}
    by_rows = SweepSet(
        tuple(t for t in sweep.targets if t.object_type is not ObjectType.EXPERIMENT)
    )
    whole = SweepSet(tuple(t for t in sweep.targets if t.object_type is ObjectType.EXPERIMENT))
    for subset, is_experiment in ((by_rows, False), (whole, True)):
        if not subset.targets:
            continue
        t = target_arrays(subset)
        if is_experiment:
            ob = tables.objects
            past: Any = (
                select(ob.c.object_id)
                .where(
                    ob.c.object_type == ObjectType.EXPERIMENT.value,
                    ob.c.object_id == c["object_id"],
                    ob.c.project_id == t.c.p,
                    ob.c.created < t.c.cut,
                    # as the row path judges an experiment: only as a reviewed plan named
                    # it (one kept whole, filed elsewhere too, is among the held objects)
                    reviewed_only(ob.c.object_id, sweep.reviewed_objects),
                )
                .correlate_except(ob)
                .exists()
            )
        else:
            past = c["created"] < t.c.cut
        if sweep.newest_row is not None:  # rows after a reviewed plan are not its to go
            past = and_(past, c["sequence_id"] <= sweep.newest_row)
        counted = (
            select(func.coalesce(func.sum(case((and_(past, held), 1), else_=0)), 0).label("n"))
            .where(c["project_id"] == t.c.p, c["object_type"] == t.c.ty)
            .lateral("retention_n")
        )
        query = select(t.c.p, t.c.ty, counted.c.n).select_from(t).join(counted, true())
        for project_id, object_type, count in conn.execute(query):
            if count:
                expired[(project_id, object_type)] = int(count)
    total = int(conn.execute(select(func.count()).select_from(rows)).scalar_one())
    return PartitionContents(expired=expired, kept=total - sum(expired.values()))


def _ddl_table(part: Partition) -> Table:
    return Table(part.name, MetaData(), schema=part.schema)


def _in_ddl(table: Table) -> str:
    """A name spliced into a DDL statement (``exec_driver_sql``): psycopg still reads ``%``
    there as a placeholder, so it is doubled."""
    return pg_name(table).replace("%", "%%")


def lock_writes(conn: Connection, part: Partition) -> None:
    """Block writes to ``part`` until the transaction ends (reads go on)."""
    conn.exec_driver_sql(f"LOCK TABLE {_in_ddl(_ddl_table(part))} IN SHARE MODE")


def remove(conn: Connection, tables: DataPlaneTables, part: Partition, action: str) -> None:
    """DROP the partition, or DETACH it from ``events`` (it stays as a table of its own)."""
    if action == "drop":
        conn.exec_driver_sql(f"DROP TABLE {_in_ddl(_ddl_table(part))}")
        return
    conn.exec_driver_sql(
        f"ALTER TABLE {_in_ddl(tables.events)} DETACH PARTITION {_in_ddl(_ddl_table(part))}"
    )


def heap_size(conn: Connection, tables: DataPlaneTables) -> tuple[int, int]:
    """(blocks of the largest heap, estimated rows): of events, or over its partitions.

    The row estimate is the planner's (``reltuples``, no scan; 0 before any ANALYZE).
    """
    tree = func.pg_partition_tree(_rel(conn, tables)).table_valued("relid", "isleaf")
    pg_class = table("pg_class", column("oid"), column("reltuples"), schema="pg_catalog")
    blocks, rows = conn.execute(
        select(
            func.max(func.pg_relation_size(tree.c.relid)),
            func.sum(func.greatest(pg_class.c.reltuples, 0)),
        )
        .select_from(tree)
        .join(pg_class, pg_class.c.oid == tree.c.relid)
        .where(tree.c.isleaf)
    ).one()
    if blocks is None:  # not partitioned
        blocks, rows = conn.execute(
            select(func.pg_relation_size(_rel(conn, tables)), pg_class.c.reltuples).where(
                pg_class.c.oid == _rel(conn, tables)
            )
        ).one()
    block = int(conn.execute(select(func.current_setting("block_size"))).scalar_one())
    return int(blocks) // block, max(int(rows or 0), 0)
