"""Reviewed plan files and the safety guards: a plan applies only what it reviewed
(segment bytes, which experiments and segments, a now no clock has reached yet), and the
policy-shrink guard remembers a target's retention across runs that had none for it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import engine as engine_module
from retention import planfile, report
from retention.engine import Worker
from retention.errors import ExitCode, GuardError
from retention.models import RunStatus
from retention.planfile import PlanFile
from tests.conftest import engine_for
from tests.integration.helpers import worker, write_policies
from tests.stores import FileStore
from tests.support import (
    NOW,
    Scenario,
    insert,
    policy_toml,
    registry,
    segment_states,
    surviving_rows,
)

P = UUID("c1000000-0000-4000-8000-000000000001")
EXP_X = UUID("e7000000-0000-4000-8000-00000000000a")  # reviewed, then gone
EXP_Y = UUID("e7000000-0000-4000-8000-00000000000b")  # never reviewed
EXP_NEW = UUID("e7000000-0000-4000-8000-00000000000c")
SEG_A = UUID("5e000000-0000-4000-8000-00000000000a")  # reviewed, then gone
SEG_B = UUID("5e000000-0000-4000-8000-00000000000b")  # never reviewed
SEG_LIVE = UUID("5e000000-0000-4000-8000-00000000000c")

DAYS = 30
LOGS, EXPS = f"{P}/project_logs", f"{P}/experiment"
LATER = NOW + timedelta(hours=2)


def _ago(days: float, when: datetime = NOW) -> datetime:
    return when - timedelta(days=days)


def _at(when: datetime, **settings: Any) -> dict[str, Any]:
    return dict(now=when, clock=lambda: when, **settings)


def _make_plan(w: Worker, path: Path, **kwargs: Any) -> PlanFile:
    sealed = planfile.seal(report.report_document(engine_module.plan(w, identify=True, **kwargs)))
    path.write_text(json.dumps(sealed, indent=2), encoding="utf-8")
    return planfile.read(path)


def _delete_receipt_rows(url: str) -> dict[str, int]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT project_id, object_type, rows FROM retention_receipts "
                "WHERE action = 'delete'"
            ).all()
    finally:
        engine.dispose()
    found: dict[str, int] = {}
    for project_id, object_type, n in rows:
        key = f"{project_id}/{object_type}"
        found[key] = found.get(key, 0) + int(n)
    return found


# -- segments: bytes and identity are part of the drift check ------------------------------


def _segment_world(db_url: str, store: FileStore, tmp_path: Path) -> Path:
    """P's logs: 10 rows a day old (kept), 1 row 40 days old; segment A expired (100 B),
    one live segment (its file lets the sweep's store check pass)."""
    s = Scenario()
    s.add_object("project_logs", P, P, _ago(400))
    s.add_event("project_logs", P, P, _ago(40), "old-0")
    for i in range(10):
        s.add_event("project_logs", P, P, _ago(1), f"new-{i}")
    s.add_segment("project_logs", P, P, _ago(60), _ago(40), size=100, segment_id=SEG_A)
    s.add_segment("project_logs", P, P, _ago(5), _ago(1), size=300, segment_id=SEG_LIVE)
    insert(engine_for(db_url), s)
    for row in s.segments:
        store.write(row["object_key"])
    return write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": DAYS}))


def _replace_segment_a(db_url: str, store: FileStore, size: int) -> str:
    """Segment A's index row goes (a compaction, or another tool) and a backdated segment B
    of ``size`` bytes that expires at the plan's now appears. Returns B's object key."""
    engine = engine_for(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM segments WHERE segment_id = :s"), {"s": str(SEG_A)})
    s = Scenario()
    row = s.add_segment("project_logs", P, P, _ago(70), _ago(45), size=size, segment_id=SEG_B)
    insert(engine, s)
    store.write(row["object_key"])
    return str(row["object_key"])


def test_plan_refuses_more_segment_bytes_than_reviewed(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """The operator reviewed one expired segment of 100 bytes. At apply time one segment of
    10**12 bytes expires instead (same count). ``purge --plan`` overrides the byte guards,
    so the drift check must refuse more bytes than reviewed: exit 6, nothing marked or
    swept, segment B still live with its file."""
    policies = _segment_world(db_url, file_store, tmp_path)
    settings = {**file_store.settings(), "grace_period": "0"}
    reviewed = _make_plan(worker(db_url, policies, **settings), tmp_path / "plan.json")
    assert (reviewed.targets[LOGS]["segments"], reviewed.targets[LOGS]["bytes"]) == (1, 100)

    key = _replace_segment_a(db_url, file_store, size=10**12)

    with pytest.raises(GuardError) as caught:
        engine_module.purge(worker(db_url, policies, **_at(LATER, **settings)), plan_file=reviewed)
    assert caught.value.exit_code is ExitCode.GUARD
    assert segment_states(engine_for(db_url))[str(SEG_B)] == ("live", False)
    assert file_store.exists(key)
    assert "old-0" in surviving_rows(engine_for(db_url))


def test_plan_refuses_a_different_segment_with_the_same_count_and_size(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """The reviewed segment A went away and an unreviewed segment B of the same size
    expires now. The plan names the segments it reviewed (it once named only counts, and B
    was marked and swept): refused (exit 6) with B still live and its file in the store."""
    policies = _segment_world(db_url, file_store, tmp_path)
    settings = {**file_store.settings(), "grace_period": "0"}
    reviewed = _make_plan(worker(db_url, policies, **settings), tmp_path / "plan.json")

    key = _replace_segment_a(db_url, file_store, size=100)

    with pytest.raises(GuardError) as caught:
        engine_module.purge(worker(db_url, policies, **_at(LATER, **settings)), plan_file=reviewed)
    assert caught.value.exit_code is ExitCode.GUARD
    assert segment_states(engine_for(db_url))[str(SEG_B)] == ("live", False)
    assert file_store.exists(key)


# -- experiments: identity is part of the drift check -------------------------------------


def test_plan_refuses_an_unreviewed_experiment_that_replaced_a_reviewed_one(
    db_url: str, tmp_path: Path
) -> None:
    """Reviewed: experiment X (created 60 days ago, 2 rows) expires. Before the plan is
    applied, X is deleted by someone else and experiment Y (backdated, created 90 days
    ago, 2 rows; an import, or a restore) appears. Counts are equal (1 experiment, 2 rows),
    and the plan once named only counts, so Y and its rows were deleted unreviewed. The
    plan names its experiments: refused (exit 6), Y's registry entry and both its rows
    kept, nothing deleted."""
    s = Scenario()
    s.add_object("project_logs", P, P, _ago(400))
    s.add_object("experiment", EXP_X, P, _ago(60))
    s.add_object("experiment", EXP_NEW, P, _ago(2))
    for i in range(2):
        s.add_event("experiment", EXP_X, P, _ago(59), f"x-{i}")
    for i in range(5):
        s.add_event("experiment", EXP_NEW, P, _ago(1), f"n-{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": DAYS}))
    reviewed = _make_plan(worker(db_url, policies), tmp_path / "plan.json")
    assert (reviewed.targets[EXPS]["expired_objects"], reviewed.targets[EXPS]["rows"]) == (1, 2)

    with engine.begin() as conn:  # X goes, Y comes
        conn.exec_driver_sql(f"DELETE FROM events WHERE object_id = '{EXP_X}'")
        conn.exec_driver_sql(f"DELETE FROM objects WHERE object_id = '{EXP_X}'")
    y = Scenario()
    y.add_object("experiment", EXP_Y, P, _ago(90))
    for i in range(2):
        y.add_event("experiment", EXP_Y, P, _ago(89), f"y-{i}")
    insert(engine, y)

    with pytest.raises(GuardError) as caught:
        engine_module.purge(worker(db_url, policies, **_at(LATER)), plan_file=reviewed)
    assert caught.value.exit_code is ExitCode.GUARD
    assert ("experiment", str(EXP_Y)) in registry(engine)
    assert {"y-0", "y-1"} <= surviving_rows(engine)


# -- the plan's now and the database's clock ---------------------------------------------------


def test_plan_now_ahead_of_the_database_clock_is_refused(pg_url: str, tmp_path: Path) -> None:
    """Every other path takes the earlier of the host's and the database's clocks when they
    disagree by more than RETENTION_MAX_CLOCK_SKEW, so a host clock set ahead never deletes
    data early; ``purge --plan`` once checked the plan's now only against the host clock. A
    plan pinned 60 days after the database's clock, applied from a host whose clock is
    equally ahead, is refused (exit 6), nothing deleted."""
    engine = engine_for(pg_url)
    with engine.connect() as conn:
        db_clock = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one().astimezone(UTC)
    ahead = (db_clock + timedelta(days=60)).replace(microsecond=0)
    s = Scenario()
    s.add_object("project_logs", P, P, _ago(400, ahead))
    for i in range(10):  # 10 days old by the database's clock: kept by a 30-day policy
        s.add_event("project_logs", P, P, _ago(10, db_clock), f"recent-{i}")
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": DAYS}))
    # the plan made where both clocks agreed on the later time (or resealed by hand)
    reviewed = _make_plan(
        worker(pg_url, policies, max_clock_skew="36500d", **_at(ahead)), tmp_path / "plan.json"
    )
    assert reviewed.now == ahead
    assert reviewed.targets[LOGS]["rows"] == 10
    # applied from a host whose clock is ahead of the database's by 60 days
    skewed = worker(pg_url, policies, now=None, clock=lambda: ahead, max_clock_skew="5m")
    before = surviving_rows(engine)

    with pytest.raises(GuardError) as caught:
        engine_module.purge(skewed, plan_file=reviewed)
    assert caught.value.exit_code is ExitCode.GUARD
    assert surviving_rows(engine) == before


# -- the policy-shrink guard -------------------------------------------------------------------


def _succeeded_at_365_days(db_url: str, tmp_path: Path) -> tuple[sa.Engine, Path]:
    """P's logs: 2 rows 100 days old, 20 a day old; run 1 succeeds at 365 days."""
    s = Scenario()
    s.add_object("project_logs", P, P, _ago(400))
    for i in range(2):
        s.add_event("project_logs", P, P, _ago(100), f"old-{i}")
    for i in range(20):
        s.add_event("project_logs", P, P, _ago(1), f"new-{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    folder = tmp_path / "p"
    write_policies(folder, policy_toml(defaults={"project_logs": 365}))
    first = engine_module.purge(worker(db_url, folder), allow_large_deletes=True)
    assert first.status is RunStatus.SUCCEEDED
    return engine, folder


def test_policy_shrink_guard_survives_a_successful_run_in_which_the_target_was_held(
    db_url: str, tmp_path: Path
) -> None:
    """Run 1 succeeds with P's logs at 365 days. Run 2 succeeds while P is under a hold
    (the target has no retention in that run). The hold is lifted and the policy is cut
    to 30 days (92% shorter, limit 50%). The shrink guard looks back past run 2 (it once
    compared only with the very last success, and run 3 deleted unguarded): run 3 is
    guarded (exit 6) for P's logs and its 2 rows 100 days old survive."""
    engine, folder = _succeeded_at_365_days(db_url, tmp_path)

    held = policy_toml(
        defaults={"project_logs": 365}, holds=[{"project": str(P), "reason": "audit"}]
    )
    write_policies(folder, held)
    second = engine_module.purge(worker(db_url, folder))
    assert second.status is RunStatus.SUCCEEDED

    write_policies(folder, policy_toml(defaults={"project_logs": DAYS}))
    third = engine_module.purge(worker(db_url, folder))

    assert third.status is RunStatus.GUARDED
    assert (
        "policy shortened from 365 to 30 days"
        in {o.target.key: o.guard for o in third.outcomes}[LOGS]
    )
    assert {"old-0", "old-1"} <= surviving_rows(engine)


def test_policy_shrink_guard_survives_a_successful_run_without_policies(
    db_url: str, tmp_path: Path
) -> None:
    """Run 1 succeeds with P's logs at 365 days. Run 2 runs with an empty policy folder
    (a mount that came up empty): no targets, nothing deleted, status succeeded. The
    policies come back cut to 30 days: run 3 is guarded by the shrink guard and P's 2 rows
    100 days old survive."""
    engine, folder = _succeeded_at_365_days(db_url, tmp_path)
    write_policies(folder, "")
    assert engine_module.purge(worker(db_url, folder)).status is RunStatus.SUCCEEDED

    write_policies(folder, policy_toml(defaults={"project_logs": DAYS}))
    third = engine_module.purge(worker(db_url, folder))

    assert third.status is RunStatus.GUARDED
    assert {"old-0", "old-1"} <= surviving_rows(engine)
