"""Planning: which projects exist, what each (project, object type) keeps, what has expired.

The plan is measured inside one transaction (a snapshot), so its counts agree with each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import Connection

from . import dataplane, segments
from .errors import ControlPlaneError
from .models import (
    OBJECT_TYPES,
    Identities,
    ObjectType,
    Orphan,
    Plan,
    PolicySet,
    ProjectInfo,
    Resolution,
    RetentionRule,
    SourceKind,
    Target,
    TargetCounts,
)
from .policy import Resolved, resolve, resolve_one
from .segments import SegmentCounts
from .tables import DataPlaneTables


def known_projects(policy_sets: Sequence[PolicySet]) -> list[ProjectInfo] | None:
    """Projects listed by sources that list them (a control plane); None if none does."""
    listed = [s.projects for s in policy_sets if s.projects is not None]
    if not listed:
        return None
    return [p for projects in listed for p in projects]


def split_orphans(
    data_projects: set[UUID], known: list[ProjectInfo] | None
) -> tuple[set[UUID], dict[UUID, str]]:
    """(projects to plan, orphans with their reason).

    Without a source that lists projects, every project in the data plane counts as known.
    """
    if known is None:
        return set(data_projects), {}
    live = {p.project_id for p in known if p.deleted_at is None}
    deleted = {p.project_id for p in known if p.deleted_at is not None}
    if live & deleted:  # one project both ways: the listing cannot be trusted either way
        both = ", ".join(sorted(str(p) for p in live & deleted)[:3])
        raise ControlPlaneError(f"control plane lists project {both} as both live and deleted")
    if data_projects and not data_projects & (live | deleted):
        # a token of another organization (or a listing scoped to nothing): every project
        # would be an orphan, and --purge-orphans would delete the whole data plane
        raise ControlPlaneError(
            f"the control plane lists none of the data plane's {len(data_projects)} projects "
            f"(it lists {len(known)}): is the service token this data plane's organization's? "
            "(if they are all gone, purge them with local policies and no BRAINTRUST_API_URL)"
        )
    orphans = {
        project: ("deleted" if project in deleted else "unknown")
        for project in data_projects - live
    }
    return data_projects & live, orphans


def resolve_for_data_plane(
    conn: Connection,
    tables: DataPlaneTables,
    policy_sets: Sequence[PolicySet],
    now: datetime,
    *,
    min_retention_days: float | None,
) -> tuple[Resolved, dict[UUID, str]]:
    """Resolve policies for every known project in the data plane; also return orphans."""
    data_projects = dataplane.project_ids(conn, tables)
    plan_projects, orphans = split_orphans(data_projects, known_projects(policy_sets))
    resolved = resolve(policy_sets, plan_projects, now, min_retention_days=min_retention_days)
    if orphans:
        kept = tuple(r for r in resolved.resolutions if r.project_id not in orphans)
        resolved = Resolved(
            now=resolved.now,
            floor_days=resolved.floor_days,
            resolutions=kept,
            warnings=resolved.warnings,
        )
    return resolved, orphans


def run_resolutions(
    conn: Connection,
    tables: DataPlaneTables,
    policy_sets: Sequence[PolicySet],
    now: datetime,
    *,
    min_retention_days: float | None,
) -> tuple[list[Resolution], dict[UUID, str]]:
    """The targets a run works for (a policy or a hold), and the orphans left out."""
    resolved, orphans = resolve_for_data_plane(
        conn, tables, policy_sets, now, min_retention_days=min_retention_days
    )
    return [r for r in resolved.resolutions if r.has_policy_or_hold], orphans


def orphan_resolutions(
    orphans: dict[UUID, str], policy_sets: Sequence[PolicySet], resolved: Resolved
) -> tuple[Resolution, ...]:
    """--purge-orphans: every object type of every orphan expires, up to the safety floor.

    Holds still win, and the floor still keeps the newest data.
    """
    holds = [h for s in policy_sets for h in s.holds]
    return tuple(
        resolve_one(
            project,
            object_type,
            rules=[
                RetentionRule(
                    object_type=object_type,
                    days=0,
                    kind=SourceKind.ORPHAN,
                    origin=f"--purge-orphans ({reason})",
                    project_id=project,
                )
            ],
            holds=holds,
            floor=resolved.floor_days,
            now=resolved.now,
        )
        for project, reason in sorted(orphans.items())
        for object_type in OBJECT_TYPES
    )


def build_plan(
    conn: Connection,
    tables: DataPlaneTables,
    policy_sets: Sequence[PolicySet],
    now: datetime,
    *,
    min_retention_days: float | None,
    purge_orphans: bool = False,
    clock: datetime | None = None,
    grace: timedelta = timedelta(0),
    max_fraction: float | None = None,
    helper: Connection | None = None,
    newest_row: int | None = None,
) -> Plan:
    """The plan; ``clock`` and ``grace`` size the pending sweep; ``max_fraction`` (the
    guard's) lets targets' totals be counted only as far as the guard needs; a ``helper``
    connection in the same snapshot counts half of the targets; ``newest_row`` (a reviewed
    plan's) leaves later rows out of every target."""
    resolved, orphans = resolve_for_data_plane(
        conn, tables, policy_sets, now, min_retention_days=min_retention_days
    )
    resolutions = [r for r in resolved.resolutions if r.has_policy_or_hold]
    if purge_orphans:
        resolutions.extend(orphan_resolutions(orphans, policy_sets, resolved))
    if newest_row is not None:
        resolutions = [replace(r, newest_row=newest_row) for r in resolutions]
    resolutions, misfiled = _keep_misfiled(conn, tables, resolutions)
    many = conn.dialect.name == "postgresql"  # most targets at once, not one by one
    counted = _counted_as(conn, tables, resolutions) if many else resolutions
    files = (
        {
            **segments.count_many(conn, tables, counted),
            **segments.count_experiments(conn, tables, counted),
        }
        if many
        else {}
    )
    rows = (
        {
            **dataplane.count_row_targets(
                conn,
                tables,
                counted,
                max_fraction,
                helper,
                {key: (f.expired_rows, f.total_rows) for key, f in files.items()},
            ),
            **dataplane.count_experiment_targets(conn, tables, counted),
            **dataplane.count_kept_targets(conn, tables, counted),
        }
        if many
        else {}
    )
    targets = tuple(
        Target(resolution=r, counts=_counts(conn, tables, c, rows, files))
        for r, c in zip(resolutions, counted, strict=True)
    )
    orphan_rows = dataplane.rows_by_project(conn, tables, sorted(orphans))
    orphan_segments = segments.by_project(conn, tables, sorted(orphans))
    warnings = list(resolved.warnings) + _hold_warnings(conn, tables, policy_sets, now) + misfiled
    return Plan(
        now=resolved.now,
        targets=targets,
        orphans=tuple(
            Orphan(
                project_id=p,
                reason=reason,
                rows=orphan_rows.get(p, 0),
                segments=orphan_segments.get(p, (0, 0))[0],
                bytes=orphan_segments.get(p, (0, 0))[1],
            )
            for p, reason in sorted(orphans.items())
        ),
        warnings=tuple(warnings),
        unused_segments=segments.unused_summary(conn, tables, clock or now, grace, resolutions),
    )


def _counted_as(
    conn: Connection, tables: DataPlaneTables, resolutions: list[Resolution]
) -> list[Resolution]:
    """The resolutions to count by (PostgreSQL): without their object holds where none of
    the held objects has a row, a segment or a registry entry in the target. An object hold
    applies to every target of its type, and a target with held objects is counted on its
    own; with the holds' objects in a few targets, the rest are counted together (the
    same counts: a hold with nothing in the target excludes nothing)."""
    held = {i for r in resolutions for h in r.object_holds if (i := h.object_id) is not None}
    present = dataplane.held_pairs(conn, tables, held)
    return [
        r
        if not r.object_holds or (r.project_id, r.object_type.value) in present
        else replace(r, object_holds=())
        for r in resolutions
    ]


def _counts(
    conn: Connection,
    tables: DataPlaneTables,
    resolution: Resolution,
    rows_of: dict[tuple[UUID, str], TargetCounts],
    files_of: dict[tuple[UUID, str], SegmentCounts],
) -> TargetCounts:
    key = (resolution.project_id, resolution.object_type.value)
    found = rows_of.get(key)
    rows = found if found is not None else dataplane.count_target(conn, tables, resolution)
    known = files_of.get(key)
    files = known if known is not None else segments.count(conn, tables, resolution)
    return replace(
        rows,
        segments=files.expired,
        bytes=files.bytes,
        straddling_segments=files.straddling,
        segment_rows=files.expired_rows,
        total_segment_rows=files.total_rows,
    )


def _keep_misfiled(
    conn: Connection, tables: DataPlaneTables, resolutions: list[Resolution]
) -> tuple[list[Resolution], list[str]]:
    """Experiments with rows or segments filed under another project are kept whole (see
    ``dataplane.expired_experiments``); a warning for each target that would expire some."""
    if not any(r.object_type is ObjectType.EXPERIMENT for r in resolutions):
        return resolutions, []
    found: dict[UUID, list[tuple[UUID, datetime]]] = {}
    for project_id, object_id, created in dataplane.misfiled_experiments(conn, tables):
        found.setdefault(project_id, []).append((object_id, created))
    kept, warnings = [], []
    for r in resolutions:
        mine = found.get(r.project_id, []) if r.object_type is ObjectType.EXPERIMENT else []
        if not mine:
            kept.append(r)
            continue
        kept.append(replace(r, kept_whole=frozenset(i for i, _ in mine)))
        expiring = sorted(i for i, at in mine if r.cutoff is not None and at < r.cutoff)
        if expiring:
            warnings.append(
                f"target {r.project_id}/experiment: {len(expiring)} expired experiment(s) "
                f"kept whole, rows or segments of theirs filed under another project "
                f"(e.g. {expiring[0]}); fix their project_id"
            )
    return kept, warnings


def _hold_warnings(
    conn: Connection, tables: DataPlaneTables, policy_sets: Sequence[PolicySet], now: datetime
) -> list[str]:
    """Holds that name an object the data plane does not have under the named project."""
    holds = [h for s in policy_sets for h in s.holds if h.object_id is not None and h.active(now)]
    where = dataplane.object_projects(conn, tables, (h.object_id for h in holds if h.object_id))
    warnings = []
    for hold in holds:
        assert hold.object_id is not None
        projects = where.get(hold.object_id, set())
        if not projects:
            warnings.append(f"{hold.describe()}: object not found in the data plane")
        elif hold.project_id not in projects:
            found = ", ".join(sorted(str(p) for p in projects))
            warnings.append(
                f"{hold.describe()}: the object belongs to project {found}; it is held there"
            )
    return warnings


def identities(conn: Connection, tables: DataPlaneTables, plan: Plan) -> dict[str, Identities]:
    """Which experiments and live segments each target of ``plan`` expires (in its snapshot):
    what a reviewed plan names, so that applying it can refuse ones nobody reviewed."""
    many = conn.dialect.name == "postgresql"  # most targets in three statements
    with_objects = [t.resolution for t in plan.targets if t.counts.objects]
    with_files = [t.resolution for t in plan.targets if t.counts.segments]
    ids_of = dataplane.expired_experiment_ids_many(conn, tables, with_objects) if many else {}
    files_of = segments.expired_live_ids_many(conn, tables, with_files) if many else {}
    together = {
        (r.project_id, r.object_type.value)
        for r in dataplane.groupable([t.resolution for t in plan.targets])
        if many
    }
    found = {}
    for target in plan.targets:
        r, c = target.resolution, target.counts
        key = (r.project_id, r.object_type.value)
        experiments: list[UUID] = []
        files: list[UUID] = []
        if c.objects:
            experiments = (
                ids_of.get(key, [])
                if key in together
                else dataplane.expired_experiment_ids(conn, tables, r)
            )
        if c.segments:
            files = (
                files_of.get(key, [])
                if key in together
                else segments.expired_live_ids(conn, tables, r)
            )
        found[target.key] = Identities(
            experiments=tuple(str(i) for i in experiments),
            segments=tuple(str(i) for i in files),
        )
    return found
