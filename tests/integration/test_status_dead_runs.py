"""``retention status`` as a health check must not call a failed or dead purge
healthy because other records came after it, or because its record still says 'running'."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention import state, status
from retention.db import make_engine
from retention.errors import DatabaseError
from retention.guards import FIRST_RUN
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml

P = UUID("5a000000-0000-4000-8000-0000000000a1")
LOGS = f"{P}/project_logs"


def _world(url: str) -> None:
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(3):
        s.add_event("project_logs", P, P, NOW - timedelta(days=40, minutes=i), f"old-{i}")
    for i in range(4):
        s.add_event("project_logs", P, P, NOW - timedelta(days=10, minutes=i), f"new-{i}")
    insert(engine_for(url), s)


def _policies(tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies", policy_toml(defaults={"project_logs": 30}))


def _record_runs(url: str, mode: str, count: int, status_: RunStatus) -> list[int]:
    """Runs recorded the way the worker records them (start, then finish)."""
    engine = engine_for(url)
    ids = []
    try:
        with engine.begin() as conn:
            for i in range(count):
                at = NOW + timedelta(minutes=i + 1)
                run = state.start_run(
                    conn, mode=mode, now=at, clock=at, plan_hash="", plan={"targets": []}
                )
                if status_ is not RunStatus.RUNNING:
                    state.finish_run(conn, run.id, status=status_, clock=at, totals=(0, 0, 0))
                ids.append(run.id)
    finally:
        engine.dispose()
    return ids


def test_a_guarded_purge_stays_a_problem_after_many_sweeps(db_url: str, tmp_path: Path) -> None:
    """The last purge was held back by a guard (exit 6, needs a person). An hourly
    ``retention sweep`` (its own run records, mode 'sweep') must not make status forget it:
    ``state.last_purge`` only looks through the 50 latest runs of any mode, so after 50
    sweeps status says healthy while the last purge is still guarded."""
    _world(db_url)
    policies = _policies(tmp_path)
    guarded = engine_module.purge(worker(db_url, policies))  # first run on a database
    assert guarded.status is RunStatus.GUARDED
    _record_runs(db_url, "sweep", 50, RunStatus.SUCCEEDED)

    found = status.collect(worker(db_url, policies), max_age=None, backlog=False)

    reason = f"held back by a guard: {LOGS}: {FIRST_RUN}"
    assert found.problems == [
        f"the last run ({guarded.run_id}) was {reason}; review it with 'retention purge --dry-run'"
    ]
    assert not found.healthy


def test_a_run_left_running_by_a_killed_worker_is_a_problem(db_url: str, tmp_path: Path) -> None:
    """A purge whose worker was SIGKILLed (OOM, a drained node) stays 'running' in
    retention_runs, and nobody holds the run lock. status lists it under in_progress and
    says healthy, so a probe without --max-age (or within it) reports a dead run as a live
    one. It must be a problem that names the run (status can tell: the run lock is free)."""
    _world(db_url)
    policies = _policies(tmp_path)
    (dead,) = _record_runs(db_url, "run", 1, RunStatus.RUNNING)

    found = status.collect(worker(db_url, policies), max_age=None, backlog=False)

    assert dead in found.in_progress  # reported as in progress...
    assert not found.healthy  # ...but no worker holds the lock: it died
    assert any(f"({dead})" in p or f"run {dead}" in p for p in found.problems), found.problems


def test_a_failed_purge_abandoned_by_a_run_that_then_fails_stays_a_problem(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run 1 failed two days ago (older than RETENTION_RESUME_MAX_AGE). Tonight's run marks
    it 'abandoned' (committed at once, ``state.resumable_run``) and then fails while
    planning (the database went away: exit 4) before it records a run of its own. The
    latest purge record is now 'abandoned', which status does not look at: healthy, after
    two failed nights in a row. An abandoned last purge (a run that never finished) must be
    a problem."""
    _world(db_url)
    policies = _policies(tmp_path)
    engine = engine_for(db_url)
    try:
        with engine.begin() as conn:
            at = NOW - timedelta(days=2)
            run = state.start_run(conn, mode="run", now=at, clock=at, plan_hash="", plan={})
            state.finish_run(
                conn, run.id, status=RunStatus.FAILED, clock=at, error="DatabaseError: gone"
            )
    finally:
        engine.dispose()
    assert status.collect(worker(db_url, policies), max_age=None, backlog=False).problems

    def planning_fails(*_args: object, **_kwargs: object) -> None:
        raise DatabaseError("database unavailable (test): server closed the connection")

    monkeypatch.setattr(engine_module, "_plan", planning_fails)
    with pytest.raises(DatabaseError):
        engine_module.purge(worker(db_url, policies), mode="run", allow_large_deletes=True)
    monkeypatch.undo()

    found = status.collect(worker(db_url, policies), max_age=None, backlog=False)
    assert [r.status for r in found.runs] == ["abandoned"]
    assert not found.healthy, found.problems
    assert any(f"({run.id})" in p for p in found.problems), found.problems


def test_status_sees_the_run_lock_held_while_a_run_holds_it(db_url: str, tmp_path: Path) -> None:
    """The dead-run check looks at the lock without taking it: held while a run holds it
    (a live run is not reported dead), free after."""
    _world(db_url)
    policies = _policies(tmp_path)
    (running,) = _record_runs(db_url, "run", 1, RunStatus.RUNNING)
    database = worker(db_url, policies).database
    engine = make_engine(database)
    try:
        with state.run_lock(engine, database):
            live = status.collect(worker(db_url, policies), max_age=None, backlog=False)
        gone = status.collect(worker(db_url, policies), max_age=None, backlog=False)
    finally:
        engine.dispose()
    assert live.healthy and running in live.in_progress
    assert not gone.healthy
