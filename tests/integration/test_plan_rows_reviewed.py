"""A reviewed plan deletes only rows that were there when it was reviewed.

The plan file records the newest row (``newest_row``: the largest ``sequence_id`` of
``events`` in the dry run's snapshot). Applying it deletes expired rows up to that row and
no later one, on every path: keyset and grouped batches, the block sweep, whole partitions
and experiments. Rows written after the review, backdated or not, are the next run's; they
neither make the plan drift nor go with it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention import planfile, report
from retention.blocksweep import SweepSet, SweepTarget
from retention.engine import Worker
from retention.errors import ExitCode, GuardError
from retention.models import ObjectType, Plan, RunReport, RunStatus
from retention.planfile import PlanFile
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import (
    NOW,
    Scenario,
    insert,
    partition_events,
    policy_toml,
    registry,
    surviving_rows,
)

P = UUID("c2000000-0000-4000-8000-000000000002")
EXP = UUID("e8000000-0000-4000-8000-000000000001")  # reviewed, expired
DAYS = 30
LATER = NOW + timedelta(hours=2)
EXPIRED, FRESH = 40, 10


def _ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def _make_plan(w: Worker, path: Path) -> PlanFile:
    sealed = planfile.seal(report.report_document(engine_module.plan(w, identify=True)))
    path.write_text(json.dumps(sealed, indent=2), encoding="utf-8")
    return planfile.read(path)


def _world() -> tuple[Scenario, set[str]]:
    """P's logs: EXPIRED rows past the 30-day cutoff, FRESH within it; an expired experiment
    with 3 rows. Returns the ids a plan keeps."""
    s = Scenario()
    s.add_object("project_logs", P, P, _ago(400))
    for i in range(EXPIRED):
        s.add_event("project_logs", P, P, _ago(40 + i), f"old-{i}")
    kept = {s.add_event("project_logs", P, P, _ago(1), f"new-{i}") for i in range(FRESH)}
    s.add_object("experiment", EXP, P, _ago(60))
    for i in range(3):
        s.add_event("experiment", EXP, P, _ago(59), f"exp-{i}")
    return s, kept


def _late() -> Scenario:
    """Written after the review: backdated logs rows (an import) and a row of the reviewed
    experiment; by the policy all of them have expired."""
    late = Scenario()
    for i in range(3):
        late.add_event("project_logs", P, P, _ago(50 + i), f"late-{i}")
    late.add_event("experiment", EXP, P, _ago(58), "late-exp")
    return late


STRATEGIES: dict[str, dict[str, Any]] = {
    "keyset": {"delete_strategy": "keyset"},
    "auto": {},  # small: grouped batches on PostgreSQL
    "blocks": {"delete_strategy": "blocks"},
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_rows_written_after_the_review_stay(db_url: str, tmp_path: Path, strategy: str) -> None:
    if db_url.startswith("sqlite") and strategy == "blocks":
        pytest.skip("the block sweep is PostgreSQL's")
    scenario, kept = _world()
    engine = engine_for(db_url)
    insert(engine, scenario)
    policies = write_policies(
        tmp_path / "p", policy_toml(defaults={"project_logs": DAYS, "experiment": DAYS})
    )
    settings = {"batch_size": 7, **STRATEGIES[strategy]}
    reviewed = _make_plan(worker(db_url, policies, **settings), tmp_path / "plan.json")
    assert isinstance(reviewed.document["newest_row"], int)
    assert reviewed.targets[f"{P}/project_logs"]["rows"] == EXPIRED

    insert(engine, _late())

    done = engine_module.purge(
        worker(db_url, policies, now=LATER, clock=lambda: LATER, **settings),
        plan_file=reviewed,
    )

    assert done.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept | {"late-0", "late-1", "late-2", "late-exp"}
    deleted = {o.target.key: o.rows for o in done.outcomes}
    assert deleted == {f"{P}/project_logs": EXPIRED, f"{P}/experiment": 3}
    # the experiment keeps its registry entry while a row of it is left
    assert ("experiment", str(EXP)) in registry(engine)

    # the next run, with no plan, is the one that deletes them
    after = purge(worker(db_url, policies, now=LATER, clock=lambda: LATER, **settings))
    assert after.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept
    assert ("experiment", str(EXP)) not in registry(engine)


def test_a_partition_with_a_row_written_after_the_review_stays(pg_url: str, tmp_path: Path) -> None:
    """events partitioned by month: the months that held only expired rows at the review
    would go whole; one that got a backdated row since keeps it (and is not dropped)."""
    engine = engine_for(pg_url)
    partition_events(engine, 8)
    scenario, kept = _world()
    insert(engine, scenario)
    policies = write_policies(
        tmp_path / "p", policy_toml(defaults={"project_logs": DAYS, "experiment": DAYS})
    )
    reviewed = _make_plan(worker(pg_url, policies), tmp_path / "plan.json")
    insert(engine, _late())

    done = engine_module.purge(
        worker(pg_url, policies, now=LATER, clock=lambda: LATER, delete_strategy="blocks"),
        plan_file=reviewed,
    )

    assert done.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept | {"late-0", "late-1", "late-2", "late-exp"}


def test_a_plan_without_newest_row_is_refused(db_url: str, tmp_path: Path) -> None:
    """A version-2 plan names its newest row; one without it (made by hand, or resealed)
    is malformed: refused (exit 6) before anything is read."""
    scenario, _ = _world()
    insert(engine_for(db_url), scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": DAYS}))
    plan: Plan = engine_module.plan(worker(db_url, policies), identify=True).plan
    document = report.report_document(RunReport(plan=plan, dry_run=True, warnings=()))
    document.pop("newest_row")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(planfile.seal(document)), encoding="utf-8")
    with pytest.raises(GuardError) as caught:
        planfile.read(path)
    assert caught.value.exit_code is ExitCode.GUARD


def test_the_bound_travels_with_the_sweep_to_other_workers() -> None:
    """Workers that join a block sweep read its targets from the run's queue (JSON): the
    reviewed newest row goes with them, and a changed bound changes the signature (a
    resumed sweep starts over rather than deleting by another bound)."""
    target = SweepTarget(
        key=f"{P}/project_logs",
        project_id=P,
        object_type=ObjectType.PROJECT_LOGS,
        cutoff=NOW,
        retention_days=30.0,
        policy_source="test",
    )
    bounded = SweepSet(targets=(target,), newest_row=41)
    assert SweepSet.from_json(bounded.to_json()) == bounded
    assert bounded.with_holds((), NOW).newest_row == 41
    unbounded = SweepSet(targets=(target,))
    assert SweepSet.from_json(unbounded.to_json()).newest_row is None
    assert bounded.signature != unbounded.signature
