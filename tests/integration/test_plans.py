"""Reviewed plan files (DESIGN §5, issue 6), on both backends.

A dry run is sealed into a plan file; ``purge(plan_file=...)`` applies exactly that plan: the
plan's pinned ``now`` and cutoffs (never a later one), only its targets, with the guards'
review requirement satisfied by the plan itself. Anything that would delete more than was
reviewed (an edited file, an old plan, drifted policies or data) is refused with exit 6 and
nothing deleted; fewer rows than planned is fine and reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import engine as engine_module
from retention import planfile, report, state
from retention.engine import Worker
from retention.errors import ExitCode, GuardError, UsageError
from retention.models import RunStatus
from retention.planfile import PlanFile
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project
from tests.integration.helpers import StopAfter, worker, write_policies
from tests.support import NOW, Expect, Scenario, insert, policy_toml, registry, surviving_rows

P1 = UUID("b1000000-0000-4000-8000-000000000001")
P2 = UUID("b2000000-0000-4000-8000-000000000002")
P3 = UUID("b3000000-0000-4000-8000-000000000003")
EXP_OLD = UUID("e1000000-0000-4000-8000-00000000000a")
EXP_NEW = UUID("e1000000-0000-4000-8000-00000000000b")
EXP_EDGE = UUID("e1000000-0000-4000-8000-00000000000c")
DS1 = UUID("d1000000-0000-4000-8000-0000000000d1")
DS2 = UUID("d2000000-0000-4000-8000-0000000000d2")

DAYS = 30
LATER = NOW + timedelta(hours=6)  # the plan is applied six hours after it was made

# logs and experiments: 30 days everywhere; datasets: 30 days for P1 only (none for P2)
POLICY = policy_toml(
    defaults={"project_logs": DAYS, "experiment": DAYS},
    projects=[(P1, {"dataset": DAYS})],
)
DEFAULT_DAYS: dict[tuple[UUID, str], float] = {
    (P1, "project_logs"): DAYS,
    (P1, "experiment"): DAYS,
    (P1, "dataset"): DAYS,
    (P2, "project_logs"): DAYS,
    (P2, "experiment"): DAYS,
}
TARGETS = {f"{p}/{t}" for p, t in DEFAULT_DAYS}

LOGS1, EXP1, DSET1 = f"{P1}/project_logs", f"{P1}/experiment", f"{P1}/dataset"
LOGS2, EXP2 = f"{P2}/project_logs", f"{P2}/experiment"


def _ago(days: float, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def _scenario() -> Scenario:
    """P1: logs 5 of 8 expired (and one row that expires only at LATER), an expired
    experiment (2 rows), a new one (3 rows) and one that expires only at LATER (1 row),
    a dataset 2 of 3 expired. P2: logs 1 of 4 expired (one row half a day old), a dataset
    without a policy (2 rows)."""
    s = Scenario()
    for p in (P1, P2):
        s.add_object("project_logs", p, p, _ago(400))
    for i, age in enumerate((31, 40, 50, 60, 70)):
        s.add_event("project_logs", P1, P1, _ago(age), f"l1-old-{i}")
    for i, age in enumerate((5, 10)):
        s.add_event("project_logs", P1, P1, _ago(age), f"l1-new-{i}")
    # newer than the cutoff at NOW, older than the cutoff at LATER
    s.add_event("project_logs", P1, P1, _ago(DAYS, hours=-2), "l1-edge")
    s.add_object("experiment", EXP_OLD, P1, _ago(60))
    s.add_object("experiment", EXP_NEW, P1, _ago(5))
    s.add_object("experiment", EXP_EDGE, P1, _ago(DAYS, hours=-1))
    for i in range(2):
        s.add_event("experiment", EXP_OLD, P1, _ago(59), f"eo-{i}")
    for i in range(3):
        s.add_event("experiment", EXP_NEW, P1, _ago(4), f"en-{i}")
    s.add_event("experiment", EXP_EDGE, P1, _ago(DAYS, hours=-1), "ee-0")
    s.add_object("dataset", DS1, P1, _ago(400))
    for i, age in enumerate((40, 45, 10)):
        s.add_event("dataset", DS1, P1, _ago(age), f"d1-{i}")
    for i, age in enumerate((35, 20, 3, 0.5)):
        s.add_event("project_logs", P2, P2, _ago(age), f"l2-{i}")
    s.add_object("dataset", DS2, P2, _ago(400))
    for i, age in enumerate((100, 2)):
        s.add_event("dataset", DS2, P2, _ago(age), f"d2-{i}")
    return s


PLANNED_ROWS = {LOGS1: 5, EXP1: 2, DSET1: 2, LOGS2: 1, EXP2: 0}


def _ids(scenario: Scenario) -> set[str]:
    return {e["id"] for e in scenario.events}


def _setup(url: str, tmp_path: Path, policy: str = POLICY) -> tuple[Scenario, sa.Engine, Path]:
    scenario = _scenario()
    engine = engine_for(url)
    insert(engine, scenario)
    return scenario, engine, write_policies(tmp_path / "policies", policy)


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def _sealed(w: Worker, **kwargs: Any) -> dict[str, Any]:
    return planfile.seal(report.report_document(engine_module.plan(w, identify=True, **kwargs)))


def _make_plan(w: Worker, path: Path, **kwargs: Any) -> PlanFile:
    _write(path, _sealed(w, **kwargs))
    return planfile.read(path)


def _runs(url: str) -> list[tuple[str, datetime, str]]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    state.runs.c.status, state.runs.c.pinned_now, state.runs.c.plan_hash
                ).order_by(state.runs.c.id)
            ).all()
    finally:
        engine.dispose()
    return [(r[0], r[1], r[2]) for r in rows]


def _receipts(url: str) -> dict[str, tuple[datetime, int]]:
    """Target key -> (cutoff, rows summed over its delete receipts)."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    state.receipts.c.project_id,
                    state.receipts.c.object_type,
                    state.receipts.c.cutoff,
                    state.receipts.c.rows,
                ).where(state.receipts.c.action == "delete")
            ).all()
    finally:
        engine.dispose()
    found: dict[str, tuple[datetime, int]] = {}
    for project_id, object_type, cutoff, rows_deleted in rows:
        key = f"{project_id}/{object_type}"
        previous = found.get(key, (cutoff, 0))
        assert previous[0] == cutoff  # one cutoff per target within a run
        found[key] = (cutoff, previous[1] + rows_deleted)
    return found


