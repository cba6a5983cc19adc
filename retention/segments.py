"""All SQL on the segments index (DESIGN §3): counts, mark, sweep candidates, restore.

A segment of logs or a dataset expires when ``max_created < cutoff``; one that straddles the
cutoff is kept and reported. Every segment of an expired experiment expires, and so does a
segment whose experiment is no longer in the registry. Two phases: **mark** (``state =
'unused'``, ``unused_at``) and, after the grace period, **sweep** (file, then index row).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    delete,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
    update,
)

from .blocksweep import resolution_arrays, reviewed_pairs
from .dataplane import (
    batchable,
    canonical_time,
    experiment_batchable,
    expired_experiments,
    expired_of,
    groupable,
    held_in,
    not_held,
)
from .models import Hold, ObjectType, Resolution, UnusedSegments
from .tables import DataPlaneTables

LIVE = "live"
UNUSED = "unused"

Pair = tuple[UUID, str]  # (project id, object type)


@dataclass(frozen=True)
class SegmentCounts:
    expired: int = 0
    bytes: int = 0
    straddling: int = 0
    expired_rows: int = 0  # rows in the expired segments (row_count)
    total_rows: int = 0  # rows in the target's live segments


@dataclass(frozen=True)
class MarkResult:
    segments: int
    bytes: int
    last: UUID | None


@dataclass(frozen=True)
class SegmentFile:
    segment_id: UUID
    key: str
    bytes: int
    project_id: UUID
    object_type: str
    unused_at: datetime | None = None

    @property
    def pair(self) -> Pair:
        return (self.project_id, self.object_type)


def _of_target(tables: DataPlaneTables, resolution: Resolution) -> ColumnElement[bool]:
    sg = tables.segments
    return and_(
        sg.c.project_id == resolution.project_id,
        sg.c.object_type == resolution.object_type.value,
        not_held(sg.c.object_id, resolution.held_object_ids),
    )


def expired(tables: DataPlaneTables, resolution: Resolution) -> ColumnElement[bool]:
    """Segments of the target that the resolution expires (live or already unused)."""
    sg, ob = tables.segments, tables.objects
    if resolution.cutoff is None:
        return false()
    if resolution.object_type is ObjectType.EXPERIMENT:
        registered = select(ob.c.object_id).where(ob.c.object_type == ObjectType.EXPERIMENT.value)
        return and_(
            _of_target(tables, resolution),
            or_(
                sg.c.object_id.in_(expired_experiments(tables, resolution)),
                sg.c.object_id.not_in(registered),
            ),
        )
    return and_(
        _of_target(tables, resolution),
        sg.c.max_created < resolution.cutoff,
        canonical_time(sg.c.max_created),
    )


def marks_kept(
    conn: Connection, tables: DataPlaneTables, resolution: Resolution
) -> list[SegmentFile]:
    """Unused segments of the target that its resolution now keeps (a policy lengthened or
    a hold added since they were marked, an object held)."""
    sg = tables.segments
    return _files(
        conn,
        select(*_file_columns(sg)).where(
            sg.c.project_id == resolution.project_id,
            sg.c.object_type == resolution.object_type.value,
            sg.c.state == UNUSED,
            not_(expired(tables, resolution)),
        ),
    )


def unused_pairs(conn: Connection, tables: DataPlaneTables) -> set[Pair]:
    """The (project, object type) pairs that have an unused segment: one pass over the
    index, so that ``marks_kept`` is asked only of targets that have one."""
    sg = tables.segments
    query = select(sg.c.project_id, sg.c.object_type).where(sg.c.state == UNUSED).distinct()
    return {(p, ty) for p, ty in conn.execute(query)}


def marks_kept_many(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> dict[Pair, list[SegmentFile]]:
    """``marks_kept`` for many targets in a statement per kind (PostgreSQL): those
    ``groupable`` without a reviewed plan's list of experiments (the others are missing:
    ask ``marks_kept``). Per target, it searched the whole index of segments. A segment
    is kept unless the group's condition says it expires: one it cannot judge (a NULL) is
    kept, never swept."""
    chosen = [
        r
        for r in groupable(resolutions)
        if r.object_type is not ObjectType.EXPERIMENT or r.reviewed_objects is None
    ]
    sg = tables.segments
    found: dict[Pair, list[SegmentFile]] = {}
    for experiments in (False, True):
        mine = [r for r in chosen if (r.object_type is ObjectType.EXPERIMENT) is experiments]
        if not mine:
            continue
        t = resolution_arrays(mine)
        held = held_in(mine)
        if experiments:
            gone: ColumnElement[bool] = _experiment_gone(tables, t, held)
        else:
            gone = sg.c.max_created < t.c.cut
        query = (
            select(t.c.p, t.c.ty, *_file_columns(sg), and_(gone, not_held(sg.c.object_id, held)))
            .select_from(t)
            .join(
                sg,
                and_(sg.c.project_id == t.c.p, sg.c.object_type == t.c.ty, sg.c.state == UNUSED),
            )
        )
        for p, ty in ((r.project_id, r.object_type.value) for r in mine):
            found[(p, ty)] = []
        for row in conn.execute(query):
            if row[-1] is not True:
                found[(row[0], row[1])].append(_file(row[2:-1]))
    return found


def expired_among(
    conn: Connection, tables: DataPlaneTables, resolution: Resolution, ids: Sequence[UUID]
) -> set[UUID]:
    """Which of these segments (of the target) the resolution expires."""
    sg = tables.segments
    query = select(sg.c.segment_id).where(
        sg.c.segment_id.in_(sorted(ids)), expired(tables, resolution)
    )
    return set(conn.execute(query).scalars())


def marks_uncovered(
    conn: Connection, tables: DataPlaneTables, covered: Collection[Pair], limit: int = 1000
) -> Iterator[list[SegmentFile]]:
    """Unused segments of a (project, object type) that no target of the run covers (its
    policy was removed, its project is an orphan the run does not purge), a page at a
    time in segment-id order."""
    sg = tables.segments
    after: UUID | None = None
    while True:
        query = select(*_file_columns(sg)).where(sg.c.state == UNUSED)
        if after is not None:
            query = query.where(sg.c.segment_id > after)
        page = _files(conn, query.order_by(sg.c.segment_id).limit(limit))
        if not page:
            return
        after = page[-1].segment_id
        yield [f for f in page if f.pair not in covered]


def unmark(
    conn: Connection, tables: DataPlaneTables, files: Sequence[SegmentFile]
) -> list[SegmentFile]:
    """These segments back to live, those still unused (re-checked)."""
    if not files:
        return []
    sg = tables.segments
    back = set(
        conn.execute(
            update(sg)
            .where(sg.c.segment_id.in_(sorted(f.segment_id for f in files)), sg.c.state == UNUSED)
            .values(state=LIVE, unused_at=None)
            .returning(sg.c.segment_id)
        ).scalars()
    )
    return [f for f in files if f.segment_id in back]


def _file_columns(sg: Any) -> tuple[Any, ...]:
    return (
        sg.c.segment_id,
        sg.c.object_key,
        sg.c.byte_size,
        sg.c.project_id,
        sg.c.object_type,
        sg.c.unused_at,
    )


def _files(conn: Connection, query: Select[Any]) -> list[SegmentFile]:
    return [_file(r) for r in conn.execute(query)]


def _file(r: Any) -> SegmentFile:
    """A segment from the ``_file_columns`` of a row."""
    return SegmentFile(
        segment_id=r[0],
        key=r[1],
        bytes=int(r[2]),
        project_id=r[3],
        object_type=r[4],
        unused_at=r[5],
    )


def straddling(tables: DataPlaneTables, resolution: Resolution) -> ColumnElement[bool]:
    sg = tables.segments
    if resolution.cutoff is None or resolution.object_type is ObjectType.EXPERIMENT:
        return false()
    return and_(
        _of_target(tables, resolution),
        sg.c.state == LIVE,
        sg.c.min_created < resolution.cutoff,
        sg.c.max_created >= resolution.cutoff,
    )


def count_many(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> dict[tuple[UUID, str], SegmentCounts]:
    """``count`` for many logs and dataset targets in one statement (PostgreSQL)."""
    chosen = batchable(resolutions)
    if not chosen:
        return {}
    sg = tables.segments
    t = resolution_arrays(chosen)
    gone = sg.c.max_created < t.c.cut
    across = and_(sg.c.min_created < t.c.cut, sg.c.max_created >= t.c.cut)
    query = (
        select(
            t.c.p,
            t.c.ty,
            func.coalesce(func.sum(case((gone, 1), else_=0)), 0),
            func.coalesce(func.sum(case((gone, sg.c.byte_size), else_=0)), 0),
            func.coalesce(func.sum(case((across, 1), else_=0)), 0),
            func.coalesce(func.sum(case((gone, sg.c.row_count), else_=0)), 0),
            func.coalesce(func.sum(sg.c.row_count), 0),
        )
        .select_from(t)
        .join(
            sg,
            and_(sg.c.project_id == t.c.p, sg.c.object_type == t.c.ty, sg.c.state == LIVE),
        )
        .group_by(t.c.p, t.c.ty)
    )
    found = {(r.project_id, r.object_type.value): SegmentCounts() for r in chosen}
    for project_id, object_type, files, size, straddle, rows, total in conn.execute(query):
        found[(project_id, object_type)] = SegmentCounts(
            int(files), int(size), int(straddle), int(rows), int(total)
        )
    return found


def _experiment_gone(tables: DataPlaneTables, t: Any, held: frozenset[UUID]) -> Any:
    """A live experiment segment ``expired`` for the target in columns ``p`` and ``cut``
    of ``t``: its experiment's registry entry in the project expired (and is not held), or
    no registry has its experiment."""
    sg, ob = tables.segments, tables.objects
    kind = ObjectType.EXPERIMENT.value
    entry = ob.alias("retention_entry")
    return and_(
        sg.c.object_id.is_not(None),  # (``expired``'s NOT IN never takes one without)
        or_(
            exists().where(
                ob.c.object_type == kind,
                ob.c.object_id == sg.c.object_id,
                ob.c.project_id == t.c.p,
                ob.c.created < t.c.cut,
                not_held(ob.c.object_id, held),
            ),
            ~exists().where(entry.c.object_type == kind, entry.c.object_id == sg.c.object_id),
        ),
    )


def count_experiments(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> dict[tuple[UUID, str], SegmentCounts]:
    """``count`` for many experiment targets (``experiment_batchable``) in one statement
    (PostgreSQL): a live segment expires with its experiment's registry entry, or when no
    registry has its experiment (``expired``)."""
    chosen = experiment_batchable(resolutions)
    if not chosen:
        return {}
    sg = tables.segments
    kind = ObjectType.EXPERIMENT.value
    t = resolution_arrays(chosen)
    gone = _experiment_gone(tables, t, frozenset())
    query = (
        select(
            t.c.p,
            func.count().filter(gone),
            func.coalesce(func.sum(sg.c.byte_size).filter(gone), 0),
            func.coalesce(func.sum(sg.c.row_count).filter(gone), 0),
            func.coalesce(func.sum(sg.c.row_count), 0),
        )
        .select_from(t)
        .join(sg, and_(sg.c.project_id == t.c.p, sg.c.object_type == kind, sg.c.state == LIVE))
        .group_by(t.c.p)
    )
    found = {(r.project_id, kind): SegmentCounts() for r in chosen}
    for project_id, files, size, rows, total in conn.execute(query):
        found[(project_id, kind)] = SegmentCounts(int(files), int(size), 0, int(rows), int(total))
    return found


def count(conn: Connection, tables: DataPlaneTables, resolution: Resolution) -> SegmentCounts:
    sg = tables.segments
    if resolution.cutoff is None:
        return SegmentCounts()
    gone = expired(tables, resolution)
    found, size, across, rows, total = conn.execute(  # one pass over its live segments
        select(
            func.coalesce(func.sum(case((gone, 1), else_=0)), 0),
            func.coalesce(func.sum(case((gone, sg.c.byte_size), else_=0)), 0),
            func.coalesce(func.sum(case((straddling(tables, resolution), 1), else_=0)), 0),
            func.coalesce(func.sum(case((gone, sg.c.row_count), else_=0)), 0),
            func.coalesce(func.sum(sg.c.row_count), 0),
        ).where(_of_target(tables, resolution), sg.c.state == LIVE)
    ).one()
    return SegmentCounts(
        expired=int(found),
        bytes=int(size),
        straddling=int(across),
        expired_rows=int(rows),
        total_rows=int(total),
    )


def expired_live_ids(
    conn: Connection, tables: DataPlaneTables, resolution: Resolution
) -> list[UUID]:
    """The live segments of a target that it expires (what a purge marks), in id order."""
    sg = tables.segments
    query = select(sg.c.segment_id).where(expired(tables, resolution), sg.c.state == LIVE)
    return sorted(row[0] for row in conn.execute(query))


def expired_live_ids_many(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> dict[tuple[UUID, str], list[UUID]]:
    """``expired_live_ids`` for many targets (``groupable``) in two statements, logs and
    datasets then experiments, each segment of a held object kept out (a hold's object is
    in one target: keeping it out of all keeps nothing the one-target form names)."""
    chosen = groupable(resolutions)
    sg = tables.segments
    found: dict[tuple[UUID, str], list[UUID]] = {}
    for experiments in (False, True):
        mine = [r for r in chosen if (r.object_type is ObjectType.EXPERIMENT) is experiments]
        if not mine:
            continue
        t = resolution_arrays(mine)
        query = _expired_segments(tables, mine, t, t.c.p, t.c.ty, sg.c.segment_id)
        for p, ty, segment_id in conn.execute(query):
            found.setdefault((p, ty), []).append(segment_id)
    return {key: sorted(ids) for key, ids in found.items()}


def mark_batch(
    conn: Connection,
    tables: DataPlaneTables,
    resolution: Resolution,
    after: UUID | None,
    limit: int,
    clock: datetime,
) -> MarkResult:
    """Mark up to ``limit`` expired live segments unused, in segment-id order past ``after``.

    Applying a reviewed plan, only segments it named are marked; ``last`` is then the last
    segment looked at (marked or not), so the walk moves on."""
    sg = tables.segments
    condition = and_(expired(tables, resolution), sg.c.state == LIVE)
    batch = select(sg.c.segment_id).where(condition)
    if after is not None:
        batch = batch.where(sg.c.segment_id > after)
    batch = batch.order_by(sg.c.segment_id).limit(limit)
    reviewed = resolution.reviewed_segments
    looked: list[UUID] = []
    if reviewed is None:
        chosen: Any = sg.c.segment_id.in_(batch.scalar_subquery())
    else:
        looked = list(conn.execute(batch).scalars())
        chosen = sg.c.segment_id.in_([i for i in looked if i in reviewed])
    statement = (
        update(sg)
        .where(chosen, condition)  # re-checked
        .values(state=UNUSED, unused_at=clock)
        .returning(sg.c.segment_id, sg.c.byte_size)
    )
    marked = sorted(conn.execute(statement).all())
    last = max([*looked, *(row[0] for row in marked)], default=None)
    return MarkResult(segments=len(marked), bytes=sum(int(row[1]) for row in marked), last=last)


def _group_expired(
    tables: DataPlaneTables, chosen: Sequence[Resolution], t: Any
) -> ColumnElement[bool]:
    """``expired`` for a group of ``groupable`` targets of one kind, against the columns
    ``p``, ``ty`` and ``cut`` of ``t`` (the arrays, or the picked rows), held objects out."""
    sg = tables.segments
    held = held_in(chosen)
    if chosen[0].object_type is not ObjectType.EXPERIMENT:
        gone: ColumnElement[bool] = sg.c.max_created < t.c.cut
    else:
        gone = _experiment_gone(tables, t, held)
    return and_(
        sg.c.project_id == t.c.p,
        sg.c.object_type == t.c.ty,
        sg.c.state == LIVE,
        gone,
        not_held(sg.c.object_id, held),
    )


def _expired_segments(
    tables: DataPlaneTables,
    chosen: Sequence[Resolution],
    t: Any,
    *columns: Any,
    among: Sequence[frozenset[UUID]] | None = None,
) -> Select[Any]:
    """``columns`` of the live segments ``_group_expired`` takes for a group's arrays
    ``t``: of all segments, or ``among`` each target's given ones (found by key, not by
    reading the whole segments index). Applying a reviewed plan: only the segments each
    target's plan named, found by key; of experiments, only those of an experiment its
    plan named or of none the registry has (``expired`` with the plan's
    ``expired_experiments``), by two joins."""
    sg = tables.segments
    plan = [r.reviewed_segments for r in chosen]
    reviewed = reviewed_pairs(plan, "segments")
    if reviewed is None and among is not None:
        reviewed = reviewed_pairs(among, "segments")
        plan = [None] * len(chosen)
    if reviewed is None:
        return select(*columns).select_from(t.join(sg, _group_expired(tables, chosen, t)))
    named = t.join(reviewed, reviewed.c.i == t.c.i)
    if chosen[0].object_type is not ObjectType.EXPERIMENT or plan[0] is None:
        condition = and_(sg.c.segment_id == reviewed.c.id, _group_expired(tables, chosen, t))
        return select(*columns).select_from(named.join(sg, condition))
    arrays = resolution_arrays(chosen)
    gone = expired_of(tables, arrays, chosen, arrays.c.i).subquery("retention_gone")
    entry = tables.objects.alias("retention_entry")
    of_target = and_(
        sg.c.segment_id == reviewed.c.id,
        sg.c.project_id == t.c.p,
        sg.c.object_type == t.c.ty,
        sg.c.state == LIVE,
        sg.c.object_id.is_not(None),
        not_held(sg.c.object_id, held_in(chosen)),
    )
    source = (
        named.join(sg, of_target)
        .outerjoin(gone, and_(gone.c.i == t.c.i, gone.c.object_id == sg.c.object_id))
        .outerjoin(
            entry,
            and_(
                entry.c.object_type == ObjectType.EXPERIMENT.value,
                entry.c.object_id == sg.c.object_id,
            ),
        )
    )
    return (
        select(*columns)
        .select_from(source)
        .where(or_(gone.c.object_id.is_not(None), entry.c.object_id.is_(None)))
    )


def _one_kind(resolutions: Sequence[Resolution]) -> list[Resolution]:
    chosen = groupable(resolutions)
    assert len(chosen) == len(resolutions), "only groupable targets"
    if any(r.reviewed_objects is not None and r.reviewed_segments is None for r in chosen):
        # (a plan names both: its segments are what ties the experiments' ones to it)
        raise ValueError("a target with a reviewed plan's experiments and not its segments")
    kinds = {r.object_type is ObjectType.EXPERIMENT for r in chosen}
    assert len(kinds) <= 1, "a group is of one kind"
    return chosen


def mark_group(
    conn: Connection,
    tables: DataPlaneTables,
    resolutions: Sequence[Resolution],
    limit: int,
    clock: datetime,
    among: Sequence[frozenset[UUID]] | None = None,
) -> dict[Pair, MarkResult]:
    """``mark_batch`` from the start for a group of targets of one kind (``groupable``)
    in one statement: up to ``limit`` each, in segment-id order, re-checked in the UPDATE.
    Per target, marking searched the whole index of segments (no index on project_id in
    the reference schema). Applying a reviewed plan, only segments it named are marked
    (``_expired_segments``), and ``last`` is the last one marked; so it is when ``among``
    gives each target's expired segments found beforehand (``expired_live_ids_many``),
    which are then looked up by key."""
    chosen = _one_kind(resolutions)
    if not chosen:
        return {}
    sg = tables.segments
    t = resolution_arrays(chosen)
    ranked = _expired_segments(
        tables,
        chosen,
        t,
        t.c.i,
        t.c.p,
        t.c.ty,
        t.c.cut,
        sg.c.segment_id,
        sg.c.object_id,
        func.row_number().over(partition_by=t.c.i, order_by=sg.c.segment_id).label("n"),
        among=among,
    ).subquery("retention_ranked")
    picked = select(ranked).where(ranked.c.n <= limit).cte("retention_picked")
    statement = (
        update(sg)
        .where(
            sg.c.segment_id == picked.c.segment_id,
            # re-checked: still of the object picked (under a plan, one it named), and
            # still expired for the target
            sg.c.object_id.is_not_distinct_from(picked.c.object_id),
            _group_expired(tables, chosen, picked),
        )
        .values(state=UNUSED, unused_at=clock)
        .returning(picked.c.i, sg.c.segment_id, sg.c.byte_size)
    )
    found: dict[int, list[tuple[UUID, int]]] = {}
    for i, segment_id, size in conn.execute(statement):
        found.setdefault(int(i), []).append((segment_id, int(size)))
    return {
        (chosen[i - 1].project_id, chosen[i - 1].object_type.value): MarkResult(
            segments=len(marked), bytes=sum(n for _, n in marked), last=max(s for s, _ in marked)
        )
        for i, marked in found.items()
    }


def with_marks_left(
    conn: Connection, tables: DataPlaneTables, resolutions: Sequence[Resolution]
) -> set[Pair]:
    """``marks_left`` from the start for a group of targets of one kind, in one statement."""
    chosen = _one_kind(resolutions)
    if not chosen:
        return set()
    t = resolution_arrays(chosen)
    query = _expired_segments(tables, chosen, t, t.c.p, t.c.ty).distinct()
    return {(p, ty) for p, ty in conn.execute(query)}


def marks_left(
    conn: Connection, tables: DataPlaneTables, resolution: Resolution, after: UUID | None
) -> bool:
    """An expired live segment of the target past ``after`` is still there (a short mark
    batch may have met segments another writer changed meanwhile)."""
    sg = tables.segments
    condition = and_(expired(tables, resolution), sg.c.state == LIVE)
    if after is not None:
        condition = and_(condition, sg.c.segment_id > after)
    reviewed = resolution.reviewed_segments
    if reviewed is None:
        return conn.execute(select(sg.c.segment_id).where(condition).limit(1)).first() is not None
    return any(
        i in reviewed for i in conn.execute(select(sg.c.segment_id).where(condition)).scalars()
    )


def unused_summary(
    conn: Connection,
    tables: DataPlaneTables,
    clock: datetime,
    grace: timedelta,
    resolutions: Sequence[Resolution] = (),
) -> UnusedSegments:
    """Unused segments; sweepable: those unused for longer than ``grace`` at ``clock``
    that a purge would sweep, the ones a target of ``resolutions`` expires now (what the
    policies or holds keep is restored instead, an orphan's waits)."""
    threshold = clock - grace
    sg = tables.segments
    row = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(sg.c.byte_size), 0),
            func.min(sg.c.unused_at).filter(sg.c.unused_at > threshold),
        ).where(sg.c.state == UNUSED)
    ).one()
    past = and_(sg.c.state == UNUSED, sg.c.unused_at <= threshold)
    pairs = conn.execute(select(sg.c.project_id, sg.c.object_type).where(past).distinct()).all()
    targets = {(r.project_id, r.object_type.value): r for r in resolutions}
    sweepable = size = 0
    for pair in pairs:
        resolution = targets.get((pair[0], pair[1]))
        if resolution is None:
            continue
        found = conn.execute(
            select(func.count(), func.coalesce(func.sum(sg.c.byte_size), 0)).where(
                past, expired(tables, resolution)
            )
        ).one()
        sweepable, size = sweepable + int(found[0]), size + int(found[1])
    return UnusedSegments(
        segments=int(row[0]),
        bytes=int(row[1]),
        sweepable=sweepable,
        sweepable_bytes=size,
        next_sweepable_at=row[2] + grace if row[2] is not None else None,
    )


