"""The worker's own state (DESIGN §4): runs, checkpoints, receipts, and the run lock.

The tables are created by the alembic migrations in ``retention/migrations``; the Table
objects here mirror them for queries. A batch's checkpoint and receipt are written with the
caller's connection, inside the transaction that deleted the batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    case,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, OID

from .db import Database
from .errors import LockedError
from .models import Cursor, Phase, RunStatus
from .tables import UTCDateTime, UUIDType

metadata = MetaData()

_id = BigInteger().with_variant(Integer(), "sqlite")

runs = Table(
    "retention_runs",
    metadata,
    Column("id", _id, Identity(), primary_key=True),
    Column("mode", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("heartbeat_at", UTCDateTime),
    Column("pinned_now", UTCDateTime, nullable=False),
    Column("plan_hash", Text, nullable=False),
    Column("plan", Text, nullable=False),
    Column("rows", BigInteger, nullable=False, server_default="0"),
    Column("segments", BigInteger, nullable=False, server_default="0"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("error", Text),
    Column("host", Text),
    Column("pid", Integer),
    Column("resumed", Integer, nullable=False, server_default="0"),
    # how the first attempt passed the guards (JSON; migration 0005): kept on a resume
    Column("approval", Text),
)

checkpoints = Table(
    "retention_checkpoints",
    metadata,
    Column("run_id", _id, ForeignKey("retention_runs.id"), primary_key=True),
    Column("target", Text, primary_key=True),
    Column("project_id", UUIDType, nullable=False),
    Column("object_type", Text, nullable=False),
    Column("phase", Text, nullable=False),
    Column("cutoff", UTCDateTime, nullable=False),
    Column("last_created", UTCDateTime),
    Column("last_sequence_id", BigInteger),
    Column("last_object_id", UUIDType),
    Column("rows", BigInteger, nullable=False, server_default="0"),
    Column("objects", BigInteger, nullable=False, server_default="0"),
    Column("batches", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_segment_id", UUIDType),
    Column("segments", BigInteger, nullable=False, server_default="0"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
)

receipts = Table(
    "retention_receipts",
    metadata,
    Column("id", _id, Identity(), primary_key=True),
    Column("run_id", _id, ForeignKey("retention_runs.id"), nullable=False),
    Column("project_id", UUIDType, nullable=False),
    Column("object_type", Text, nullable=False),
    Column("policy_source", Text, nullable=False),
    Column("retention_days", Float),  # null for sweeps and restores
    Column("cutoff", UTCDateTime),
    Column("rows", BigInteger, nullable=False),
    Column("objects", BigInteger, nullable=False, server_default="0"),
    Column("segments", BigInteger, nullable=False, server_default="0"),
    Column("bytes", BigInteger, nullable=False, server_default="0"),
    Column("first_key", Text),
    Column("last_key", Text),
    Column("keys_digest", Text),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("action", Text, nullable=False, server_default="delete"),  # mark | sweep | restore
)

# pg_advisory_lock key: the bytes "retentio" as a signed 64-bit integer.
LOCK_KEY = int.from_bytes(b"retentio", "big", signed=True)


@contextmanager
def run_lock(engine: Engine, database: Database) -> Iterator[Connection]:
    """Hold the one-run-per-database lock and yield the run's one connection.

    Raises ``LockedError`` at once if another run holds the lock. Every transaction of the
    run goes through the yielded connection, so on PostgreSQL, where the lock is a session
    advisory lock, a lost session fails the next batch instead of letting the run go on
    without its lock. On SQLite the lock is an exclusive ``flock`` on ``<file>.lock`` (by
    the file's real path). Both are released by the kernel or the server when the process
    dies.
    """
    locked = LockedError(f"another retention run holds the lock on {database.display}")
    if database.is_sqlite:
        real = database.sqlite_path.resolve()
        fd = os.open(real.with_name(real.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise locked from None
            with engine.connect() as conn:
                yield conn
        finally:
            os.close(fd)
        return
    with engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar()
        conn.commit()
        if not got:
            raise locked
        try:
            yield conn
        finally:
            # A lost session took its lock with it; never unlock on a new session.
            if not conn.invalidated:
                with contextlib.suppress(Exception):
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                    conn.commit()


# Runs that plan and delete; "sweep" and "restore" runs are records of those commands only.
PURGE_MODES = ("purge", "run", "demo")

# A run in one of these states did not finish; the next run resumes it (same pinned now).
RESUMABLE = (RunStatus.RUNNING, RunStatus.PARTIAL, RunStatus.FAILED)


@dataclass(frozen=True)
class RunRecord:
    id: int
    mode: str
    status: RunStatus
    started_at: datetime
    pinned_now: datetime
    plan_hash: str
    resumed: int
    approval: str | None = None  # JSON: how its first attempt passed the guards


@dataclass(frozen=True)
class Checkpoint:
    target: str
    phase: Phase
    cutoff: datetime
    cursor: Cursor | None
    rows: int
    objects: int
    batches: int
    segment_cursor: UUID | None = None
    segments: int = 0
    bytes: int = 0


def _record(row: Any) -> RunRecord:
    return RunRecord(
        id=int(row.id),
        mode=row.mode,
        status=RunStatus(row.status),
        started_at=row.started_at,
        pinned_now=row.pinned_now,
        plan_hash=row.plan_hash,
        resumed=int(row.resumed),
        approval=row._mapping.get("approval"),
    )


def start_run(
    conn: Connection,
    *,
    mode: str,
    now: datetime,
    clock: datetime,
    plan_hash: str,
    plan: Any,
    approval: str | None = None,
) -> RunRecord:
    result = conn.execute(
        insert(runs)
        .values(
            mode=mode,
            status=RunStatus.RUNNING.value,
            started_at=clock,
            heartbeat_at=clock,
            pinned_now=now,
            plan_hash=plan_hash,
            plan=json.dumps(plan, sort_keys=True),
            host=socket.gethostname(),
            pid=os.getpid(),
            approval=approval,
        )
        .returning(*runs.c)
    )
    return _record(result.one())


def run_started(conn: Connection, run_id: int) -> datetime:
    """When the run's first attempt began."""
    value: datetime = conn.execute(
        select(runs.c.started_at).where(runs.c.id == run_id)
    ).scalar_one()
    return value


def pinned_now(conn: Connection, run_id: int) -> datetime:
    """The run's pinned ``now`` (what its cutoffs and holds are judged at)."""
    value: datetime = conn.execute(
        select(runs.c.pinned_now).where(runs.c.id == run_id)
    ).scalar_one()
    return value


def _unfinished(conn: Connection, *, approval: bool = False) -> list[RunRecord]:
    """``approval``: also read it (migration 0005); a dry run reads tables of any revision."""
    columns = [c for c in runs.c if approval or c.name != "approval"]
    rows = conn.execute(
        select(*columns)
        .where(runs.c.status.in_([s.value for s in RESUMABLE]), runs.c.mode.in_(PURGE_MODES))
        .order_by(runs.c.id.desc())
    ).all()
    return [_record(row) for row in rows]


def pending_run(
    conn: Connection,
    *,
    clock: datetime,
    max_age: timedelta,
    not_after: datetime | None = None,
    approval: bool = False,
) -> RunRecord | None:
    """The unfinished run that the next purge would resume (reads only): started at most
    ``max_age`` ago (and not in the future), its pinned now not after ``not_after`` (a run
    pinned by a clock that was ahead must not go on deleting by it)."""
    unfinished = _unfinished(conn, approval=approval)
    if not unfinished:
        return None
    last = unfinished[0]
    if not timedelta(0) <= clock - last.started_at <= max_age:
        return None
    if not_after is not None and last.pinned_now > not_after:
        return None
    return last


def resumable_run(
    conn: Connection,
    *,
    clock: datetime,
    max_age: timedelta,
    not_after: datetime | None = None,
) -> RunRecord | None:
    """The unfinished run to resume, if any; other unfinished ones are marked abandoned,
    with the totals of what they deleted. Runs of other modes (a sweep, a restore) still
    marked ``running`` have died: they are marked failed.

    Called with the lock held, so a run still marked ``running`` has died.
    """
    keep = pending_run(conn, clock=clock, max_age=max_age, not_after=not_after, approval=True)
    for record in _unfinished(conn):
        if keep is None or record.id != keep.id:
            conn.execute(
                update(runs)
                .where(runs.c.id == record.id)
                .values(
                    status=RunStatus.ABANDONED.value,
                    finished_at=clock,
                    rows=_checkpoint_total(record.id, checkpoints.c.rows),
                    segments=_checkpoint_total(record.id, checkpoints.c.segments),
                    bytes=_checkpoint_total(record.id, checkpoints.c.bytes),
                )
            )
    conn.execute(
        update(runs)
        .where(runs.c.status == RunStatus.RUNNING.value, runs.c.mode.not_in(PURGE_MODES))
        .values(
            status=RunStatus.FAILED.value,
            finished_at=clock,
            error="killed: still recorded as running when the next run took the lock",
        )
    )
    return keep


def _checkpoint_total(run_id: int, column: Any) -> Any:
    """What the run's checkpoints count (earlier attempts included)."""
    return (
        select(func.coalesce(func.sum(column), 0))
        .where(checkpoints.c.run_id == run_id)
        .scalar_subquery()
    )


def reopen_run(
    conn: Connection,
    run: RunRecord,
    *,
    clock: datetime,
    plan_hash: str,
    plan: Any,
    approval: str | None = None,
) -> None:
    """``approval``: this attempt's own (an override or a plan given again); else the run
    keeps its first attempt's."""
    conn.execute(
        update(runs)
        .where(runs.c.id == run.id)
        .values(
            status=RunStatus.RUNNING.value,
            resumed=runs.c.resumed + 1,
            heartbeat_at=clock,
            plan_hash=plan_hash,
            plan=json.dumps(plan, sort_keys=True),
            pid=os.getpid(),
            host=socket.gethostname(),
            approval=approval if approval is not None else run.approval,
        )
    )


def finish_run(
    conn: Connection,
    run_id: int,
    *,
    status: RunStatus,
    clock: datetime,
    error: str | None = None,
    totals: tuple[int, int, int] | None = None,
) -> None:
    """``totals`` (rows, segments, bytes): for runs without checkpoints (a sweep alone)."""

    # Totals from the checkpoints: they also count what earlier attempts of the run deleted.
    def total(column: Any) -> Any:
        if totals is not None:
            return literal(
                {"rows": totals[0], "segments": totals[1], "bytes": totals[2]}[column.key]
            )
        return _checkpoint_total(run_id, column)

    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(
            status=status.value,
            finished_at=clock,
            heartbeat_at=clock,
            rows=total(checkpoints.c.rows),
            segments=total(checkpoints.c.segments),
            bytes=total(checkpoints.c.bytes),
            error=error,
        )
    )