def _count(url: str, table: str) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    finally:
        engine.dispose()


def _at(when: datetime, **settings: Any) -> dict[str, Any]:
    """Worker arguments for a run at ``when`` (its pinned now and its clock)."""
    return dict(now=when, clock=lambda: when, **settings)


def _refused(
    url: str,
    engine: sa.Engine,
    everything: set[str],
    apply: Callable[[], object],
    *fragments: str,
) -> GuardError:
    """``apply`` raises GuardError (exit 6) naming ``fragments``; nothing was deleted."""
    with pytest.raises(GuardError) as caught:
        apply()
    assert caught.value.exit_code is ExitCode.GUARD
    for fragment in fragments:
        assert fragment in caught.value.message
    assert surviving_rows(engine) == everything
    assert _runs(url) == []
    assert _count(url, "retention_receipts") == 0
    assert _count(url, "retention_checkpoints") == 0
    return caught.value


# -- applied exactly --------------------------------------------------------------------------


def test_plan_applies_exactly_with_its_pinned_now(db_url: str, tmp_path: Path) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    everything, objects = _ids(scenario), registry(engine)
    path = tmp_path / "plan.json"
    reviewed = _make_plan(worker(db_url, policies), path)
    expect = Expect(days=DEFAULT_DAYS, now=NOW)
    later = Expect(days=DEFAULT_DAYS, now=LATER)
    # the two rows near the cutoff tell the plan's now from a later one
    assert expect.survivors(scenario) - later.survivors(scenario) == {"l1-edge", "ee-0"}
    assert reviewed.now == NOW
    assert {k: t["rows"] for k, t in reviewed.targets.items()} == PLANNED_ROWS
    cutoff = (NOW - timedelta(days=DAYS)).isoformat()
    assert {t["cutoff"] for t in reviewed.targets.values()} == {cutoff}
    assert surviving_rows(engine) == everything  # the dry run wrote nothing
    assert _runs(db_url) == []

    # applied six hours later, on a fresh database (a first run), with 5 of 8 rows of P1's
    # logs expiring (over the maximum fraction): the reviewed plan is the review
    done = engine_module.purge(worker(db_url, policies, **_at(LATER)), plan_file=reviewed)

    assert done.status is RunStatus.SUCCEEDED
    assert done.plan.now == NOW
    assert {t.key: t.resolution.cutoff for t in done.plan.targets} == {
        key: NOW - timedelta(days=DAYS) for key in TARGETS
    }
    assert {o.target.key for o in done.outcomes} == set(reviewed.targets) == TARGETS
    assert {o.target.key: o.guard for o in done.outcomes} == dict.fromkeys(TARGETS, "")
    assert {o.target.key: o.rows for o in done.outcomes} == PLANNED_ROWS
    assert {o.target.key: o.objects for o in done.outcomes if o.objects} == {EXP1: 1}
    assert done.warnings == ()
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert {"l1-edge", "ee-0", "d2-0"} <= surviving_rows(engine)
    assert registry(engine) == expect.registry(scenario) == objects - {("experiment", str(EXP_OLD))}
    assert _runs(db_url) == [("succeeded", NOW, reviewed.hash)]
    assert reviewed.hash == json.loads(path.read_text())["hash"]
    assert reviewed.hash.startswith("sha256:")
    old_cutoff = NOW - timedelta(days=DAYS)
    assert _receipts(db_url) == {
        LOGS1: (old_cutoff, 5),
        EXP1: (old_cutoff, 2),
        DSET1: (old_cutoff, 2),
        LOGS2: (old_cutoff, 1),
    }