def not_held_now(tables: DataPlaneTables, holds: Sequence[Hold]) -> ColumnElement[bool]:
    """Segments no hold covers: a hold beats everything, also a mark made before it came.

    Object ids are unique, so an object hold keeps its object's segments of any type and
    project (as ``Hold.covers_object`` does for rows)."""
    sg = tables.segments
    kept: list[ColumnElement[bool]] = []
    for hold in holds:
        if hold.object_id is not None:
            kept.append(sg.c.object_id == hold.object_id)
        elif hold.object_type is None:
            kept.append(sg.c.project_id == hold.project_id)
        else:
            kept.append(
                and_(
                    sg.c.project_id == hold.project_id,
                    sg.c.object_type == hold.object_type.value,
                )
            )
    return not_(or_(*kept)) if kept else true()


def sweep_candidates(
    conn: Connection,
    tables: DataPlaneTables,
    threshold: datetime,
    after: UUID | None,
    limit: int,
    holds: Sequence[Hold] = (),
) -> list[SegmentFile]:
    """Unused segments past the grace period that no hold in ``holds`` (the active ones)
    covers, in segment-id order after ``after``."""
    sg = tables.segments
    query = select(*_file_columns(sg)).where(
        sg.c.state == UNUSED, sg.c.unused_at <= threshold, not_held_now(tables, holds)
    )
    if after is not None:
        query = query.where(sg.c.segment_id > after)
    return _files(conn, query.order_by(sg.c.segment_id).limit(limit))