def load_checkpoints(conn: Connection, run_id: int) -> dict[str, Checkpoint]:
    found: dict[str, Checkpoint] = {}
    for row in conn.execute(select(checkpoints).where(checkpoints.c.run_id == run_id)):
        cursor = None
        if row.last_created is not None and row.last_sequence_id is not None:
            cursor = Cursor(
                created=row.last_created,
                sequence_id=int(row.last_sequence_id),
                object_id=row.last_object_id,
            )
        found[row.target] = Checkpoint(
            target=row.target,
            phase=Phase(row.phase),
            cutoff=row.cutoff,
            cursor=cursor,
            rows=int(row.rows),
            objects=int(row.objects),
            batches=int(row.batches),
            segment_cursor=row.last_segment_id,
            segments=int(row.segments),
            bytes=int(row.bytes),
        )
    return found


def _checkpoint_values(checkpoint: Checkpoint, clock: datetime) -> dict[str, Any]:
    cursor = checkpoint.cursor
    return {
        "phase": checkpoint.phase.value,
        "cutoff": checkpoint.cutoff,
        "last_created": cursor.created if cursor else None,
        "last_sequence_id": cursor.sequence_id if cursor else None,
        "last_object_id": cursor.object_id if cursor else None,
        "rows": checkpoint.rows,
        "objects": checkpoint.objects,
        "batches": checkpoint.batches,
        "last_segment_id": checkpoint.segment_cursor,
        "segments": checkpoint.segments,
        "bytes": checkpoint.bytes,
        "updated_at": clock,
    }