def test_plan_file_round_trip_keeps_the_document(db_url: str, tmp_path: Path) -> None:
    _, _, policies = _setup(db_url, tmp_path)
    sealed = _sealed(worker(db_url, policies))
    reviewed = planfile.read(_write(tmp_path / "plan.json", sealed))
    assert reviewed.document == sealed
    assert sealed["plan_version"] == planfile.PLAN_VERSION == 2
    assert sealed["dry_run"] is True
    assert sealed["now"] == NOW.isoformat()
    assert sealed["totals"]["rows"] == sum(PLANNED_ROWS.values()) == 10
    assert not reviewed.orphans
    target = reviewed.targets[LOGS1]
    assert target["retention_days"] == DAYS
    assert target["source"].startswith("local-default")
    assert target["source_kind"] == "local-default"
    assert reviewed.targets[DSET1]["source_kind"] == "local-project"
    # sealing twice gives the same hash: the hash covers everything but itself
    assert planfile.seal(sealed)["hash"] == sealed["hash"]


def test_second_plan_after_a_success_is_not_a_first_run_either(db_url: str, tmp_path: Path) -> None:
    """A plan applied after an earlier success: the max-fraction guard still yields."""
    _, engine, policies = _setup(db_url, tmp_path)
    first = engine_module.purge(
        worker(db_url, policies), plan_file=_make_plan(worker(db_url, policies), tmp_path / "a")
    )
    assert first.status is RunStatus.SUCCEEDED
    more = Scenario()
    for i in range(4):  # 4 of 7 P2 log rows expire a day later: over the maximum fraction
        more.add_event("project_logs", P2, P2, _ago(33 + i, hours=24), f"l2-more-{i}")
    insert(engine, more)
    when = NOW + timedelta(days=1)
    unreviewed = engine_module.purge(worker(db_url, policies, **_at(when)))
    assert unreviewed.status is RunStatus.GUARDED
    assert (
        "RETENTION_MAX_DELETE_FRACTION"
        in {o.target.key: o.guard for o in unreviewed.outcomes}[LOGS2]
    )
    reviewed = _make_plan(worker(db_url, policies, **_at(when)), tmp_path / "b")
    done = engine_module.purge(worker(db_url, policies, **_at(when)), plan_file=reviewed)
    assert done.status is RunStatus.SUCCEEDED
    assert reviewed.targets[LOGS2]["rows"] == reviewed.targets[LOGS2]["total_rows"] - 3 == 4
    assert {o.target.key: o.rows for o in done.outcomes}[LOGS2] == 4
    assert not any(i.startswith("l2-more-") for i in surviving_rows(engine))
    assert [r[0] for r in _runs(db_url)] == ["succeeded", "guarded", "succeeded"]
    assert _runs(db_url)[-1][1:] == (when, reviewed.hash)


# -- an edited file ----------------------------------------------------------------------------


def _edit_rows(doc: dict[str, Any]) -> None:
    doc["targets"][0]["rows"] += 1


def _edit_cutoff(doc: dict[str, Any]) -> None:
    target = next(t for t in doc["targets"] if t["cutoff"])
    target["cutoff"] = (NOW - timedelta(days=1)).isoformat()


