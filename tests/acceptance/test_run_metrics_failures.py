"""What ``retention run`` tells an operator through its metrics when it fails."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from tests.acceptance.cli import clean_env, parse_metrics, run, scrape_metrics, start_schedule
from tests.conftest import engine_for
from tests.pg import free_port
from tests.support import NOW, Scenario, insert, policy_toml

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
BACKLOG = 'retention_backlog_rows{object_type="project_logs"}'
LAG = 'retention_oldest_expired_lag_seconds{object_type="project_logs"}'


def _scenario() -> Scenario:
    """P1's logs: 9 of 12 rows are past a 30-day policy."""
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=500))
    for i in range(12):
        s.add_event("project_logs", P1, P1, NOW - timedelta(days=10 * (i + 1)), f"l-{i}")
    return s


def _world(sqlite_url: str, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """P1's logs under a 30-day policy, metrics to a textfile: (policies, textfile, env)."""
    insert(engine_for(sqlite_url), _scenario())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(policy_toml(projects=[(P1, {"project_logs": 30})]))
    textfile = tmp_path / "textfile" / "retention.prom"
    env = clean_env(
        RETENTION_DATABASE_URL=sqlite_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_METRICS_TEXTFILE=str(textfile),
    )
    return policies, textfile, env


def test_a_failed_run_does_not_report_the_backlog_as_gone(sqlite_url: str, tmp_path: Path) -> None:
    """The first run is guarded (exit 6) and its textfile says 9 expired rows are waiting.
    The next run fails before it has a plan (a broken policy file: exit 2); it deleted
    nothing, and the 9 rows are still there. Its metrics must not say the backlog is 0 and
    no expired row is late (retention_backlog_rows: "Expired rows not yet deleted after
    the last run"): a failed run does not know the backlog, so the series is left out (or
    NaN), never 0. ``metrics.registry_for`` sets every type's backlog and lag to 0 when the
    run has no report: a backlog alert or dashboard sees "all caught up" on every failure."""
    policies, textfile, env = _world(sqlite_url, tmp_path)
    guarded = run("run", env=env)
    assert guarded.code == 6, guarded.stderr
    before = parse_metrics(textfile.read_text())
    assert before[BACKLOG] == 9.0 and before[LAG] > 0

    (policies / "p.toml").write_text("[defaults]\nproject_logs = 'soon'\n")
    failed = run("run", env=env)
    assert failed.code == 2, failed.stderr
    after = parse_metrics(textfile.read_text())
    assert after['retention_run_outcome{exit_code="2"}'] == 1.0
    with engine_for(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 12

    assert math.isnan(after.get(BACKLOG, math.nan)), after.get(BACKLOG)
    assert math.isnan(after.get(LAG, math.nan)), after.get(LAG)


def test_schedule_logs_a_failed_run_without_the_previous_runs_id(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``retention schedule``: run 1 succeeds, the next run fails before it opens a run
    (a broken policy file: exit 2). Its JSON log line "run failed: ..." must not carry
    ``run_id`` 1: run 1 succeeded, and an operator who greps the logs for run 1 (or joins
    them with ``retention receipts --run 1``) would find a failure there. Outside a run the
    id is null (logs.py: "``-`` outside a run"). ``engine`` sets the id with
    ``logs.set_run`` and nothing resets it, so in the long-running loop every later line
    carries the last run's id (and its last action)."""
    insert(engine_for(sqlite_url), _scenario())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(policy_toml(projects=[(P1, {"project_logs": 30})]))
    port = free_port()
    env = clean_env(
        RETENTION_DATABASE_URL=sqlite_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_LOG_FORMAT="json",
    )
    with tempfile.TemporaryFile("w+") as stderr:
        process = start_schedule(env, port, stderr=stderr)
        try:

            def wait_for(code: int) -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if (
                        scrape_metrics(port).get(f'retention_run_outcome{{exit_code="{code}"}}')
                        == 1.0
                    ):
                        return
                    time.sleep(0.2)
                raise AssertionError(f"no run ended with exit {code}")

            wait_for(0)
            (policies / "p.toml").write_text("[defaults]\nproject_logs = 'soon'\n")  # exit 2
            wait_for(2)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stderr.seek(0)
        lines = [json.loads(line) for line in stderr.read().splitlines() if line.startswith("{")]
    assert any(line["run_id"] == 1 and line["action"] == "report" for line in lines)
    failed = [line for line in lines if line["message"].startswith("run failed:")]
    assert failed, lines[-5:]
    assert [line["run_id"] for line in failed] == [None] * len(failed)


@pytest.mark.parametrize(
    "flags",
    [
        ("--output", "{tmp}/missing-volume/report.json"),  # the report folder is not mounted
        ("--plan", "{tmp}/missing-volume/plan.json"),  # the reviewed plan is not there
    ],
    ids=["output", "plan"],
)
def test_a_run_refused_at_its_start_replaces_the_last_successs_metrics(
    sqlite_url: str, tmp_path: Path, flags: tuple[str, str]
) -> None:
    """After a successful run, the next ``retention run`` exits 2 at its start (its report
    file cannot be written, or its plan file cannot be read). The textfile must say so:
    retention_run_outcome{exit_code="2"} 1, as for every other failed run (operations.md
    alerts on outcome 2). ``commands.purge`` checks the output (``_check_writable``) and
    ``_deleting_run`` reads the plan before the ``try`` whose ``finally`` publishes, so the
    textfile keeps the successful run's outcome 0: the failure is silent in the metrics."""
    _, textfile, env = _world(sqlite_url, tmp_path)
    done = run("run", "--allow-large-deletes", env=env)
    assert done.code == 0, done.stderr
    assert parse_metrics(textfile.read_text())['retention_run_outcome{exit_code="0"}'] == 1.0

    flag, value = flags
    refused = run("run", flag, value.format(tmp=tmp_path), env=env)

    assert refused.code == 2, refused.stderr
    values = parse_metrics(textfile.read_text())
    assert values['retention_run_outcome{exit_code="2"}'] == 1.0
    assert values['retention_run_outcome{exit_code="0"}'] == 0.0
