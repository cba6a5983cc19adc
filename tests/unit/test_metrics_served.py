"""``schedule``'s /metrics: each update swaps in the latest run's metrics whole."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import generate_latest

from retention import metrics

AT = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def _run(code: int) -> metrics.RunMetrics:
    return metrics.RunMetrics(
        report=None, exit_code=code, duration_seconds=1.5, finished=AT, last_success=None
    )


def test_an_update_replaces_the_served_metrics_whole() -> None:
    registry = metrics.CollectorRegistry()
    metrics.update(registry, _run(0))
    metrics.update(registry, _run(4))
    text = generate_latest(registry).decode()
    outcomes = [line for line in text.splitlines() if line.startswith("retention_run_outcome{")]
    assert 'retention_run_outcome{exit_code="4"} 1.0' in outcomes
    assert 'retention_run_outcome{exit_code="0"} 0.0' in outcomes
    assert len(outcomes) == len(set(outcomes)) == len(metrics.ExitCode)
    # a run without a report: no per-type series at all
    assert "retention_backlog_rows{" not in text
