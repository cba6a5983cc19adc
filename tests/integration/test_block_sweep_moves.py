"""The block sweep and rows that move: a run that succeeds leaves no expired row.

The block sweep walks the heap by block ranges measured once, when the sweep is prepared.
A row that an ordinary writer or maintenance moves to another heap block during the sweep
(a non-HOT UPDATE, VACUUM FULL, CLUSTER, pg_repack) is not visited again by it. So when the
last unit is done the sweep asks the index whether each target still has an expired row;
one that has is finished by keyset batches. (It once marked every target done without
looking, and the run succeeded with those rows left.) A target held during the sweep stays
in its rows phase, so a resume after the hold ends finishes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from retention import bulk
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, surviving_rows

SMALL = {"sweep_blocks": 2, "sweep_unit_blocks": 8}  # many units on test-sized data
CUTOFF = NOW - timedelta(days=30)
PROJECT = uuid.UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")


def _setup(url: str, tmp_path: Path, events: int = 3000) -> tuple[set[str], Path, sa.Engine]:
    """One project's logs, 30 days; expired and kept rows interleaved over the whole heap.

    Returns the ids that must survive, the policy folder and an engine."""
    scenario = Scenario()
    scenario.add_object("project_logs", PROJECT, PROJECT, NOW - timedelta(days=400))
    keep: set[str] = set()
    for n in range(events):
        age = timedelta(days=40 + n % 7) if n % 2 == 0 else timedelta(days=2 + n % 5)
        row_id = scenario.add_event("project_logs", PROJECT, PROJECT, NOW - age, row_id=f"r{n}")
        if n % 2:
            keep.add(row_id)
    engine = engine_for(url)
    insert(engine, scenario)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE events")
    policy_dir = write_policies(
        tmp_path / "policies", policy_toml(projects=[(PROJECT, {"project_logs": 30})])
    )
    return keep, policy_dir, engine


def _autocommit(url: str) -> sa.Engine:
    return sa.create_engine(
        engine_for(url).url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
    )


def _block(ctid: str) -> int:
    return int(ctid.strip("()").split(",")[0])


def _units(conn: sa.Connection) -> list[tuple[int, int, bool]]:
    return [
        (int(lo), int(hi), bool(done))
        for lo, hi, done in conn.exec_driver_sql(
            "SELECT lo, hi, done FROM retention_work_units ORDER BY unit"
        )
    ]


def _expired_row_in(conn: sa.Connection, lo: int) -> tuple[str, int]:
    """An expired row at heap block ``lo`` or later: (id, block)."""
    row = conn.execute(
        sa.text(
            "SELECT id, ctid::text FROM events WHERE created < :cut "
            "AND ctid >= format('(%s,0)', :lo)::tid ORDER BY ctid DESC LIMIT 1"
        ),
        {"cut": CUTOFF, "lo": lo},
    ).one()
    return str(row[0]), _block(str(row[1]))


def _ctid_block(conn: sa.Connection, row_id: str) -> int:
    ctid = conn.execute(sa.text("SELECT ctid::text FROM events WHERE id = :i"), {"i": row_id})
    return _block(str(ctid.scalar_one()))


class _Once:
    """A should_stop callback that runs ``action`` once, at the first check after the
    sweep finished a unit while others are still open; it never asks the run to stop."""

    def __init__(self, url: str, action: Callable[[list[tuple[int, int, bool]]], None]):
        self.url = url
        self.action = action
        self.fired = False

    def __call__(self) -> bool:
        if self.fired:
            return False
        engine = engine_for(self.url)
        try:
            with engine.connect() as conn:
                if not conn.exec_driver_sql(
                    "SELECT to_regclass('retention_work_units') IS NOT NULL"
                ).scalar_one():
                    return False
                units = _units(conn)
        finally:
            engine.dispose()
        if sum(done for *_, done in units) < 1 or all(done for *_, done in units):
            return False
        self.fired = True
        self.action(units)
        return False


def _grow(conn: Any, row_id: str) -> None:
    """A non-HOT update: the row no longer fits its page, so it moves to another block."""
    conn.execute(
        sa.text(
            "UPDATE events SET data = jsonb_build_object('note', repeat('x', 600)) WHERE id = :i"
        ),
        {"i": row_id},
    )


def test_a_row_updated_mid_sweep_to_the_heaps_new_end_is_still_deleted(
    pg_url: str, tmp_path: Path
) -> None:
    """An expired row that the application updates while the sweep runs (a non-HOT update:
    its page is full, so the new version goes to the heap's end, which grew with the
    application's new rows since the sweep measured it) is still expired: the run that
    reports SUCCEEDED must have deleted it. (Before the fix the sweep never visited blocks
    past the end it measured at the start, and marked the target done.)"""
    keep, policy_dir, engine = _setup(pg_url, tmp_path)
    moved: dict[str, Any] = {}
    admin = _autocommit(pg_url)

    def act(units: list[tuple[int, int, bool]]) -> None:
        end = max(hi for _, hi, _ in units)
        first_open = min(lo for lo, _, done in units if not done)
        with admin.connect() as conn:
            # the application keeps logging: the heap grows past the sweep's end
            conn.execute(
                sa.text(
                    "INSERT INTO events (object_type, object_id, project_id, id, _xact_id, "
                    "created, data) SELECT 'project_logs', :p, :p, 'new' || g, 100000 + g, "
                    ":created, NULL FROM generate_series(1, 600) g"
                ),
                {"p": PROJECT, "created": NOW - timedelta(hours=1)},
            )
            row_id, before = _expired_row_in(conn, first_open)
            _grow(conn, row_id)
            moved.update(id=row_id, before=before, after=_ctid_block(conn, row_id), end=end)

    report = purge(
        worker(
            pg_url, policy_dir, delete_strategy="blocks", should_stop=_Once(pg_url, act), **SMALL
        )
    )
    admin.dispose()

    assert moved, "the update ran during the sweep"
    assert moved["after"] >= moved["end"]  # the precondition: past the end the sweep measured
    new_rows = {f"new{g}" for g in range(1, 601)}
    assert report.status is RunStatus.SUCCEEDED
    assert moved["id"] not in surviving_rows(engine)
    assert surviving_rows(engine) == keep | new_rows


def test_a_row_updated_into_an_already_swept_block_is_still_deleted(
    pg_url: str, tmp_path: Path
) -> None:
    """(Auto)vacuum runs during a long sweep and records the free space the sweep made in
    the blocks it already passed; an expired row updated next (non-HOT) moves into one of
    them. It is still expired, so a run that reports SUCCEEDED must have deleted it. (It once
    survived: its new block was swept before it got there.)"""
    keep, policy_dir, engine = _setup(pg_url, tmp_path)
    moved: dict[str, Any] = {}
    admin = _autocommit(pg_url)

    def act(units: list[tuple[int, int, bool]]) -> None:
        first_open = min(lo for lo, _, done in units if not done)
        with admin.connect() as conn:
            conn.exec_driver_sql("VACUUM events")  # autovacuum, after the first units
            row_id, before = _expired_row_in(conn, first_open)
            _grow(conn, row_id)
            moved.update(id=row_id, before=before, after=_ctid_block(conn, row_id), lo=first_open)

    report = purge(
        worker(
            pg_url, policy_dir, delete_strategy="blocks", should_stop=_Once(pg_url, act), **SMALL
        )
    )
    admin.dispose()

    assert moved, "the update ran during the sweep"
    assert moved["after"] < moved["lo"] <= moved["before"]  # moved back into a swept unit
    assert report.status is RunStatus.SUCCEEDED
    assert moved["id"] not in surviving_rows(engine)
    assert surviving_rows(engine) == keep


def test_vacuum_full_during_the_sweep_leaves_no_expired_row(pg_url: str, tmp_path: Path) -> None:
    """VACUUM FULL (or CLUSTER, pg_repack) between two batches of the sweep rewrites the
    heap and compacts the rows not yet swept into the low blocks the sweep already passed.
    The run then reports SUCCEEDED, so every expired row must be gone. Before the fix, the rows
    that moved below the sweep's position were never visited and survived."""
    keep, policy_dir, engine = _setup(pg_url, tmp_path)
    admin = _autocommit(pg_url)

    def act(_: list[tuple[int, int, bool]]) -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql("VACUUM FULL events")

    fired = _Once(pg_url, act)
    report = purge(worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=fired, **SMALL))
    admin.dispose()

    assert fired.fired
    assert report.status is RunStatus.SUCCEEDED
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM events WHERE created < :cut"), {"cut": CUTOFF}
        ).scalar_one()
    assert left == 0
    assert surviving_rows(engine) == keep


