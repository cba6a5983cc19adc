"""What a run publishes matches the data plane after it: the backlog metric after a resumed
run that stopped again counts what is left."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prometheus_client import generate_latest

from retention import metrics
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml

P = UUID("30000000-0000-4000-8000-000000000003")


def _gauge(report_metrics: metrics.RunMetrics, name: str) -> float:
    text = generate_latest(metrics.registry_for(report_metrics)).decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{object_type="project_logs"}} '):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not found")


def test_backlog_metric_after_a_resumed_run_that_stopped_again_counts_what_is_left(
    db_url: str, tmp_path: Path
) -> None:
    """``retention_backlog_rows`` is the number of expired rows not yet deleted after the
    run. A run stopped (time budget, signal) and resumed, and stopped again, has deleted rows
    in both attempts; its backlog is what is still expired in the data plane. The metric
    once subtracted the rows of both attempts (the checkpoint's running total) from the
    resumed plan, which counted only the rows left after the first attempt: with 100 expired
    rows, 30 deleted by the first attempt and 20 by the second, it reported 20 where 50 were
    left (and 0 once the earlier attempts deleted more than the second plan counted), so a
    backlog alert stayed quiet."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(100):
        s.add_event("project_logs", P, P, NOW - timedelta(days=40 + i % 50), f"r{i}")
    insert(engine_for(db_url), s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    first = purge(
        worker(db_url, policies, batch_size=10, should_stop=StopAfter(3), delete_strategy="keyset")
    )
    assert first.status is RunStatus.PARTIAL
    second = purge(
        worker(db_url, policies, batch_size=10, should_stop=StopAfter(2), delete_strategy="keyset")
    )
    assert second.status is RunStatus.PARTIAL and second.resumed
    engine = engine_for(db_url)
    try:
        with engine.connect() as conn:
            left = int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
    finally:
        engine.dispose()
    assert 0 < left < 100
    run = metrics.RunMetrics(
        report=second, exit_code=5, duration_seconds=1.0, finished=NOW, last_success=None
    )
    assert _gauge(run, "retention_backlog_rows") == left
