"""The fast path for a large backlog on PostgreSQL: one physical pass over the events heap.

Deleting target by target in index order dirties the same heap pages again and again (the
rows of one project are scattered over the heap); DESIGN §10 measured 2.6-9x a single
DELETE. Walking the heap in block ranges instead (TID range scans, PostgreSQL 14+), with
every target's cutoff joined in from arrays, costs about 1.1-1.2x and keeps each
transaction short. Each batch is one transaction with its checkpoint (the next block) and
one receipt per target it touched, digest included; the conditions are in the DELETE
itself, so a row that changes while the batch waits for its lock is re-checked.

Only logs and dataset targets sweep this way; experiments go whole, by their own path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.types import DateTime, Text, UserDefinedType

from .models import Hold, ObjectType, Resolution, Target
from .tables import DataPlaneTables, array_literal

log = logging.getLogger(__name__)

ROW_TYPES = (ObjectType.PROJECT_LOGS, ObjectType.DATASET)
MIN_BLOCKS, MAX_BLOCKS = 1, 65_536
# A batch far under the target time grows the next up to 4x: from the first 256 blocks a
# backlog reaches full-size batches in 3 batches instead of 5 or 6 (each batch costs its
# commit and bookkeeping, about 14 ms on a 1M-row backlog, whatever its size).
MAX_GROWTH = 4.0


class TID(UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "tid"


@dataclass(frozen=True)
class SweepTarget:
    """What a bulk batch needs of a target: its rows' key, its cutoff, its receipt fields."""

    key: str
    project_id: UUID
    object_type: ObjectType
    cutoff: datetime
    retention_days: float | None
    policy_source: str

    @classmethod
    def of(cls, target: Target) -> SweepTarget:
        r = target.resolution
        assert r.cutoff is not None
        return cls(
            key=target.key,
            project_id=target.project_id,
            object_type=target.object_type,
            cutoff=r.cutoff,
            retention_days=r.retention_days,
            policy_source=r.winner.describe() if r.winner else "",
        )


