"""A resumed run goes on with the approval of its first attempt.

The first purge on a database needs a review: ``--allow-large-deletes`` or a reviewed
plan. When that first run stops (its time budget, a signal, a kill), the next scheduled run
resumes it without either. It used to stop at the first-run guard (exit 6, not retried by
the CronJob): the nightly job was stuck until someone repeated the override. Now the run
keeps its approval: a reviewed plan is applied again (with its bounds, drift checks and
age limit), ``--allow-large-deletes`` covers the same targets at the same cutoffs. A
policy changed since asks for a review again (``test_resume_approval_limits.py``: more).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from retention import engine as engine_module
from retention import planfile, report
from retention.engine import Worker
from retention.guards import FIRST_RUN
from retention.models import RunStatus
from retention.planfile import PlanFile
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, surviving_rows

P = UUID("c7000000-0000-4000-8000-000000000001")
Q = UUID("c7000000-0000-4000-8000-000000000002")


def _world(url: str) -> Scenario:
    """P's and Q's logs: 30 rows each 40 days old, 5 each 10 days old."""
    s = Scenario()
    for project in (P, Q):
        s.add_object("project_logs", project, project, NOW - timedelta(days=400))
        for i in range(30):
            s.add_event(
                "project_logs",
                project,
                project,
                NOW - timedelta(days=40, minutes=i),
                f"{project}-old-{i}",
            )
        for i in range(5):
            s.add_event(
                "project_logs",
                project,
                project,
                NOW - timedelta(days=10, minutes=i),
                f"{project}-new-{i}",
            )
    insert(engine_for(url), s)
    return s


def _fresh(scenario: Scenario) -> set[str]:
    return {e["id"] for e in scenario.events if "-new-" in e["id"]}


def _plan(w: Worker, path: Path) -> PlanFile:
    sealed = planfile.seal(report.report_document(engine_module.plan(w, identify=True)))
    path.write_text(json.dumps(sealed), encoding="utf-8")
    return planfile.read(path)


def test_a_stopped_first_run_is_finished_by_the_next_plain_run(db_url: str, tmp_path: Path) -> None:
    scenario = _world(db_url)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    plain = engine_module.purge(worker(db_url, policies))
    assert plain.status is RunStatus.GUARDED  # the first run needs a review
    assert {o.guard for o in plain.outcomes} == {FIRST_RUN}

    first = purge(worker(db_url, policies, batch_size=5, should_stop=StopAfter(3)))
    assert first.status is RunStatus.PARTIAL

    later = engine_module.purge(worker(db_url, policies, batch_size=5))
    assert later.status is RunStatus.SUCCEEDED, [o.guard for o in later.outcomes]
    assert later.run_id == first.run_id
    assert surviving_rows(engine_for(db_url)) == _fresh(scenario)


def test_a_changed_policy_asks_for_a_review_again(db_url: str, tmp_path: Path) -> None:
    """The approval covers each target at the cutoff it was given for: P's shorter policy
    since is guarded (the first run's guard); Q, unchanged, goes on."""
    scenario = _world(db_url)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    first = purge(worker(db_url, policies, batch_size=5, should_stop=StopAfter(2)))
    assert first.status is RunStatus.PARTIAL
    write_policies(
        policies,
        policy_toml(
            defaults={"project_logs": 30},
            projects=[(P, {"project_logs": 5})],
        ),
    )
    later = engine_module.purge(worker(db_url, policies, batch_size=5))
    guarded = {str(o.target.project_id): o.guard for o in later.outcomes}
    assert guarded == {str(P): FIRST_RUN, str(Q): ""}
    left = surviving_rows(engine_for(db_url))
    assert {e["id"] for e in scenario.events if e["project_id"] == Q} & left == {
        f"{Q}-new-{i}" for i in range(5)
    }


def test_a_stopped_reviewed_plan_is_finished_within_its_review(db_url: str, tmp_path: Path) -> None:
    """Applied from a reviewed plan and stopped: the next plain run finishes it, and a row
    written after the review (backdated) stays, as it would have under the plan."""
    scenario = _world(db_url)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    reviewed = _plan(worker(db_url, policies, batch_size=5), tmp_path / "plan.json")
    late = Scenario()
    late.add_event("project_logs", Q, Q, NOW - timedelta(days=50), "late")
    insert(engine_for(db_url), late)

    first = engine_module.purge(
        worker(db_url, policies, batch_size=5, should_stop=StopAfter(3)), plan_file=reviewed
    )
    assert first.status is RunStatus.PARTIAL
    later = engine_module.purge(worker(db_url, policies, batch_size=5))
    assert later.status is RunStatus.SUCCEEDED, [o.guard for o in later.outcomes]
    assert surviving_rows(engine_for(db_url)) == _fresh(scenario) | {"late"}


def test_a_stopped_plan_with_orphans_is_finished_with_them(
    db_url: str, tmp_path: Path, fake_cp: Any, token_file: Path
) -> None:
    """A plan made with --purge-orphans, applied and stopped: the plain resume applies it
    again with its orphans (without them it would drift and refuse)."""
    from tests.fakecp import project

    scenario = _world(db_url)
    fake_cp.projects = [project(P, "p")]  # Q is unknown: an orphan
    cp = {"api_url": fake_cp.url, "service_token_file": token_file}
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    plan_worker = worker(db_url, policies, batch_size=5, **cp)
    sealed = planfile.seal(
        report.report_document(engine_module.plan(plan_worker, identify=True, purge_orphans=True))
    )
    (tmp_path / "plan.json").write_text(json.dumps(sealed), encoding="utf-8")
    reviewed = planfile.read(tmp_path / "plan.json")
    assert reviewed.orphans

    first = engine_module.purge(
        worker(db_url, policies, batch_size=5, should_stop=StopAfter(3), **cp),
        plan_file=reviewed,
    )
    assert first.status is RunStatus.PARTIAL
    later = engine_module.purge(worker(db_url, policies, batch_size=5, **cp))
    assert later.status is RunStatus.SUCCEEDED, [o.guard for o in later.outcomes]
    # P by its policy; Q, the orphan, whole (past the safety floor of 1 day)
    assert surviving_rows(engine_for(db_url)) == {
        e["id"] for e in scenario.events if e["project_id"] == P and "-new-" in e["id"]
    }
