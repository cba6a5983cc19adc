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
from .db import make_engine, server_now, snapshot, translate_errors
from .errors import UsageError
from .models import RunStatus, SweepOutcome
from .objectstore import ObjectStore, open_store
from .planner import run_resolutions
from .runs import StopCheck, error_text, finish, locked, open_run, run_problem
from .segments import RestoreFilter, RestoreResult
from .sweeper import SweepContext, by_pair, record_segments, sweep
from .worker import Worker


def _store(worker: Worker, needs: str) -> ObjectStore:
    store = open_store(worker.settings)
    if store is None:
        raise UsageError(f"RETENTION_OBJECT_STORE_URL is not set: {needs}")
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
        stopped = self.outcome.stopped or self.outcome.failed or self.outcome.refused
        return RunStatus.PARTIAL if stopped else RunStatus.SUCCEEDED


def sweep_only(worker: Worker) -> SweepReport:
    """The second phase alone: files of segments unused for longer than the grace period
    that the policies (read as a purge reads them) and holds still expire. It changes no
    mark: a segment the policies now keep waits, unused, for the next purge to restore it."""
    store = _store(worker, "there is nothing to sweep")
    # a missing policy folder or an unreadable control plane stops it here (exit 2 or 3):
    # no holds read must never mean no holds
    policy_sets = worker.load_policies()
    started = time.monotonic()
    stop = StopCheck(worker, started)  # RETENTION_MAX_RUNTIME, or a signal
    with locked(worker) as conn:
        server = server_now(conn)
        now = worker.pinned_now(server)
        with snapshot(conn):
            resolutions, _ = run_resolutions(
                conn,
                worker.tables,
                policy_sets,
                now,
                min_retention_days=worker.settings.min_retention_days,
            )
        run_id, _ = open_run(conn, worker.clock(), None, mode="sweep", now=now, plan={})
        earlier, _ = worker.clock_bounds(server)  # a clock ahead must not shorten the grace
        threshold = earlier - worker.settings.grace_period
        try:
            outcome = sweep(
                SweepContext(
                    conn=conn,
                    tables=worker.tables,
                    store=store,
                    run_id=run_id,
                    threshold=threshold,
                    targets=by_pair(resolutions),
                    batch_size=worker.settings.sweep_batch_size,
                    clock=worker.clock,
                    should_stop=stop,
                    holds=worker.active_holds(now),
                )
            )
        except BaseException as error:
            finish(conn, worker.clock, run_id, RunStatus.FAILED, error=error_text(error))
            raise
        report = SweepReport(run_id, threshold, outcome, time.monotonic() - started)
        finish(
            conn,
            worker.clock,
            run_id,
            report.status,
            error=run_problem(stop.reason, (), {}, outcome),
            totals=(0, outcome.files, outcome.bytes),  # files deleted; no checkpoints
        )
        return report


@dataclass(frozen=True)
class RestoreReport:
    run_id: int
    threshold: datetime
    result: RestoreResult


def restore(worker: Worker, which: RestoreFilter) -> RestoreReport:
    """Return unused segments still in grace to live: it undoes a mark, nothing more. Only
    segments whose file is still in the store come back (a sweep killed between deleting
    files and their index rows leaves rows whose files are gone)."""
    store = _store(worker, "restore checks that each segment's file is still there")
    with locked(worker, ("segments",)) as conn:
        server = server_now(conn)
        now = worker.pinned_now(server)
        run_id, _ = open_run(conn, worker.clock(), None, mode="restore", now=now, plan={})
        # by the later clock: what a sweep may already have taken is not brought back
        _, later = worker.clock_bounds(server)
        threshold = later - worker.settings.grace_period
        with conn.begin():
            candidates, past = segments.restorable(conn, worker.tables, which, threshold)
        there = store.present([f.key for f in candidates])  # under the run lock: no sweep
        with conn.begin():
            restored = segments.revive(
                conn, worker.tables, [f for f in candidates if f.key in there], threshold
            )
            record_segments(
                conn,
                run_id,
                worker.clock(),
                restored,
                action="restore",
                source="retention restore",
            )
        result = RestoreResult(
            restored=restored,
            past_grace=past,
            missing=[f for f in candidates if f.key not in there],
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
    store = _store(worker, "there is no store to compare the index with")
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
