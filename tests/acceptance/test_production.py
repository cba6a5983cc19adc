"""Production paths through the installed command: run, metrics, time budget, bounded stop,
schedule with /metrics, JSON logs, status as a health check."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from tests.acceptance.cli import (
    clean_env,
    parse_metrics,
    retention_command,
    run,
    scrape_metrics,
    start_schedule,
)
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project, retention_automation
from tests.pg import free_port
from tests.support import NOW, Expect, Scenario, generate, insert, policy_toml, surviving_rows

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
EXP = UUID("0b7e0000-0000-4000-8000-000000000001")
DS = UUID("0d5e0000-0000-4000-8000-000000000003")


def _known() -> Scenario:
    """Logs: 9 of 12 rows expire (30 days); one experiment of 4 rows (60 days); dataset:
    4 of 6 rows (3 days)."""
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=500))
    s.add_object("experiment", EXP, P1, NOW - timedelta(days=100))
    s.add_object("dataset", DS, P1, NOW - timedelta(days=500))
    for i in range(12):
        s.add_event("project_logs", P1, P1, NOW - timedelta(days=10 * (i + 1)), f"l-{i}")
    for i in range(4):
        s.add_event("experiment", EXP, P1, NOW - timedelta(days=99), f"e-{i}")
    for i in range(6):
        s.add_event("dataset", DS, P1, NOW - timedelta(days=i + 1, hours=1), f"d-{i}")
    return s


def _policies(tmp_path: Path, text: str | None = None) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.toml").write_text(
        text
        or policy_toml(
            defaults={"experiment": 60}, projects=[(P1, {"project_logs": 30, "dataset": 3})]
        )
    )
    return folder


def test_run_writes_the_report_and_exactparse_metrics(pg_url: str, tmp_path: Path) -> None:
    insert(engine_for(pg_url), _known())
    textfile = tmp_path / "node-exporter" / "retention.prom"
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_METRICS_TEXTFILE=str(textfile),
    )
    guarded = run("run", env=env)  # the first run on a database needs review
    assert guarded.code == 6, guarded.stderr
    first = parse_metrics(textfile.read_text())
    assert first['retention_run_outcome{exit_code="6"}'] == 1.0
    assert first['retention_run_outcome{exit_code="0"}'] == 0.0
    assert first["retention_last_success_timestamp_seconds"] == 0.0  # never succeeded
    assert first['retention_backlog_rows{object_type="project_logs"}'] == 9.0

    done = run("run", "--allow-large-deletes", env=env)
    assert done.code == 0, done.stderr
    doc = json.loads(done.stdout)  # run writes a JSON report by default
    assert doc["status"] == "succeeded" and doc["totals"]["rows"] == 17
    values = parse_metrics(textfile.read_text())
    assert values['retention_rows_deleted{object_type="project_logs"}'] == 9.0
    assert values['retention_rows_deleted{object_type="experiment"}'] == 4.0
    assert values['retention_rows_deleted{object_type="dataset"}'] == 4.0
    assert values['retention_backlog_rows{object_type="project_logs"}'] == 0.0
    assert values['retention_oldest_expired_lag_seconds{object_type="dataset"}'] == 0.0
    assert values['retention_run_outcome{exit_code="0"}'] == 1.0
    assert values["retention_run_duration_seconds"] > 0
    assert abs(values["retention_last_success_timestamp_seconds"] - time.time()) < 120


def test_time_budget_stops_at_a_batch_boundary_and_the_rerun_completes(
    pg_url: str, tmp_path: Path
) -> None:
    scenario = generate(81, projects=3, events=30_000)
    insert(engine_for(pg_url), scenario)
    policies = _policies(tmp_path, policy_toml(defaults={"project_logs": 10, "dataset": 10}))
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_BATCH_SIZE="5",
        RETENTION_DELETE_STRATEGY="keyset",  # tiny batches; the block sweep sizes its own
    )
    started = time.monotonic()
    stopped = run("run", "--allow-large-deletes", "--max-runtime", "1s", env=env)
    assert stopped.code == 5, stopped.stderr
    assert time.monotonic() - started < 30
    engine = engine_for(pg_url)
    with engine.connect() as conn:
        status, error = conn.exec_driver_sql("SELECT status, error FROM retention_runs").one()
        receipts = conn.exec_driver_sql("SELECT coalesce(sum(rows), 0) FROM retention_receipts")
        receipted = receipts.scalar()
    assert status == "partial" and "time budget" in error
    deleted = len(scenario.events) - len(surviving_rows(engine))
    assert 0 < deleted == receipted  # consistent at the boundary
    rest = run("run", "--allow-large-deletes", env=env)
    assert rest.code == 0, rest.stderr
    days = {(p, t): 10.0 for p in scenario.project_ids() for t in ("project_logs", "dataset")}
    assert surviving_rows(engine) == Expect(days=days).survivors(scenario)
    engine.dispose()


def test_sigterm_during_a_blocked_batch_exits_within_the_bound(pg_url: str, tmp_path: Path) -> None:
    insert(engine_for(pg_url), _known())
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_STOP_TIMEOUT="2s",
        RETENTION_LOG_FORMAT="json",
    )
    blocker = engine_for(pg_url).connect()
    blocker.execute(sa.text("UPDATE events SET _xact_id = _xact_id WHERE id = 'l-11'"))
    process = subprocess.Popen(
        [retention_command(), "run", "--allow-large-deletes"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_lock_wait(pg_url)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        assert process.returncode == 5
        assert time.monotonic() - sent < 8  # the 2 s bound, plus process exit
    finally:
        if process.poll() is None:
            process.kill()
        blocker.rollback()
        blocker.close()
    with engine_for(pg_url).connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM events").scalar()
        receipted = conn.exec_driver_sql(
            "SELECT coalesce(sum(rows), 0) FROM retention_receipts"
        ).scalar()
    assert 22 - count == receipted  # the blocked batch rolled back; nothing half-recorded
    again = run("run", "--allow-large-deletes", env=env)
    assert again.code == 0, again.stderr


def _wait_for_lock_wait(url: str) -> None:
    engine = engine_for(url)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                waiting = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'retention'"
                    " AND wait_event_type = 'Lock'"
                ).scalar()
            if waiting:
                return
            time.sleep(0.05)
        raise AssertionError("the run never waited on the row lock")
    finally:
        engine.dispose()


def test_schedule_runs_and_servesparse_metrics(pg_url: str, tmp_path: Path) -> None:
    insert(engine_for(pg_url), _known())
    port = free_port()
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_LOG_FORMAT="json",
    )
    process = start_schedule(env, port)
    try:
        values: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            values = scrape_metrics(port)
            if values.get('retention_run_outcome{exit_code="0"}') == 1.0:
                break
            time.sleep(0.2)
        assert values['retention_rows_deleted{object_type="project_logs"}'] in (9.0, 0.0)
        assert values['retention_run_outcome{exit_code="0"}'] == 1.0
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        assert process.returncode in (0, 5)
    finally:
        if process.poll() is None:
            process.kill()
    with engine_for(pg_url).connect() as conn:
        runs = conn.exec_driver_sql("SELECT count(*) FROM retention_runs").scalar()
    assert runs >= 1
    assert surviving_rows(engine_for(pg_url)) == {
        *(f"l-{i}" for i in range(3)),
        *(f"d-{i}" for i in range(2)),
    }


def test_json_logs_have_run_and_action_and_never_the_token(
    pg_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    insert(engine_for(pg_url), _known())
    fake_cp.projects = [project(P1, "p1")]
    fake_cp.automations = [retention_automation(P1, "project_logs", 30)]
    token = token_file.read_text().strip()
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_LOG_FORMAT="json",
        RETENTION_LOG_LEVEL="DEBUG",
        BRAINTRUST_API_URL=fake_cp.url,
        RETENTION_SERVICE_TOKEN_FILE=str(token_file),
    )
    result = run("run", "--allow-large-deletes", "--audit", env=env)
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines
    assert all({"ts", "level", "run_id", "action", "message"} <= set(line) for line in lines)
    assert {line["action"] for line in lines} >= {"delete", "report"}
    assert any(line["run_id"] == 1 for line in lines)
    assert token not in result.stderr and token not in result.stdout


def test_status_is_a_health_check(pg_url: str, tmp_path: Path) -> None:
    insert(engine_for(pg_url), _known())
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
        RETENTION_NOW=NOW.isoformat(),
    )
    never = run("status", "--max-age", "36h", "--format", "json", env=env)
    assert never.code == 1 and json.loads(never.stdout)["problems"] == ["no successful run yet"]
    assert run("run", "--allow-large-deletes", env=env).code == 0
    healthy = run("status", "--max-age", "36h", "--format", "json", env=env)
    assert healthy.code == 0, healthy.stderr
    doc = json.loads(healthy.stdout)
    assert doc["healthy"] is True and doc["runs"][0]["status"] == "succeeded"
    assert doc["runs"][0]["mode"] == "run"  # recorded as what started it
    assert doc["backlog"]["project_logs"] == {"rows": 0, "segments": 0, "lag_seconds": 0}
    stale = run("status", "--max-age", "0", "--no-backlog", env=env)
    assert stale.code == 1 and "more than --max-age" in stale.stdout
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO retention_runs (mode, status, started_at, pinned_now, plan_hash, plan,"
            " error) VALUES ('run', 'failed', now(), now(), '', '{}', 'DatabaseError: gone')"
        )
    failed = run("status", "--no-backlog", "--format", "json", env=env)
    assert failed.code == 1
    assert json.loads(failed.stdout)["problems"][0].startswith("the last run (")


@pytest.mark.parametrize("missing", ["--cron"])
def test_schedule_needs_an_expression(missing: str, tmp_path: Path) -> None:
    result = run("schedule", env=clean_env(RETENTION_STATE_DIR=str(tmp_path)))
    assert result.code == 2 and "no schedule" in result.stderr
    bad = run("schedule", missing, "every day", env=clean_env(RETENTION_STATE_DIR=str(tmp_path)))
    assert bad.code == 2 and "invalid cron expression" in bad.stderr


def test_two_workers_started_at_once_one_runs(pg_url: str, tmp_path: Path) -> None:
    scenario = generate(83, projects=2, events=20_000)
    insert(engine_for(pg_url), scenario)
    policies = _policies(tmp_path, policy_toml(defaults={"project_logs": 10}))
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_BATCH_SIZE="20",
    )
    command = [retention_command(), "run", "--allow-large-deletes"]
    first = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    second = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    outs = [p.communicate(timeout=120)[1] for p in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 7], outs
    days = {(p, "project_logs"): 10.0 for p in scenario.project_ids()}
    assert surviving_rows(engine_for(pg_url)) == Expect(days=days).survivors(scenario)
    with engine_for(pg_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM retention_runs").scalar() == 1
