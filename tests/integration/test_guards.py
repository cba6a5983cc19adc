"""Safety guards (DESIGN §5): the first run and the maximum delete fraction, on both backends.

A guarded target is not deleted, the other targets of the run proceed, and the run ends
``guarded`` (exit 6 from the command). ``allow_large_deletes`` overrides for one run.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import engine as engine_module
from retention.guards import FIRST_RUN
from retention.models import RunReport, RunStatus
from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
from tests.integration.helpers import worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, registry, surviving_rows

P1 = UUID("a1000000-0000-4000-8000-000000000001")
P2 = UUID("a2000000-0000-4000-8000-000000000002")
P3 = UUID("a3000000-0000-4000-8000-000000000003")
EXP_OLD = UUID("e0000000-0000-4000-8000-00000000000a")
EXP_NEW = UUID("e0000000-0000-4000-8000-00000000000b")
DS = UUID("d5000000-0000-4000-8000-00000000000d")

DAYS = 30  # every object type, every project
POLICY = policy_toml(defaults={"project_logs": DAYS, "experiment": DAYS, "dataset": DAYS})


def _rows(
    scenario: Scenario,
    object_type: str,
    object_id: UUID,
    project: UUID,
    *,
    total: int,
    expired: int,
    tag: str,
) -> set[str]:
    """``total`` rows of one object, ``expired`` of them past the cutoff; returns the kept ids."""
    kept = set()
    for i in range(expired):
        created = NOW - timedelta(days=DAYS + 10, minutes=i)
        scenario.add_event(object_type, object_id, project, created, f"{tag}-old-{i}")
    for i in range(total - expired):
        created = NOW - timedelta(days=DAYS - 10, minutes=i)
        kept.add(scenario.add_event(object_type, object_id, project, created, f"{tag}-new-{i}"))
    return kept


def _logs(scenario: Scenario, project: UUID, *, total: int, expired: int, tag: str) -> set[str]:
    scenario.add_object("project_logs", project, project, NOW - timedelta(days=400))
    return _rows(scenario, "project_logs", project, project, total=total, expired=expired, tag=tag)


def _ids(scenario: Scenario) -> set[str]:
    return {e["id"] for e in scenario.events}


def _policies(tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies", POLICY)


def _purge(url: str, policy_dir: Path, *, allow: bool = False, **settings: Any) -> RunReport:
    return engine_module.purge(
        worker(url, policy_dir, **settings),
        allow_large_deletes=allow,
    )


def _guards(report: RunReport) -> dict[str, str]:
    return {o.target.key: o.guard for o in report.outcomes}


def _deleted(report: RunReport) -> dict[str, int]:
    return {o.target.key: o.rows for o in report.outcomes}


def _runs(url: str) -> list[str]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return [
                r[0] for r in conn.exec_driver_sql("SELECT status FROM retention_runs ORDER BY id")
            ]
    finally:
        engine.dispose()


def _receipted(url: str) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            value = conn.exec_driver_sql("SELECT coalesce(sum(rows), 0) FROM retention_receipts")
            return int(value.scalar_one())
    finally:
        engine.dispose()


def _first_success(url: str, policy_dir: Path) -> None:
    """A successful run on a data plane with nothing to delete: no longer a first run."""
    report = _purge(url, policy_dir)
    assert report.status is RunStatus.SUCCEEDED
    assert all(o.rows == 0 and o.guard == "" for o in report.outcomes)
    assert _runs(url) == ["succeeded"]


def _fraction_message(rows: int, total: int, percent: str, fraction: str) -> str:
    return (
        f"would delete {rows} of {total} rows ({percent}), more than the maximum "
        f"fraction {fraction} (RETENTION_MAX_DELETE_FRACTION); rerun with "
        "--allow-large-deletes after review, or apply a reviewed plan"
    )


# -- the first run ---------------------------------------------------------------------------


def _first_run_scenario() -> tuple[Scenario, set[str]]:
    """P1: logs 3 of 10 expired, one expired experiment (2 rows) and a new one (3 rows).
    P2: logs 4 rows, none expired. Returns the scenario and the rows a purge keeps."""
    s = Scenario()
    kept = _logs(s, P1, total=10, expired=3, tag="p1")
    kept |= _logs(s, P2, total=4, expired=0, tag="p2")
    s.add_object("experiment", EXP_OLD, P1, NOW - timedelta(days=60))
    s.add_object("experiment", EXP_NEW, P1, NOW - timedelta(days=5))
    for i in range(2):
        s.add_event("experiment", EXP_OLD, P1, NOW - timedelta(days=59), f"eo-{i}")
    for i in range(3):
        kept.add(s.add_event("experiment", EXP_NEW, P1, NOW - timedelta(days=4), f"en-{i}"))
    return s, kept


def test_first_run_guards_every_target_with_something_to_delete(
    db_url: str, tmp_path: Path
) -> None:
    scenario, kept = _first_run_scenario()
    engine = engine_for(db_url)
    insert(engine, scenario)
    policy_dir = _policies(tmp_path)
    everything = _ids(scenario)
    all_objects = registry(engine)

    report = _purge(db_url, policy_dir)

    assert report.status is RunStatus.GUARDED
    assert _guards(report) == {
        f"{P1}/project_logs": FIRST_RUN,
        f"{P1}/experiment": FIRST_RUN,
        f"{P1}/dataset": "",  # nothing to delete: not guarded
        f"{P2}/project_logs": "",
        f"{P2}/experiment": "",
        f"{P2}/dataset": "",
    }
    assert set(_deleted(report).values()) == {0}
    planned = {t.key: t.counts.rows for t in report.plan.targets}
    assert planned[f"{P1}/project_logs"] == 3 and planned[f"{P1}/experiment"] == 2
    assert surviving_rows(engine) == everything
    assert registry(engine) == all_objects
    assert _runs(db_url) == ["guarded"]
    assert _receipted(db_url) == 0

    # a guarded run is not a successful one: the next run is still a first run
    again = _purge(db_url, policy_dir)
    assert again.status is RunStatus.GUARDED
    assert _guards(again)[f"{P1}/project_logs"] == FIRST_RUN
    assert surviving_rows(engine) == everything
    assert _runs(db_url) == ["guarded", "guarded"]

    allowed = _purge(db_url, policy_dir, allow=True)

    assert allowed.status is RunStatus.SUCCEEDED
    assert set(_guards(allowed).values()) == {""}
    assert _deleted(allowed)[f"{P1}/project_logs"] == 3
    assert _deleted(allowed)[f"{P1}/experiment"] == 2
    assert surviving_rows(engine) == kept
    assert ("experiment", str(EXP_OLD)) not in registry(engine)
    assert _runs(db_url) == ["guarded", "guarded", "succeeded"]
    assert _receipted(db_url) == 5

    # after a success the first-run rule no longer applies: 2 of 9 expire, under the fraction
    more = Scenario()
    for i in range(2):
        created = NOW - timedelta(days=DAYS + 1, minutes=i)
        more.add_event("project_logs", P1, P1, created, f"p1-later-{i}")
    insert(engine, more)

    later = _purge(db_url, policy_dir)

    assert later.status is RunStatus.SUCCEEDED
    assert set(_guards(later).values()) == {""}
    assert _deleted(later)[f"{P1}/project_logs"] == 2
    assert surviving_rows(engine) == kept
    assert _runs(db_url) == ["guarded", "guarded", "succeeded", "succeeded"]


def test_first_run_with_nothing_to_delete_succeeds_and_counts(db_url: str, tmp_path: Path) -> None:
    s = Scenario()
    fresh = _logs(s, P1, total=5, expired=0, tag="p1")
    engine = engine_for(db_url)
    insert(engine, s)
    policy_dir = _policies(tmp_path)

    _first_success(db_url, policy_dir)
    assert surviving_rows(engine) == fresh

    more = Scenario()
    more.add_event("project_logs", P1, P1, NOW - timedelta(days=DAYS + 1), "p1-late-old")
    insert(engine, more)  # 1 of 6 expired: under the fraction, and no longer a first run
    report = _purge(db_url, policy_dir)

    assert report.status is RunStatus.SUCCEEDED
    assert _deleted(report)[f"{P1}/project_logs"] == 1
    assert surviving_rows(engine) == fresh
    assert _runs(db_url) == ["succeeded", "succeeded"]


# -- the maximum delete fraction -------------------------------------------------------------


def _fraction_scenario(total: int, allowed: int, guarded: int) -> tuple[Scenario, set[str]]:
    """P1 logs: ``allowed`` of ``total`` expire; P2 logs: ``guarded`` of ``total`` expire;
    P3: an experiment target (6 of 10 rows in the expired experiment) and a dataset (1 of 10).
    Returns the scenario and the rows kept when P2's logs and P3's experiment are guarded.
    """
    s = Scenario()
    kept = _logs(s, P1, total=total, expired=allowed, tag="p1")
    _logs(s, P2, total=total, expired=guarded, tag="p2")
    kept |= {e["id"] for e in s.events if e["project_id"] == P2}  # guarded: all kept
    s.add_object("experiment", EXP_OLD, P3, NOW - timedelta(days=60))
    s.add_object("experiment", EXP_NEW, P3, NOW - timedelta(days=5))
    for i in range(6):
        kept.add(s.add_event("experiment", EXP_OLD, P3, NOW - timedelta(days=59), f"eo-{i}"))
    for i in range(4):
        kept.add(s.add_event("experiment", EXP_NEW, P3, NOW - timedelta(days=4), f"en-{i}"))
    s.add_object("dataset", DS, P3, NOW - timedelta(days=400))
    kept |= _rows(s, "dataset", DS, P3, total=10, expired=1, tag="ds")
    return s, kept


@pytest.mark.parametrize(
    ("fraction", "total", "allowed", "guarded", "percent", "experiment_guarded"),
    [
        # the default 0.5: exactly half is allowed, one row more is not
        (None, 10, 5, 6, "60.0%", True),
        (0.8, 10, 8, 9, "90.0%", False),  # the experiment's 6 of 10 is now allowed too
        (0.25, 20, 5, 6, "30.0%", True),
    ],
)
def test_max_delete_fraction_boundary(
    db_url: str,
    tmp_path: Path,
    fraction: float | None,
    total: int,
    allowed: int,
    guarded: int,
    percent: str,
    experiment_guarded: bool,
) -> None:
    engine = engine_for(db_url)
    policy_dir = _policies(tmp_path)
    _first_success(db_url, policy_dir)  # empty data plane: nothing to delete
    scenario, kept = _fraction_scenario(total, allowed, guarded)
    insert(engine, scenario)
    settings: dict[str, Any] = {} if fraction is None else {"max_delete_fraction": fraction}
    shown = "0.5" if fraction is None else f"{fraction:g}"

    report = _purge(db_url, policy_dir, **settings)

    assert report.status is RunStatus.GUARDED
    assert _guards(report) == {
        f"{P1}/project_logs": "",
        f"{P1}/experiment": "",
        f"{P1}/dataset": "",
        f"{P2}/project_logs": _fraction_message(guarded, total, percent, shown),
        f"{P2}/experiment": "",
        f"{P2}/dataset": "",
        f"{P3}/project_logs": "",
        f"{P3}/experiment": (
            _fraction_message(6, 10, "60.0%", shown) if experiment_guarded else ""
        ),
        f"{P3}/dataset": "",
    }
    expected_kept = kept if experiment_guarded else kept - {f"eo-{i}" for i in range(6)}
    assert surviving_rows(engine) == expected_kept
    assert _deleted(report) == {
        f"{P1}/project_logs": allowed,
        f"{P1}/experiment": 0,
        f"{P1}/dataset": 0,
        f"{P2}/project_logs": 0,
        f"{P2}/experiment": 0,
        f"{P2}/dataset": 0,
        f"{P3}/project_logs": 0,
        f"{P3}/experiment": 0 if experiment_guarded else 6,
        f"{P3}/dataset": 1,
    }
    assert (("experiment", str(EXP_OLD)) in registry(engine)) is experiment_guarded
    assert _runs(db_url) == ["succeeded", "guarded"]
    assert _receipted(db_url) == allowed + 1 + (0 if experiment_guarded else 6)

    # the override deletes what the guard held back
    allowed_run = _purge(db_url, policy_dir, allow=True, **settings)
    assert allowed_run.status is RunStatus.SUCCEEDED
    assert _deleted(allowed_run)[f"{P2}/project_logs"] == guarded
    assert surviving_rows(engine) == {
        i for i in expected_kept if not (i.startswith(("p2-old-", "eo-")))
    }
    assert _runs(db_url) == ["succeeded", "guarded", "succeeded"]


def test_max_delete_fraction_from_the_environment(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(db_url)
    policy_dir = _policies(tmp_path)
    _first_success(db_url, policy_dir)
    s = Scenario()
    kept = _logs(s, P1, total=10, expired=7, tag="p1")
    kept |= _logs(s, P2, total=10, expired=8, tag="p2")
    insert(engine, s)
    monkeypatch.setenv("RETENTION_MAX_DELETE_FRACTION", "0.7")

    report = _purge(db_url, policy_dir)

    assert report.status is RunStatus.GUARDED
    assert _guards(report)[f"{P1}/project_logs"] == ""
    assert _guards(report)[f"{P2}/project_logs"] == _fraction_message(8, 10, "80.0%", "0.7")
    assert surviving_rows(engine) == kept | {f"p2-old-{i}" for i in range(8)}


# -- the command -----------------------------------------------------------------------------


def _env(url: str, policy_dir: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        RETENTION_DATABASE_URL=url,
        RETENTION_POLICY_DIR=str(policy_dir),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_LOG_LEVEL="WARNING",
        **extra,
    )


def _count(url: str) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one())
    finally:
        engine.dispose()


def test_cli_first_run_exits_6_and_reports_the_guard(db_url: str, tmp_path: Path) -> None:
    scenario, kept = _first_run_scenario()
    insert(engine_for(db_url), scenario)
    env = _env(db_url, _policies(tmp_path))

    result = run("purge", "--yes", "--format", "json", env=env)

    assert result.code == 6, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is False and doc["status"] == "guarded"
    targets = {(t["project_id"], t["object_type"]): t for t in doc["targets"]}
    assert {key: t.get("guard", "MISSING") for key, t in targets.items()} == {
        (str(P1), "project_logs"): FIRST_RUN,
        (str(P1), "experiment"): FIRST_RUN,
        (str(P1), "dataset"): None,
        (str(P2), "project_logs"): None,
        (str(P2), "experiment"): None,
        (str(P2), "dataset"): None,
    }
    assert {key: t["rows"] for key, t in targets.items()} == dict.fromkeys(targets, 0)
    assert targets[(str(P1), "project_logs")]["planned_rows"] == 3
    assert targets[(str(P1), "experiment")]["planned_rows"] == 2
    assert doc["totals"]["rows"] == 0
    assert _count(db_url) == len(scenario.events)
    assert _runs(db_url) == ["guarded"]

    table = run("purge", "--yes", env=env)
    assert table.code == 6, table.stderr
    assert f"GUARDED: {FIRST_RUN}" in table.stdout
    assert _count(db_url) == len(scenario.events)

    allowed = run("purge", "--yes", "--allow-large-deletes", "--format", "json", env=env)

    assert allowed.code == 0, allowed.stderr
    doc = json.loads(allowed.stdout)
    assert doc["status"] == "succeeded" and doc["totals"]["rows"] == 5
    assert all(t["guard"] is None for t in doc["targets"])
    assert surviving_rows(engine_for(db_url)) == kept
    assert _runs(db_url) == ["guarded", "guarded", "succeeded"]


def test_cli_max_delete_fraction(db_url: str, tmp_path: Path) -> None:
    policy_dir = _policies(tmp_path)
    first = run("purge", "--yes", env=_env(db_url, policy_dir))  # empty: not guarded
    assert first.code == 0, first.stderr
    s = Scenario()
    kept = _logs(s, P1, total=10, expired=5, tag="p1")
    kept |= _logs(s, P2, total=10, expired=6, tag="p2")
    insert(engine_for(db_url), s)

    result = run("purge", "--yes", "--format", "json", env=_env(db_url, policy_dir))

    assert result.code == 6, result.stderr
    targets = {(t["project_id"], t["object_type"]): t for t in json.loads(result.stdout)["targets"]}
    assert targets[(str(P1), "project_logs")]["guard"] is None
    assert targets[(str(P1), "project_logs")]["rows"] == 5
    assert targets[(str(P2), "project_logs")]["guard"] == _fraction_message(6, 10, "60.0%", "0.5")
    assert targets[(str(P2), "project_logs")]["rows"] == 0
    p2_old = {f"p2-old-{i}" for i in range(6)}
    assert surviving_rows(engine_for(db_url)) == kept | p2_old

    # RETENTION_MAX_DELETE_FRACTION moves the boundary: 6 of 10 is now exactly at it
    env = _env(db_url, policy_dir, RETENTION_MAX_DELETE_FRACTION="0.6")
    wider = run("purge", "--yes", "--format", "json", env=env)

    assert wider.code == 0, wider.stderr
    assert json.loads(wider.stdout)["totals"]["rows"] == 6
    assert surviving_rows(engine_for(db_url)) == kept
    assert _runs(db_url) == ["succeeded", "guarded", "succeeded"]