def existing_checkpoints(conn: Connection, run_id: int, keys: list[str]) -> set[str]:
    """Which of the target ``keys`` have a checkpoint in this run."""
    if not keys:
        return set()
    return set(
        conn.execute(
            select(checkpoints.c.target).where(
                checkpoints.c.run_id == run_id, checkpoints.c.target.in_(keys)
            )
        ).scalars()
    )


def insert_checkpoints(
    conn: Connection,
    run_id: int,
    new: list[tuple[UUID, str, Checkpoint]],
    *,
    clock: datetime,
) -> None:
    """Checkpoints the run does not have yet (project, object type, checkpoint), in one
    statement."""
    if new:
        conn.execute(
            insert(checkpoints),
            [
                {
                    "run_id": run_id,
                    "target": checkpoint.target,
                    "project_id": project_id,
                    "object_type": object_type,
                    **_checkpoint_values(checkpoint, clock),
                }
                for project_id, object_type, checkpoint in new
            ],
        )
        conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=clock))


def update_checkpoints(
    conn: Connection, run_id: int, done: list[Checkpoint], *, clock: datetime
) -> None:
    """Checkpoints the run has already (``existing_checkpoints``), updated with one
    executemany (one round trip with psycopg's pipeline) and one heartbeat, where
    ``save_checkpoint`` takes two statements each: a group of thousands of targets."""
    if not done:
        return
    names = list(_checkpoint_values(done[0], clock))
    statement = (
        update(checkpoints)
        .where(
            checkpoints.c.run_id == bindparam("key_run"),
            checkpoints.c.target == bindparam("key_target"),
        )
        .values({name: bindparam(f"new_{name}") for name in names})
    )
    rows = [
        {
            "key_run": run_id,
            "key_target": c.target,
            **{f"new_{k}": v for k, v in _checkpoint_values(c, clock).items()},
        }
        for c in done
    ]
    updated = conn.execute(statement, rows).rowcount
    if updated != len(done):  # a checkpoint that is not there: nothing may go unrecorded
        raise RuntimeError(f"updated {updated} of {len(done)} checkpoints of run {run_id}")
    conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=clock))


