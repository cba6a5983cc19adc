"""Review of how targets and cutoffs are decided (policy, orphans, guards, plan files).

Each test states the DESIGN rule it checks. A failing test here is a bug in the worker.
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention import planfile, report
from retention.controlplane import ClientConfig, TokenSource
from retention.errors import ControlPlaneError, RetentionError
from retention.sources import ControlPlaneSource
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project, retention_automation
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

LIVE = UUID("c1000000-0000-4000-8000-000000000001")
GONE = UUID("c2000000-0000-4000-8000-000000000002")
EXP_A = UUID("e2000000-0000-4000-8000-00000000000a")
EXP_B = UUID("e2000000-0000-4000-8000-00000000000b")
EXP_C = UUID("e2000000-0000-4000-8000-00000000000c")


def _ago(days: float) -> timedelta:
    return timedelta(days=days)


# -- orphans: a project the control plane deleted is never planned -------------------------


def test_deleted_project_with_only_segments_is_orphaned_not_planned(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path, file_store: FileStore
) -> None:
    """DESIGN §2: projects the control plane lists as deleted are orphaned: "no policy of any
    source deletes their data". GONE has no events and no registry entry left, only segment
    files; a local per-project rule names it. dataplane.project_ids() ignores the segments
    table, so GONE is never split off as an orphan, and the local rule marks its files."""
    s = Scenario()
    s.add_object("project_logs", LIVE, LIVE, NOW - _ago(400))
    s.add_event("project_logs", LIVE, LIVE, NOW - _ago(1), "live-new")
    seg = s.add_segment("project_logs", GONE, GONE, NOW - _ago(100), NOW - _ago(90))
    insert(engine_for(db_url), s)
    fake_cp.projects = [project(LIVE, "live"), project(GONE, "gone", deleted=True)]
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(GONE, {"project_logs": 30})]))
    w = worker(
        db_url,
        policies,
        api_url=fake_cp.url,
        service_token_file=token_file,
        grace_period="0",
        **file_store.settings(),
    )
    file_store.write(seg["object_key"])
    dry = engine_module.plan(w)
    keys = {t.key for t in dry.plan.targets}
    orphans = {o.project_id: o.reason for o in dry.plan.orphans}
    engine_module.purge(w, allow_large_deletes=True)
    state = segment_states(engine_for(db_url)).get(str(seg["segment_id"]), ("gone", False))[0]
    assert file_store.exists(seg["object_key"]), "a deleted project's segment file was deleted"
    assert f"{GONE}/project_logs" not in keys, "a deleted project's data was planned"
    assert orphans.get(GONE) == "deleted"
    assert state == "live", "a deleted project's segment was marked/swept by a local rule"


# -- plan files: never a pinned now in the future ------------------------------------------


def test_plan_file_with_a_future_now_is_refused(db_url: str, tmp_path: Path) -> None:
    """DESIGN §5/§4: the pinned now is never in the future (Worker.pinned_now refuses it);
    `purge --plan` uses the plan's now. check_age only refuses plans that are too *old*
    (a negative age passes) and nothing checks the plan's now against the clock, so a plan
    file whose now is ahead (a skewed host; the hash is only a content hash) deletes data
    newer than now - retention_days."""
    s = Scenario()
    s.add_object("project_logs", LIVE, LIVE, NOW - _ago(400))
    s.add_event("project_logs", LIVE, LIVE, NOW - _ago(60), "old")
    s.add_event("project_logs", LIVE, LIVE, NOW - _ago(20), "young")  # 20 days old at NOW
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    ahead = NOW + timedelta(days=15)
    planner = worker(db_url, policies, now=None, clock=lambda: ahead, max_clock_skew="36500d")
    document = planfile.seal(
        report.report_document(engine_module.plan(planner, now=ahead, identify=True))
    )
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    reviewed = planfile.read(path)
    applier = worker(db_url, policies)  # clock and now = NOW
    with contextlib.suppress(RetentionError):  # refused: the fix
        engine_module.purge(applier, plan_file=reviewed)
    assert "young" in surviving_rows(engine), "a row 20 days old was deleted under a 30-day policy"


# -- guards: the fraction guard must see the data that goes ---------------------------------


def test_fraction_guard_sees_experiments_without_event_rows(db_url: str, tmp_path: Path) -> None:
    """DESIGN §5: a target whose deletion exceeds RETENTION_MAX_DELETE_FRACTION of its rows
    is not deleted (exit 6). The experiment target's "rows" are counted only in `events`;
    experiments whose rows live in segments (row_count 10 each) count 0 of 0, so the guard
    passes and 2 of 3 experiments lose their registry entries (irreversibly) in a normal,
    non-first run without --allow-large-deletes."""
    s = Scenario()
    s.add_object("project_logs", LIVE, LIVE, NOW - _ago(400))
    s.add_event("project_logs", LIVE, LIVE, NOW - _ago(1), "live-new")
    for exp, age in ((EXP_A, 100), (EXP_B, 90), (EXP_C, 5)):
        s.add_object("experiment", exp, LIVE, NOW - _ago(age))
        s.add_segment("experiment", exp, LIVE, NOW - _ago(age), NOW - _ago(age - 1))
    engine = engine_for(db_url)
    insert(engine, s)
    policies = tmp_path / "p"
    write_policies(policies, policy_toml(defaults={"project_logs": 30}))
    first = engine_module.purge(worker(db_url, policies), allow_large_deletes=True)
    assert first.status is not None and first.status.value == "succeeded"
    write_policies(policies, policy_toml(defaults={"project_logs": 30, "experiment": 30}))
    second = engine_module.purge(worker(db_url, policies))  # guards on
    guards = {o.target.key: o.guard for o in second.outcomes}
    left = {object_id for kind, object_id in registry(engine) if kind == "experiment"}
    assert left == {str(EXP_A), str(EXP_B), str(EXP_C)}, "2 of 3 experiments went unguarded"
    assert guards.get(f"{LIVE}/experiment")


# -- control plane: a duplicate id is a failure, also in another spelling --------------------


def test_duplicate_project_id_in_another_case_is_refused(
    fake_cp: FakeControlPlane, token_file: Path
) -> None:
    """DESIGN §6: a duplicate id is a failure (exit 3). The client compares raw id strings,
    so the same project listed as deleted and, upper-cased, as live is accepted; the planner
    then treats it as live (known) instead of orphaned."""
    fake_cp.projects = [
        project(GONE, "gone", deleted=True),
        {**project(GONE, "gone"), "id": str(GONE).upper()},
    ]
    fake_cp.automations = [retention_automation(GONE, "project_logs", 1)]
    source = ControlPlaneSource(
        config=ClientConfig(base_url=fake_cp.url, page_size=1),
        token=TokenSource(file=token_file),
        sleep=lambda _: None,
    )
    with pytest.raises(ControlPlaneError):
        source.load()