def test_a_sweep_resumed_after_vacuum_full_deletes_every_expired_row(
    pg_url: str, tmp_path: Path
) -> None:
    """A sweep stopped (time budget, signal, kill) after some units; before the next purge
    resumes it, an operator runs VACUUM FULL to give the space back. The resumed run keeps
    the old units (same targets and cutoffs) and skips the ones marked done, although the
    rewritten heap moved not-yet-swept rows into them. The resumed run reports SUCCEEDED,
    so every expired row must be gone, and the run's counts must add up to all of them."""
    keep, policy_dir, engine = _setup(pg_url, tmp_path)

    def one_unit_done() -> bool:
        check = engine_for(pg_url)
        try:
            with check.connect() as conn:
                if not conn.exec_driver_sql(
                    "SELECT to_regclass('retention_work_units') IS NOT NULL"
                ).scalar_one():
                    return False
                return any(done for *_, done in _units(conn))
        finally:
            check.dispose()

    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=one_unit_done, **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    admin = _autocommit(pg_url)
    with admin.connect() as conn:
        conn.exec_driver_sql("VACUUM FULL events")
    admin.dispose()

    second = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))

    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == keep
    expired = 3000 - len(keep)
    assert sum(o.rows for o in second.outcomes) == expired


OTHER = uuid.UUID("7a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
EXPERIMENT = uuid.UUID("0b7e0000-0000-4000-8000-000000000001")


def test_a_target_held_mid_sweep_is_resumed_once_the_hold_is_lifted(
    pg_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A hold added during the sweep stops its target for that attempt. If the run is
    interrupted afterwards and the hold is lifted before the next purge resumes it, the
    target's expired rows are no longer held and must go, as they do on the keyset path
    (which never saves a held target as done). (The sweep once saved the held target's
    checkpoint as ``done``, and the resumed run skipped it and reported SUCCEEDED with all
    of its expired rows left.)"""
    keep, policy_dir, engine = _setup(pg_url, tmp_path)
    scenario = Scenario()  # a second project: logs, and an expired experiment
    scenario.add_object("project_logs", OTHER, OTHER, NOW - timedelta(days=400))
    scenario.add_object("experiment", EXPERIMENT, OTHER, NOW - timedelta(days=300))
    for n in range(400):
        scenario.add_event("project_logs", OTHER, OTHER, NOW - timedelta(days=40), f"o{n}")
        scenario.add_event("experiment", EXPERIMENT, OTHER, NOW - timedelta(days=40), f"x{n}")
    insert(engine, scenario)
    write_policies(
        policy_dir,
        policy_toml(
            projects=[
                (PROJECT, {"project_logs": 30}),
                (OTHER, {"project_logs": 30, "experiment": 30}),
            ]
        ),
    )
    hold = policy_dir / "hold.toml"
    admin = _autocommit(pg_url)

    def add_hold(_: list[tuple[int, int, bool]]) -> None:
        hold.write_text(
            f'[[holds]]\nproject = "{PROJECT}"\nobject_type = "project_logs"\nreason = "audit"\n'
        )

    adder = _Once(pg_url, add_hold)
    swept = {"done": False}
    original = bulk.sweep_rows

    def sweep_rows(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        swept["done"] = True
        return result

    monkeypatch.setattr(bulk, "sweep_rows", sweep_rows)

    def should_stop() -> bool:  # the hold mid-sweep; then a stop right after the sweep
        adder()
        return swept["done"]

    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=should_stop, **SMALL)
    )
    admin.dispose()
    assert adder.fired and swept["done"]
    assert first.status is RunStatus.PARTIAL  # stopped before the experiment
    held = next(o for o in first.outcomes if o.target.project_id == PROJECT)
    assert "held during the run" in held.note
    expired_left = {f"r{n}" for n in range(0, 3000, 2)} & surviving_rows(engine)
    assert expired_left  # the hold kept some of the target's expired rows

    hold.unlink()  # the hold is lifted; the next purge resumes the run
    monkeypatch.undo()
    second = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))

    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == keep