@dataclass(frozen=True)
class SweepSet:
    """The targets one batch deletes for: arrays for the join, and held objects."""

    targets: tuple[SweepTarget, ...]
    held: frozenset[UUID] = frozenset()
    newest_row: int | None = None  # a reviewed plan's: later rows are not deleted
    # which table and columns the targets apply to (``workqueue.table_identity``): a
    # worker configured for another table must not join the sweep
    table: str = ""
    # applying a reviewed plan: the experiments it named (whole-partition drops judge
    # experiment rows by it; the block sweep has no experiments, and does not carry it)
    reviewed_objects: frozenset[UUID] | None = None

    # Worked out once per sweep, not per batch: a sweep may have thousands of targets.

    @cached_property
    def columns(self) -> tuple[str, str, str]:
        """The targets' project ids, object types and cutoffs as array literals (the join's
        arrays): a list parameter is dumped element by element on every execution."""
        return (
            array_literal(t.project_id for t in self.targets),
            array_literal(t.object_type.value for t in self.targets),
            array_literal(t.cutoff for t in self.targets),
        )

    @cached_property
    def latest_cutoff(self) -> datetime:
        return max(t.cutoff for t in self.targets)

    @cached_property
    def by_pair(self) -> dict[tuple[UUID, str], SweepTarget]:
        """The targets by (project id, object type value)."""
        return {(t.project_id, t.object_type.value): t for t in self.targets}

    @property
    def signature(self) -> str:
        """Changes when any target, cutoff or the reviewed newest row changes (a resumed
        sweep then starts over)."""
        text = "|".join(f"{t.key}@{t.cutoff.isoformat()}" for t in self.targets)
        if self.newest_row is not None:
            text += f"|<={self.newest_row}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_json(self) -> str:
        return json.dumps(
            {
                "targets": [
                    {
                        "key": t.key,
                        "project_id": str(t.project_id),
                        "object_type": t.object_type.value,
                        "cutoff": t.cutoff.isoformat(),
                        "retention_days": t.retention_days,
                        "policy_source": t.policy_source,
                    }
                    for t in self.targets
                ],
                "held": sorted(str(h) for h in self.held),
                "newest_row": self.newest_row,
                "table": self.table,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SweepSet:
        doc = json.loads(text)
        return cls(
            targets=tuple(
                SweepTarget(
                    key=t["key"],
                    project_id=UUID(t["project_id"]),
                    object_type=ObjectType(t["object_type"]),
                    cutoff=datetime.fromisoformat(t["cutoff"]),
                    retention_days=t["retention_days"],
                    policy_source=t["policy_source"],
                )
                for t in doc["targets"]
            ),
            held=frozenset(UUID(h) for h in doc["held"]),
            newest_row=_int_or_none(doc.get("newest_row")),
            table=str(doc.get("table", "")),
        )

    def with_holds(self, holds: Sequence[Hold], now: datetime) -> SweepSet:
        """Without the targets a hold active at ``now`` (the run's) covers whole, and with
        the objects held in the rest: what a worker other than the leader deletes by, so a
        hold stops it at its next batch whatever the leader is doing."""
        active = [h for h in holds if h.active(now)]
        targets = tuple(
            t
            for t in self.targets
            if not any(h.covers_target(t.project_id, t.object_type) for h in active)
        )
        objects = {
            h.object_id
            for h in active
            if h.object_id is not None
            and any(h.covers_object(t.project_id, t.object_type) for t in targets)
        }
        return replace(self, targets=targets, held=self.held | objects)


# ``auto``: which targets the block sweep is worth it for. Every target a batch touches
# costs that batch a receipt and a checkpoint update (40-60 us each on the benchmark
# machine) on top of its rows (about 1.5 us each). A target with few rows spread over
# the heap gets a receipt in nearly every batch for a row or two, and thousands of
# targets make each batch's bookkeeping outweigh its deletes (the sizer then shrinks the
# batches, and it gets worse). Measured at 1M rows (bench/RESULTS.md, seventh session):
# 10,000 projects of 50 expired rows, 6 s grouped against 30 s swept; 5,000 of 100, 4.7 s
# grouped against 8.2 s with half of them swept at 5 rows a batch; 1,000 of 500, 2.6 s
# swept against 5-7 s grouped; 50 of 10,000, 1.2 s swept.
SWEEP_MAX_TARGETS = 2_500  # the largest this many at most: ~0.1 s of bookkeeping a batch
SWEEP_ROWS_PER_RECEIPT = 20  # a swept target's expired rows per expected batch, at least
SWEEP_BATCH_ROWS = 35_000  # rows a batch of 0.2 s deletes on a backlog (the benchmark's)


def worth_sweeping(targets: Sequence[Target], target_seconds: float) -> list[Target]:
    """Of the targets with expired rows to sweep, those the block sweep is worth it for:
    at most ``SWEEP_MAX_TARGETS``, largest first, each with at least
    ``SWEEP_ROWS_PER_RECEIPT`` expired rows per batch the sweep is expected to take. The
    rest go by index (grouped when small)."""
    candidates = sorted(
        (t for t in targets if t.resolution.cutoff is not None and t.counts.rows),
        key=lambda t: (-t.counts.rows, t.key),
    )
    # the batches a sweep of them all would take (a sweep of fewer still passes the
    # whole heap: counting only the chosen rows would lower the bar it is meant to set)
    expired = sum(t.counts.rows for t in candidates)
    batches = max(1.0, expired / (SWEEP_BATCH_ROWS * max(target_seconds, 0.01) / 0.2))
    chosen = candidates[:SWEEP_MAX_TARGETS]
    return [t for t in chosen if t.counts.rows >= SWEEP_ROWS_PER_RECEIPT * batches]


def sweepable(targets: Sequence[Target], types: Sequence[ObjectType] = ROW_TYPES) -> SweepSet:
    """The targets of ``types`` that have expired rows."""
    chosen = [
        t
        for t in targets
        if t.object_type in types and t.resolution.cutoff is not None and t.counts.rows
    ]
    held = frozenset(h for t in chosen for h in t.resolution.held_object_ids)
    reviewed = [t.resolution.reviewed_objects for t in chosen]
    return SweepSet(
        targets=tuple(SweepTarget.of(t) for t in chosen),
        held=held,
        newest_row=newest_of([t.resolution for t in chosen]),
        reviewed_objects=None
        if all(r is None for r in reviewed)
        else frozenset(i for r in reviewed if r is not None for i in r),
    )


def newest_of(resolutions: Sequence[Resolution]) -> int | None:
    """The reviewed newest row the resolutions share (a plan's: all or none have one)."""
    bounds = {r.newest_row for r in resolutions}
    if len(bounds) > 1:
        raise ValueError(f"targets of one batch with different reviewed rows: {bounds}")
    return bounds.pop() if bounds else None


def up_to(events: Any, newest_row: int | None) -> Any:
    """Rows no later than a reviewed plan's newest row (everything without a plan)."""
    return events.c.sequence_id <= newest_row if newest_row is not None else true()


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass
class BlockBatch:
    rows: int = 0
    per_target: dict[tuple[UUID, str], tuple[int, int, int, str]] = field(default_factory=dict)


def resolution_arrays(
    resolutions: Sequence[Resolution], limits: Sequence[int] | None = None
) -> Any:
    """``target_arrays`` for resolutions with cutoffs (planning: no receipts involved);
    ``limits``: one number per resolution, as a fifth column ``k``."""
    return target_arrays(
        SweepSet(
            targets=tuple(
                SweepTarget(
                    key=f"{r.project_id}/{r.object_type.value}",
                    project_id=r.project_id,
                    object_type=r.object_type,
                    cutoff=r.cutoff,
                    retention_days=r.retention_days,
                    policy_source="",
                )
                for r in resolutions
                if r.cutoff is not None
            )
        ),
        limits,
    )


def target_arrays(sweep: SweepSet, limits: Sequence[int] | None = None) -> Any:
    """The targets as a derived table ``t (p, ty, cut, i)`` from three bound arrays (``i``:
    the target's place in ``sweep.targets``, from 1); with ``limits``, ``t (p, ty, cut, k,
    i)``."""
    projects, types, cutoffs = sweep.columns
    arrays = [
        cast(bindparam("ps", projects, type_=Text), ARRAY(PG_UUID(as_uuid=True))),
        cast(bindparam("ts", types, type_=Text), ARRAY(Text)),
        cast(bindparam("cs", cutoffs, type_=Text), ARRAY(DateTime(timezone=True))),
    ]
    names = ["p", "ty", "cut"]
    if limits is not None:
        assert len(limits) == len(sweep.targets)
        arrays.append(bindparam("ks", list(limits), type_=ARRAY(BigInteger)))
        names.append("k")
    return (
        func.unnest(*arrays)
        .table_valued(*names, with_ordinality="i")
        .render_derived(name="retention_t")
    )


def reviewed_pairs(reviewed: Sequence[frozenset[UUID] | None], name: str) -> Any:
    """Applying a reviewed plan to a group: the ids each target's plan named, as a derived
    table ``retention_<name> (i, id)`` (``i``: the target's place, from 1, as in
    ``resolution_arrays``) to join by primary key; None without a plan. A group is all
    under a plan or none of it (the run's)."""
    if all(r is None for r in reviewed):
        return None
    if any(r is None for r in reviewed):
        raise ValueError("targets of one group with and without a reviewed plan")
    places: list[int] = []
    ids: list[UUID] = []
    for i, named in enumerate(reviewed, 1):
        assert named is not None
        for object_id in sorted(named):
            places.append(i)
            ids.append(object_id)
    return (
        func.unnest(
            cast(bindparam(f"{name}_i", array_literal(places), type_=Text), ARRAY(BigInteger)),
            cast(
                bindparam(f"{name}_ids", array_literal(ids), type_=Text),
                ARRAY(PG_UUID(as_uuid=True)),
            ),
        )
        .table_valued("i", "id")
        .render_derived(name=f"retention_{name}")
    )


def keys_digest(keys: Any) -> Any:
    """sha256 (hex) of an array of sequence ids, ascending, one per line: what receipts
    record (the same bytes as ``dataplane.keys_digest``).

    Over an array aggregated per target, not as an ordered aggregate: an aggregate with
    ``ORDER BY`` cannot hash, so the whole batch would be sorted by target first (about
    0.1x of a one-statement DELETE over a backlog); sorting each target's array alone is
    cheap, and the heap order is mostly the key order already.
    """
    key = func.unnest(keys).column_valued("k")
    ordered = func.array(select(key).order_by(key).scalar_subquery())
    newline = literal_column("E'\\n'", Text)
    lines = func.array_to_string(ordered, newline, type_=Text).concat(newline)
    return func.encode(func.sha256(func.convert_to(lines, "UTF8")), "hex")


def delete_blocks(
    conn: Connection, tables: DataPlaneTables, sweep: SweepSet, lo: int, hi: int
) -> BlockBatch:
    """Delete the expired rows of every target in heap blocks [lo, hi)."""
    ev = tables.events
    arrays = target_arrays(sweep)
    ctid = literal_column("ctid", type_=TID())
    conditions = [
        ctid >= cast(bindparam("lo", f"({lo},0)"), TID()),
        ctid < cast(bindparam("hi", f"({hi},0)"), TID()),
        ev.c.project_id == arrays.c.p,
        ev.c.object_type == arrays.c.ty,
        ev.c.created < arrays.c.cut,
        # the latest cutoff as a constant: partitions of a partitioned table that hold
        # nothing older are pruned from the scan
        ev.c.created < sweep.latest_cutoff,
    ]
    if sweep.held:
        conditions.append(ev.c.object_id.not_in(sorted(sweep.held)))
    if sweep.newest_row is not None:
        conditions.append(up_to(ev, sweep.newest_row))
    deleted = (
        delete(ev)
        .where(and_(*conditions))
        .returning(arrays.c.i, ev.c.sequence_id)  # grouping by a small int is the cheapest
        .cte("retention_deleted")
    )
    per_target = (
        select(
            deleted.c.i,
            func.count().label("n"),
            func.min(deleted.c.sequence_id).label("first"),
            func.max(deleted.c.sequence_id).label("last"),
            func.array_agg(deleted.c.sequence_id).label("ids"),
        )
        .group_by(deleted.c.i)
        .subquery("retention_per_target")
    )
    query = select(
        per_target.c.i,
        per_target.c.n,
        per_target.c.first,
        per_target.c.last,
        keys_digest(per_target.c.ids),
    )
    batch = BlockBatch()
    for i, count, first, last, digest in conn.execute(query):
        target = sweep.targets[int(i) - 1]
        pair = (target.project_id, target.object_type.value)
        batch.per_target[pair] = (int(count), int(first), int(last), digest)
        batch.rows += int(count)
    return batch


@dataclass
class BlockSizer:
    """Blocks per batch, adapted so a batch takes about ``target`` seconds."""

    blocks: int = 256  # 2 MiB of heap to start; grows or shrinks to the target time
    target: float = 0.2

    def update(self, seconds: float, blocks: int | None = None) -> None:
        """After a batch of ``blocks`` (default: a full batch) took ``seconds``."""
        if seconds <= 0:
            return
        if blocks is not None and 0 < blocks < self.blocks:
            seconds = seconds * self.blocks / blocks  # a batch cut short at a unit's end
        # aim a little under the target: batch time is not quite linear in blocks
        factor = max(0.25, min(MAX_GROWTH, 0.8 * self.target / seconds))
        self.blocks = int(max(MIN_BLOCKS, min(MAX_BLOCKS, self.blocks * factor)))


@dataclass(frozen=True)
class SweepResult:
    complete: bool
    longest: float = 0.0  # seconds of the longest batch transaction
    waits: int = 0  # batches that timed out on a lock and were retried smaller
    note: str = ""  # why it stopped early ("" when complete)
    rows: int = 0  # rows deleted
    units: int = 0  # work units finished
