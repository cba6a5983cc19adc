"""What a resumed run's inherited approval does not cover (a review of the sixth session;
the tests without "passes:" failed before their fixes).

A run approved by a reviewed plan resumes by applying that plan again: anything the review
did not see (a hold lifted, an experiment registered, a segment written since) refuses on
drift (exit 6) and deletes nothing, as applying the plan by hand would. A run approved by
``--allow-large-deletes`` keeps it only for targets at the same cutoff that still keep the
objects they kept. Policy files gone before the first batch stop the run.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention import planfile, report
from retention.engine import Worker
from retention.errors import GuardError, PolicyError
from retention.models import RunStatus
from retention.planfile import PlanFile
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, worker, write_policies
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml, segment_states, surviving_rows

P = UUID("e6000000-0000-4000-8000-000000000001")
D1 = UUID("e6d10000-0000-4000-8000-000000000001")
D2 = UUID("e6d20000-0000-4000-8000-000000000002")
E1 = UUID("e6e10000-0000-4000-8000-000000000001")
E2 = UUID("e6e20000-0000-4000-8000-000000000002")
E3 = UUID("e6e30000-0000-4000-8000-000000000003")


def _plan(w: Worker, path: Path) -> PlanFile:
    sealed = planfile.seal(report.report_document(engine_module.plan(w, identify=True)))
    path.write_text(json.dumps(sealed), encoding="utf-8")
    return planfile.read(path)


def test_a_hold_lifted_after_a_reviewed_plan_does_not_let_a_plain_resume_delete_it(
    db_url: str, tmp_path: Path
) -> None:
    """The reviewed plan kept D1 (held). It is applied and stopped; the hold is lifted; the
    next plain run (no plan, no override) resumes with the plan's approval. The review never
    covered D1's rows: a plain run on a first-run database may not delete them."""
    s = Scenario()
    s.add_object("dataset", D1, P, NOW - timedelta(days=400))
    s.add_object("dataset", D2, P, NOW - timedelta(days=400))
    for i in range(40):
        object_id = D1 if i % 2 == 0 else D2
        s.add_event("dataset", object_id, P, NOW - timedelta(days=90 - i), f"old{i}")
    for i in range(5):
        s.add_event("dataset", D1, P, NOW - timedelta(days=i), f"new{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"dataset": 30})]))
    hold = {"project": str(P), "object_type": "dataset", "object_id": str(D1), "reason": "x"}
    write_policies(policies, policy_toml(holds=[hold]), name="hold.toml")
    reviewed = _plan(worker(db_url, policies, batch_size=5), tmp_path / "plan.json")

    first = engine_module.purge(
        worker(db_url, policies, batch_size=5, should_stop=StopAfter(1)), plan_file=reviewed
    )
    assert first.status is RunStatus.PARTIAL
    (policies / "hold.toml").unlink()
    before = surviving_rows(engine)
    # the resume applies the recorded plan again, which refuses on drift (exit 6), as
    # applying it by hand would
    with pytest.raises(GuardError, match="drifted"):
        engine_module.purge(worker(db_url, policies, batch_size=5))

    d1_rows = {e["id"] for e in s.events if e["object_id"] == D1}
    assert d1_rows <= surviving_rows(engine) == before


def test_an_experiment_registered_after_the_review_is_not_deleted_by_a_plain_resume(
    db_url: str, tmp_path: Path
) -> None:
    """E3's rows were there at the review; its registry entry (backdated) comes after the
    plan's first attempt stopped. The plan names E1 and E2 only (applying it again would
    refuse on drift). Resumed by a plain run, the inherited approval must keep to the review."""
    s = Scenario()
    for experiment in (E1, E2):
        s.add_object("experiment", experiment, P, NOW - timedelta(days=100))
    for experiment in (E1, E2, E3):
        for i in range(10):
            s.add_event("experiment", experiment, P, NOW - timedelta(days=100), f"{experiment}-{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"experiment": 30})]))
    reviewed = _plan(worker(db_url, policies, batch_size=5), tmp_path / "plan.json")

    first = engine_module.purge(
        worker(db_url, policies, batch_size=5, should_stop=StopAfter(1)), plan_file=reviewed
    )
    assert first.status is RunStatus.PARTIAL
    late = Scenario()
    late.add_object("experiment", E3, P, NOW - timedelta(days=100))
    insert(engine, late)
    before = surviving_rows(engine)
    with pytest.raises(GuardError, match="did not review"):
        engine_module.purge(worker(db_url, policies, batch_size=5))

    e3_rows = {e["id"] for e in s.events if e["object_id"] == E3}
    assert e3_rows <= surviving_rows(engine) == before


def test_a_segment_written_after_the_review_is_not_marked_by_a_plain_resume(
    db_url: str, tmp_path: Path
) -> None:
    """A segment indexed after the plan's first attempt stopped (expired by the same cutoff)
    is not the plan's: applying the plan again leaves it live (or refuses). Resumed plainly
    with the plan's approval, it must stay live too."""
    store = FileStore(tmp_path / "store")
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(20):
        s.add_event("project_logs", P, P, NOW - timedelta(days=60, minutes=i), f"old{i}")
    s.add_event("project_logs", P, P, NOW - timedelta(days=1), "new")
    seg = s.add_segment(
        "project_logs", P, P, NOW - timedelta(days=80), NOW - timedelta(days=70), key="a.seg"
    )
    store.write(seg["object_key"])
    live = s.add_segment(
        "project_logs", P, P, NOW - timedelta(days=2), NOW - timedelta(days=1), key="live.seg"
    )
    store.write(live["object_key"])
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"project_logs": 30})]))
    settings = {**store.settings(), "grace_period": "7d"}
    reviewed = _plan(worker(db_url, policies, batch_size=5, **settings), tmp_path / "plan.json")
    late = Scenario()
    late_seg = late.add_segment(
        "project_logs",
        P,
        P,
        NOW - timedelta(days=80),
        NOW - timedelta(days=75),
        key="late.seg",
        segment_id=UUID("e6500000-0000-4000-8000-000000000099"),
    )
    store.write(late_seg["object_key"])

    first = engine_module.purge(
        worker(db_url, policies, batch_size=5, should_stop=StopAfter(1), **settings),
        plan_file=reviewed,
    )
    assert first.status is RunStatus.PARTIAL
    insert(engine, late)
    before = surviving_rows(engine)
    with pytest.raises(GuardError, match="did not review"):
        engine_module.purge(worker(db_url, policies, batch_size=5, **settings))

    assert surviving_rows(engine) == before
    assert segment_states(engine)[str(late_seg["segment_id"])] == ("live", False)


