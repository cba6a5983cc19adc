"""Domain objects that cross module boundaries: frozen dataclasses and StrEnums.

Datetimes are always timezone-aware (UTC). Retention is measured in days and may be
fractional or zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from uuid import UUID


class ObjectType(StrEnum):
    PROJECT_LOGS = "project_logs"
    EXPERIMENT = "experiment"
    DATASET = "dataset"


OBJECT_TYPES: tuple[ObjectType, ...] = tuple(ObjectType)


class SourceKind(StrEnum):
    """Where a retention rule comes from."""

    LOCAL_DEFAULT = "local-default"
    LOCAL_PROJECT = "local-project"
    PROJECT_AUTOMATION = "project-automation"
    ORG_AUTOMATION = "org-automation"
    ORPHAN = "purge-orphans"  # --purge-orphans: every row of a project the control plane lacks


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # stopped by time budget or signal; resumable
    GUARDED = "guarded"  # finished, but a guard held back some targets
    FAILED = "failed"
    ABANDONED = "abandoned"  # an interrupted run too old to resume


class Phase(StrEnum):
    """Progress of one target inside a run: rows, then segments, then registry entries."""

    ROWS = "rows"
    SEGMENTS = "segments"
    REGISTRY = "registry"
    DONE = "done"


def as_utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; naive datetimes are a programming error."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} where an aware one is required")
    return value.astimezone(UTC)


def days_text(days: float) -> str:
    """``30`` for whole days, ``0.5`` otherwise."""
    return str(int(days)) if float(days).is_integer() else repr(float(days))


# A retention longer than this is rejected: it cannot be turned into a cutoff reliably.
MAX_RETENTION_DAYS = 1_000_000.0


EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


def cutoff_for(now: datetime, days: float) -> datetime:
    """``now - days``; a retention reaching back before year 1 keeps everything."""
    if not math.isfinite(days) or days < 0 or days > MAX_RETENTION_DAYS:
        raise ValueError(f"retention of {days!r} days is out of range")
    try:
        return as_utc(now) - timedelta(days=days)
    except OverflowError:
        return EARLIEST


@dataclass(frozen=True)
class RetentionRule:
    """One retention setting from one source, before resolution."""

    object_type: ObjectType
    days: float
    kind: SourceKind
    origin: str  # file path or automation id
    project_id: UUID | None = None  # None: org-wide
    label: str = ""  # automation name, file section

    def describe(self) -> str:
        scope = f"project {self.project_id}" if self.project_id else "org"
        text = f"{self.kind} {self.origin}"
        if self.label:
            text += f" ({self.label})"
        return f"{text} [{scope}]: {days_text(self.days)} days"


@dataclass(frozen=True)
class Hold:
    """Data a hold covers is never planned for deletion."""

    project_id: UUID
    reason: str
    origin: str
    object_type: ObjectType | None = None  # None: every type
    object_id: UUID | None = None  # None: every object of the type
    expires: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires is None or as_utc(now) < self.expires

    def covers_target(self, project_id: UUID, object_type: ObjectType) -> bool:
        """The hold covers the whole (project, object type) target."""
        return (
            self.project_id == project_id
            and self.object_id is None
            and self.object_type in (None, object_type)
        )

    def covers_object(self, project_id: UUID, object_type: ObjectType) -> bool:
        """The hold covers one object that may be in the target.

        Object ids are unique, so an object hold protects its object in whichever project
        it is found: a hold naming the wrong project still keeps the object (and the plan
        warns about the mismatch).
        """
        del project_id
        return self.object_id is not None and self.object_type in (None, object_type)

    def describe(self) -> str:
        scope = str(self.project_id)
        if self.object_type:
            scope += f"/{self.object_type}"
        if self.object_id:
            scope += f"/{self.object_id}"
        until = f" until {self.expires.isoformat()}" if self.expires else ""
        return f"hold {scope} ({self.reason}){until} from {self.origin}"


@dataclass(frozen=True)
class ProjectInfo:
    project_id: UUID
    name: str | None = None
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class PolicySet:
    """Everything one policy source says."""

    source: str
    rules: tuple[RetentionRule, ...] = ()
    holds: tuple[Hold, ...] = ()
    min_retention_days: float | None = None
    # The projects this source knows (a control plane); None: it does not list projects.
    projects: tuple[ProjectInfo, ...] | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """The effective policy for one (project, object type): one rule, explainable."""

    project_id: UUID
    object_type: ObjectType
    now: datetime
    candidates: tuple[RetentionRule, ...]
    winner: RetentionRule | None
    floor_days: float
    retention_days: float | None  # after the floor; None when nothing deletes
    cutoff: datetime | None  # None: keep everything (no policy, or held)
    hold: Hold | None = None  # a hold on the whole target
    object_holds: tuple[Hold, ...] = ()  # holds on single objects of the target
    # applying a reviewed plan: rows past this sequence_id came after the review and are
    # not this run's to delete (None: no such bound)
    newest_row: int | None = None
    # applying a reviewed plan: only these experiments (registry entries) and live segments
    # expire, whatever else the registry or the index has now (None: no such bound)
    reviewed_objects: frozenset[UUID] | None = None
    reviewed_segments: frozenset[UUID] | None = None
    # experiments kept whole because rows or segments of theirs are filed under another
    # project (the planner finds them once; they are kept as held objects are)
    kept_whole: frozenset[UUID] = frozenset()

    @property
    def floor_applied(self) -> bool:
        return (
            self.winner is not None
            and self.retention_days is not None
            and self.winner.days < self.floor_days
        )

    @property
    def held(self) -> bool:
        return self.hold is not None

    @property
    def deletes(self) -> bool:
        return self.cutoff is not None

    @cached_property  # (a frozen dataclass: computed once per instance)
    def held_object_ids(self) -> frozenset[UUID]:
        held = frozenset(h.object_id for h in self.object_holds if h.object_id is not None)
        return held | self.kept_whole

    @property
    def source(self) -> str:
        if self.winner is None:
            return "none"
        return f"{self.winner.kind}:{self.winner.origin}"

    @property
    def has_policy_or_hold(self) -> bool:
        return self.winner is not None or self.hold is not None or bool(self.object_holds)


@dataclass(frozen=True)
class TargetCounts:
    """What a target holds and what of it has expired, measured in one snapshot."""

    rows: int = 0  # expired rows (for experiments: all rows of expired experiments)
    total_rows: int = 0  # all rows of the target (a lower bound unless total_exact)
    objects: int = 0  # expired experiments (0 for other types)
    segments: int = 0
    bytes: int = 0
    straddling_segments: int = 0
    oldest_row: datetime | None = None
    held_objects: frozenset[UUID] = frozenset()  # objects of the target that a hold keeps
    total_exact: bool = True  # false: total_rows counted only as far as the guards need
    total_objects: int = 0  # experiments in the target's registry (experiment targets)
    segment_rows: int = 0  # rows in the expired segments (their row_count)
    total_segment_rows: int = 0  # rows in all live segments of the target


@dataclass(frozen=True)
class Target:
    resolution: Resolution
    counts: TargetCounts = field(default_factory=TargetCounts)

    @cached_property  # (a frozen dataclass: computed once per instance)
    def key(self) -> str:
        return f"{self.resolution.project_id}/{self.resolution.object_type}"

    @property
    def project_id(self) -> UUID:
        return self.resolution.project_id

    @property
    def object_type(self) -> ObjectType:
        return self.resolution.object_type


@dataclass(frozen=True)
class Orphan:
    project_id: UUID
    reason: str  # "deleted" | "unknown"
    rows: int
    segments: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class UnusedSegments:
    """Segments marked unused and waiting for the sweep."""

    segments: int = 0
    bytes: int = 0
    sweepable: int = 0  # unused for longer than the grace period
    sweepable_bytes: int = 0
    next_sweepable_at: datetime | None = None  # when the next one in grace becomes sweepable


@dataclass(frozen=True)
class Identities:
    """Which experiments (registry entries) and live segments of a target expire."""

    experiments: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    now: datetime
    targets: tuple[Target, ...]
    orphans: tuple[Orphan, ...] = ()
    warnings: tuple[str, ...] = ()
    unused_segments: UnusedSegments = field(default_factory=UnusedSegments)
    clocks: tuple[datetime, datetime] | None = None  # (local, database) when planned
    # per target key, which experiments and live segments expire (ids, sorted); only for
    # plans that are reviewed (a dry run's JSON) or apply a review
    identities: Mapping[str, Identities] | None = None
    newest_row: int | None = None  # with identities: the largest sequence_id of events

    def target(self, project_id: UUID, object_type: ObjectType) -> Target | None:
        for target in self.targets:
            if target.project_id == project_id and target.object_type == object_type:
                return target
        return None


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the last row a batch deleted, in deletion order.

    For logs and datasets the order is (created, sequence_id); experiments are walked
    object by object, so ``object_id`` leads.
    """

    created: datetime
    sequence_id: int
    object_id: UUID | None = None


