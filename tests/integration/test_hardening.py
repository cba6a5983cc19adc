"""Inputs that used to slip through: odd SQLite values, odd URLs, stale runs, odd holds."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention.errors import DatabaseError, PolicyError, SchemaError, UsageError
from retention.models import RunStatus
from tests.conftest import engine_for, prepare
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.support import NOW, Scenario, generate, insert, policy_toml, surviving_rows

PROJECT = UUID("12121212-1212-4212-8212-121212121212")


def _logs_scenario() -> Scenario:
    scenario = Scenario()
    scenario.add_object("project_logs", PROJECT, PROJECT, NOW - timedelta(days=400))
    for day in (10, 40, 50):
        scenario.add_event("project_logs", PROJECT, PROJECT, NOW - timedelta(days=day), f"d{day}")
    return scenario


@pytest.mark.parametrize(
    "created",
    [
        "2026-10-02 03:00:00",  # SQLite's CURRENT_TIMESTAMP spelling, exactly at the cutoff
        "2026-10-01T23:00:00-05:00",  # an offset spelling, newer than the cutoff
        "2026-10-02T03:00:00.000000",  # 'T' instead of ' '
    ],
)
def test_sqlite_timestamps_in_another_spelling_stop_the_run(
    sqlite_url: str, tmp_path: Path, created: str
) -> None:
    engine = engine_for(sqlite_url)
    insert(engine, _logs_scenario())
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO events (object_type, object_id, project_id, id, _xact_id, created) "
            "VALUES ('project_logs', ?, ?, 'odd', 9, ?)",
            (str(PROJECT), str(PROJECT), created),
        )
    raw.close()
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    for call in (engine_module.plan, purge):
        with pytest.raises(SchemaError, match="column 'created' holds values not in"):
            call(worker(sqlite_url, policies))
    assert surviving_rows(engine) == {"d10", "d40", "d50", "odd"}


def test_sqlite_uuid_in_another_spelling_stops_the_run(sqlite_url: str, tmp_path: Path) -> None:
    insert(engine_for(sqlite_url), _logs_scenario())
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE events SET project_id = replace(project_id, '-', '') WHERE id = 'd10'")
    raw.close()
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    with pytest.raises(SchemaError, match="column 'project_id' holds values"):
        purge(worker(sqlite_url, policies))


def test_sqlite_path_with_url_characters_stays_read_only(tmp_path: Path) -> None:
    folder = tmp_path / "odd#dir"  # '#' ends the path in a SQLite URI
    folder.mkdir()
    path = folder / "d b.sqlite3"
    url = f"sqlite:///{path}"
    prepare(url)
    insert(engine_for(url), _logs_scenario())
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    report = engine_module.plan(worker(url, policies))
    assert sum(t.counts.rows for t in report.plan.targets) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd#dir", "p"]


def test_not_a_database_file_is_exit_4(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database file at all" * 200)
    policies = write_policies(tmp_path / "p", "")
    with pytest.raises(DatabaseError) as caught:
        engine_module.plan(worker(f"sqlite:///{path}", policies))
    assert caught.value.exit_code == 4


def test_bad_connection_option_is_exit_2(pg_url: str, tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "p", "")
    with pytest.raises(UsageError, match="invalid database settings"):
        engine_module.plan(worker(pg_url + "?bogus_option=1", policies))


def test_operator_options_in_the_url_are_kept(pg_url: str, tmp_path: Path) -> None:
    """``options=-c search_path=...`` points the worker at another schema's tables."""
    insert(engine_for(pg_url), _logs_scenario())
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA dp")
        conn.exec_driver_sql("CREATE TABLE dp.events (LIKE public.events INCLUDING ALL)")
        conn.exec_driver_sql("CREATE TABLE dp.objects (LIKE public.objects INCLUDING ALL)")
        conn.exec_driver_sql("CREATE TABLE dp.segments (LIKE public.segments INCLUDING ALL)")
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    url = pg_url + "?options=-c%20search_path%3Ddp"
    report = engine_module.plan(worker(url, policies))
    assert report.plan.targets == ()  # dp.events is empty; public.events is not looked at
    public = engine_module.plan(worker(pg_url, policies))
    assert sum(t.counts.rows for t in public.plan.targets) == 2


def test_huge_retention_keeps_everything(db_url: str, tmp_path: Path) -> None:
    insert(engine_for(db_url), _logs_scenario())
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 800000}))
    report = purge(worker(db_url, policies))
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine_for(db_url)) == {"d10", "d40", "d50"}
    assert report.plan.targets[0].resolution.cutoff is not None
    assert report.plan.targets[0].resolution.cutoff.year == 1