def sample_candidates(
    conn: Connection,
    tables: DataPlaneTables,
    threshold: datetime,
    limit: int,
    holds: Sequence[Hold] = (),
) -> list[SegmentFile]:
    """A few unused segments past the grace period, picked at random (not held)."""
    sg = tables.segments
    query = select(*_file_columns(sg)).where(
        sg.c.state == UNUSED, sg.c.unused_at <= threshold, not_held_now(tables, holds)
    )
    return _files(conn, query.order_by(func.random()).limit(limit))


def live_keys(conn: Connection, tables: DataPlaneTables, limit: int) -> list[str]:
    """A few object keys of live segments (their files must be in the store)."""
    sg = tables.segments
    return list(
        conn.execute(
            select(sg.c.object_key).where(sg.c.state == LIVE).order_by(sg.c.segment_id).limit(limit)
        ).scalars()
    )


def forget(
    conn: Connection, tables: DataPlaneTables, segment_ids: Iterable[UUID], threshold: datetime
) -> int:
    """Remove index rows of swept files (still unused and past grace: re-checked)."""
    ids = sorted(set(segment_ids))
    if not ids:
        return 0
    sg = tables.segments
    statement = delete(sg).where(
        sg.c.segment_id.in_(ids), sg.c.state == UNUSED, sg.c.unused_at <= threshold
    )
    return int(conn.execute(statement).rowcount)