def take_back_marks(conn: Connection, run_id: int, target: str, segments: int, size: int) -> None:
    """Marks the run made for ``target`` and has just undone (a resume whose policies now
    keep them): they no longer count as marked by it."""

    def less(column: Any, n: int) -> Any:
        return case((column > n, column - n), else_=0)

    conn.execute(
        update(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.target == target)
        .values(
            segments=less(checkpoints.c.segments, segments),
            bytes=less(checkpoints.c.bytes, size),
        )
    )


def save_checkpoint(
    conn: Connection,
    run_id: int,
    *,
    project_id: UUID,
    object_type: str,
    checkpoint: Checkpoint,
    clock: datetime,
) -> None:
    """Insert or update; the caller's transaction also holds the batch it describes."""
    values = _checkpoint_values(checkpoint, clock)
    updated = conn.execute(
        update(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.target == checkpoint.target)
        .values(**values)
    ).rowcount
    if not updated:
        conn.execute(
            insert(checkpoints).values(
                run_id=run_id,
                target=checkpoint.target,
                project_id=project_id,
                object_type=object_type,
                **values,
            )
        )
    conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=clock))


def set_phases(
    conn: Connection, run_id: int, phases: list[tuple[str, Phase]], *, clock: datetime
) -> None:
    """Move existing checkpoints (target key, phase) on, in one statement."""
    if phases:
        conn.execute(
            update(checkpoints)
            .where(checkpoints.c.run_id == run_id, checkpoints.c.target == bindparam("key"))
            .values(phase=bindparam("phase"), updated_at=clock),
            [{"key": k, "phase": p.value} for k, p in phases],
        )
        conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=clock))


