"""``retention join``: another worker for a running purge's block sweep.

Run it next to ``retention purge`` (more processes, or the other pods of an Indexed Job): it
waits up to ``RETENTION_JOIN_WAIT`` for a running purge with block-sweep units left, claims
units from that run's queue until none is left, and exits. It takes no run lock and plans
nothing: the run's leader decided what expires (targets, cutoffs, held objects) and
publishes holds added during the run; every batch re-reads them. The leader finishes the
run (segments, experiments, the report) once every unit is done, and takes over the unit of
a worker that died.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from . import blocksweep, bulk, logs, migrate, workqueue
from .db import snapshot, translate_errors
from .deleter import BatchContext
from .errors import UsageError
from .runs import batch_engine, check_data_plane
from .worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JoinReport:
    worker: str
    run_id: int | None  # None: no run to join came within the wait
    complete: bool  # nothing left to claim (False: stopped, or gave up on a lock)
    rows: int
    units: int
    seconds: float
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "worker": self.worker,
            "run_id": self.run_id,
            "status": "succeeded" if self.complete else "partial",
            "rows": self.rows,
            "units": self.units,
            "seconds": round(self.seconds, 3),
            "note": self.note,
        }


def join(worker: Worker, *, poll: float = 0.25) -> JoinReport:
    database = worker.database
    settings = worker.settings
    if database.is_sqlite:
        raise UsageError("join needs PostgreSQL: the embedded SQLite database has one writer")
    crew = bulk.Crew.for_this_process(settings)
    started = time.monotonic()
    with translate_errors(database):
        engine = batch_engine(worker)
        try:
            with engine.connect() as conn:
                check_data_plane(conn, worker.tables, ("events",))
                with snapshot(conn):
                    migrate.require_current(conn)
                deadline = started + settings.join_wait.total_seconds()
                run_id = None
                while run_id is None:
                    with conn.begin():
                        run_id = workqueue.open_run(conn)
                    if run_id is None:
                        if worker.should_stop() or time.monotonic() >= deadline:
                            log.info("join: no running purge with block-sweep work")
                            return JoinReport(crew.me, None, True, 0, 0, time.monotonic() - started)
                        time.sleep(poll)
                logs.set_run(run_id)
                log.info("join: worker %s on run %d", crew.me, run_id)
                ctx = BatchContext(
                    conn=conn,
                    tables=worker.tables,
                    run_id=run_id,
                    batch_size=settings.batch_size,
                    clock=worker.clock,
                    should_stop=worker.should_stop,
                    holds=worker.hold_watcher(),  # applied to every batch here too
                    lock_retries=settings.lock_retries,
                )
                sizer = blocksweep.BlockSizer(
                    blocks=settings.sweep_blocks, target=settings.batch_target_seconds
                )
                result = bulk.work_units(ctx, crew, sizer)
        finally:
            engine.dispose()
    log.info("join: %d rows in %d units", result.rows, result.units)
    return JoinReport(
        crew.me,
        run_id,
        result.complete,
        result.rows,
        result.units,
        time.monotonic() - started,
        result.note,
    )
