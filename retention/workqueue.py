"""The block sweep's work queue in PostgreSQL: one run's sweep split into units (block
ranges) that any worker of the run claims.

A unit is claimed with ``FOR UPDATE SKIP LOCKED`` and owned by one worker, which renews a
heartbeat with every batch. Every batch first moves its unit's ``next_block`` forward
*where the worker still owns it*, in the same transaction as its deletions and receipts, so
a worker that lost its unit (another worker took it over) deletes nothing more from it: its
batch rolls back. A unit is taken over when its owner's database session is gone (a dead
process: its server process is no longer in ``pg_stat_activity``) or its heartbeat is older
than ``RETENTION_WORKER_STALE`` (a live but stuck one). Heartbeats use the database clock,
so workers on several hosts agree on it (the statement's time, not its transaction's:
a long batch does not look stale the moment it commits). Only a run that is still running
hands out units.

Only a *led* run hands out units and deletes: the sweep records its leader's server process
(``leader_pid``, set when the leader prepares the sweep of this attempt), and every claim
and every batch checks that this process holds the run lock now. A dead leader's run, or
the sweep of an earlier attempt while a new leader is still planning (a new lock holder
first disowns every sweep), is left alone: its sweep may be out of date (policies
re-resolved, holds added), and only a live leader re-reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Integer,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    func,
    insert,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.dialects.postgresql import OID

from .blocksweep import SweepSet
from .state import lock_holders, metadata, runs
from .tables import DataPlaneTables, UTCDateTime

_id = BigInteger().with_variant(Integer(), "sqlite")

work = Table(
    "retention_work",
    metadata,
    Column("run_id", _id, ForeignKey("retention_runs.id"), primary_key=True),
    Column("signature", Text, nullable=False),
    Column("revision", Integer, nullable=False, server_default="0"),
    Column("sweep", Text, nullable=False),  # SweepSet.to_json()
    Column("updated_at", UTCDateTime, nullable=False),
    Column("leader_pid", Integer),  # the leader session's server process (pg_backend_pid)
)

units = Table(
    "retention_work_units",
    metadata,
    Column("run_id", _id, ForeignKey("retention_runs.id"), primary_key=True),
    Column("unit", Integer, primary_key=True),
    Column("lo", BigInteger, nullable=False),
    Column("hi", BigInteger, nullable=False),  # exclusive
    Column("next_block", BigInteger, nullable=False),
    Column("done", Boolean, nullable=False, server_default="false"),
    Column("owner", Text),
    Column("owner_pid", Integer),  # the owner's server process (pg_backend_pid)
    Column("heartbeat_at", UTCDateTime),
    Column("done_by", Text),
    Column("rows", BigInteger, nullable=False, server_default="0"),
    Column("batches", Integer, nullable=False, server_default="0"),
    Column("claims", Integer, nullable=False, server_default="0"),
)


@dataclass(frozen=True)
class Unit:
    run_id: int
    unit: int
    lo: int
    hi: int
    next_block: int


@dataclass(frozen=True)
class Work:
    run_id: int
    signature: str
    revision: int
    sweep: SweepSet


def load(conn: Connection, run_id: int) -> Work | None:
    row = conn.execute(select(work).where(work.c.run_id == run_id)).first()
    if row is None:
        return None
    return Work(row.run_id, row.signature, row.revision, SweepSet.from_json(row.sweep))


def prepare(
    conn: Connection, run_id: int, sweep: SweepSet, *, end: int, unit_blocks: int
) -> tuple[Work, bool]:
    """The run's work: kept when it was made for the same sweep, else made afresh over
    blocks [0, end]. Returns (work, kept)."""
    found = load(conn, run_id)
    if found is not None and _covers(found.sweep, sweep):
        # fewer targets left, objects held since, a rule renamed: the rest carry on
        if found.sweep != sweep:
            publish(conn, run_id, sweep)
        conn.execute(
            update(work).where(work.c.run_id == run_id).values(leader_pid=func.pg_backend_pid())
        )
        found = load(conn, run_id)
        assert found is not None
        return found, True
    conn.execute(delete(units).where(units.c.run_id == run_id))
    conn.execute(delete(work).where(work.c.run_id == run_id))
    conn.execute(
        insert(work).values(
            run_id=run_id,
            signature=sweep.signature,
            revision=0,
            sweep=sweep.to_json(),
            updated_at=func.now(),
            leader_pid=func.pg_backend_pid(),
        )
    )
    ranges = [(lo, min(lo + unit_blocks, end + 1)) for lo in range(0, end + 1, unit_blocks)]
    conn.execute(
        insert(units),
        [
            {"run_id": run_id, "unit": n, "lo": lo, "hi": hi, "next_block": lo}
            for n, (lo, hi) in enumerate(ranges)
        ],
    )
    return Work(run_id, sweep.signature, 0, sweep), False


def _covers(old: SweepSet, new: SweepSet) -> bool:
    """Every target of ``new`` was in ``old`` with the same cutoff, on the same table: the
    blocks already swept hold nothing more for ``new``, so its sweep can go on where
    ``old`` stopped."""
    before = {(t.key, t.cutoff) for t in old.targets}
    return old.table == new.table and all((t.key, t.cutoff) in before for t in new.targets)


def table_identity(conn: Connection, tables: DataPlaneTables) -> str:
    """The events table as this worker's settings name it: its oid (how the server resolves
    the name, search path included) and its column mapping. Workers of one sweep must
    agree on it."""
    ev = tables.events
    name: Any = func.quote_ident(ev.name)
    if ev.schema:
        name = func.quote_ident(ev.schema).concat(".").concat(name)
    oid = conn.execute(select(cast(func.to_regclass(name), OID))).scalar_one()
    columns = ",".join(f"{c.key}={c.name}" for c in ev.columns)
    return f"{oid}:{columns}"


def still_led(conn: Connection, run_id: int) -> bool:
    """The run still runs under its leader (units are handed out and swept)."""
    running = select(runs.c.id).where(runs.c.id == run_id, runs.c.status == "running")
    return bool(conn.execute(select(and_(running.exists(), _led(run_id)))).scalar_one())


def stand_down(conn: Connection, run_id: int) -> None:
    """The leader stops its run's sweep before it counts and finishes the run: no worker
    claims or sweeps a unit from now on, and the batches other workers have in flight
    (each holds its unit's row from its first statement) commit or roll back before this
    returns, so the run's counts include them. The next leader prepares the sweep again."""
    conn.execute(update(work).where(work.c.run_id == run_id).values(leader_pid=None))
    conn.execute(
        update(units)
        .where(units.c.run_id == run_id, units.c.done.is_(False))
        .values(owner=None, owner_pid=None)
    )


def publish(conn: Connection, run_id: int, sweep: SweepSet) -> int:
    """A changed sweep (a hold added during the run) for every worker's next batch."""
    revision = conn.execute(
        update(work)
        .where(work.c.run_id == run_id)
        .values(
            signature=sweep.signature,
            sweep=sweep.to_json(),
            revision=work.c.revision + 1,
            updated_at=func.now(),
        )
        .returning(work.c.revision)
    ).scalar_one()
    return int(revision)


def _led(run_id: Any) -> Any:
    """The run's sweep was prepared by the session that holds the run lock now."""
    holding = lock_holders(pid=work.c.leader_pid)
    return select(work.c.run_id).where(work.c.run_id == run_id, holding.exists()).exists()


def disown(conn: Connection) -> None:
    """A new holder of the run lock: every sweep prepared before is nobody's until its
    leader prepares it again (PostgreSQL)."""
    conn.execute(update(work).where(work.c.leader_pid.is_not(None)).values(leader_pid=None))


def current_sweep(conn: Connection, run_id: int) -> SweepSet:
    text_ = conn.execute(select(work.c.sweep).where(work.c.run_id == run_id)).scalar_one()
    return SweepSet.from_json(text_)


class SweepReader:
    """The run's published sweep for every batch of one worker, parsed again only when its
    text changed: with thousands of targets the document is large, and parsing it in
    every batch made the batches' fixed cost grow with the number of targets.

    Keyed on the text's md5, not the revision: a sweep prepared afresh starts again at
    revision 0."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self._digest: str | None = None
        self._sweep: SweepSet | None = None

    def read(self, conn: Connection) -> SweepSet:
        digest = func.md5(work.c.sweep)
        known = bindparam("known", self._digest, type_=Text)
        found, text_ = conn.execute(
            select(digest, case((digest == known, None), else_=work.c.sweep)).where(
                work.c.run_id == self.run_id
            )
        ).one()
        if text_ is not None:  # changed (or the first read)
            self._sweep = SweepSet.from_json(text_)
            self._digest = found
        assert self._sweep is not None
        return self._sweep


def claim(conn: Connection, run_id: int, me: str, stale: timedelta) -> Unit | None:
    """The next unit nobody live owns (call in its own short transaction)."""
    stale_before = func.clock_timestamp() - func.make_interval(
        0, 0, 0, 0, 0, 0, stale.total_seconds()
    )
    activity = table("pg_stat_activity", column("pid"), schema="pg_catalog")
    running = select(runs.c.id).where(runs.c.id == run_id, runs.c.status == "running")
    row = conn.execute(
        select(units)
        .where(
            units.c.run_id == run_id,
            units.c.done.is_(False),
            running.exists(),
            _led(run_id),
            or_(
                units.c.owner.is_(None),
                units.c.owner == me,
                units.c.heartbeat_at < stale_before,
                ~select(activity.c.pid).where(activity.c.pid == units.c.owner_pid).exists(),
            ),
        )
        .order_by(units.c.unit)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        return None
    conn.execute(
        update(units)
        .where(units.c.run_id == run_id, units.c.unit == row.unit)
        .values(
            owner=me,
            owner_pid=func.pg_backend_pid(),
            heartbeat_at=func.clock_timestamp(),
            claims=units.c.claims + 1,
        )
    )
    return Unit(run_id, row.unit, row.lo, row.hi, row.next_block)


def advance(
    conn: Connection, unit: Unit, me: str, *, next_block: int, rows: int, done: bool
) -> bool:
    """Move the unit to ``next_block`` if ``me`` still owns it and the run still runs under
    its leader (first statement of a batch; it holds the unit's row until the batch
    commits). False: the unit was taken over, the run's leader stopped it (time budget,
    signal), or the leader is gone."""
    values: dict[str, object] = {
        "next_block": next_block,
        "heartbeat_at": func.clock_timestamp(),
        "rows": units.c.rows + rows,
        "batches": units.c.batches + 1,
    }
    if done:
        values.update(done=True, done_by=me, owner=None, owner_pid=None)
    owned = conn.execute(
        update(units)
        .where(
            units.c.run_id == unit.run_id,
            units.c.unit == unit.unit,
            units.c.owner == me,
            select(runs.c.id).where(runs.c.id == unit.run_id, runs.c.status == "running").exists(),
            _led(unit.run_id),
        )
        .values(**values)
        .returning(units.c.unit)
    ).first()
    return owned is not None


def count_rows(conn: Connection, unit: Unit, rows: int) -> None:
    """Rows the batch deleted, counted into its unit (same transaction as ``advance``)."""
    conn.execute(
        update(units)
        .where(units.c.run_id == unit.run_id, units.c.unit == unit.unit)
        .values(rows=units.c.rows + rows)
    )


def release(conn: Connection, unit: Unit, me: str) -> None:
    """Give a unit back (a stopping worker), so another worker takes it at once."""
    conn.execute(
        update(units)
        .where(units.c.run_id == unit.run_id, units.c.unit == unit.unit, units.c.owner == me)
        .values(owner=None, owner_pid=None)
    )


def remaining(conn: Connection, run_id: int) -> int:
    """Units not done yet."""
    return int(
        conn.execute(
            select(func.count()).where(units.c.run_id == run_id, units.c.done.is_(False))
        ).scalar_one()
    )


def open_run(conn: Connection) -> int | None:
    """The running run whose sweep has units left and whose leader is there (what a joining
    worker works on)."""
    row = conn.execute(
        select(work.c.run_id)
        .join(runs, runs.c.id == work.c.run_id)
        .where(
            runs.c.status == "running",
            _led(work.c.run_id),
            select(units.c.unit)
            .where(and_(units.c.run_id == work.c.run_id, units.c.done.is_(False)))
            .exists(),
        )
        .order_by(work.c.run_id.desc())
        .limit(1)
    ).first()
    return None if row is None else int(row.run_id)