def _edit_add_target(doc: dict[str, Any]) -> None:
    doc["targets"].append({**doc["targets"][0], "project_id": str(P3)})


def _edit_remove_hash(doc: dict[str, Any]) -> None:
    del doc["hash"]


def _edit_now(doc: dict[str, Any]) -> None:
    doc["now"] = (NOW + timedelta(hours=1)).isoformat()


def _edit_days(doc: dict[str, Any]) -> None:
    doc["targets"][0]["retention_days"] = 1


@pytest.mark.parametrize(
    "edit",
    [_edit_rows, _edit_cutoff, _edit_add_target, _edit_remove_hash, _edit_now, _edit_days],
)
def test_an_edited_plan_is_refused(
    db_url: str, tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    document = _sealed(worker(db_url, policies))
    edit(document)
    path = _write(tmp_path / "plan.json", document)

    with pytest.raises(GuardError) as caught:
        planfile.read(path)

    assert caught.value.exit_code is ExitCode.GUARD
    assert caught.value.message == (
        f"plan file {path} was edited (its hash does not match): refused"
    )
    assert surviving_rows(engine) == _ids(scenario)
    assert _runs(db_url) == []


def test_whitespace_and_key_order_are_not_edits(db_url: str, tmp_path: Path) -> None:
    _, _, policies = _setup(db_url, tmp_path)
    document = _sealed(worker(db_url, policies))
    path = tmp_path / "plan.json"
    reordered = dict(reversed(list(document.items())))
    path.write_text(json.dumps(reordered, separators=(",", ":")), encoding="utf-8")
    assert planfile.read(path).hash == document["hash"]


def test_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{"now": "2026-11-01T03:00:00+00:00", "targets": [', encoding="utf-8")
    with pytest.raises(GuardError) as caught:
        planfile.read(path)
    assert caught.value.exit_code is ExitCode.GUARD
    assert caught.value.message == f"plan file {path} is not JSON: refused"


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([1, 2], "is not a plan"),
        ({"now": NOW.isoformat(), "dry_run": True, "targets": []}, "is not a plan"),
        (
            planfile.seal({"now": NOW.isoformat(), "dry_run": False, "targets": []}),
            "is not the report of a dry run",
        ),
        (
            planfile.seal({"now": "yesterday", "dry_run": True, "targets": []}),
            "is malformed",
        ),
    ],
)
def test_a_document_that_is_not_a_sealed_dry_run_is_refused(
    tmp_path: Path, document: Any, fragment: str
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(GuardError) as caught:
        planfile.read(path)
    assert caught.value.exit_code is ExitCode.GUARD
    assert f"plan file {path} {fragment}" in caught.value.message


def test_a_missing_plan_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "plan.json"
    with pytest.raises(UsageError) as caught:
        planfile.read(path)
    assert caught.value.exit_code is ExitCode.USAGE
    assert caught.value.message == (f"cannot read plan file {path}: No such file or directory")


def test_a_resealed_plan_with_a_later_cutoff_is_still_refused(db_url: str, tmp_path: Path) -> None:
    """The hash is a seal, not a signature: a forged plan still has to match the policies."""
    scenario, engine, policies = _setup(db_url, tmp_path)
    document = _sealed(worker(db_url, policies))
    for target in document["targets"]:
        if target["project_id"] == str(P1) and target["object_type"] == "project_logs":
            target["retention_days"] = 1
            target["cutoff"] = (NOW - timedelta(days=1)).isoformat()
            target["rows"] = 8
    reviewed = planfile.read(_write(tmp_path / "plan.json", planfile.seal(document)))

    _refused(
        db_url,
        engine,
        _ids(scenario),
        lambda: engine_module.purge(worker(db_url, policies), plan_file=reviewed),
        f"the plan {reviewed.path} drifted, nothing deleted: ",
        f"target {LOGS1}: policy changed (retention 1 -> 30 days",
    )


def test_a_resealed_plan_with_fewer_rows_is_refused(db_url: str, tmp_path: Path) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    document = _sealed(worker(db_url, policies))
    for target in document["targets"]:
        if target["project_id"] == str(P1) and target["object_type"] == "project_logs":
            target["rows"] = 2
    reviewed = planfile.read(_write(tmp_path / "plan.json", planfile.seal(document)))
    _refused(
        db_url,
        engine,
        _ids(scenario),
        lambda: engine_module.purge(worker(db_url, policies), plan_file=reviewed),
        f"target {LOGS1}: 5 rows expire now, 2 reviewed",
    )


# -- maximum age -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "settings"),
    [(timedelta(hours=24), {}), (timedelta(hours=2), {"plan_max_age": "2h"})],
)
def test_plan_max_age_boundary(
    db_url: str, tmp_path: Path, max_age: timedelta, settings: dict[str, Any]
) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    reviewed = _make_plan(worker(db_url, policies), tmp_path / "plan.json")

    too_late = NOW + max_age + timedelta(microseconds=1)
    error = _refused(
        db_url,
        engine,
        _ids(scenario),
        lambda: engine_module.purge(
            worker(db_url, policies, **_at(too_late, **settings)), plan_file=reviewed
        ),
        f"plan file {reviewed.path} is ",
        "--plan-max-age",
        "make a new dry run",
    )
    hours = max_age.total_seconds() / 3600
    assert f"more than --plan-max-age ({hours:g} h)" in error.message

    at_limit = NOW + max_age
    done = engine_module.purge(
        worker(db_url, policies, **_at(at_limit, **settings)), plan_file=reviewed
    )
    assert done.status is RunStatus.SUCCEEDED
    assert done.plan.now == NOW
    assert surviving_rows(engine) == Expect(days=DEFAULT_DAYS).survivors(scenario)
    assert _runs(db_url) == [("succeeded", NOW, reviewed.hash)]


# -- drift -------------------------------------------------------------------------------------


def _drift_case(
    db_url: str, tmp_path: Path, change: Callable[[Path, sa.Engine], None], *fragments: str
) -> GuardError:
    scenario, engine, policies = _setup(db_url, tmp_path)
    reviewed = _make_plan(worker(db_url, policies), tmp_path / "plan.json")
    change(policies, engine)
    assert _ids(scenario) <= surviving_rows(engine)
    return _refused(
        db_url,
        engine,
        surviving_rows(engine),  # with the rows the change itself added
        lambda: engine_module.purge(worker(db_url, policies, **_at(LATER)), plan_file=reviewed),
        f"the plan {reviewed.path} drifted, nothing deleted: ",
        *fragments,
    )


def _policy(text: str) -> Callable[[Path, sa.Engine], None]:
    def change(policies: Path, _: sa.Engine) -> None:
        write_policies(policies, text)

    return change


def test_drift_policy_shortened(db_url: str, tmp_path: Path) -> None:
    shorter = policy_toml(
        defaults={"project_logs": DAYS, "experiment": DAYS},
        projects=[(P1, {"dataset": DAYS, "project_logs": 20})],
    )
    error = _drift_case(
        db_url,
        tmp_path,
        _policy(shorter),
        f"target {LOGS1}: policy changed (retention 30 -> 20 days, held False -> False, "
        "floor 1 -> 1)",
    )
    assert "was added" not in error.message and "is gone" not in error.message


def test_drift_policy_lengthened(db_url: str, tmp_path: Path) -> None:
    longer = policy_toml(
        defaults={"project_logs": DAYS, "experiment": 60},
        projects=[(P1, {"dataset": DAYS})],
    )
    error = _drift_case(
        db_url,
        tmp_path,
        _policy(longer),
        f"target {EXP1}: policy changed (retention 30 -> 60 days",
        f"target {EXP2}: policy changed (retention 30 -> 60 days",
    )
    assert LOGS1 not in error.message


def test_drift_floor_raised(db_url: str, tmp_path: Path) -> None:
    _drift_case(
        db_url,
        tmp_path,
        _policy(POLICY + "\n[safety]\nmin_retention_days = 2\n"),
        f"target {LOGS1}: policy changed (retention 30 -> 30 days, held False -> False, "
        "floor 1 -> 2)",
    )


def test_drift_target_added_by_a_per_project_rule(db_url: str, tmp_path: Path) -> None:
    added = policy_toml(
        defaults={"project_logs": DAYS, "experiment": DAYS},
        projects=[(P1, {"dataset": DAYS}), (P2, {"dataset": 50})],
    )
    error = _drift_case(db_url, tmp_path, _policy(added), f"target {P2}/dataset was added")
    assert "policy changed" not in error.message


def test_drift_target_added_by_a_new_project(db_url: str, tmp_path: Path) -> None:
    def new_project(_: Path, engine: sa.Engine) -> None:
        s = Scenario()
        s.add_object("project_logs", P3, P3, _ago(400))
        s.add_event("project_logs", P3, P3, _ago(90), "l3-old")
        s.add_event("project_logs", P3, P3, _ago(1), "l3-new")
        insert(engine, s)

    _drift_case(
        db_url,
        tmp_path,
        new_project,
        f"target {P3}/experiment was added",
        f"target {P3}/project_logs was added",
    )


def test_drift_target_gone(db_url: str, tmp_path: Path) -> None:
    without = policy_toml(defaults={"project_logs": DAYS, "experiment": DAYS})
    error = _drift_case(db_url, tmp_path, _policy(without), f"target {DSET1} is gone")
    assert "policy changed" not in error.message


def test_drift_hold_added(db_url: str, tmp_path: Path) -> None:
    held = policy_toml(
        defaults={"project_logs": DAYS, "experiment": DAYS},
        projects=[(P1, {"dataset": DAYS})],
        holds=[{"project": str(P2), "object_type": "project_logs", "reason": "litigation"}],
    )
    _drift_case(
        db_url,
        tmp_path,
        _policy(held),
        f"target {LOGS2}: policy changed (retention 30 -> None days, held False -> True",
    )


def test_drift_object_hold_added(db_url: str, tmp_path: Path) -> None:
    held = policy_toml(
        defaults={"project_logs": DAYS, "experiment": DAYS},
        projects=[(P1, {"dataset": DAYS})],
        holds=[
            {
                "project": str(P1),
                "object_type": "experiment",
                "object_id": str(EXP_OLD),
                "reason": "baseline",
            }
        ],
    )
    _drift_case(db_url, tmp_path, _policy(held), f"target {EXP1}: policy changed")


def test_drift_more_rows_expire_than_reviewed(db_url: str, tmp_path: Path) -> None:
    """A row the review saw kept, backdated since by an update: it is one of the plan's rows
    (no later than its newest row), and it expires now. (A row written after the review is
    not the plan's at all: see test_plan_rows_reviewed.)"""

    def backdated(_: Path, engine: sa.Engine) -> None:
        old: object = _ago(200)
        if engine.dialect.name == "sqlite":  # the reference schema's text spelling
            old = _ago(200).strftime("%Y-%m-%d %H:%M:%S.%f")
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE events SET created = :old WHERE id = 'l2-1'"), {"old": old}
            )

    error = _drift_case(
        db_url, tmp_path, backdated, f"target {LOGS2}: 2 rows expire now, 1 reviewed"
    )
    assert "policy changed" not in error.message


