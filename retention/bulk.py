"""The bulk paths for logs and dataset rows on PostgreSQL: whole partitions, then one
block-range sweep of the heap for every target at once.

Both count into the targets' own checkpoints and write one receipt per target and batch
(a partition or a block range) in the batch's transaction, so a run killed at any moment
resumes with counts and receipts that match the rows gone. What is left of a target after
them (its segments; experiments altogether) goes by the per-target path in ``deleter``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.exc import DBAPIError

from . import blocksweep, logs, partitions, state
from .db import deadlocked, timed_out
from .deleter import BatchContext, after_rows, apply_new_holds, initial_checkpoint
from .models import ObjectType, Phase, Target
from .state import Checkpoint

log = logging.getLogger(__name__)

SWEEP_KEY = "@events/block-sweep"
_NO_PROJECT = UUID(int=0)

PerTarget = dict[tuple[UUID, str], tuple[int, int, int, str]]  # rows, first, last, digest


@dataclass(frozen=True)
class RowSweep:
    """What the block sweep left for the per-target path."""

    checkpoints: dict[str, Checkpoint]  # the swept targets, past their rows phase if complete
    swept: frozenset[str]  # keys of the targets the sweep handled
    complete: bool
    held: dict[str, str]  # target key -> hold reason, for targets held during the sweep
    longest: float
    waits: int = 0  # lock waits of the sweep
    note: str = ""  # why the sweep stopped early

    def waits_of(self, key: str) -> int:
        """The sweep's lock waits, counted once: on the first swept target."""
        return self.waits if self.swept and key == min(self.swept) else 0


def _receipt(
    target: Target, rows: int, where: str, first: int, last: int, digest: str, action: str
) -> dict[str, Any]:
    """A receipt of one bulk batch: keys are "WHERE:SEQUENCE_ID" ("blocks 0-256:17",
    "partition public.events_2026_01:4")."""
    resolution = target.resolution
    return dict(
        project_id=target.project_id,
        object_type=target.object_type.value,
        policy_source=resolution.winner.describe() if resolution.winner else "",
        retention_days=resolution.retention_days,
        cutoff=resolution.cutoff,
        rows=rows,
        objects=0,
        segments=0,
        bytes=0,
        action=action,
        first_key=f"{where}:{first}",
        last_key=f"{where}:{last}",
        keys_digest=digest,
    )


class _Tally:
    """The checkpoints of the targets a bulk path works for."""

    def __init__(self, ctx: BatchContext, sweep: blocksweep.SweepSet, found: dict[str, Checkpoint]):
        self.ctx = ctx
        self.marks = {t.key: initial_checkpoint(t, found.get(t.key)) for t in sweep.targets}
        self.pairs = {(t.project_id, t.object_type.value): t.key for t in sweep.targets}
        self.held: dict[str, str] = {}  # target key -> reason, held during the run

    def open(self, targets: Sequence[Target]) -> None:
        """Every target gets a checkpoint row to count into."""
        with self.ctx.conn.begin():
            for target in targets:
                self.save(target)

    def save(self, target: Target) -> None:
        state.save_checkpoint(
            self.ctx.conn,
            self.ctx.run_id,
            project_id=target.project_id,
            object_type=target.object_type.value,
            checkpoint=self.marks[target.key],
            clock=self.ctx.clock(),
        )

    def record(
        self, current: blocksweep.SweepSet, where: str, found: PerTarget, action: str = "delete"
    ) -> None:
        """Counts and receipts of one batch (call inside its transaction)."""
        now = self.ctx.clock()
        counts, items = [], []
        by_key = {t.key: t for t in current.targets}
        for pair, (count, first, last, digest) in sorted(found.items(), key=str):
            key = self.pairs[pair]
            mark = self.marks[key]
            self.marks[key] = replace(mark, rows=mark.rows + count, batches=mark.batches + 1)
            counts.append((key, self.marks[key].rows, self.marks[key].batches))
            items.append(_receipt(by_key[key], count, where, first, last, digest, action))
            if self.ctx.progress is not None:
                self.ctx.progress.advance(count)
        state.update_counts(self.ctx.conn, self.ctx.run_id, counts, clock=now)
        state.add_receipts(self.ctx.conn, self.ctx.run_id, items, clock=now)

    def refresh(self, current: blocksweep.SweepSet) -> blocksweep.SweepSet:
        """Holds added since the last batch: held targets leave, held objects are kept."""
        if self.ctx.holds is None:
            return current
        holds = self.ctx.holds()
        kept, extra = [], set(current.held)
        for target in current.targets:
            updated, hold = apply_new_holds(target, holds)
            if hold is not None:
                self.held[target.key] = hold.reason
                continue
            kept.append(updated)
            extra |= updated.resolution.held_object_ids
        return blocksweep.SweepSet(targets=tuple(kept), held=frozenset(extra))


