"""Prometheus metrics of a run: written to a node-exporter textfile, pushed to a
Pushgateway, or served on ``/metrics`` by ``retention schedule``.

Per object type: rows, segments and bytes deleted in the last run, the backlog (expired
rows not deleted yet) and how far past its cutoff the oldest expired row is. Per run: the
duration, the exit code, and the time of the last success.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.metrics_core import Metric

__all__ = ["CollectorRegistry", "RunMetrics", "publish", "registry_for", "serve", "update"]
from prometheus_client import start_http_server as _start_http_server

from .errors import ExitCode
from .models import OBJECT_TYPES, RunReport

log = logging.getLogger(__name__)
JOB = "retention"


@dataclass(frozen=True)
class RunMetrics:
    report: RunReport | None  # None: the run failed before it had a plan
    exit_code: int
    duration_seconds: float
    finished: datetime
    last_success: datetime | None  # of any earlier run, when this one did not succeed


def registry_for(run: RunMetrics, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    registry = registry or CollectorRegistry()
    labels = ["object_type"]
    rows = Gauge(
        "retention_rows_deleted", "Rows deleted by the last run", labels, registry=registry
    )
    segments = Gauge(
        "retention_segments_marked",
        "Segments marked unused by the last run",
        labels,
        registry=registry,
    )
    size = Gauge(
        "retention_bytes_marked",
        "Bytes of the segments marked by the last run",
        labels,
        registry=registry,
    )
    backlog = Gauge(
        "retention_backlog_rows",
        "Expired rows not yet deleted after the last run",
        labels,
        registry=registry,
    )
    lag = Gauge(
        "retention_oldest_expired_lag_seconds",
        "Seconds the oldest expired row not yet deleted is past its cutoff",
        labels,
        registry=registry,
    )
    files = Gauge(
        "retention_segment_files_swept",
        "Segment files deleted by the last sweep",
        registry=registry,
    )
    duration = Gauge(
        "retention_run_duration_seconds", "Duration of the last run", registry=registry
    )
    outcome = Gauge(
        "retention_run_outcome",
        "1 for the exit code of the last run",
        ["exit_code"],
        registry=registry,
    )
    finished = Gauge(
        "retention_last_run_timestamp_seconds", "When the last run ended", registry=registry
    )
    success = Gauge(
        "retention_last_success_timestamp_seconds",
        "When the last successful run ended (0: never)",
        registry=registry,
    )

    # A run without a report (it failed before it had a plan) knows neither what it deleted
    # nor the backlog: the per-type series are left out, not set to 0 ("all caught up").
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0] * 5)
    if run.report is not None:
        for kind in OBJECT_TYPES:
            totals[kind.value]  # every type appears, with zeros
        outcomes = {o.target.key: o for o in run.report.outcomes}
        for target in run.report.plan.targets:
            t = totals[target.object_type.value]
            done = outcomes.get(target.key)
            deleted = done.rows if done else 0
            t[0] += deleted
            t[1] += done.segments if done else 0
            t[2] += done.bytes if done else 0
            # the plan (a resumed run's) counted what earlier attempts left: only this
            # attempt's rows come off it
            now_deleted = deleted - (done.earlier_rows if done else 0)
            left = (
                max(target.counts.rows - now_deleted, 0)
                if not run.report.dry_run
                else (target.counts.rows)
            )
            t[3] += left
            cutoff, oldest = target.resolution.cutoff, target.counts.oldest_row
            if left and cutoff is not None and oldest is not None and oldest < cutoff:
                t[4] = max(t[4], (cutoff - oldest).total_seconds())
        if run.report.sweep is not None:
            files.set(run.report.sweep.files)
    for name, values in totals.items():
        rows.labels(name).set(values[0])
        segments.labels(name).set(values[1])
        size.labels(name).set(values[2])
        backlog.labels(name).set(values[3])
        lag.labels(name).set(values[4])
    duration.set(run.duration_seconds)
    for code in ExitCode:
        outcome.labels(str(int(code))).set(1 if int(code) == run.exit_code else 0)
    finished.set(run.finished.timestamp())
    last = run.finished if run.exit_code == ExitCode.OK else run.last_success
    if last is not None:
        success.set(last.timestamp())
    return registry


class _Current:
    """The one collector ``schedule`` serves: the latest run's metrics, swapped whole, so a
    scrape never sees a half-replaced set (or none)."""

    def __init__(self) -> None:
        self.inner = CollectorRegistry()

    def collect(self) -> Iterable[Metric]:
        return self.inner.collect()


def update(registry: CollectorRegistry, run: RunMetrics) -> None:
    """Replace the served metrics with those of ``run`` (for ``schedule``'s /metrics)."""
    fresh = registry_for(run)
    current = next((c for c in registry._collector_to_names if isinstance(c, _Current)), None)
    if current is None:
        current = _Current()
        registry.register(current)
    current.inner = fresh


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """Atomically, as node-exporter's textfile collector expects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(generate_latest(registry))
    os.chmod(temp, 0o644)
    os.replace(temp, path)


def push(url: str, registry: CollectorRegistry) -> None:
    push_to_gateway(url, job=JOB, registry=registry, timeout=10)


def serve(port: int, registry: CollectorRegistry, address: str = "0.0.0.0") -> None:  # noqa: S104
    _start_http_server(port, addr=address, registry=registry)


def publish(run: RunMetrics, *, textfile: Path | None, pushgateway: str | None) -> None:
    """Write and push as configured; a metrics failure is logged, never fails the run."""
    if textfile is None and pushgateway is None:
        return
    registry = registry_for(run)
    if textfile is not None:
        try:
            write_textfile(textfile, registry)
        except OSError as exc:
            log.error("metrics: cannot write %s: %s", textfile, exc.strerror)
    if pushgateway is not None:
        try:
            push(pushgateway, registry)
        except Exception as exc:  # a bad URL raises ValueError, not OSError
            log.error("metrics: cannot push to the Pushgateway: %s", type(exc).__name__)
