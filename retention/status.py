"""``retention status``: last runs, runs in progress with their checkpoints, the backlog and
lag past cutoff per object type, and a health verdict for probes and alerts.

Unhealthy (exit 1) when the last purge failed, was held back by a guard, was abandoned, or
ended partial for any reason but a stop (time budget, signal): files the store did not
delete, keys refused, a target given up after lock timeouts. Also when a run is recorded as
running but nobody holds the run lock (its worker was killed), and when the last success is
older than ``--max-age`` (or there never was one).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from . import engine, migrate, state
from .db import make_engine, snapshot, translate_errors
from .models import OBJECT_TYPES, RunStatus
from .runs import STOPS
from .state import Checkpoint, RunSummary
from .worker import Worker


@dataclass
class Backlog:
    rows: int = 0
    segments: int = 0
    lag_seconds: float = 0.0  # how far past its cutoff the oldest expired row is


@dataclass
class StatusReport:
    clock: datetime
    runs: list[RunSummary]
    in_progress: dict[int, list[Checkpoint]]
    last_success: datetime | None
    backlog: dict[str, Backlog] | None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


def collect(worker: Worker, *, max_age: timedelta | None, backlog: bool = True) -> StatusReport:
    database = worker.database
    clock = worker.clock()
    with translate_errors(database):
        db_engine = make_engine(database, read_only=True)
        try:
            with db_engine.connect() as conn:
                with snapshot(conn):
                    migrate.require_current(conn)
                    runs = state.recent_runs(conn)
                    last = state.last_purge(conn)
                    last_success = state.last_success_time(conn)
                    in_progress = {
                        r.id: sorted(
                            state.load_checkpoints(conn, r.id).values(), key=lambda c: c.target
                        )
                        for r in runs
                        if r.status == RunStatus.RUNNING.value
                    }
                dead = _dead(conn, worker, sorted(in_progress))
        finally:
            db_engine.dispose()
    report = StatusReport(
        clock=clock,
        runs=runs,
        in_progress=in_progress,
        last_success=last_success,
        backlog=_backlog(worker) if backlog else None,
    )
    for run_id in dead:
        report.problems.append(
            f"run {run_id} is recorded as running, but no worker holds the run lock: it was "
            "killed (the next purge resumes it)"
        )
    if last is not None and last.status == RunStatus.ABANDONED.value:
        report.problems.append(
            f"the last run ({last.id}) never finished and was abandoned (too old to resume), "
            "and no purge has run since"
        )
    elif last is not None and last.status == RunStatus.FAILED.value:
        report.problems.append(f"the last run ({last.id}) failed: {last.error or 'no error'}")
    elif last is not None and last.status == RunStatus.GUARDED.value:
        report.problems.append(
            f"the last run ({last.id}) was {last.error or 'held back by a guard'}; review it "
            "with 'retention purge --dry-run'"
        )
    elif (
        last is not None
        and last.status == RunStatus.PARTIAL.value
        and last.error
        and last.error not in STOPS
    ):
        report.problems.append(f"the last run ({last.id}) is partial: {last.error}")
    if max_age is not None:
        if last_success is None:
            report.problems.append("no successful run yet")
        elif last_success - clock > worker.settings.max_clock_skew:
            # recorded by a clock that was ahead: judged as it stands, it would hide every
            # failure from --max-age until that time has passed
            report.problems.append(
                f"the last success is recorded at {last_success.isoformat()}, in the future "
                f"of this host's clock ({clock.isoformat()}): a clock is wrong, and --max-age "
                "cannot be judged"
            )
        elif clock - last_success > max_age:
            hours = (clock - last_success).total_seconds() / 3600
            report.problems.append(
                f"the last success was {hours:.1f} h ago, more than --max-age "
                f"({max_age.total_seconds() / 3600:g} h)"
            )
    return report


def _dead(conn: Connection, worker: Worker, running: list[int]) -> list[int]:
    """Runs recorded as running whose worker is gone: nobody holds the run lock, and they
    are still running when looked at again (not just finished)."""
    if not running:
        return []
    with conn.begin():
        held = state.run_lock_held(conn, worker.database)
    if held is not False:
        return []
    with snapshot(conn):
        return state.still_running(conn, running)


def _backlog(worker: Worker) -> dict[str, Backlog]:
    plan = engine.plan(worker).plan
    found: dict[str, Backlog] = defaultdict(Backlog)
    for kind in OBJECT_TYPES:
        found[kind.value]
    for target in plan.targets:
        item = found[target.object_type.value]
        item.rows += target.counts.rows
        item.segments += target.counts.segments
        cutoff, oldest = target.resolution.cutoff, target.counts.oldest_row
        if target.counts.rows and cutoff is not None and oldest is not None and oldest < cutoff:
            item.lag_seconds = max(item.lag_seconds, (cutoff - oldest).total_seconds())
    return dict(found)


def document(report: StatusReport) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "healthy": report.healthy,
        "problems": report.problems,
        "last_success": iso(report.last_success),
        "runs": [
            {
                "id": r.id,
                "mode": r.mode,
                "status": r.status,
                "started_at": iso(r.started_at),
                "finished_at": iso(r.finished_at),
                "pinned_now": iso(r.pinned_now),
                "rows": r.rows,
                "segments": r.segments,
                "bytes": r.bytes,
                "resumed": r.resumed,
                "error": r.error,
            }
            for r in report.runs
        ],
        "in_progress": {
            str(run_id): [
                {
                    "target": c.target,
                    "phase": c.phase.value,
                    "rows": c.rows,
                    "objects": c.objects,
                    "segments": c.segments,
                    "batches": c.batches,
                }
                for c in checkpoints
            ]
            for run_id, checkpoints in report.in_progress.items()
        },
        "backlog": None
        if report.backlog is None
        else {
            kind: {"rows": b.rows, "segments": b.segments, "lag_seconds": round(b.lag_seconds)}
            for kind, b in report.backlog.items()
        },
    }
