"""Blast-radius limits: per target rows and bytes, per run rows and bytes, policy shrink."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml, surviving_rows

A = UUID("a0000000-0000-4000-8000-0000000000aa")
B = UUID("b0000000-0000-4000-8000-0000000000bb")


def _data(db_url: str, *, expired_a: int = 4, expired_b: int = 2, kept: int = 20) -> None:
    """Per project: ``expired_*`` rows 50 days old and ``kept`` rows 1 day old."""
    s = Scenario()
    for project, expired in ((A, expired_a), (B, expired_b)):
        s.add_object("project_logs", project, project, NOW - timedelta(days=400))
        for i in range(expired):
            s.add_event(
                "project_logs",
                project,
                project,
                NOW - timedelta(days=50),
                f"{project.hex[:2]}-old-{i}",
            )
        for i in range(kept):
            s.add_event(
                "project_logs",
                project,
                project,
                NOW - timedelta(days=1),
                f"{project.hex[:2]}-new-{i}",
            )
    insert(engine_for(db_url), s)


def _not_first_run(db_url: str, tmp_path: Path) -> None:
    """A successful run that deletes nothing, so the first-run rule no longer applies."""
    empty = write_policies(tmp_path / "none", "")
    assert purge(worker(db_url, empty)).status is RunStatus.SUCCEEDED


def _run(db_url: str, tmp_path: Path, days: float = 30, **settings: Any):
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": days}))
    return purge(worker(db_url, policies, **settings), allow_large_deletes=False)


def _left(db_url: str, project: UUID) -> int:
    return sum(1 for r in surviving_rows(engine_for(db_url)) if r.startswith(project.hex[:2]))


@pytest.mark.parametrize(("limit", "a_guarded"), [(4, False), (3, True)])
def test_max_rows_per_target(db_url: str, tmp_path: Path, limit: int, a_guarded: bool) -> None:
    _data(db_url)
    _not_first_run(db_url, tmp_path)
    report = _run(db_url, tmp_path, max_delete_rows=limit)
    guards = {o.target.project_id: o.guard for o in report.outcomes}
    assert bool(guards[A]) is a_guarded and guards[B] == ""
    if a_guarded:
        assert guards[A].startswith("would delete 4 rows, more than RETENTION_MAX_DELETE_ROWS (3)")
        assert report.status is RunStatus.GUARDED
    assert _left(db_url, A) == (24 if a_guarded else 20)
    assert _left(db_url, B) == 20  # the other target proceeds


@pytest.mark.parametrize(("limit", "guarded"), [(6, False), (5, True)])
def test_max_rows_per_run(db_url: str, tmp_path: Path, limit: int, guarded: bool) -> None:
    _data(db_url)
    _not_first_run(db_url, tmp_path)
    report = _run(db_url, tmp_path, max_run_rows=limit)
    reasons = {o.guard for o in report.outcomes}
    if guarded:
        assert reasons == {
            "the run would delete 6 rows, more than RETENTION_MAX_RUN_ROWS (5); rerun with "
            "--allow-large-deletes after review, or apply a reviewed plan"
        }
        assert len(surviving_rows(engine_for(db_url))) == 46
    else:
        assert reasons == {""}
        assert len(surviving_rows(engine_for(db_url))) == 40


def _with_segments(db_url: str, store: FileStore, sizes: dict[UUID, int]) -> None:
    s = Scenario()
    for project, size in sizes.items():
        s.add_object("project_logs", project, project, NOW - timedelta(days=400))
        for i in range(20):
            s.add_event(
                "project_logs",
                project,
                project,
                NOW - timedelta(days=1),
                f"{project.hex[:2]}-new-{i}",
            )
        row = s.add_segment(
            "project_logs",
            project,
            project,
            NOW - timedelta(days=60),
            NOW - timedelta(days=50),
            size=size,
            segment_id=UUID(int=project.int + 1),
        )
        store.write(row["object_key"])
    insert(engine_for(db_url), s)


@pytest.mark.parametrize(("limit", "a_guarded"), [(700, False), (699, True)])
def test_max_bytes_per_target(
    db_url: str, tmp_path: Path, file_store: FileStore, limit: int, a_guarded: bool
) -> None:
    _with_segments(db_url, file_store, {A: 700, B: 300})
    _not_first_run(db_url, tmp_path)
    report = _run(db_url, tmp_path, max_delete_bytes=limit, **file_store.settings())
    marked = {o.target.project_id: o.segments for o in report.outcomes}
    assert marked == {A: 0 if a_guarded else 1, B: 1}
    if a_guarded:
        guard = next(o.guard for o in report.outcomes if o.target.project_id == A)
        assert (
            "would delete 700 bytes of segments, more than RETENTION_MAX_DELETE_BYTES (699)"
            in guard
        )


@pytest.mark.parametrize(("limit", "guarded"), [(1000, False), (999, True)])
def test_max_bytes_per_run(
    db_url: str, tmp_path: Path, file_store: FileStore, limit: int, guarded: bool
) -> None:
    _with_segments(db_url, file_store, {A: 700, B: 300})
    _not_first_run(db_url, tmp_path)
    report = _run(db_url, tmp_path, max_run_bytes=limit, **file_store.settings())
    assert sum(o.segments for o in report.outcomes) == (0 if guarded else 2)
    assert (report.status is RunStatus.GUARDED) is guarded


@pytest.mark.parametrize(
    ("before", "after", "shrink", "guarded"),
    [
        (60, 30, 0.5, False),  # exactly 50% shorter: allowed
        (60, 29.9, 0.5, True),  # just past it
        (60, 45, 0.2, True),  # 25% shorter, more than a 20% limit
        (60, 90, 0.5, False),  # longer is never guarded
    ],
)
def test_policy_shrink_since_the_last_success(
    db_url: str, tmp_path: Path, before: float, after: float, shrink: float, guarded: bool
) -> None:
    _data(db_url, expired_a=2, expired_b=2)  # rows 50 and 1 days old
    # the last successful run had the longer policy (nothing of it expired yet)
    first = _run(db_url, tmp_path, days=before, max_policy_shrink=shrink)
    assert first.status is RunStatus.SUCCEEDED
    assert [o.target.resolution.retention_days for o in first.outcomes] == [before, before]
    report = _run(db_url, tmp_path, days=after, max_policy_shrink=shrink)
    reasons = {o.guard for o in report.outcomes}
    if guarded:
        percent = f"{(before - after) / before:.0%}"
        assert reasons == {
            f"policy shortened from {before:g} to {after:g} days ({percent}) since the last "
            f"successful run, more than --max-policy-shrink ({shrink:.0%}); rerun with "
            "--allow-large-deletes after review, or apply a reviewed plan"
        }
    else:
        assert reasons == {""}


def test_guards_are_overridden_for_one_run(db_url: str, tmp_path: Path) -> None:
    _data(db_url)
    _not_first_run(db_url, tmp_path)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    w = worker(db_url, policies, max_delete_rows=1, max_run_rows=1)
    assert purge(w, allow_large_deletes=True).status is RunStatus.SUCCEEDED
    assert len(surviving_rows(engine_for(db_url))) == 40
