"""The dry run counts a target's kept rows only as far as the fraction guard needs: the
guard must decide exactly as it would with the exact total."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from retention.dataplane import EXACT, kept_needed
from retention.guards import GuardSettings, guard_target
from retention.models import (
    ObjectType,
    Resolution,
    RetentionRule,
    SourceKind,
    Target,
    TargetCounts,
)

NOW = datetime(2026, 11, 27, 3, tzinfo=UTC)
RULE = RetentionRule(ObjectType.PROJECT_LOGS, 30, SourceKind.LOCAL_DEFAULT, "policy.toml")
RESOLUTION = Resolution(
    project_id=UUID("a0000000-0000-4000-8000-0000000000aa"),
    object_type=ObjectType.PROJECT_LOGS,
    now=NOW,
    candidates=(RULE,),
    winner=RULE,
    floor_days=0,
    retention_days=30,
    cutoff=NOW - timedelta(days=30),
)


def _decides(
    rows: int, total: int, exact: bool, fraction: float, segments: tuple[int, int] = (0, 0)
) -> bool:
    """Whether the maximum-fraction guard refuses the target (``segments``: expired and
    live rows in its segment files)."""
    counts = TargetCounts(
        rows=rows,
        total_rows=total,
        total_exact=exact,
        segment_rows=segments[0],
        total_segment_rows=segments[1],
    )
    reason = guard_target(
        Target(resolution=RESOLUTION, counts=counts), GuardSettings(max_delete_fraction=fraction)
    )
    return "maximum fraction" in reason


@given(
    rows=st.integers(min_value=0, max_value=10**9),
    kept=st.integers(min_value=0, max_value=10**9),
    fraction=st.one_of(
        st.floats(min_value=0, max_value=1.5, allow_nan=False),
        st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.99, 1.0]),
    ),
)
def test_a_bounded_total_decides_like_the_exact_one(rows: int, kept: int, fraction: float) -> None:
    limit = kept_needed(rows, fraction)
    counted = min(kept, limit)  # what the LIMIT k count returns
    bounded = _decides(rows, rows + counted, counted < limit, fraction)
    assert bounded == _decides(rows, rows + kept, True, fraction)


@given(rows=st.integers(min_value=1, max_value=10**6))
def test_at_the_boundary(rows: int) -> None:
    # exactly at the fraction passes, one kept row fewer refuses
    assert not _decides(rows, rows * 2, True, 0.5)
    assert kept_needed(rows, 0.5) > rows  # so a count of exactly `rows` kept is exact


def test_without_a_fraction_everything_is_counted() -> None:
    assert kept_needed(5, None) == EXACT
    assert kept_needed(0, 0.5) == 1 and kept_needed(7, 1.0) == 1 and kept_needed(7, 0.0) == 1


@given(
    rows=st.integers(min_value=0, max_value=10**9),
    kept=st.integers(min_value=0, max_value=10**9),
    expired_in_files=st.integers(min_value=0, max_value=10**9),
    kept_in_files=st.integers(min_value=0, max_value=10**9),
    fraction=st.one_of(
        st.floats(min_value=0, max_value=1.5, allow_nan=False),
        st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.99, 1.0]),
    ),
)
def test_with_segment_rows_a_bounded_total_decides_like_the_exact_one(
    rows: int, kept: int, expired_in_files: int, kept_in_files: int, fraction: float
) -> None:
    """Rows kept only in segment files count in the guard's fraction, and in the bound:
    a target whose expired files outweigh its few event rows is still decided exactly."""
    files = (expired_in_files, expired_in_files + kept_in_files)
    limit = kept_needed(rows, fraction, *files)
    counted = min(kept, limit)
    bounded = _decides(rows, rows + counted, counted < limit, fraction, files)
    assert bounded == _decides(rows, rows + kept, True, fraction, files)
