"""Segment maintenance outside a purge: ``sweep``, ``restore`` and ``segments check``.

``sweep`` and ``restore`` change the index, so they take the run lock and are recorded as
runs (modes "sweep" and "restore") with receipts. ``segments check`` only reads: it lists
the store under a prefix (the one place that lists) and compares it with the index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from . import dataplane, segments
from .db import make_engine, snapshot, translate_errors
from .errors import UsageError
from .models import RunStatus, SweepOutcome
from .objectstore import ObjectStore, open_store
from .runs import error_text, finish, locked, open_run
from .segments import RestoreFilter, RestoreResult
from .sweeper import SweepContext, record_segments, sweep
from .worker import Worker


def _store(worker: Worker) -> ObjectStore:
    store = open_store(worker.settings)
    if store is None:
        raise UsageError("RETENTION_OBJECT_STORE_URL is not set: there is nothing to sweep")
    store.check()
    return store


@dataclass(frozen=True)
class SweepReport:
    run_id: int
    threshold: datetime
    outcome: SweepOutcome
    seconds: float

    @property
    def status(self) -> RunStatus:
        stopped = self.outcome.stopped or self.outcome.failed
        return RunStatus.PARTIAL if stopped else RunStatus.SUCCEEDED


def sweep_only(worker: Worker) -> SweepReport:
    """The second phase alone: files of segments unused for longer than the grace period."""
    store = _store(worker)
    started = time.monotonic()
    with locked(worker, ("segments",)) as conn:
        now = worker.pinned_now()
        run_id, _ = open_run(conn, worker.clock(), None, mode="sweep", now=now, plan={})
        threshold = worker.clock() - worker.settings.grace_period
        try:
            outcome = sweep(
                SweepContext(
                    conn=conn,
                    tables=worker.tables,
                    store=store,
                    run_id=run_id,
                    threshold=threshold,
                    batch_size=worker.settings.sweep_batch_size,
                    clock=worker.clock,
                    should_stop=worker.should_stop,
                )
            )
        except BaseException as error:
            finish(conn, worker.clock, run_id, RunStatus.FAILED, error=error_text(error))
            raise
        report = SweepReport(run_id, threshold, outcome, time.monotonic() - started)
        finish(conn, worker.clock, run_id, report.status)
        return report


@dataclass(frozen=True)
class RestoreReport:
    run_id: int
    threshold: datetime
    result: RestoreResult


def restore(worker: Worker, which: RestoreFilter) -> RestoreReport:
    """Return unused segments still in grace to live: it undoes a mark, nothing more."""
    with locked(worker, ("segments",)) as conn:
        now = worker.pinned_now()
        run_id, _ = open_run(conn, worker.clock(), None, mode="restore", now=now, plan={})
        threshold = worker.clock() - worker.settings.grace_period
        with conn.begin():
            result = segments.restore(conn, worker.tables, which, threshold)
            record_segments(
                conn,
                run_id,
                worker.clock(),
                result.restored,
                action="restore",
                source="retention restore",
            )
        finish(conn, worker.clock, run_id, RunStatus.SUCCEEDED)
        return RestoreReport(run_id, threshold, result)


@dataclass
class CheckReport:
    prefix: str
    files: int = 0
    indexed: int = 0
    unindexed_files: list[str] = field(default_factory=list)  # files without an index row
    missing_files: list[str] = field(default_factory=list)  # index rows without a file


def check(worker: Worker, prefix: str | None) -> CheckReport:
    """Compare the store under ``prefix`` with the index; report, never delete."""
    store = _store(worker)
    database = worker.database
    report = CheckReport(prefix=prefix or "")
    with translate_errors(database):
        engine = make_engine(database, read_only=True)
        try:
            with engine.connect() as conn, snapshot(conn):
                dataplane.check_schema(conn, worker.tables, ("segments",))
                indexed = {
                    key
                    for key, _ in segments.index_keys(conn, worker.tables)
                    if key.startswith(report.prefix)
                }
        finally:
            engine.dispose()
    listed = set()
    for key, _size in store.list_keys(prefix):
        listed.add(key)
    report.files = len(listed)
    report.indexed = len(indexed)
    report.unindexed_files = sorted(listed - indexed)
    report.missing_files = sorted(indexed - listed)
    return report