def test_drift_more_segments_expire_than_reviewed(db_url: str, tmp_path: Path) -> None:
    def backdated(_: Path, engine: sa.Engine) -> None:
        s = Scenario()
        s.add_segment("project_logs", P1, P1, _ago(80), _ago(70), size=4096)
        insert(engine, s)

    _drift_case(db_url, tmp_path, backdated, f"target {LOGS1}: 1 segments expire now, 0 reviewed")


def test_drift_more_experiments_expire_than_reviewed(db_url: str, tmp_path: Path) -> None:
    """A backdated experiment without rows: its registry entry would be deleted unreviewed."""

    def backdated(_: Path, engine: sa.Engine) -> None:
        s = Scenario()
        s.add_object("experiment", UUID("e1000000-0000-4000-8000-0000000000ff"), P2, _ago(90))
        insert(engine, s)

    scenario, engine, policies = _setup(db_url, tmp_path)
    reviewed = _make_plan(worker(db_url, policies), tmp_path / "plan.json")
    objects = registry(engine)
    backdated(policies, engine)
    with pytest.raises(GuardError) as caught:
        engine_module.purge(worker(db_url, policies), plan_file=reviewed)
    assert f"target {EXP2}: 1 " in caught.value.message
    assert "expire now, 0 reviewed" in caught.value.message
    assert registry(engine) == objects | {("experiment", "e1000000-0000-4000-8000-0000000000ff")}
    assert surviving_rows(engine) == _ids(scenario)
    assert _runs(db_url) == []