@dataclass(frozen=True)
class RestoreFilter:
    project_id: UUID | None = None
    object_type: ObjectType | None = None
    object_id: UUID | None = None
    since: datetime | None = None
    segment_id: UUID | None = None

    def condition(self, tables: DataPlaneTables) -> ColumnElement[bool]:
        sg = tables.segments
        parts: list[ColumnElement[bool]] = [sg.c.state == UNUSED]
        if self.segment_id is not None:
            parts.append(sg.c.segment_id == self.segment_id)
        if self.project_id is not None:
            parts.append(sg.c.project_id == self.project_id)
        if self.object_type is not None:
            parts.append(sg.c.object_type == self.object_type.value)
        if self.object_id is not None:
            parts.append(sg.c.object_id == self.object_id)
        if self.since is not None:
            parts.append(sg.c.unused_at >= self.since)
        return and_(*parts)


@dataclass(frozen=True)
class RestoreResult:
    restored: list[SegmentFile]
    past_grace: int  # matched, but unused for longer than the grace period
    missing: list[SegmentFile] = field(default_factory=list)  # in grace, but the file is gone


def restorable(
    conn: Connection, tables: DataPlaneTables, which: RestoreFilter, threshold: datetime
) -> tuple[list[SegmentFile], int]:
    """Unused segments still in grace (``unused_at > threshold``) that ``which`` matches,
    and how many more it matches past the grace period."""
    sg = tables.segments
    condition = which.condition(tables)
    past = conn.execute(
        select(func.count()).where(condition, sg.c.unused_at <= threshold)
    ).scalar_one()
    found = _files(
        conn,
        select(*_file_columns(sg))
        .where(condition, sg.c.unused_at > threshold)
        .order_by(sg.c.segment_id),
    )
    return found, int(past)


