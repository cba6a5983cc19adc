"""Safety guards: checked after planning, before the first deletion (DESIGN §5).

A guarded target is not deleted; the others proceed and the run ends with exit 6. An
operator overrides for one run with ``--allow-large-deletes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .models import Target

FIRST_RUN = "first run on this database: review the dry run, then rerun with --allow-large-deletes"


@dataclass(frozen=True)
class GuardSettings:
    max_delete_fraction: float = 0.5
    first_run: bool = False  # no earlier successful run on this database
    allow_large_deletes: bool = False


def guard_target(target: Target, settings: GuardSettings) -> str:
    """Why ``target`` must not be deleted in this run; "" when it may."""
    counts = target.counts
    if settings.allow_large_deletes or not (counts.rows or counts.objects):
        return ""
    if settings.first_run:
        return FIRST_RUN
    if counts.total_rows and counts.rows / counts.total_rows > settings.max_delete_fraction:
        return (
            f"would delete {counts.rows:,} of {counts.total_rows:,} rows "
            f"({counts.rows / counts.total_rows:.1%}), more than the maximum fraction "
            f"{settings.max_delete_fraction:g} (RETENTION_MAX_DELETE_FRACTION); "
            "rerun with --allow-large-deletes after review"
        )
    return ""


def guard(targets: Iterable[Target], settings: GuardSettings) -> dict[str, str]:
    """Target key -> reason, for every guarded target."""
    found = {t.key: guard_target(t, settings) for t in targets if t.resolution.deletes}
    return {key: reason for key, reason in found.items() if reason}
