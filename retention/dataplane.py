"""All SQL on the data-plane tables: schema check, inventory, counts and batched deletes.

Every function takes a ``Connection`` (the caller owns the transaction) and returns typed
objects. Statements are built with SQLAlchemy Core from the ``Table`` objects of
``retention.tables``; no SQL text is formatted from names.

Deletion order is keyset order, so a batch never rescans what earlier batches deleted:
logs and dataset rows by ``(created, sequence_id)``; experiment rows by
``(object_id, created, sequence_id)``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    case,
    column,
    delete,
    exists,
    false,
    func,
    inspect,
    literal,
    not_,
    or_,
    select,
    table,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from .blocksweep import newest_of, resolution_arrays, reviewed_pairs, up_to
from .errors import SchemaError
from .models import BatchResult, Cursor, ObjectType, Resolution, SourceKind, TargetCounts
from .tables import REQUIRED_COLUMNS, DataPlaneTables, pg_name


def check_schema(conn: Connection, tables: DataPlaneTables, roles: Iterable[str]) -> None:
    """Fail closed, naming the table or column, when the data plane lacks what we need."""
    wanted = list(roles)
    found = (
        _pg_columns(conn, tables, wanted)
        if conn.dialect.name == "postgresql"
        else _inspected_columns(conn, tables, wanted)
    )
    for role in wanted:
        source = tables.by_role(role)
        shown = f"{source.schema}.{source.name}" if source.schema else source.name
        present = found[role]
        if present is None:
            raise SchemaError(f"database is missing table {shown!r} (the {role} table)")
        for key in REQUIRED_COLUMNS[role]:
            real = source.c[key].name
            if real not in present:
                raise SchemaError(f"table {shown!r} is missing column {real!r}")


def _inspected_columns(
    conn: Connection, tables: DataPlaneTables, roles: Sequence[str]
) -> dict[str, set[str] | None]:
    """Each role's table's column names (None: no such table), by reflection."""
    inspector = inspect(conn)
    found: dict[str, set[str] | None] = {}
    for role in roles:
        source = tables.by_role(role)
        found[role] = (
            {c["name"] for c in inspector.get_columns(source.name, schema=source.schema)}
            if inspector.has_table(source.name, schema=source.schema)
            else None
        )
    return found


def _pg_columns(
    conn: Connection, tables: DataPlaneTables, roles: Sequence[str]
) -> dict[str, set[str] | None]:
    """``_inspected_columns`` in one catalog query (reflection takes a dozen): each name is
    looked up as the data-plane statements will resolve it (``to_regclass``, search path)."""
    names = [pg_name(tables.by_role(role)) for role in roles]
    rel = (
        func.unnest(bindparam("names", names, type_=ARRAY(Text)))
        .table_valued("name", with_ordinality="i")
        .render_derived(name="retention_r")
    )
    attribute = table(
        "pg_attribute",
        column("attrelid"),
        column("attname"),
        column("attnum"),
        column("attisdropped"),
        schema="pg_catalog",
    )
    oid = func.to_regclass(rel.c.name)
    found: dict[str, set[str] | None] = {}
    for i, exists_, name in conn.execute(
        select(rel.c.i, oid.is_not(None), attribute.c.attname)
        .select_from(rel)
        .outerjoin(
            attribute,
            and_(
                attribute.c.attrelid == oid,
                attribute.c.attnum > 0,
                not_(attribute.c.attisdropped),
            ),
        )
    ):
        role = roles[int(i) - 1]
        if not exists_:
            found[role] = None
            continue
        present = found.setdefault(role, set())
        if present is not None and name is not None:
            present.add(str(name))
    return found


_DIGITS = "[0-9]"
SQLITE_TIMESTAMP_GLOB = (
    f"{_DIGITS * 4}-{_DIGITS * 2}-{_DIGITS * 2} {_DIGITS * 2}:{_DIGITS * 2}:{_DIGITS * 2}"
    f".{_DIGITS * 6}"
)
SQLITE_UUID_GLOB = "-".join("[0-9a-f]" * n for n in (8, 4, 4, 4, 12))
_SQLITE_FORMATS = {
    "events": {
        "created": SQLITE_TIMESTAMP_GLOB,
        "project_id": SQLITE_UUID_GLOB,
        "object_id": SQLITE_UUID_GLOB,
    },
    "objects": {
        "created": SQLITE_TIMESTAMP_GLOB,
        "project_id": SQLITE_UUID_GLOB,
        "object_id": SQLITE_UUID_GLOB,
    },
    "segments": {
        "segment_id": SQLITE_UUID_GLOB,
        "project_id": SQLITE_UUID_GLOB,
        "object_id": SQLITE_UUID_GLOB,
        "min_created": SQLITE_TIMESTAMP_GLOB,
        "max_created": SQLITE_TIMESTAMP_GLOB,
        "unused_at": SQLITE_TIMESTAMP_GLOB,
    },
}


class _Canonical(ColumnElement[bool]):
    """True where ``column`` holds a value in its SQLite storage spelling (``pattern``);
    always true on PostgreSQL (typed columns)."""

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy reads it from the class)
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_string),
    ]

    def __init__(self, column: ColumnElement[Any], pattern: str) -> None:
        self.column = column
        self.pattern = pattern


@compiles(_Canonical)
def _canonical_anywhere(element: _Canonical, compiler: Any, **kw: Any) -> str:
    return "1 = 1"


@compiles(_Canonical, "sqlite")
def _canonical_sqlite(element: _Canonical, compiler: Any, **kw: Any) -> str:
    column = compiler.process(type_coerce(element.column, Text), **kw)
    pattern = compiler.process(literal(element.pattern, Text), **kw)
    return f"{column} GLOB {pattern}"


def canonical_time(column: ColumnElement[Any]) -> ColumnElement[bool]:
    """Rows a time comparison may judge: on SQLite, text in the one spelling that orders
    like time. A row written in another spelling while a run goes on (after its up-front
    check) is never deleted by a text comparison that would get it wrong."""
    return _Canonical(column, SQLITE_TIMESTAMP_GLOB)


def canonical_id(column: ColumnElement[Any]) -> ColumnElement[bool]:
    """On SQLite, an id in canonical lower-case text: a hold's ``NOT IN`` can only keep an
    object whose id is spelled as the hold's."""
    return _Canonical(column, SQLITE_UUID_GLOB)