@dataclass(frozen=True)
class BatchResult:
    rows: int
    first: Cursor | None
    last: Cursor | None
    digest: str = ""  # SHA-256 of the sorted deleted sequence ids


@dataclass(frozen=True)
class TargetOutcome:
    target: Target
    rows: int = 0
    objects: int = 0
    batches: int = 0
    phase: Phase = Phase.ROWS
    note: str = ""
    guard: str = ""  # why a safety guard held the target back ("" when none did)
    segments: int = 0  # segments marked unused
    bytes: int = 0
    lock_waits: int = 0  # batches that timed out waiting for row locks and were retried
    earlier_rows: int = 0  # of ``rows``, those deleted by earlier attempts of a resumed run
    longest_batch: float = 0.0  # seconds of the longest batch transaction


@dataclass
class SweepOutcome:
    """What a sweep did: files deleted (then their index rows), and what it could not do."""

    files: int = 0
    bytes: int = 0
    missing: int = 0  # already gone from the store: counted as deleted
    failed: int = 0  # the store refused or failed: index rows kept for the next sweep
    refused: int = 0  # keys outside the store URL: never deleted, reported
    batches: int = 0
    requests: int = 0  # store delete requests (bulk deletes count one per batch)
    stopped: bool = False


@dataclass(frozen=True)
class RunReport:
    plan: Plan
    dry_run: bool
    run_id: int | None = None
    status: RunStatus | None = None
    resumed: bool = False
    outcomes: tuple[TargetOutcome, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    sweep: SweepOutcome | None = None
    # rows, segments, bytes that earlier attempts of a resumed run deleted (or marked) for
    # targets no longer planned: in the totals, so they add up to what the run did
    unplanned: tuple[int, int, int] = (0, 0, 0)