def test_a_hold_lifted_after_an_approved_first_attempt_asks_for_a_review_again(
    db_url: str, tmp_path: Path
) -> None:
    """The same with --allow-large-deletes: the operator approved what the first attempt's
    plan deleted, which kept D1 (held). The hold is lifted before the nightly plain run
    resumes: D1's rows were never approved on this first-run database; the approval should
    cover a target only while it deletes no more than it did (held objects still held),
    as a changed cutoff does."""
    s = Scenario()
    s.add_object("dataset", D1, P, NOW - timedelta(days=400))
    s.add_object("dataset", D2, P, NOW - timedelta(days=400))
    for i in range(40):
        object_id = D1 if i % 2 == 0 else D2
        s.add_event("dataset", object_id, P, NOW - timedelta(days=90 - i), f"old{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"dataset": 30})]))
    hold = {"project": str(P), "object_type": "dataset", "object_id": str(D1), "reason": "x"}
    write_policies(policies, policy_toml(holds=[hold]), name="hold.toml")

    first = engine_module.purge(
        worker(db_url, policies, batch_size=5, should_stop=StopAfter(1)),
        allow_large_deletes=True,
    )
    assert first.status is RunStatus.PARTIAL
    (policies / "hold.toml").unlink()
    before = surviving_rows(engine)
    later = engine_module.purge(worker(db_url, policies, batch_size=5))

    # the target deletes more than was approved: guarded whole, as guards are per target
    assert later.status is RunStatus.GUARDED
    d1_rows = {e["id"] for e in s.events if e["object_id"] == D1}
    assert d1_rows <= surviving_rows(engine) == before


def test_a_run_resumed_after_the_resume_max_age_asks_for_a_review_again(
    db_url: str, tmp_path: Path
) -> None:
    """passes: past RETENTION_RESUME_MAX_AGE the run is abandoned, and its approval with it:
    the next plain run is a new first run and is guarded."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(20):
        s.add_event("project_logs", P, P, NOW - timedelta(days=60, minutes=i), f"old{i}")
    s.add_event("project_logs", P, P, NOW - timedelta(days=1), "new")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"project_logs": 30})]))
    first = engine_module.purge(
        worker(db_url, policies, batch_size=5, should_stop=StopAfter(1)),
        allow_large_deletes=True,
    )
    assert first.status is RunStatus.PARTIAL
    left = surviving_rows(engine)
    later = NOW + timedelta(hours=25)
    second = engine_module.purge(
        worker(db_url, policies, batch_size=5, now=None, clock=lambda: later)
    )
    assert not second.resumed
    assert second.status is RunStatus.GUARDED
    assert surviving_rows(engine) == left


def test_policy_files_gone_before_the_first_batch_stop_the_run(db_url: str, tmp_path: Path) -> None:
    """The folder's files vanish after the plan and before the first batch (an unmounted
    volume during a long plan). The hold watcher's first read sees an empty folder and takes
    it as 'no holds': the run goes on deleting. It must stop as it does when they vanish
    between two batches (PolicyError, exit 2), nothing deleted."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(20):
        s.add_event("project_logs", P, P, NOW - timedelta(days=60, minutes=i), f"old{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"project_logs": 30})]))

    def unmount(_plan: object) -> bool:
        for file in policies.glob("*.toml"):
            file.unlink()
        return True

    with pytest.raises(PolicyError):
        engine_module.purge(
            worker(db_url, policies, batch_size=5), allow_large_deletes=True, confirm=unmount
        )
    assert surviving_rows(engine) == {e["id"] for e in s.events}