_SQLITE_NULLABLE = frozenset({"unused_at"})


def check_sqlite_values(
    conn: Connection, tables: DataPlaneTables, roles: Iterable[str] = tuple(_SQLITE_FORMATS)
) -> None:
    """On SQLite, times and ids are text compared as text: refuse any other spelling.

    A timestamp like '2026-10-28 00:00:00' or '2026-10-27T20:00:00-05:00' would compare
    wrongly against the cutoff, so its presence stops the run (exit 2) before any deletion.
    """
    for role in roles:
        columns = _SQLITE_FORMATS[role]
        table = tables.by_role(role)
        for key, pattern in columns.items():
            column = type_coerce(table.c[key], Text)
            spelled = column.op("GLOB", is_comparison=True)(literal(pattern, Text))
            # only unused_at may be NULL: a NULL time or id (a table without the reference
            # schema's NOT NULL) is no value the worker can judge
            wrong = (
                not_(spelled) if key in _SQLITE_NULLABLE else or_(column.is_(None), not_(spelled))
            )
            bad = conn.execute(select(literal(1)).where(wrong).limit(1)).first()
            if bad is not None:
                expected = (
                    "'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)"
                    if pattern == SQLITE_TIMESTAMP_GLOB
                    else ("lower-case canonical UUID text")
                )
                raise SchemaError(
                    f"table {table.name!r} column {table.c[key].name!r} holds values not in "
                    f"the SQLite storage format {expected} (or NULL); nothing was deleted"
                )


def project_ids(conn: Connection, tables: DataPlaneTables) -> set[UUID]:
    """Every project that has a registry entry, a row or a segment in the data plane (a
    project with nothing but segment files left is still there: deleted in the control
    plane, it is an orphan like any other)."""
    ob, sg = tables.objects, tables.segments  # one row per object or file: DISTINCT will do
    registered = {row[0] for row in conn.execute(select(ob.c.project_id).distinct())}
    filed = {row[0] for row in conn.execute(select(sg.c.project_id).distinct())}
    return registered | filed | _distinct_projects(conn, tables.events)


def _distinct_projects(conn: Connection, source: Table) -> set[UUID]:
    """The distinct ``project_id`` values of a table, one index probe per project.

    A loose index scan (recursively, the first ``project_id`` after the previous one): with
    an index leading on ``project_id`` (the reference schema's ``events (project_id,
    object_type, created)``) this reads a few pages per project instead of every row.
    """
    pid = source.c.project_id
    first = select(pid).order_by(pid).limit(1).scalar_subquery()  # no min(uuid) in PostgreSQL
    seed = select(first.label("id")).cte("retention_walk", recursive=True)
    step = select(pid).where(pid > seed.c.id).order_by(pid).limit(1).scalar_subquery()
    walk = seed.union_all(select(step).where(seed.c.id.is_not(None)))
    return {row[0] for row in conn.execute(select(walk.c.id).where(walk.c.id.is_not(None)))}


def object_projects(
    conn: Connection, tables: DataPlaneTables, object_ids: Iterable[UUID]
) -> dict[UUID, set[UUID]]:
    """The projects in whose registry each object appears."""
    ids = sorted(set(object_ids))
    if not ids:
        return {}
    ob = tables.objects
    found: dict[UUID, set[UUID]] = {}
    for object_id, project_id in conn.execute(
        select(ob.c.object_id, ob.c.project_id).where(ob.c.object_id.in_(ids))
    ):
        found.setdefault(object_id, set()).add(project_id)
    return found


def rows_by_project(
    conn: Connection, tables: DataPlaneTables, projects: Sequence[UUID]
) -> dict[UUID, int]:
    """Row counts of the given projects (for orphan reports)."""
    if not projects:
        return {}
    ev = tables.events
    query = (
        select(ev.c.project_id, func.count())
        .where(ev.c.project_id.in_(list(projects)))
        .group_by(ev.c.project_id)
    )
    return {row[0]: int(row[1]) for row in conn.execute(query)}


def not_held(column: ColumnElement[UUID], held: frozenset[UUID]) -> ColumnElement[bool]:
    return and_(column.not_in(sorted(held)), canonical_id(column)) if held else true()


def _target_rows(tables: DataPlaneTables, resolution: Resolution) -> ColumnElement[bool]:
    ev = tables.events
    return and_(
        ev.c.project_id == resolution.project_id,
        ev.c.object_type == resolution.object_type.value,
    )


def expired_experiments(tables: DataPlaneTables, resolution: Resolution) -> Select[tuple[UUID]]:
    """The registry's experiments of the target that expire. One with rows or segments
    filed under another project (data the application wrote inconsistently) is kept whole,
    as a held object is (``Resolution.kept_whole``, from ``misfiled_experiments``): the
    other project's policy and holds are not this target's to judge."""
    ob = tables.objects
    assert resolution.cutoff is not None
    return select(ob.c.object_id).where(
        ob.c.object_type == ObjectType.EXPERIMENT.value,
        ob.c.project_id == resolution.project_id,
        ob.c.created < resolution.cutoff,
        canonical_time(ob.c.created),
        not_held(ob.c.object_id, resolution.held_object_ids),
        reviewed_only(ob.c.object_id, resolution.reviewed_objects),
    )


def reviewed_only(column: ColumnElement[UUID], reviewed: frozenset[UUID] | None) -> Any:
    """Applying a reviewed plan: only the ids it named (anything without a plan)."""
    return true() if reviewed is None else column.in_(sorted(reviewed))


