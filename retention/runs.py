"""A run's connection and record: lock and checks, open or reopen, warnings, status, finish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from . import dataplane, migrate, report, state, workqueue
from .db import make_engine, snapshot, translate_errors
from .deleter import GAVE_UP
from .models import Phase, Plan, RunStatus, SweepOutcome, TargetOutcome
from .state import Checkpoint, RunRecord
from .tables import DataPlaneTables
from .worker import Worker

log = logging.getLogger(__name__)

ALL_TABLES = ("events", "objects", "segments")


def check_data_plane(conn: Connection, tables: DataPlaneTables, roles: Sequence[str]) -> None:
    """Every table and column the run needs, and on SQLite every value's spelling."""
    with snapshot(conn):
        dataplane.check_schema(conn, tables, roles)
        if conn.dialect.name == "sqlite":
            dataplane.check_sqlite_values(conn, tables, roles)


def batch_engine(worker: Worker) -> Engine:
    """An engine whose sessions carry the batches' lock and statement timeouts."""
    settings = worker.settings
    return make_engine(
        worker.database,
        lock_timeout=settings.lock_timeout,
        statement_timeout=settings.statement_timeout,
    )


@contextmanager
def locked(worker: Worker, roles: Sequence[str] = ALL_TABLES) -> Iterator[Connection]:
    """The run's one connection, holding the run lock, after the schema checks.

    Driver errors inside the block are translated (exit 4); a second run exits 7.
    """
    database = worker.database
    with translate_errors(database):
        engine = batch_engine(worker)
        try:
            with state.run_lock(engine, database) as conn:
                check_data_plane(conn, worker.tables, roles)
                with snapshot(conn):
                    migrate.require_current(conn)
                if conn.dialect.name == "postgresql":
                    with conn.begin():  # sweeps of earlier leaders wait for this one's
                        workqueue.disown(conn)
                yield conn
        finally:
            engine.dispose()


def open_run(
    conn: Connection,
    clock: datetime,
    resumed: RunRecord | None,
    *,
    mode: str,
    now: datetime,
    plan: dict[str, Any],
    plan_hash: str | None = None,
    approval: str | None = None,
) -> tuple[int, dict[str, Checkpoint]]:
    """Start a run, or reopen the resumed one with its checkpoints."""
    plan_hash = plan_hash or report.plan_hash(plan)
    with conn.begin():
        if resumed is not None:
            state.reopen_run(
                conn, resumed, clock=clock, plan_hash=plan_hash, plan=plan, approval=approval
            )
            return resumed.id, state.load_checkpoints(conn, resumed.id)
        run = state.start_run(
            conn,
            mode=mode,
            now=now,
            clock=clock,
            plan_hash=plan_hash,
            plan=plan,
            approval=approval,
        )
        return run.id, {}


def run_warnings(
    plan: Plan,
    run_id: int,
    checkpoints: dict[str, Checkpoint],
    guarded: dict[str, str],
    swept: SweepOutcome | None,
    marking: bool,
) -> list[str]:
    planned = {t.key for t in plan.targets}
    warnings = list(plan.warnings)
    for c in checkpoints.values():
        if c.target in planned or not (c.rows or c.objects or c.segments):
            continue
        warnings.append(
            f"run {run_id} deleted {c.rows:,} rows"
            + (f" and {c.objects:,} experiments" if c.objects else "")
            + (f" and marked {c.segments:,} segments" if c.segments else "")
            + f" in earlier attempts for {c.target}, no longer planned (see its receipts)"
        )
    unmarked = sum(t.counts.segments for t in plan.targets if t.key not in guarded)
    if not marking and unmarked:
        warnings.append(
            f"RETENTION_OBJECT_STORE_URL is not set: {unmarked:,} expired segments were "
            "neither marked nor swept"
        )
    if swept is not None and swept.failed:
        warnings.append(
            f"{swept.failed:,} segment files could not be deleted; their index rows stay "
            "and the next sweep retries them"
        )
    if swept is not None and swept.refused:
        warnings.append(
            f"{swept.refused:,} segments have object keys outside the store URL; refused "
            "(their files and index rows stay; fix the keys or RETENTION_OBJECT_STORE_URL)"
        )
    return warnings


def run_status(
    outcomes: Sequence[TargetOutcome], guarded: dict[str, str], swept: SweepOutcome | None
) -> RunStatus:
    stopped = any(o.phase is not Phase.DONE for o in outcomes)
    if stopped or (swept is not None and (swept.stopped or swept.failed or swept.refused)):
        return RunStatus.PARTIAL
    return RunStatus.GUARDED if guarded else RunStatus.SUCCEEDED


STOPPED_BY_BUDGET = "the time budget (RETENTION_MAX_RUNTIME) was spent"
STOPPED_BY_SIGNAL = "stopped by a signal"
STOPS = frozenset({STOPPED_BY_BUDGET, STOPPED_BY_SIGNAL})  # partial, and nothing went wrong


class StopCheck:
    """Between batches: the time budget spent, or a signal; remembers which."""

    def __init__(self, worker: Worker, started: float) -> None:
        self.worker = worker
        self.started = started
        self.reason = ""

    def __call__(self) -> bool:
        budget = self.worker.settings.max_runtime
        if budget is not None and time.monotonic() - self.started > budget.total_seconds():
            self.reason = STOPPED_BY_BUDGET
        elif self.worker.should_stop():
            self.reason = STOPPED_BY_SIGNAL
        return bool(self.reason)


def run_problem(
    stop: str,
    outcomes: Sequence[TargetOutcome],
    guarded: Mapping[str, str],
    swept: SweepOutcome | None,
) -> str | None:
    """What the run records as its error when it did not simply succeed: the stop reason,
    the guards that held targets back, targets given up on, files not deleted. ``retention
    status`` calls a run unhealthy when this is anything but a stop (``STOPS``)."""
    parts = [stop] if stop else []
    if guarded:
        held = "; ".join(f"{key}: {why}" for key, why in sorted(guarded.items()))
        parts.append(f"held back by a guard: {held}")
    # a stop leaves targets unfinished by design; anything else is a problem, and so is a
    # target given up after lock waits before the stop came
    left = [
        f"{o.target.key} ({o.note})"
        for o in outcomes
        if o.phase is not Phase.DONE and (not stop or o.note.startswith(GAVE_UP))
    ]
    if left:
        parts.append(f"unfinished: {'; '.join(left)}")
    if swept is not None and (swept.failed or swept.refused):
        parts.append(
            f"segment files not deleted: {swept.failed:,} failed, {swept.refused:,} refused"
        )
    return "; ".join(parts)[:500] if parts else None


def error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def finish(
    conn: Connection,
    clock: Callable[[], datetime],
    run_id: int,
    status: RunStatus,
    error: str | None = None,
    totals: tuple[int, int, int] | None = None,
) -> None:
    if conn.invalidated:
        # The session (and with it the run lock) is gone. A new session would write without
        # the lock, perhaps over a run that resumed meanwhile: leave the run to be resumed.
        log.warning("run %d: database session lost; the next run resumes it", run_id)
        return
    try:
        if conn.in_transaction():
            conn.rollback()
        with conn.begin():
            state.finish_run(conn, run_id, status=status, clock=clock(), error=error, totals=totals)
    except Exception:  # the original error matters more; the run stays resumable
        if error is None:
            raise
        log.warning("could not record the failed run %d", run_id)