def add_counts(
    conn: Connection, run_id: int, counts: list[tuple[str, int]], *, clock: datetime
) -> None:
    """Add rows (and one batch) to existing checkpoints, in key order (target, rows).

    Increments, not values: several workers of one run count into the same checkpoints.
    """
    if not counts:
        return
    ordered = sorted(counts)
    if conn.dialect.name == "postgresql":  # two statements, whatever the number of targets
        # lock in key order first: workers of one run count into the same rows, and the
        # UPDATE's own join would take them in whatever order its plan reads them
        conn.execute(
            select(checkpoints.c.target)
            .where(
                checkpoints.c.run_id == run_id,
                checkpoints.c.target.in_([k for k, _ in ordered]),
            )
            .order_by(checkpoints.c.target)
            .with_for_update()
        ).all()
        added = (
            func.unnest(
                bindparam("keys", [k for k, _ in ordered], type_=ARRAY(Text)),
                bindparam("ns", [n for _, n in ordered], type_=ARRAY(BigInteger)),
            )
            .table_valued("key", "n")
            .render_derived(name="added")
        )
        conn.execute(
            update(checkpoints)
            .where(checkpoints.c.run_id == run_id, checkpoints.c.target == added.c.key)
            .values(
                rows=checkpoints.c.rows + added.c.n,
                batches=checkpoints.c.batches + 1,
                updated_at=clock,
            )
        )
        return
    statement = (
        update(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.target == bindparam("key"))
        .values(
            rows=checkpoints.c.rows + bindparam("n"),
            batches=checkpoints.c.batches + 1,
            updated_at=clock,
        )
    )
    conn.execute(statement, [{"key": k, "n": n} for k, n in ordered])


def add_receipts(
    conn: Connection, run_id: int, items: list[dict[str, Any]], *, clock: datetime
) -> None:
    """Several receipts in one statement."""
    if items:
        conn.execute(
            insert(receipts), [{"run_id": run_id, "recorded_at": clock, **i} for i in items]
        )


def cursor_key(cursor: Cursor | None) -> str | None:
    if cursor is None:
        return None
    key = f"{cursor.created.isoformat()}/{cursor.sequence_id}"
    return f"{cursor.object_id}/{key}" if cursor.object_id else key


def add_receipt(conn: Connection, run_id: int, *, clock: datetime, **values: Any) -> None:
    values.setdefault("rows", 0)
    conn.execute(insert(receipts).values(run_id=run_id, recorded_at=clock, **values))


SHRINK_LOOKBACK = 30  # successful purges whose plans the shrink guard looks back through


def last_success_days(conn: Connection) -> dict[str, float]:
    """Retention days per target for the shrink guard: for each target, its days in the
    latest successful purge in which it had any (among the last ``SHRINK_LOOKBACK``). A
    success in which a target was held, or had no policy (an empty policy folder, a wrong
    org), does not make the guard forget the retention it had before."""
    ids = conn.execute(
        select(runs.c.id)
        .where(runs.c.status == RunStatus.SUCCEEDED.value, runs.c.mode.in_(PURGE_MODES))
        .order_by(runs.c.id.desc())
        .limit(SHRINK_LOOKBACK)
    ).scalars()
    found: dict[str, float] = {}
    for run_id in list(ids):  # one plan in memory at a time: they can be large
        text = conn.execute(select(runs.c.plan).where(runs.c.id == run_id)).scalar_one()
        for key, days in _plan_days(text).items():
            found.setdefault(key, days)
    return found


