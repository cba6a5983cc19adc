"""No silent failures in the production surface: a metrics failure never changes a run's
outcome, an idle scheduler stops cleanly at once, and its /metrics keep the last success.
Each test states the contract it checks."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from tests.acceptance.cli import clean_env, retention_command, run, scrape_metrics, start_schedule
from tests.conftest import engine_for
from tests.pg import free_port
from tests.support import NOW, Scenario, insert, policy_toml

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")


def _scenario() -> Scenario:
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=500))
    for i in range(12):
        s.add_event("project_logs", P1, P1, NOW - timedelta(days=10 * (i + 1)), f"l-{i}")
    return s


def _policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.toml").write_text(policy_toml(projects=[(P1, {"project_logs": 30})]))
    return folder


def test_a_bad_pushgateway_url_does_not_fail_a_completed_run(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A metrics failure is logged and never fails the run: a Pushgateway URL that urllib
    rejects with ValueError (http.client.InvalidURL), raised in the ``finally`` of the run,
    leaves the succeeded purge at exit 0 with its JSON report on stdout (DESIGN §5)."""
    insert(engine_for(sqlite_url), _scenario())
    env = clean_env(
        RETENTION_DATABASE_URL=sqlite_url,
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_PUSHGATEWAY_URL="http://127.0.0.1:notaport",
    )
    result = run("run", "--allow-large-deletes", env=env)
    with engine_for(sqlite_url).connect() as conn:
        status = conn.exec_driver_sql("SELECT status FROM retention_runs").scalars().all()
    assert status == ["succeeded"]  # the purge itself completed
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["rows"] == 9


def test_an_idle_schedule_stops_at_once_and_cleanly_on_sigterm(tmp_path: Path) -> None:
    """``schedule`` between runs: SIGTERM ends the loop at once with exit 0. Its sleep waits
    on the stop flag (a plain sleep would resume after the handler, PEP 475, and the stop
    timer would report the idle stop as a partial run: exit 5 after 10 s)."""
    env = clean_env(
        RETENTION_STATE_DIR=str(tmp_path),
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
        RETENTION_LOG_FORMAT="json",
    )
    process = subprocess.Popen(
        [retention_command(), "schedule", "--cron", "0 3 1 1 *", "--metrics-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "schedule ...: next run at ...": now idle
        assert "next run at" in line, line
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
        elapsed = time.monotonic() - started
        rest = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0, (process.returncode, round(elapsed, 1), rest)
    assert "not stopped within" not in rest
    assert elapsed < 5


def test_schedule_metrics_keep_the_last_success_after_a_failed_run(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``schedule``'s /metrics: retention_last_success_timestamp_seconds is "When the last
    successful run ended (0: never)", and operations.md alerts on a last success older than
    36 h. After a success and then a failed run it still shows that success (read from the
    database, as the textfile and Pushgateway path does), not 0."""
    insert(engine_for(sqlite_url), _scenario())
    policies = _policies(tmp_path)
    port = free_port()
    env = clean_env(
        RETENTION_DATABASE_URL=sqlite_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
    )
    process = start_schedule(env, port)
    try:

        def wait_for(code: int) -> dict[str, float]:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                values = scrape_metrics(port)
                if values.get(f'retention_run_outcome{{exit_code="{code}"}}') == 1.0:
                    return values
                time.sleep(0.2)
            raise AssertionError(f"no run ended with exit {code}")

        ok = wait_for(0)
        succeeded = ok["retention_last_success_timestamp_seconds"]
        assert succeeded > 0
        (policies / "p.toml").write_text("[defaults]\nproject_logs = 'soon'\n")  # exit 2
        failed = wait_for(2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    # the same successful run's end: as the database recorded it, a few ms before the
    # scheduler's own timestamp of it
    assert failed["retention_last_success_timestamp_seconds"] == pytest.approx(succeeded, abs=5)
