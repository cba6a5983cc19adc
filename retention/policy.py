"""Effective policy resolution: pure, data in and decisions out (DESIGN §2).

For each (project, object type):
1. every applicable retention rule is a candidate; the shortest wins;
2. no candidate: keep forever;
3. the safety floor clamps the winner from below;
4. an active hold on the target beats everything; holds on single objects exclude them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from .models import (
    OBJECT_TYPES,
    Hold,
    ObjectType,
    PolicySet,
    Resolution,
    RetentionRule,
    SourceKind,
    as_utc,
    cutoff_for,
)

DEFAULT_MIN_RETENTION_DAYS = 1.0

# Between equally short rules the more specific one is named as the winner.
_KIND_ORDER = {
    SourceKind.ORPHAN: -1,
    SourceKind.PROJECT_AUTOMATION: 0,
    SourceKind.LOCAL_PROJECT: 1,
    SourceKind.ORG_AUTOMATION: 2,
    SourceKind.LOCAL_DEFAULT: 3,
}


@dataclass(frozen=True)
class Resolved:
    now: datetime
    floor_days: float
    resolutions: tuple[Resolution, ...]
    warnings: tuple[str, ...]

    def get(self, project_id: UUID, object_type: ObjectType) -> Resolution:
        for resolution in self.resolutions:
            if resolution.project_id == project_id and resolution.object_type == object_type:
                return resolution
        raise KeyError((project_id, object_type))


def floor_days(policy_sets: Sequence[PolicySet], configured: float | None) -> float:
    """The highest floor anyone stated; the default when nobody stated one."""
    stated = [s.min_retention_days for s in policy_sets if s.min_retention_days is not None]
    if configured is not None:
        stated.append(configured)
    return max(stated) if stated else DEFAULT_MIN_RETENTION_DAYS


def projects_named(policy_sets: Sequence[PolicySet]) -> set[UUID]:
    """Projects that a local per-project rule or a hold names.

    They are resolved (and explained) even without data. Control-plane automations are not
    counted: an org lists thousands of projects, and those without data need no target.
    """
    named: set[UUID] = set()
    for policy_set in policy_sets:
        named.update(
            r.project_id
            for r in policy_set.rules
            if r.project_id is not None and r.kind is SourceKind.LOCAL_PROJECT
        )
        named.update(h.project_id for h in policy_set.holds)
    return named


def _winner(candidates: Sequence[RetentionRule]) -> RetentionRule | None:
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r.days, _KIND_ORDER[r.kind], r.origin, r.label))


def resolve_one(
    project_id: UUID,
    object_type: ObjectType,
    *,
    rules: Iterable[RetentionRule],
    holds: Iterable[Hold],
    floor: float,
    now: datetime,
) -> Resolution:
    return _Lookup(rules, holds, now).resolve(project_id, object_type, floor)


class _Lookup:
    """The rules and holds that apply to a target, found by its key: resolving P projects
    under R rules is O(P + R), where scanning every rule for every target made an org of
    10,000 projects, each with its own automation, take minutes."""

    def __init__(self, rules: Iterable[RetentionRule], holds: Iterable[Hold], now: datetime):
        self.now = now
        # (position, rule): candidates keep the order the sources gave them
        self.org: dict[ObjectType, list[tuple[int, RetentionRule]]] = {}
        self.own: dict[tuple[UUID, ObjectType], list[tuple[int, RetentionRule]]] = {}
        for position, rule in enumerate(rules):
            if rule.project_id is None:
                self.org.setdefault(rule.object_type, []).append((position, rule))
            else:
                key = (rule.project_id, rule.object_type)
                self.own.setdefault(key, []).append((position, rule))
        active = [h for h in holds if h.active(now)]
        self.whole: dict[UUID, list[Hold]] = {}
        for hold in active:
            if hold.object_id is None:
                self.whole.setdefault(hold.project_id, []).append(hold)
        # an object hold applies in every project (``Hold.covers_object``): one shared tuple
        self.objects = {
            t: tuple(h for h in active if h.covers_object(h.project_id, t)) for t in OBJECT_TYPES
        }

    def resolve(self, project_id: UUID, object_type: ObjectType, floor: float) -> Resolution:
        found = self.org.get(object_type, []) + self.own.get((project_id, object_type), [])
        candidates = tuple(rule for _, rule in sorted(found, key=lambda pair: pair[0]))
        target_hold = next(
            (h for h in self.whole.get(project_id, ()) if h.covers_target(project_id, object_type)),
            None,
        )
        winner = _winner(candidates)
        retention_days: float | None = None
        cutoff: datetime | None = None
        if winner is not None and target_hold is None:
            retention_days = max(winner.days, floor)
            cutoff = cutoff_for(self.now, retention_days)
        return Resolution(
            project_id=project_id,
            object_type=object_type,
            now=self.now,
            candidates=candidates,
            winner=winner,
            floor_days=floor,
            retention_days=retention_days,
            cutoff=cutoff,
            hold=target_hold,
            object_holds=self.objects.get(object_type, ()),
        )


def resolve(
    policy_sets: Sequence[PolicySet],
    project_ids: Iterable[UUID],
    now: datetime,
    *,
    min_retention_days: float | None = None,
) -> Resolved:
    """Resolve every (project, object type) for the given projects and those the policies name."""
    now = as_utc(now)
    floor = floor_days(policy_sets, min_retention_days)
    rules = [r for s in policy_sets for r in s.rules]
    holds = [h for s in policy_sets for h in s.holds]
    warnings = [w for s in policy_sets for w in s.warnings]
    warnings.extend(f"{h.describe()} expired; ignored" for h in holds if not h.active(now))
    projects = sorted(set(project_ids) | projects_named(policy_sets))
    lookup = _Lookup(rules, holds, now)
    resolutions = tuple(lookup.resolve(p, t, floor) for p in projects for t in OBJECT_TYPES)
    for resolution in resolutions:
        if resolution.floor_applied and resolution.winner is not None:
            warnings.append(
                f"{resolution.project_id}/{resolution.object_type}: policy of "
                f"{resolution.winner.days:g} days is below the safety floor; "
                f"keeping {floor:g} days"
            )
    return Resolved(now=now, floor_days=floor, resolutions=resolutions, warnings=tuple(warnings))