def test_drift_reports_every_problem(db_url: str, tmp_path: Path) -> None:
    changed = policy_toml(
        defaults={"project_logs": 20, "experiment": DAYS},
        holds=[{"project": str(P2), "reason": "audit"}],
    )
    error = _drift_case(
        db_url,
        tmp_path,
        _policy(changed),
        f"target {DSET1} is gone",
        f"target {LOGS1}: policy changed (retention 30 -> 20 days",
        f"target {LOGS1}: 6 rows expire now, 5 reviewed",
        f"target {EXP2}: policy changed (retention 30 -> None days, held False -> True",
        "; and 1 more",  # six problems, five shown
    )
    assert f"target {P2}/dataset was added" in error.message  # held, but a target
    assert LOGS2 not in error.message  # the sixth problem
    assert error.message.count("; ") == 5


def test_drift_project_deleted_in_the_control_plane(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    fake_cp.projects = [project(P1, "one"), project(P2, "two")]

    def cp_worker(**kwargs: Any) -> Worker:
        return worker(
            db_url, policies, api_url=fake_cp.url, service_token_file=token_file, **kwargs
        )

    reviewed = _make_plan(cp_worker(), tmp_path / "plan.json")
    assert set(reviewed.targets) == TARGETS
    assert reviewed.document["orphans"] == []

    fake_cp.projects = [project(P1, "one"), project(P2, "two", deleted=True)]
    error = _refused(
        db_url,
        engine,
        _ids(scenario),
        lambda: engine_module.purge(cp_worker(**_at(LATER)), plan_file=reviewed),
        f"target {LOGS2} is gone",
        f"target {EXP2} is gone",
    )
    assert str(P1) not in error.message
    # the same check as a dry run says so too, and still nothing is deleted
    fresh = engine_module.plan(cp_worker(), now=reviewed.now)
    assert planfile.drift(reviewed, report.plan_document(fresh.plan)) == [
        f"target {EXP2} is gone",
        f"target {LOGS2} is gone",
    ]
    assert [(o.project_id, o.reason, o.rows) for o in fresh.plan.orphans] == [(P2, "deleted", 6)]


# -- fewer rows --------------------------------------------------------------------------------


def test_fewer_rows_than_planned_is_fine_and_noted(db_url: str, tmp_path: Path) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    reviewed = _make_plan(worker(db_url, policies), tmp_path / "plan.json")
    with engine.begin() as conn:  # someone else deleted two expired rows meanwhile
        conn.exec_driver_sql("DELETE FROM events WHERE id IN ('l1-old-0', 'l1-old-4')")

    done = engine_module.purge(worker(db_url, policies, **_at(LATER)), plan_file=reviewed)

    assert done.status is RunStatus.SUCCEEDED
    assert done.warnings == (
        f"target {LOGS1}: 3 rows expire now, 5 were planned (deleted meanwhile)",
    )
    assert {o.target.key: o.rows for o in done.outcomes} == {**PLANNED_ROWS, LOGS1: 3}
    assert surviving_rows(engine) == Expect(days=DEFAULT_DAYS).survivors(scenario)
    assert _runs(db_url) == [("succeeded", NOW, reviewed.hash)]
    document = report.report_document(done)
    assert document["warnings"] == list(done.warnings)
    logs = next(
        t
        for t in document["targets"]
        if t["project_id"] == str(P1) and t["object_type"] == "project_logs"
    )
    assert (logs["planned_rows"], logs["rows"]) == (3, 3)


# -- orphans -----------------------------------------------------------------------------------


def test_plan_made_with_purge_orphans_applies_as_such(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    fake_cp.projects = [project(P1, "one"), project(P2, "two", deleted=True)]

    def cp_worker(**kwargs: Any) -> Worker:
        return worker(
            db_url, policies, api_url=fake_cp.url, service_token_file=token_file, **kwargs
        )

    plain = _make_plan(cp_worker(), tmp_path / "plain.json")
    assert not plain.orphans
    assert set(plain.targets) == {LOGS1, EXP1, DSET1}
    assert [(o["project_id"], o["reason"], o["rows"]) for o in plain.document["orphans"]] == [
        (str(P2), "deleted", 6)
    ]
    # the plain plan does not become an orphan purge by asking for one when applying it
    _refused(
        db_url,
        engine,
        _ids(scenario),
        lambda: engine_module.purge(cp_worker(), plan_file=plain, purge_orphans=True),
        f"target {P2}/dataset was added",
        f"target {LOGS2} was added",
    )

    orphans = _make_plan(cp_worker(), tmp_path / "orphans.json", purge_orphans=True)
    assert orphans.orphans
    assert {
        k: (t["source_kind"], t["retention_days"], t["rows"])
        for k, t in orphans.targets.items()
        if k.startswith(str(P2))
    } == {
        LOGS2: ("purge-orphans", 1, 3),  # the safety floor keeps the last day
        EXP2: ("purge-orphans", 1, 0),
        f"{P2}/dataset": ("purge-orphans", 1, 2),
    }

    done = engine_module.purge(cp_worker(**_at(LATER)), plan_file=orphans)  # no flag given

    assert done.status is RunStatus.SUCCEEDED
    assert {o.target.key for o in done.outcomes} == set(orphans.targets)
    days = {
        (P1, "project_logs"): DAYS,
        (P1, "experiment"): DAYS,
        (P1, "dataset"): DAYS,
        **{(P2, t): 1.0 for t in ("project_logs", "experiment", "dataset")},
    }
    assert surviving_rows(engine) == Expect(days=days).survivors(scenario)
    assert {i for i in surviving_rows(engine) if i.startswith(("l2-", "d2-"))} == {"l2-3"}
    assert _runs(db_url) == [("succeeded", NOW, orphans.hash)]


# -- unfinished runs ---------------------------------------------------------------------------


def test_an_unfinished_run_with_another_now_blocks_a_plan(db_url: str, tmp_path: Path) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    earlier = NOW - timedelta(hours=1)
    partial = engine_module.purge(
        worker(db_url, policies, batch_size=1, should_stop=StopAfter(2), **_at(earlier)),
        allow_large_deletes=True,
    )
    assert partial.status is RunStatus.PARTIAL
    remaining = surviving_rows(engine)
    assert 0 < len(_ids(scenario) - remaining) < sum(PLANNED_ROWS.values())
    plan_doc = _sealed(worker(db_url, policies))
    assert any(f"run {partial.run_id} is unfinished" in w for w in plan_doc["warnings"])
    reviewed = planfile.read(_write(tmp_path / "plan.json", plan_doc))

    with pytest.raises(GuardError) as caught:
        engine_module.purge(worker(db_url, policies), plan_file=reviewed)

    assert caught.value.exit_code is ExitCode.GUARD
    assert caught.value.message == (
        f"run {partial.run_id} is unfinished (pinned now {earlier.isoformat()}); finish it "
        "with 'retention purge' before applying a plan; nothing deleted"
    )
    assert surviving_rows(engine) == remaining
    assert [r[:2] for r in _runs(db_url)] == [("partial", earlier)]

    # finished with 'retention purge', the plan applies; what the resumed run already took
    # is less than planned, which is fine
    finished = engine_module.purge(worker(db_url, policies), allow_large_deletes=True)
    assert finished.resumed and finished.run_id == partial.run_id
    assert finished.status is RunStatus.SUCCEEDED
    done = engine_module.purge(worker(db_url, policies), plan_file=reviewed)
    assert done.status is RunStatus.SUCCEEDED and not done.resumed
    assert surviving_rows(engine) == Expect(days=DEFAULT_DAYS).survivors(scenario)
    assert _runs(db_url) == [
        ("succeeded", earlier, _runs(db_url)[0][2]),
        ("succeeded", NOW, reviewed.hash),
    ]


def test_an_interrupted_plan_run_resumes_with_the_same_plan(db_url: str, tmp_path: Path) -> None:
    scenario, engine, policies = _setup(db_url, tmp_path)
    reviewed = _make_plan(worker(db_url, policies), tmp_path / "plan.json")

    first = engine_module.purge(
        worker(db_url, policies, batch_size=1, should_stop=StopAfter(3), **_at(LATER)),
        plan_file=reviewed,
    )
    assert first.status is RunStatus.PARTIAL
    taken = _ids(scenario) - surviving_rows(engine)
    assert 0 < len(taken) < sum(PLANNED_ROWS.values())
    assert _runs(db_url) == [("partial", NOW, reviewed.hash)]

    again = engine_module.purge(
        worker(db_url, policies, batch_size=1, **_at(LATER + timedelta(hours=1))),
        plan_file=reviewed,
    )

    assert again.resumed and again.run_id == first.run_id
    assert again.status is RunStatus.SUCCEEDED
    assert again.plan.now == NOW
    assert surviving_rows(engine) == Expect(days=DEFAULT_DAYS).survivors(scenario)
    assert _runs(db_url) == [("succeeded", NOW, reviewed.hash)]
    assert {k: v[1] for k, v in _receipts(db_url).items()} == {
        k: v for k, v in PLANNED_ROWS.items() if v
    }