def misfiled_experiments(
    conn: Connection, tables: DataPlaneTables
) -> list[tuple[UUID, UUID, datetime]]:
    """Registry experiments with rows or segments filed under another project than their
    entry's: (project id, experiment id, created), at planning. Rows are probed per
    experiment by the index on (object_type, object_id); segments, which the reference
    schema indexes by id only, are joined once with the registry (probing them per
    experiment read the whole segments table for each: 24 s at 8,000 experiments and
    64,000 segments)."""
    ev, ob, sg = tables.events, tables.objects, tables.segments
    kind = ObjectType.EXPERIMENT.value
    rows = select(ob.c.project_id, ob.c.object_id, ob.c.created).where(
        ob.c.object_type == kind,
        exists().where(
            ev.c.object_type == kind,
            ev.c.object_id == ob.c.object_id,
            ev.c.project_id != ob.c.project_id,
        ),
    )
    files = (
        select(ob.c.project_id, ob.c.object_id, ob.c.created)
        .select_from(sg)
        .join(ob, and_(ob.c.object_type == kind, ob.c.object_id == sg.c.object_id))
        .where(sg.c.object_type == kind, sg.c.project_id != ob.c.project_id)
        .distinct()
    )
    found = {(r[0], r[1], r[2]) for query in (rows, files) for r in conn.execute(query)}
    return sorted(found, key=lambda r: r[1])


def newest_row(conn: Connection, tables: DataPlaneTables) -> int:
    """The largest ``sequence_id`` of events (0 when empty): what a reviewed plan saw."""
    ev = tables.events
    found = conn.execute(select(func.max(ev.c.sequence_id))).scalar()
    return int(found or 0)


def expired_experiment_ids(
    conn: Connection, tables: DataPlaneTables, resolution: Resolution
) -> list[UUID]:
    """The experiments (registry entries) of an experiment target that expire, in id order."""
    if resolution.cutoff is None or resolution.object_type is not ObjectType.EXPERIMENT:
        return []
    query = expired_experiments(tables, resolution)
    return sorted(UUID(str(i)) for i in conn.execute(query).scalars())


def _expired_rows(tables: DataPlaneTables, resolution: Resolution) -> ColumnElement[bool]:
    """The rows that ``resolution`` expires (nothing when it does not delete)."""
    ev = tables.events
    if resolution.cutoff is None:
        return false()
    reviewed = up_to(ev, resolution.newest_row)
    if resolution.object_type is ObjectType.EXPERIMENT:
        expired: ColumnElement[bool] = ev.c.object_id.in_(expired_experiments(tables, resolution))
        if resolution.winner is not None and resolution.winner.kind is SourceKind.ORPHAN:
            # an orphan goes altogether (past the floor): also the rows of experiments the
            # registry no longer has (their segments count as expired already)
            ob = tables.objects
            registered = select(ob.c.object_id).where(
                ob.c.object_type == ObjectType.EXPERIMENT.value
            )
            unregistered = and_(
                ev.c.object_id.not_in(registered),
                ev.c.created < resolution.cutoff,
                canonical_time(ev.c.created),
                not_held(ev.c.object_id, resolution.held_object_ids),
            )
            expired = or_(expired, unregistered)
        return and_(_target_rows(tables, resolution), expired, reviewed)
    return and_(
        _target_rows(tables, resolution),
        ev.c.created < resolution.cutoff,
        canonical_time(ev.c.created),
        not_held(ev.c.object_id, resolution.held_object_ids),
        reviewed,
    )


def batchable(resolutions: Sequence[Resolution]) -> list[Resolution]:
    """Logs and dataset targets with a cutoff and no object holds: counted all at once."""
    return [
        r
        for r in resolutions
        if r.cutoff is not None
        and r.object_type is not ObjectType.EXPERIMENT
        and not r.held_object_ids
    ]


SegmentRows = Mapping[tuple[UUID, str], tuple[int, int]]  # (expired, live) segment rows


def count_row_targets(
    conn: Connection,
    tables: DataPlaneTables,
    resolutions: Sequence[Resolution],
    max_fraction: float | None = None,
    helper: Connection | None = None,
    segment_rows: SegmentRows | None = None,
) -> dict[tuple[UUID, str], TargetCounts]:
    """``_count_row_targets``; with a ``helper`` in the same snapshot (``db.same_snapshot``),
    half of the targets are counted on it, at the same time."""
    chosen = batchable(resolutions)
    if helper is None or len(chosen) < 2:
        return _count_row_targets(conn, tables, chosen, max_fraction, segment_rows)
    half = len(chosen) // 2
    found: dict[tuple[UUID, str], TargetCounts] = {}
    errors: list[BaseException] = []

    def other() -> None:
        try:
            found.update(
                _count_row_targets(helper, tables, chosen[half:], max_fraction, segment_rows)
            )
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    thread = threading.Thread(target=other, name="count")
    thread.start()
    try:
        mine = _count_row_targets(conn, tables, chosen[:half], max_fraction, segment_rows)
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return {**mine, **found}


