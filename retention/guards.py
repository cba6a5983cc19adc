"""Safety guards: checked after planning, before the first deletion (DESIGN §5).

Per target: the first run on a database, maximum rows, maximum bytes, maximum fraction of
the target's rows, and a policy shortened since the last successful run by more than the
allowed share. Per run: maximum rows and bytes of the whole run. A guarded target is not
deleted; the others proceed and the run ends with exit 6. An operator overrides for one run
with ``--allow-large-deletes`` or by applying a reviewed plan file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .models import Target

FIRST_RUN = (
    "first run on this database: review the dry run, then rerun with --allow-large-deletes "
    "or apply the reviewed plan (purge --plan)"
)
OVERRIDE = "rerun with --allow-large-deletes after review, or apply a reviewed plan"


@dataclass(frozen=True)
class GuardSettings:
    max_delete_fraction: float = 0.5
    max_rows: int | None = None  # per target
    max_bytes: int | None = None  # per target
    max_run_rows: int | None = None
    max_run_bytes: int | None = None
    max_policy_shrink: float = 0.5
    # retention days per target key in the last successful run
    previous_days: Mapping[str, float] = field(default_factory=dict)
    first_run: bool = False  # no earlier successful run on this database
    allow_large_deletes: bool = False
    # target keys a resumed run's first attempt was approved for (the override, or a
    # reviewed plan), at the same cutoff: they pass as they did then
    approved: frozenset[str] = frozenset()


def _deletes(target: Target) -> bool:
    c = target.counts
    return target.resolution.deletes and bool(c.rows or c.objects or c.segments)


def _first_run(target: Target, settings: GuardSettings) -> str:
    return FIRST_RUN if settings.first_run else ""


def _max_rows(target: Target, settings: GuardSettings) -> str:
    rows = target.counts.rows
    if settings.max_rows is None or rows <= settings.max_rows:
        return ""
    return (
        f"would delete {rows:,} rows, more than RETENTION_MAX_DELETE_ROWS "
        f"({settings.max_rows:,}); {OVERRIDE}"
    )


def _max_bytes(target: Target, settings: GuardSettings) -> str:
    size = target.counts.bytes
    if settings.max_bytes is None or size <= settings.max_bytes:
        return ""
    return (
        f"would delete {size:,} bytes of segments, more than RETENTION_MAX_DELETE_BYTES "
        f"({settings.max_bytes:,}); {OVERRIDE}"
    )


def _max_fraction(target: Target, settings: GuardSettings) -> str:
    """More than the fraction of the target's rows (in ``events`` and, by their row
    counts, in its live segments: data kept only in files counts too), or of its
    experiments (a registry entry goes with its experiment)."""
    c = target.counts
    f = settings.max_delete_fraction
    gone, whole = c.rows + c.segment_rows, c.total_rows + c.total_segment_rows
    if whole and gone / whole > f:
        return (
            f"would delete {gone:,} of {'' if c.total_exact else 'at least '}{whole:,} rows "
            f"({gone / whole:.1%}), more than the maximum fraction {f:g} "
            f"(RETENTION_MAX_DELETE_FRACTION); {OVERRIDE}"
        )
    if c.total_objects and c.objects / c.total_objects > f:
        return (
            f"would delete {c.objects:,} of {c.total_objects:,} experiments "
            f"({c.objects / c.total_objects:.1%}), more than the maximum fraction {f:g} "
            f"(RETENTION_MAX_DELETE_FRACTION); {OVERRIDE}"
        )
    return ""


def _policy_shrink(target: Target, settings: GuardSettings) -> str:
    before = settings.previous_days.get(target.key)
    now = target.resolution.retention_days
    if not before or now is None or (before - now) / before <= settings.max_policy_shrink:
        return ""
    return (
        f"policy shortened from {before:g} to {now:g} days ({(before - now) / before:.0%}) "
        f"since the last successful run, more than --max-policy-shrink "
        f"({settings.max_policy_shrink:.0%}); {OVERRIDE}"
    )


CHECKS = (_first_run, _max_rows, _max_bytes, _max_fraction, _policy_shrink)


def guard_target(target: Target, settings: GuardSettings) -> str:
    """Why ``target`` must not be deleted in this run; "" when it may."""
    if settings.allow_large_deletes or target.key in settings.approved or not _deletes(target):
        return ""
    return next((reason for check in CHECKS if (reason := check(target, settings))), "")


def guard(targets: Iterable[Target], settings: GuardSettings) -> dict[str, str]:
    """Target key -> reason, for every guarded target."""
    deleting = [t for t in targets if _deletes(t)]
    found = {t.key: guard_target(t, settings) for t in deleting}
    guarded = {key: reason for key, reason in found.items() if reason}
    if settings.allow_large_deletes:
        return guarded
    rest = [t for t in deleting if t.key not in guarded and t.key not in settings.approved]
    rows = sum(t.counts.rows for t in rest)
    size = sum(t.counts.bytes for t in rest)
    run_reason = ""
    if settings.max_run_rows is not None and rows > settings.max_run_rows:
        run_reason = (
            f"the run would delete {rows:,} rows, more than RETENTION_MAX_RUN_ROWS "
            f"({settings.max_run_rows:,}); {OVERRIDE}"
        )
    elif settings.max_run_bytes is not None and size > settings.max_run_bytes:
        run_reason = (
            f"the run would delete {size:,} bytes of segments, more than "
            f"RETENTION_MAX_RUN_BYTES ({settings.max_run_bytes:,}); {OVERRIDE}"
        )
    if run_reason:
        guarded.update({t.key: run_reason for t in rest})
    return guarded