def _plan_days(text: str | None) -> dict[str, float]:
    try:
        plan = json.loads(text or "{}")
        return {
            f"{t['project_id']}/{t['object_type']}": float(t["retention_days"])
            for t in plan.get("targets", [])
            if t.get("retention_days") is not None
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def successful_runs(conn: Connection) -> int:
    """Successful purges (sweeps and restores alone do not count as a reviewed purge)."""
    return int(
        conn.execute(
            select(func.count()).where(
                runs.c.status == RunStatus.SUCCEEDED.value, runs.c.mode.in_(PURGE_MODES)
            )
        ).scalar_one()
    )


RECEIPT_FIELDS = (
    "id",
    "run_id",
    "recorded_at",
    "action",
    "project_id",
    "object_type",
    "policy_source",
    "retention_days",
    "cutoff",
    "rows",
    "objects",
    "segments",
    "bytes",
    "first_key",
    "last_key",
    "keys_digest",
)


def list_receipts(
    conn: Connection,
    *,
    project_id: UUID | None = None,
    object_type: str | None = None,
    action: str | None = None,
    run_id: int | None = None,
    since: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Receipts in the order they were written, as plain values (ids and times as text),
    read a thousand at a time (a server-side cursor on PostgreSQL: call inside a
    transaction): the table only grows."""
    query = (
        select(*(receipts.c[name] for name in RECEIPT_FIELDS))
        .order_by(receipts.c.id)
        .execution_options(yield_per=1000)
    )
    if project_id is not None:
        query = query.where(receipts.c.project_id == project_id)
    if object_type is not None:
        query = query.where(receipts.c.object_type == object_type)
    if action is not None:
        query = query.where(receipts.c.action == action)
    if run_id is not None:
        query = query.where(receipts.c.run_id == run_id)
    if since is not None:
        query = query.where(receipts.c.recorded_at >= since)
    for row in conn.execute(query):
        item = dict(row._mapping)
        item["project_id"] = str(item["project_id"])
        for key in ("recorded_at", "cutoff"):
            item[key] = item[key].isoformat() if item[key] is not None else None
        yield item


@dataclass(frozen=True)
class RunSummary:
    id: int
    mode: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    pinned_now: datetime
    rows: int
    segments: int
    bytes: int
    resumed: int
    error: str | None


def recent_runs(conn: Connection, limit: int = 10) -> list[RunSummary]:
    return _summaries(conn.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).all())


def _summaries(rows: Sequence[Any]) -> list[RunSummary]:
    return [
        RunSummary(
            id=int(r.id),
            mode=r.mode,
            status=r.status,
            started_at=r.started_at,
            finished_at=r.finished_at,
            pinned_now=r.pinned_now,
            rows=int(r.rows),
            segments=int(r.segments),
            bytes=int(r.bytes),
            resumed=int(r.resumed),
            error=r.error,
        )
        for r in rows
    ]


def last_success_time(conn: Connection) -> datetime | None:
    value: datetime | None = conn.execute(
        select(func.max(runs.c.finished_at)).where(
            runs.c.status == RunStatus.SUCCEEDED.value, runs.c.mode.in_(PURGE_MODES)
        )
    ).scalar()
    return value


def last_purge(conn: Connection) -> RunSummary | None:
    """The latest purge-mode run, whatever its status (however many sweeps came after)."""
    found = _summaries(
        conn.execute(
            select(runs).where(runs.c.mode.in_(PURGE_MODES)).order_by(runs.c.id.desc()).limit(1)
        ).all()
    )
    return found[0] if found else None


def still_running(conn: Connection, ids: Sequence[int]) -> list[int]:
    """Which of these runs are recorded as running now."""
    if not ids:
        return []
    query = select(runs.c.id).where(
        runs.c.id.in_(list(ids)), runs.c.status == RunStatus.RUNNING.value
    )
    return sorted(int(i) for i in conn.execute(query).scalars())


def lock_holders(pid: Any = None) -> Any:
    """The server processes holding the run lock (PostgreSQL: ``pg_locks``), as a SELECT;
    with ``pid``, only that one."""
    locks = table(
        "pg_locks",
        column("locktype"),
        column("database"),
        column("classid"),
        column("objid"),
        column("objsubid"),
        column("pid"),
        column("granted"),
        schema="pg_catalog",
    )
    databases = table("pg_database", column("oid"), column("datname"), schema="pg_catalog")
    high, low = (LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF  # pg_advisory_lock(bigint)
    query = select(locks.c.pid).where(
        locks.c.locktype == "advisory",
        locks.c.granted,
        locks.c.objsubid == 1,
        locks.c.classid == cast(literal(high, BigInteger), OID),
        locks.c.objid == cast(literal(low, BigInteger), OID),
        locks.c.database
        == select(databases.c.oid)
        .where(databases.c.datname == func.current_database())
        .scalar_subquery(),
    )
    return query if pid is None else query.where(locks.c.pid == pid)


def run_lock_held(conn: Connection, database: Database) -> bool | None:
    """Does a worker hold the run lock now? None: this system cannot tell (SQLite off
    Linux). Looks, never takes it: a probe must not make a starting run exit 7."""
    if database.is_sqlite:
        return _flock_held(_lock_file(database))
    return bool(conn.execute(select(lock_holders().exists())).scalar_one())


def _lock_file(database: Database) -> Path:
    real = database.sqlite_path.resolve()
    return real.with_name(real.name + ".lock")


def _flock_held(path: Path) -> bool | None:
    """From /proc/locks (Linux): a FLOCK lock on the file's device and inode."""
    try:
        info = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except FileNotFoundError:
        return False if not path.exists() else None
    except OSError:
        return None
    wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                return True
        except ValueError:
            continue
    return False