def _count_row_targets(
    conn: Connection,
    tables: DataPlaneTables,
    resolutions: Sequence[Resolution],
    max_fraction: float | None = None,
    segment_rows: SegmentRows | None = None,
) -> dict[tuple[UUID, str], TargetCounts]:
    """Exact counts of many logs and dataset targets in two statements (PostgreSQL).

    For targets without object holds. The expired rows are counted from each target's
    index range (a LATERAL index-only scan per target), one round trip for all. The kept
    rows are counted too, but with ``max_fraction`` (the guard's) only as far as the guard
    needs: once a target keeps more than ``rows * (1 - f) / f``, deleting its expired rows
    is within the fraction, whatever the rest, so the count stops there and ``total_rows``
    is a lower bound (``total_exact`` false). A daily run then reads about twice its
    expired rows of the index instead of all of it.
    """
    chosen = batchable(resolutions)
    if not chosen:
        return {}
    ev = tables.events
    arrays = resolution_arrays(chosen)
    of_target = and_(ev.c.project_id == arrays.c.p, ev.c.object_type == arrays.c.ty)
    newest = newest_of(chosen)
    expired = (
        select(
            (func.count().filter(up_to(ev, newest)) if newest is not None else func.count()).label(
                "rows"
            ),
            func.count().label("every"),  # with rows after a reviewed plan's newest
            func.min(ev.c.created).label("oldest"),
        ).where(of_target, ev.c.created < arrays.c.cut)
    ).lateral("retention_c")
    found: dict[tuple[UUID, str], TargetCounts] = {}
    rows_of: dict[tuple[UUID, str], int] = {}
    every_of: dict[tuple[UUID, str], int] = {}
    oldest_of: dict[tuple[UUID, str], datetime | None] = {}
    for project_id, object_type, rows, every, first in conn.execute(
        select(arrays.c.p, arrays.c.ty, expired.c.rows, expired.c.every, expired.c.oldest)
        .select_from(arrays)
        .join(expired, true())
    ):
        rows_of[(project_id, object_type)] = int(rows)
        every_of[(project_id, object_type)] = int(every)
        oldest_of[(project_id, object_type)] = first
    files = segment_rows or {}
    limits = [
        kept_needed(
            rows_of.get((r.project_id, r.object_type.value), 0),
            max_fraction,
            *files.get((r.project_id, r.object_type.value), (0, 0)),
        )
        for r in chosen
    ]
    bounded = resolution_arrays(chosen, limits)
    # LIMIT may name the outer row in a LATERAL subquery: each target stops at its own k
    # (in index order: with nothing expired, the first kept row is the target's oldest)
    first_kept = (
        select(ev.c.created)
        .where(
            ev.c.project_id == bounded.c.p,
            ev.c.object_type == bounded.c.ty,
            ev.c.created >= bounded.c.cut,
        )
        .order_by(ev.c.created)
        .limit(bounded.c.k)
        .correlate(bounded)
        .subquery("retention_first_kept")
    )
    kept = (
        select(func.count().label("kept"), func.min(first_kept.c.created).label("oldest"))
        .select_from(first_kept)
        .lateral("retention_kept")
    )
    for project_id, object_type, limit, counted, oldest_kept in conn.execute(
        select(bounded.c.p, bounded.c.ty, bounded.c.k, kept.c.kept, kept.c.oldest)
        .select_from(bounded)
        .join(kept, true())
    ):
        key = (project_id, object_type)
        found[key] = TargetCounts(
            rows=rows_of[key],
            total_rows=every_of[key] + int(counted),
            total_exact=int(counted) < int(limit),
            oldest_row=oldest_of[key] if every_of[key] else oldest_kept,
        )
    return found


def experiment_batchable(resolutions: Sequence[Resolution]) -> list[Resolution]:
    """Experiment targets with a cutoff, no held or kept-whole objects, no reviewed list of
    experiments and not orphans (their unregistered rows go too): counted all at once."""
    return [
        r
        for r in resolutions
        if r.cutoff is not None
        and r.object_type is ObjectType.EXPERIMENT
        and not r.held_object_ids
        and r.reviewed_objects is None
        and (r.winner is None or r.winner.kind is not SourceKind.ORPHAN)
    ]