def drop_partitions(
    ctx: BatchContext, targets: Sequence[Target], found: dict[str, Checkpoint], action: str
) -> tuple[dict[str, Checkpoint], int]:
    """Drop (or detach) the partitions of events whose every row has expired.

    Returns the checkpoints with the rows counted in, and how many rows went. A
    partition that cannot be locked in time is left to the row path.
    """
    sweep = blocksweep.sweepable(targets, tuple(ObjectType))
    if not sweep.targets:
        return found, 0
    with ctx.conn.begin():
        parts = partitions.leaves(ctx.conn, ctx.tables)
    latest = max(t.resolution.cutoff for t in sweep.targets if t.resolution.cutoff)
    candidates = [p for p in parts if p.upper is not None and p.upper <= latest]
    if not candidates:
        return found, 0
    tally = _Tally(ctx, sweep, found)
    tally.open(sweep.targets)
    current, gone, rows = sweep, 0, 0
    logs.set_action("delete")
    for part in candidates:
        if ctx.should_stop():
            break
        current = tally.refresh(current)
        if not current.targets:
            break
        name = f"{part.schema}.{part.name}"
        try:
            with ctx.conn.begin():
                partitions.lock_writes(ctx.conn, part)
                inside = partitions.contents(ctx.conn, ctx.tables, part, current)
                if inside.kept or not inside.expired:
                    log.info("partition %s: %d rows kept; not dropped", name, inside.kept)
                    continue
                tally.record(
                    current,
                    f"partition {name}",
                    inside.expired,
                    action="delete" if action == "drop" else "detach",
                )
                partitions.remove(ctx.conn, ctx.tables, part, action)
        except DBAPIError as error:
            if not (timed_out(error) or deadlocked(error)):
                raise
            log.warning("partition %s: busy (lock timeout); its rows go by the row path", name)
            continue
        gone += 1
        rows += sum(v[0] for v in inside.expired.values())
        log.info(
            "partition %s: %s, %d rows",
            name,
            "dropped" if action == "drop" else "detached",
            sum(v[0] for v in inside.expired.values()),
        )
    if gone:
        log.info("partitions: %d %s, %d rows", gone, action, rows)
    return {**found, **tally.marks}, rows


def sweep_rows(
    ctx: BatchContext,
    targets: Sequence[Target],
    found: dict[str, Checkpoint],
    sizer: blocksweep.BlockSizer,
) -> RowSweep:
    """Delete the rows of every logs and dataset target in one pass over the heap."""
    sweep = blocksweep.sweepable(targets)
    tally = _Tally(ctx, sweep, found)
    swept = frozenset(tally.marks)
    previous = found.get(SWEEP_KEY)
    same = previous is not None and previous.signature == sweep.signature
    if not sweep.targets or (same and previous is not None and previous.phase is Phase.DONE):
        return RowSweep(tally.marks, swept, True, tally.held, 0.0)
    start = (previous.block or 0) if same and previous is not None else 0
    if previous is not None and not same:
        log.warning(
            "block sweep: targets or cutoffs changed since the interrupted run; "
            "sweeping from the first block again"
        )
    cutoff = min(t.resolution.cutoff for t in sweep.targets if t.resolution.cutoff)

    def save_sweep(phase: Phase, block: int, now: datetime) -> None:
        state.save_checkpoint(
            ctx.conn,
            ctx.run_id,
            project_id=_NO_PROJECT,
            object_type="block-sweep",
            checkpoint=Checkpoint(
                target=SWEEP_KEY,
                phase=phase,
                cutoff=cutoff,
                cursor=None,
                rows=0,
                objects=0,
                batches=0,
                block=block,
                signature=sweep.signature,
            ),
            clock=now,
        )

    def commit(
        current: blocksweep.SweepSet, lo: int, hi: int, batch: blocksweep.BlockBatch
    ) -> None:
        tally.record(current, f"blocks {lo}-{hi}", batch.per_target)
        save_sweep(Phase.ROWS, hi, ctx.clock())

    tally.open(sweep.targets)
    with ctx.conn.begin():
        end, _ = partitions.heap_size(ctx.conn, ctx.tables)
    logs.set_action("delete")
    result = blocksweep.run_sweep(
        ctx.conn,
        ctx.tables,
        sweep,
        start=start,
        end=end,
        sizer=sizer,
        should_stop=ctx.should_stop,
        commit=commit,
        refresh=tally.refresh,
        lock_retries=ctx.lock_retries,
        sleep=ctx.sleep,
    )
    if result.complete:
        with ctx.conn.begin():
            for target in sweep.targets:
                phase = Phase.DONE if target.key in tally.held else after_rows(target, ctx)
                tally.marks[target.key] = replace(tally.marks[target.key], phase=phase)
                tally.save(target)
            save_sweep(Phase.DONE, 0, ctx.clock())
    log.info(
        "block sweep: %s, %d rows",
        "complete" if result.complete else result.note,
        sum(c.rows for c in tally.marks.values()),
    )
    return RowSweep(
        tally.marks, swept, result.complete, tally.held, result.longest, result.waits, result.note
    )