def revive(
    conn: Connection, tables: DataPlaneTables, files: Sequence[SegmentFile], threshold: datetime
) -> list[SegmentFile]:
    """Return these segments to live (still unused and in grace: re-checked)."""
    if not files:
        return []
    sg = tables.segments
    ids = sorted(f.segment_id for f in files)
    back = set(
        conn.execute(
            update(sg)
            .where(sg.c.segment_id.in_(ids), sg.c.state == UNUSED, sg.c.unused_at > threshold)
            .values(state=LIVE, unused_at=None)
            .returning(sg.c.segment_id)
        ).scalars()
    )
    return [f for f in files if f.segment_id in back]


def by_project(
    conn: Connection, tables: DataPlaneTables, projects: Sequence[UUID]
) -> dict[UUID, tuple[int, int]]:
    """(segments, bytes) of the given projects, any state (for orphan reports)."""
    if not projects:
        return {}
    sg = tables.segments
    query = (
        select(sg.c.project_id, func.count(), func.coalesce(func.sum(sg.c.byte_size), 0))
        .where(sg.c.project_id.in_(list(projects)))
        .group_by(sg.c.project_id)
    )
    return {row[0]: (int(row[1]), int(row[2])) for row in conn.execute(query)}


def index_keys(conn: Connection, tables: DataPlaneTables) -> Iterator[tuple[str, UUID]]:
    sg = tables.segments
    for row in conn.execute(select(sg.c.object_key, sg.c.segment_id)):
        yield str(row[0]), row[1]
