"""Review: what ``retention run`` tells an operator through its metrics when it fails."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
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


def _metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_a_failed_run_does_not_report_the_backlog_as_gone(sqlite_url: str, tmp_path: Path) -> None:
    """The first run is guarded (exit 6) and its textfile says 9 expired rows are waiting.
    The next run fails before it has a plan (a broken policy file: exit 2); it deleted
    nothing, and the 9 rows are still there. Its metrics must not say the backlog is 0 and
    no expired row is late (retention_backlog_rows: "Expired rows not yet deleted after
    the last run"): a failed run does not know the backlog, so the series is left out (or
    NaN), never 0. ``metrics.registry_for`` sets every type's backlog and lag to 0 when the
    run has no report: a backlog alert or dashboard sees "all caught up" on every failure."""
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
    guarded = run("run", env=env)
    assert guarded.code == 6, guarded.stderr
    before = _metrics(textfile.read_text())
    assert before[BACKLOG] == 9.0 and before[LAG] > 0

    (policies / "p.toml").write_text("[defaults]\nproject_logs = 'soon'\n")
    failed = run("run", env=env)
    assert failed.code == 2, failed.stderr
    after = _metrics(textfile.read_text())
    assert after['retention_run_outcome{exit_code="2"}'] == 1.0
    with engine_for(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 12

    assert math.isnan(after.get(BACKLOG, math.nan)), after.get(BACKLOG)
    assert math.isnan(after.get(LAG, math.nan)), after.get(LAG)