def count_experiment_targets(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> dict[tuple[UUID, str], TargetCounts]:
    """``count_target`` for many experiment targets in three statements (PostgreSQL): their
    registries, their rows, and the rows of their expired experiments, each one join
    against the targets' arrays (at 10,000 projects a statement per target made the plan
    take 40 s)."""
    chosen = experiment_batchable(resolutions)
    if not chosen:
        return {}
    ev, ob = tables.events, tables.objects
    kind = ObjectType.EXPERIMENT.value
    t = resolution_arrays(chosen)
    registry = (
        select(
            t.c.p,
            func.count().filter(ob.c.created < t.c.cut),
            func.count(),
        )
        .select_from(t)
        .join(ob, and_(ob.c.project_id == t.c.p, ob.c.object_type == kind))
        .group_by(t.c.p)
    )
    rows = (
        select(t.c.p, func.count(), func.min(ev.c.created))
        .select_from(t)
        .join(ev, and_(ev.c.project_id == t.c.p, ev.c.object_type == kind))
        .group_by(t.c.p)
    )
    # the rows of each target's expired experiments (``expired_experiments``): distinct
    # registry ids, so the count is the IN of the one-target form whatever the registry holds
    gone = (
        select(ob.c.project_id, ob.c.object_id)
        .distinct()
        .select_from(t)
        .join(ob, and_(ob.c.project_id == t.c.p, ob.c.object_type == kind))
        .where(ob.c.created < t.c.cut)
        .subquery("retention_gone")
    )
    expired = (
        select(gone.c.project_id, func.count())
        .select_from(gone)
        .join(
            ev,
            and_(
                ev.c.object_type == kind,
                ev.c.object_id == gone.c.object_id,
                ev.c.project_id == gone.c.project_id,
            ),
        )
        .where(up_to(ev, newest_of(chosen)))
        .group_by(gone.c.project_id)
    )
    objects = {p: (int(n), int(total)) for p, n, total in conn.execute(registry)}
    totals = {p: (int(n), oldest) for p, n, oldest in conn.execute(rows)}
    of_expired = {p: int(n) for p, n in conn.execute(expired)}
    found = {}
    for r in chosen:
        n, registered = objects.get(r.project_id, (0, 0))
        total, oldest = totals.get(r.project_id, (0, None))
        found[(r.project_id, kind)] = TargetCounts(
            rows=of_expired.get(r.project_id, 0),
            total_rows=total,
            objects=n,
            oldest_row=oldest,
            total_objects=registered,
        )
    return found


def count_kept_targets(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> dict[tuple[UUID, str], TargetCounts]:
    """``count_target`` for many targets that expire nothing (held whole, or with an object
    hold and no rule) and hold no object of theirs, in one statement (PostgreSQL): their
    rows and the oldest."""
    chosen = [r for r in resolutions if r.cutoff is None and not r.held_object_ids]
    if not chosen:
        return {}
    ev = tables.events
    # the arrays need a cutoff: the run's now, which nothing here compares with
    t = resolution_arrays([replace(r, cutoff=r.now) for r in chosen])
    query = (
        select(t.c.p, t.c.ty, func.count(), func.min(ev.c.created))
        .select_from(t)
        .join(ev, and_(ev.c.project_id == t.c.p, ev.c.object_type == t.c.ty))
        .group_by(t.c.p, t.c.ty)
    )
    found = {(r.project_id, r.object_type.value): TargetCounts() for r in chosen}
    for project_id, object_type, total, oldest in conn.execute(query):
        found[(project_id, object_type)] = TargetCounts(total_rows=int(total), oldest_row=oldest)
    return found


def held_pairs(
    conn: Connection, tables: DataPlaneTables, object_ids: Iterable[UUID]
) -> set[tuple[UUID, str]]:
    """The (project, object type) pairs with a row, a segment or a registry entry of any of
    these objects: the only targets an object hold changes (object ids are unique, so a
    hold of the whole org's applies to every target but has something to keep in few)."""
    ids = sorted(set(object_ids))
    if not ids:
        return set()
    types = [t.value for t in ObjectType]  # leads the events and registry indexes
    found: set[tuple[UUID, str]] = set()
    for source in (tables.events, tables.segments, tables.objects):
        query = (
            select(source.c.project_id, source.c.object_type)
            .where(source.c.object_type.in_(types), source.c.object_id.in_(ids))
            .distinct()
        )
        found.update((p, str(ty)) for p, ty in conn.execute(query))
    return found


EXACT = 2**62  # a limit no table reaches: count everything


def kept_needed(
    rows: int, max_fraction: float | None, segment_rows: int = 0, segment_total: int = 0
) -> int:
    """How many kept rows of a target with ``rows`` expired to count so that the fraction
    guard decides exactly (a count that reaches it means the target is within the
    fraction); ``EXACT`` without a fraction to check. ``segment_rows`` of its
    ``segment_total`` live segment rows expire too: the guard counts both."""
    if max_fraction is None:
        return EXACT
    gone = rows + segment_rows
    if max_fraction >= 1:
        return 1  # the guard cannot fire
    if max_fraction <= 0 or gone == 0:
        return 1  # any deletion fires it; nothing to delete is within it
    # refused while gone > f * (rows + kept + segment_total), i.e. kept below this:
    bound = gone * (1 - max_fraction) / max_fraction + segment_rows - segment_total
    return max(int(bound) + 2, 1) if bound < EXACT else EXACT


def count_target(conn: Connection, tables: DataPlaneTables, resolution: Resolution) -> TargetCounts:
    """Exact counts for one target (run inside the plan's snapshot)."""
    ev = tables.events
    keep = not_held(ev.c.object_id, resolution.held_object_ids)
    by_row = resolution.cutoff is not None and resolution.object_type is not ObjectType.EXPERIMENT
    # logs and datasets: one pass over the target's index entries counts both
    expired = (
        func.coalesce(func.sum(case((_expired_rows(tables, resolution), 1), else_=0)), 0)
        if by_row
        else literal(0)
    )
    total, oldest, rows = conn.execute(
        select(func.count(), func.min(case((keep, ev.c.created))), expired).where(
            _target_rows(tables, resolution)
        )
    ).one()
    objects = registered = 0
    if resolution.cutoff is not None and not by_row and total:
        rows = conn.execute(
            select(func.count()).where(_expired_rows(tables, resolution))
        ).scalar_one()
    if resolution.cutoff is not None and resolution.object_type is ObjectType.EXPERIMENT:
        gone = expired_experiments(tables, resolution).subquery()
        objects = conn.execute(select(func.count()).select_from(gone)).scalar_one()
        ob = tables.objects  # every experiment of the project: the fraction guard's whole
        registered = conn.execute(
            select(func.count()).where(
                ob.c.project_id == resolution.project_id,
                ob.c.object_type == ObjectType.EXPERIMENT.value,
            )
        ).scalar_one()
    held: frozenset[UUID] = frozenset()
    if resolution.held_object_ids:
        ob = tables.objects
        held = frozenset(
            conn.execute(
                select(ob.c.object_id).where(
                    ob.c.project_id == resolution.project_id,
                    ob.c.object_type == resolution.object_type.value,
                    ob.c.object_id.in_(sorted(resolution.held_object_ids)),
                )
            ).scalars()
        )
    return TargetCounts(
        rows=int(rows),
        total_rows=int(total),
        objects=int(objects),
        oldest_row=oldest,
        held_objects=held,
        total_objects=int(registered),
    )


def _after(tables: DataPlaneTables, resolution: Resolution, cursor: Cursor) -> ColumnElement[bool]:
    ev = tables.events
    within = or_(
        ev.c.created > cursor.created,
        and_(ev.c.created == cursor.created, ev.c.sequence_id > cursor.sequence_id),
    )
    if resolution.object_type is not ObjectType.EXPERIMENT:
        return and_(ev.c.created >= cursor.created, within)
    assert cursor.object_id is not None
    return and_(
        ev.c.object_id >= cursor.object_id,
        or_(ev.c.object_id > cursor.object_id, and_(ev.c.object_id == cursor.object_id, within)),
    )


def delete_batch(
    conn: Connection,
    tables: DataPlaneTables,
    resolution: Resolution,
    after: Cursor | None,
    limit: int,
) -> BatchResult:
    """Delete up to ``limit`` expired rows of a target past ``after``, in keyset order."""
    ev = tables.events
    order = [ev.c.created, ev.c.sequence_id]
    if resolution.object_type is ObjectType.EXPERIMENT:
        order.insert(0, ev.c.object_id)
    condition = _expired_rows(tables, resolution)
    if after is not None:
        condition = and_(condition, _after(tables, resolution, after))
    batch = select(ev.c.sequence_id).where(condition).order_by(*order).limit(limit)
    statement = (
        delete(ev)
        # The predicate is repeated outside the subquery: under READ COMMITTED, PostgreSQL
        # re-checks only the outer WHERE on a row that changed while the delete waited for
        # its lock, so a row updated past the cutoff meanwhile is kept.
        .where(ev.c.sequence_id.in_(batch.scalar_subquery()), _expired_rows(tables, resolution))
        .returning(ev.c.object_id, ev.c.created, ev.c.sequence_id)
    )
    deleted = sorted(
        conn.execute(statement).all(),
        key=(lambda r: (r[0], r[1], r[2]))
        if resolution.object_type is ObjectType.EXPERIMENT
        else (lambda r: (r[1], r[2])),
    )
    if not deleted:
        return BatchResult(rows=0, first=None, last=None, digest="")
    with_object = resolution.object_type is ObjectType.EXPERIMENT

    def cursor(row: Sequence[object]) -> Cursor:
        object_id, created, sequence_id = row
        assert isinstance(created, datetime) and isinstance(sequence_id, int)
        return Cursor(
            created=created,
            sequence_id=sequence_id,
            object_id=object_id if with_object and isinstance(object_id, UUID) else None,
        )

    return BatchResult(
        rows=len(deleted),
        first=cursor(deleted[0]),
        last=cursor(deleted[-1]),
        digest=keys_digest(int(r[2]) for r in deleted),
    )


def rows_left(
    conn: Connection, tables: DataPlaneTables, resolution: Resolution, after: Cursor | None
) -> bool:
    """An expired row of the target past ``after`` is still there. A batch that deleted
    fewer rows than its limit may have found some picked rows changed by another writer
    while it waited for their lock (READ COMMITTED re-check): only this says it is done."""
    condition = _expired_rows(tables, resolution)
    if after is not None:
        condition = and_(condition, _after(tables, resolution, after))
    return conn.execute(select(literal(1)).where(condition).limit(1)).first() is not None


def with_rows_left(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> set[tuple[UUID, str]]:
    """The logs and dataset targets (``groupable``) that still have an expired row not
    held, in one statement: ``rows_left`` for a group whose short batches started at the
    front."""
    chosen = _logs_group(resolutions)
    if not chosen:
        return set()
    ev = tables.events
    arrays = resolution_arrays(chosen)
    left = (
        select(literal(1))
        .where(
            ev.c.project_id == arrays.c.p,
            ev.c.object_type == arrays.c.ty,
            ev.c.created < arrays.c.cut,
            up_to(ev, newest_of(chosen)),
            not_held(ev.c.object_id, held_in(chosen)),
        )
        .exists()
    )
    return {(p, ty) for p, ty in conn.execute(select(arrays.c.p, arrays.c.ty).where(left))}


def delete_group(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution], limit: int
) -> dict[tuple[UUID, str], BatchResult]:
    """Delete the first ``limit`` expired rows (keyset order) of each of several logs or
    dataset targets (``groupable``; rows of held objects kept), in one statement
    (PostgreSQL).

    For a daily run's many small targets: one statement and one transaction instead of one
    of each per target. Each target's rows are picked from its index range (a LATERAL
    ``LIMIT``), and the DELETE re-checks each row against its own target's cutoff, as
    ``delete_batch`` does. Targets with nothing to delete are missing from the result.
    """
    chosen = _logs_group(resolutions)
    assert len(chosen) == len(resolutions), "only groupable logs and dataset targets"
    if not chosen:
        return {}
    ev = tables.events
    held = held_in(chosen)
    arrays = resolution_arrays(chosen, [limit] * len(chosen))
    first = (
        select(ev.c.sequence_id)
        .where(
            ev.c.project_id == arrays.c.p,
            ev.c.object_type == arrays.c.ty,
            ev.c.created < arrays.c.cut,
            up_to(ev, newest_of(chosen)),
            not_held(ev.c.object_id, held),
        )
        .order_by(ev.c.created, ev.c.sequence_id)
        .limit(arrays.c.k)
        .correlate(arrays)
        .lateral("retention_first")
    )
    picked = (
        select(arrays.c.i, arrays.c.p, arrays.c.ty, arrays.c.cut, first.c.sequence_id)
        .select_from(arrays)
        .join(first, true())
        .cte("retention_picked")
    )
    statement = (
        delete(ev)
        .where(
            ev.c.sequence_id == picked.c.sequence_id,
            # re-checked against the row's own target (a row changed while the delete
            # waited for its lock is kept unless it still qualifies)
            ev.c.project_id == picked.c.p,
            ev.c.object_type == picked.c.ty,
            ev.c.created < picked.c.cut,
            not_held(ev.c.object_id, held),
        )
        .returning(picked.c.i, ev.c.created, ev.c.sequence_id)
    )
    by_target: dict[int, list[tuple[datetime, int]]] = {}
    for i, created, sequence_id in conn.execute(statement):
        by_target.setdefault(int(i), []).append((created, int(sequence_id)))
    found = {}
    for i, rows in by_target.items():
        rows.sort()
        r = chosen[i - 1]
        found[(r.project_id, r.object_type.value)] = BatchResult(
            rows=len(rows),
            first=Cursor(created=rows[0][0], sequence_id=rows[0][1]),
            last=Cursor(created=rows[-1][0], sequence_id=rows[-1][1]),
            digest=keys_digest(s for _, s in rows),
        )
    return found


def groupable(resolutions: Sequence[Resolution]) -> list[Resolution]:
    """Targets the grouped deletes take (``delete_group``, ``delete_experiment_group``):
    a cutoff; for experiments, none kept whole and not an orphan's (its unregistered rows
    go too). Object holds are allowed: a group's statements keep every object held in any
    of its targets (an object hold applies to every target of its type, and object ids are
    unique, so this keeps nothing the one-target form would delete). So is a reviewed
    plan's list of experiments: each target's own list is joined (``reviewed_pairs``)."""
    return [
        r
        for r in resolutions
        if r.cutoff is not None
        and (
            r.object_type is not ObjectType.EXPERIMENT
            or (not r.kept_whole and (r.winner is None or r.winner.kind is not SourceKind.ORPHAN))
        )
    ]


def held_in(resolutions: Sequence[Resolution]) -> frozenset[UUID]:
    return frozenset().union(*(r.held_object_ids for r in resolutions))


def _logs_group(resolutions: Sequence[Resolution]) -> list[Resolution]:
    return [r for r in groupable(resolutions) if r.object_type is not ObjectType.EXPERIMENT]


def _experiment_group(resolutions: Sequence[Resolution]) -> list[Resolution]:
    return [r for r in groupable(resolutions) if r.object_type is ObjectType.EXPERIMENT]


def expired_of(
    tables: DataPlaneTables, arrays: Any, chosen: Sequence[Resolution], *columns: Any
) -> Select[Any]:
    """The registry's expired experiments of each target in ``arrays`` (``groupable``
    experiment targets), held ones excepted, with ``columns`` of ``arrays``: one join of
    the registry with the targets, not a search of the registry per target (the reference
    registry has no index on ``project_id``). Applying a reviewed plan, only the
    experiments it named for the target."""
    ob = tables.objects
    source: Any = arrays
    entry = and_(
        ob.c.object_type == ObjectType.EXPERIMENT.value,
        ob.c.project_id == arrays.c.p,
        ob.c.created < arrays.c.cut,
    )
    reviewed = reviewed_pairs([r.reviewed_objects for r in chosen], "objects")
    if reviewed is not None:  # only the experiments each target's plan named, by key
        source = arrays.join(reviewed, reviewed.c.i == arrays.c.i)
        entry = and_(entry, ob.c.object_id == reviewed.c.id)
    return (
        select(*columns, ob.c.object_id)
        .select_from(source)
        .join(ob, entry)
        .where(not_held(ob.c.object_id, held_in(chosen)))
    )


def _still_expired(
    tables: DataPlaneTables, object_id: Any, p: Any, cut: Any, held: frozenset[UUID]
) -> ColumnElement[bool]:
    """The re-check of a DELETE: ``object_id`` is an expired experiment of project ``p``
    at ``cut`` and not held (a registry probe by its key)."""
    ob = tables.objects
    return exists().where(
        ob.c.object_type == ObjectType.EXPERIMENT.value,
        ob.c.object_id == object_id,
        ob.c.project_id == p,
        ob.c.created < cut,
        not_held(ob.c.object_id, held),
    )


def _has_rows(tables: DataPlaneTables, object_id: Any) -> ColumnElement[bool]:
    ev = tables.events
    return exists().where(
        ev.c.object_type == ObjectType.EXPERIMENT.value, ev.c.object_id == object_id
    )


def expired_experiment_ids_many(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> dict[tuple[UUID, str], list[UUID]]:
    """``expired_experiment_ids`` for many experiment targets (``groupable``) in one
    statement; targets with none are missing."""
    chosen = _experiment_group(resolutions)
    if not chosen:
        return {}
    arrays = resolution_arrays(chosen)
    found: dict[tuple[UUID, str], list[UUID]] = {}
    for p, ty, object_id in conn.execute(
        expired_of(tables, arrays, chosen, arrays.c.p, arrays.c.ty)
    ):
        found.setdefault((p, ty), []).append(object_id)
    return {key: sorted(ids) for key, ids in found.items()}


def experiments_with_rows_left(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> set[tuple[UUID, str]]:
    """``with_rows_left`` for experiment targets (``groupable``): those with a row of an
    expired experiment, not held, still there."""
    chosen = _experiment_group(resolutions)
    if not chosen:
        return set()
    ev = tables.events
    arrays = resolution_arrays(chosen)
    gone = expired_of(tables, arrays, chosen, arrays.c.p, arrays.c.ty).subquery("retention_gone")
    rows = exists().where(
        ev.c.object_type == ObjectType.EXPERIMENT.value,
        ev.c.object_id == gone.c.object_id,
        ev.c.project_id == gone.c.p,
        up_to(ev, newest_of(chosen)),
    )
    query = select(gone.c.p, gone.c.ty).where(rows).distinct()
    return {(p, ty) for p, ty in conn.execute(query)}


def delete_experiment_group(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution], limit: int
) -> dict[tuple[UUID, str], BatchResult]:
    """``delete_group`` for experiment targets (``groupable``): the first ``limit`` rows
    of each target's expired experiments, held ones excepted, in keyset order (object,
    created, sequence), in one statement, each row re-checked against its own target's
    registry entry and cutoff as ``delete_batch`` does."""
    chosen = _experiment_group(resolutions)
    assert len(chosen) == len(resolutions), "only groupable experiment targets"
    if not chosen:
        return {}
    ev = tables.events
    kind = ObjectType.EXPERIMENT.value
    newest = newest_of(chosen)
    held = held_in(chosen)
    arrays = resolution_arrays(chosen)
    gone = expired_of(tables, arrays, chosen, arrays.c.i, arrays.c.p, arrays.c.cut).subquery(
        "retention_gone"
    )
    ranked = (
        select(
            gone.c.i,
            gone.c.p,
            gone.c.cut,
            gone.c.object_id,
            ev.c.sequence_id,
            func.row_number()
            .over(
                partition_by=gone.c.i,
                order_by=[ev.c.object_id, ev.c.created, ev.c.sequence_id],
            )
            .label("n"),
        )
        .select_from(gone)
        .join(
            ev,
            and_(
                ev.c.object_type == kind,
                ev.c.object_id == gone.c.object_id,
                ev.c.project_id == gone.c.p,
            ),
        )
        .where(up_to(ev, newest))
        .subquery("retention_ranked")
    )
    picked = select(ranked).where(ranked.c.n <= limit).cte("retention_picked")
    statement = (
        delete(ev)
        .where(
            ev.c.sequence_id == picked.c.sequence_id,
            # re-checked against the row's own target (a row changed while the delete
            # waited for its lock is kept unless it still qualifies)
            ev.c.project_id == picked.c.p,
            ev.c.object_type == kind,
            ev.c.object_id == picked.c.object_id,  # (the experiment picked: a reviewed one)
            _still_expired(tables, ev.c.object_id, picked.c.p, picked.c.cut, held),
            up_to(ev, newest),
        )
        .returning(picked.c.i, ev.c.object_id, ev.c.created, ev.c.sequence_id)
    )
    by_target: dict[int, list[tuple[UUID, datetime, int]]] = {}
    for i, object_id, created, sequence_id in conn.execute(statement):
        by_target.setdefault(int(i), []).append((object_id, created, int(sequence_id)))
    found = {}
    for i, rows in by_target.items():
        rows.sort()
        r = chosen[i - 1]
        found[(r.project_id, kind)] = BatchResult(
            rows=len(rows),
            first=Cursor(created=rows[0][1], sequence_id=rows[0][2], object_id=rows[0][0]),
            last=Cursor(created=rows[-1][1], sequence_id=rows[-1][2], object_id=rows[-1][0]),
            digest=keys_digest(s for _, _, s in rows),
        )
    return found


def with_registry_left(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> set[tuple[UUID, str]]:
    """``registry_left`` for experiment targets (``groupable``) in one statement: those
    with a registry entry ``delete_registry_group`` would remove still there."""
    chosen = _experiment_group(resolutions)
    if not chosen:
        return set()
    ob = tables.objects
    arrays = resolution_arrays(chosen)
    query = (
        expired_of(tables, arrays, chosen, arrays.c.p, arrays.c.ty)
        .where(~_has_rows(tables, ob.c.object_id))
        .distinct()
    )
    return {(r[0], r[1]) for r in conn.execute(query)}


def delete_registry_group(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution], limit: int
) -> dict[tuple[UUID, str], list[UUID]]:
    """``delete_registry_batch`` for experiment targets (``groupable``) in one statement:
    up to ``limit`` registry entries each, of expired experiments not held whose rows are
    all gone, re-checked in the DELETE; each target's ids ascending."""
    chosen = _experiment_group(resolutions)
    assert len(chosen) == len(resolutions), "only groupable experiment targets"
    if not chosen:
        return {}
    ob = tables.objects
    kind = ObjectType.EXPERIMENT.value
    held = held_in(chosen)
    arrays = resolution_arrays(chosen)
    ranked = (
        expired_of(
            tables,
            arrays,
            chosen,
            arrays.c.i,
            arrays.c.p,
            arrays.c.cut,
            func.row_number().over(partition_by=arrays.c.i, order_by=ob.c.object_id).label("n"),
        )
        .where(~_has_rows(tables, ob.c.object_id))
        .subquery("retention_ranked")
    )
    picked = select(ranked).where(ranked.c.n <= limit).cte("retention_picked")
    statement = (
        delete(ob)
        .where(
            ob.c.object_type == kind,
            ob.c.object_id == picked.c.object_id,
            ob.c.project_id == picked.c.p,
            ob.c.created < picked.c.cut,
            not_held(ob.c.object_id, held),
            ~_has_rows(tables, ob.c.object_id),
        )
        .returning(picked.c.i, ob.c.object_id)
    )
    found: dict[tuple[UUID, str], list[UUID]] = {}
    for i, object_id in conn.execute(statement):
        found.setdefault((chosen[int(i) - 1].project_id, kind), []).append(object_id)
    return {key: sorted(ids) for key, ids in found.items()}


def ids_digest(ids: Iterable[UUID]) -> str:
    """A receipt's digest of object or segment ids (as 128-bit integers, sorted)."""
    return keys_digest(i.int for i in ids)


def keys_digest(sequence_ids: Iterable[int]) -> str:
    """SHA-256 over the sorted deleted keys, so a receipt can be checked against a list."""
    digest = hashlib.sha256()
    for key in sorted(sequence_ids):
        digest.update(b"%d\n" % key)
    return digest.hexdigest()


def _registry_victims(tables: DataPlaneTables, resolution: Resolution) -> Select[tuple[UUID]]:
    """Expired experiments of the target whose rows are all gone."""
    ev, ob = tables.events, tables.objects
    has_rows = exists().where(
        ev.c.object_type == ObjectType.EXPERIMENT.value, ev.c.object_id == ob.c.object_id
    )
    return expired_experiments(tables, resolution).where(~has_rows)


def registry_left(conn: Connection, tables: DataPlaneTables, resolution: Resolution) -> bool:
    """A registry entry ``delete_registry_batch`` would remove is still there (``rows_left``
    for the registry)."""
    return conn.execute(_registry_victims(tables, resolution).limit(1)).first() is not None


def delete_registry_batch(
    conn: Connection, tables: DataPlaneTables, resolution: Resolution, limit: int
) -> list[UUID]:
    """Remove registry entries of expired experiments whose rows are all gone; their ids,
    ascending."""
    ev, ob = tables.events, tables.objects
    has_rows = exists().where(
        ev.c.object_type == ObjectType.EXPERIMENT.value, ev.c.object_id == ob.c.object_id
    )
    victims = _registry_victims(tables, resolution).order_by(ob.c.object_id).limit(limit)
    assert resolution.cutoff is not None
    statement = delete(ob).where(  # the predicate again, for rows changed meanwhile
        ob.c.object_id.in_(victims.scalar_subquery()),
        ob.c.object_type == ObjectType.EXPERIMENT.value,
        ob.c.project_id == resolution.project_id,
        ob.c.created < resolution.cutoff,
        canonical_time(ob.c.created),
        not_held(ob.c.object_id, resolution.held_object_ids),
        ~has_rows,
    )
    return sorted(conn.execute(statement.returning(ob.c.object_id)).scalars())