def test_object_hold_naming_the_wrong_project_keeps_and_warns(db_url: str, tmp_path: Path) -> None:
    scenario = generate(31, projects=2, events=400)
    a, b = scenario.project_ids()
    experiment = next(
        o["object_id"]
        for o in scenario.objects
        if o["object_type"] == "experiment" and o["project_id"] == b
    )
    insert(engine_for(db_url), scenario)
    text = policy_toml(
        defaults={"experiment": 1},
        holds=[
            {"project": str(a), "object_id": str(experiment), "reason": "wrong project"},
            {
                "project": str(a),
                "object_id": "99999999-9999-4999-8999-999999999999",
                "reason": "typo",
            },
        ],
    )
    policies = write_policies(tmp_path / "p", text)
    report = purge(worker(db_url, policies))
    rows = [e["id"] for e in scenario.events if e["object_id"] == experiment]
    assert rows and set(rows) <= surviving_rows(engine_for(db_url))
    assert any(f"belongs to project {b}" in w for w in report.warnings)
    assert any("object not found in the data plane" in w for w in report.warnings)


def test_resumed_totals_include_rows_deleted_before_the_interruption(
    db_url: str, tmp_path: Path
) -> None:
    scenario = generate(32, projects=2, events=600)
    insert(engine_for(db_url), scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 20}))
    first = purge(worker(db_url, policies, batch_size=10, should_stop=StopAfter(3)))
    assert first.status is RunStatus.PARTIAL
    deleted_first = sum(o.rows for o in first.outcomes)
    assert deleted_first == 30
    # The policy is withdrawn before the resume: the run still reports what it deleted.
    write_policies(policies, policy_toml(defaults={"experiment": 10000}))
    second = purge(worker(db_url, policies))
    assert second.resumed
    assert sum(o.rows for o in second.outcomes) == 0  # nothing planned any more
    assert any(
        "deleted 30 rows in earlier attempts" in w and "project_logs" in w for w in second.warnings
    )
    with engine_for(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT rows FROM retention_runs").scalar() == deleted_first


def test_dry_run_announces_a_pending_resume(db_url: str, tmp_path: Path) -> None:
    insert(engine_for(db_url), generate(33, projects=2, events=300))
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 20}))
    purge(worker(db_url, policies, batch_size=5, should_stop=StopAfter(1)))
    later = worker(db_url, policies, now=NOW + timedelta(hours=2))
    report = engine_module.plan(later)
    assert any(
        "the next purge resumes it with its pinned now 2026-11-01T03:00:00+00:00" in w
        for w in report.warnings
    )


def test_missing_default_policy_folder_is_a_warning(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(engine_for(db_url), _logs_scenario())
    from retention.engine import Worker
    from retention.settings import load_settings

    monkeypatch.chdir(tmp_path)  # no policies/ here
    default = Worker.from_settings(load_settings(database_url=db_url, now=NOW))
    # The default folder (policies/ in the working directory) need not exist.
    assert not default.settings.policy_dir_required
    report = engine_module.plan(default)
    assert report.plan.targets == ()
    assert any("no policy folder policies" in w for w in report.warnings)


def test_a_configured_policy_folder_without_policy_files_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    """An unmounted volume looks like an empty folder: running on would drop every local
    hold while the control plane's automations still delete. An empty file is "none"."""
    insert(engine_for(db_url), _logs_scenario())
    folder = write_policies(tmp_path / "p", "", name="notes.txt")
    with pytest.raises(PolicyError, match=r"holds no \*\.toml policy files"):
        engine_module.plan(worker(db_url, folder))
    write_policies(folder, "", name="none.toml")
    report = engine_module.plan(worker(db_url, folder))
    assert report.plan.targets == ()


def test_an_abandoned_run_is_not_resumed(db_url: str, tmp_path: Path) -> None:
    insert(engine_for(db_url), generate(34, projects=2, events=300))
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 20}))
    first = purge(worker(db_url, policies, batch_size=5, should_stop=StopAfter(1)))
    clock = NOW + timedelta(days=2)  # older than RETENTION_RESUME_MAX_AGE (24h)
    second = purge(worker(db_url, policies, now=clock, clock=lambda: clock))
    assert not second.resumed and second.run_id != first.run_id
    assert second.plan.now == clock
    with engine_for(db_url).connect() as conn:
        statuses = dict(conn.exec_driver_sql("SELECT id, status FROM retention_runs").all())
    assert statuses == {first.run_id: "abandoned", second.run_id: "succeeded"}
