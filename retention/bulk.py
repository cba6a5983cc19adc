"""The bulk paths for logs and dataset rows on PostgreSQL: whole partitions, then one
block-range sweep of the heap for every target at once, split into units that several
workers of one run can share (``workqueue``).

Both count into the targets' own checkpoints (by increments) and write one receipt per
target and batch (a partition or a block range) in the batch's transaction, so a run killed
at any moment resumes with counts and receipts that match the rows gone. What is left of a
target after them (its segments; experiments altogether) goes by the per-target path in
``deleter``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any
from uuid import UUID

from sqlalchemy.exc import DBAPIError

from . import blocksweep, dataplane, logs, partitions, state, workqueue
from .db import deadlocked, timed_out
from .deleter import (
    BatchContext,
    after_rows,
    apply_new_holds,
    gave_up_note,
    initial_checkpoint,
    lock_pause,
)
from .errors import UsageError
from .models import Hold, ObjectType, Phase, Target
from .settings import Settings
from .state import Checkpoint

log = logging.getLogger(__name__)

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
        return self.waits if key == self._first else 0

    @cached_property
    def _first(self) -> str | None:
        return min(self.swept) if self.swept else None


def _receipt(
    target: blocksweep.SweepTarget,
    rows: int,
    where: str,
    first: int,
    last: int,
    digest: str,
    action: str,
) -> dict[str, Any]:
    """A receipt of one bulk batch: keys are "WHERE:SEQUENCE_ID" ("blocks 0-256:17",
    "partition public.events_2026_01:4")."""
    return dict(
        project_id=target.project_id,
        object_type=target.object_type.value,
        policy_source=target.policy_source,
        retention_days=target.retention_days,
        cutoff=target.cutoff,
        rows=rows,
        objects=0,
        segments=0,
        bytes=0,
        action=action,
        first_key=f"{where}:{first}",
        last_key=f"{where}:{last}",
        keys_digest=digest,
    )


def record(
    ctx: BatchContext,
    current: blocksweep.SweepSet,
    where: str,
    found: PerTarget,
    action: str = "delete",
    *,
    whole: bool = False,
) -> None:
    """Counts and receipts of one bulk batch (call inside its transaction).

    ``whole``: a partition that goes whole; its receipts name the partition as both keys
    and carry no digest (its rows are not read one by one)."""
    now = ctx.clock()
    by_pair = current.by_pair
    counts, items = [], []
    for pair, (count, first, last, digest) in sorted(found.items(), key=str):
        target = by_pair[pair]
        counts.append((target.key, count))
        item = _receipt(target, count, where, first, last, digest, action)
        if whole:
            item.update(first_key=where, last_key=where, keys_digest=None)
        items.append(item)
        if ctx.progress is not None:
            ctx.progress.advance(count)
    state.add_counts(ctx.conn, ctx.run_id, counts, clock=now)
    state.add_receipts(ctx.conn, ctx.run_id, items, clock=now)


class _Holds:
    """The run's leader re-reads holds before every batch: held targets leave the sweep,
    held objects are kept."""

    def __init__(self, ctx: BatchContext, targets: Sequence[Target]):
        self.ctx = ctx
        self.targets = {t.key: t for t in targets}
        self.held: dict[str, str] = {}  # target key -> reason, held during the run
        # the holds last applied and the sweep they gave: the same holds over that sweep
        # give it again (the work is per target, and a batch must not cost per target)
        self._last: tuple[tuple[Hold, ...], blocksweep.SweepSet] | None = None

    def refresh(self, current: blocksweep.SweepSet) -> blocksweep.SweepSet:
        if self.ctx.holds is None:
            return current
        holds = tuple(self.ctx.holds())
        if self._last is not None and self._last[0] == holds and self._last[1] is current:
            return current
        refreshed = self._apply(current, holds)
        if refreshed == current:
            refreshed = current
        self._last = (holds, refreshed)
        return refreshed

    def _apply(self, current: blocksweep.SweepSet, holds: Sequence[Hold]) -> blocksweep.SweepSet:
        kept, extra = [], set(current.held)
        for swept in current.targets:
            updated, hold = apply_new_holds(self.targets[swept.key], holds)
            if hold is not None:
                self.held[swept.key] = hold.reason
                continue
            self.targets[swept.key] = updated
            kept.append(swept)
            extra |= updated.resolution.held_object_ids
        return replace(current, targets=tuple(kept), held=frozenset(extra))


class _OwnHolds:
    """A worker other than the leader reads the holds itself before every batch: the
    leader publishes them only between its own batches, which may wait on a lock."""

    def __init__(self, read: Callable[[], Sequence[Hold]], now: datetime) -> None:
        self.read = read
        self.now = now  # the run's pinned now
        self._last: tuple[tuple[Hold, ...], blocksweep.SweepSet, blocksweep.SweepSet] | None = (
            None  # holds, the sweep they applied to, the result
        )

    def apply(self, sweep: blocksweep.SweepSet) -> blocksweep.SweepSet:
        holds = tuple(self.read())
        if self._last is not None and self._last[0] == holds and self._last[1] is sweep:
            return self._last[2]
        result = sweep.with_holds(holds, self.now)
        self._last = (holds, sweep, result)
        return result


def _open_checkpoints(
    ctx: BatchContext, targets: Sequence[Target], found: dict[str, Checkpoint]
) -> None:
    """Every target a bulk path works for gets a checkpoint row to count into."""
    now = ctx.clock()
    new: list[tuple[UUID, str, Checkpoint]] = []
    with ctx.conn.begin():
        there = {**found, **state.load_checkpoints(ctx.conn, ctx.run_id)}
        for target in targets:
            checkpoint = there.get(target.key)
            if checkpoint is None:
                checkpoint = initial_checkpoint(target, None)
                new.append((target.project_id, target.object_type.value, checkpoint))
            elif checkpoint.cutoff != target.resolution.cutoff:
                state.save_checkpoint(
                    ctx.conn,
                    ctx.run_id,
                    project_id=target.project_id,
                    object_type=target.object_type.value,
                    checkpoint=initial_checkpoint(target, checkpoint),
                    clock=now,
                )
            # else: there already; other workers may be counting into it
        state.insert_checkpoints(ctx.conn, ctx.run_id, new, clock=now)


def _reloaded(ctx: BatchContext, found: dict[str, Checkpoint]) -> dict[str, Checkpoint]:
    with ctx.conn.begin():
        return {**found, **state.load_checkpoints(ctx.conn, ctx.run_id)}


def _in_rows_phase(targets: Sequence[Target], found: dict[str, Checkpoint]) -> list[Target]:
    """Targets whose rows are still to go (no checkpoint, or one in the rows phase for the
    same cutoff)."""
    kept = []
    for target in targets:
        checkpoint = found.get(target.key)
        if (
            checkpoint is None
            or checkpoint.phase is Phase.ROWS
            or checkpoint.cutoff != target.resolution.cutoff
        ):
            kept.append(target)
    return kept


def drop_partitions(
    ctx: BatchContext, targets: Sequence[Target], found: dict[str, Checkpoint], action: str
) -> tuple[dict[str, Checkpoint], int]:
    """Drop (or detach) the partitions of events whose every row has expired.

    Returns the checkpoints with the rows counted in, and how many rows went. A
    partition that cannot be locked in time is left to the row path.
    """
    chosen = _in_rows_phase(targets, found)
    sweep = blocksweep.sweepable(chosen, tuple(ObjectType))
    if not sweep.targets:
        return found, 0
    with ctx.conn.begin():
        parts = partitions.leaves(ctx.conn, ctx.tables)
    latest = max(t.cutoff for t in sweep.targets)
    candidates = [p for p in parts if p.upper is not None and p.upper <= latest]
    if not candidates:
        return found, 0
    keys = {s.key for s in sweep.targets}
    swept = [t for t in chosen if t.key in keys]
    _open_checkpoints(ctx, swept, found)
    holds = _Holds(ctx, swept)
    current, gone, rows = sweep, 0, 0
    logs.set_action("delete")
    for part in candidates:
        if ctx.should_stop():
            break
        current = holds.refresh(current)
        if not current.targets:
            break
        name = f"{part.schema}.{part.name}"
        try:
            with ctx.conn.begin():
                partitions.lock_writes(ctx.conn, part)
                if not partitions.still_a_leaf(ctx.conn, ctx.tables, part):
                    log.warning("partition %s: no longer a partition of events; left alone", name)
                    continue
                inside = partitions.contents(ctx.conn, ctx.tables, part, current)
                if inside.kept or not inside.expired:
                    log.info("partition %s: %d rows kept; not dropped", name, inside.kept)
                    continue
                if partitions.waiting_on(ctx.conn, part):  # writers queued behind the lock
                    log.warning("partition %s: writers waiting; its rows go by the row path", name)
                    continue
                partitions.bound_parent_wait(ctx.conn)
                record(
                    ctx,
                    current,
                    f"partition {name}",
                    {pair: (n, 0, 0, "") for pair, n in inside.expired.items()},
                    action="delete" if action == "drop" else "detach",
                    whole=True,
                )
                partitions.remove(ctx.conn, ctx.tables, part, action)
        except DBAPIError as error:
            if not (timed_out(error) or deadlocked(error)):
                raise
            log.warning("partition %s: busy (lock timeout); its rows go by the row path", name)
            continue
        gone += 1
        rows += sum(inside.expired.values())
        log.info("partition %s: %s", name, "dropped" if action == "drop" else "detached")
    if gone:
        log.info("partitions: %d %s, %d rows", gone, action, rows)
    return _reloaded(ctx, found), rows


@dataclass(frozen=True)
class Crew:
    """This process's part in a run's block sweep."""

    me: str  # worker id: host, pid and a random suffix
    unit_blocks: int = 16_384  # heap blocks per work unit (128 MiB)
    stale: timedelta = timedelta(seconds=60)  # a unit's owner silent this long is dead
    poll: float = 0.2  # seconds between looks at the queue while others finish
    helpers: int = 0  # more connections of this process that sweep along (threads)

    @staticmethod
    def worker_id() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    @classmethod
    def for_this_process(cls, settings: Settings) -> Crew:
        return cls(
            me=cls.worker_id(),
            unit_blocks=settings.sweep_unit_blocks,
            stale=settings.worker_stale,
            helpers=settings.sweep_connections - 1,
        )


def sweep_rows(
    ctx: BatchContext,
    targets: Sequence[Target],
    found: dict[str, Checkpoint],
    sizer: blocksweep.BlockSizer,
    crew: Crew,
    earlier: Mapping[str, int],
) -> RowSweep:
    """Delete the rows of every logs and dataset target in one pass over the heap, with
    any workers that join the run (the caller is the run's leader). ``earlier``: each
    target's rows in its checkpoint when this attempt began (deleted by earlier ones)."""
    chosen = _in_rows_phase(targets, found)
    sweep = blocksweep.sweepable(chosen)
    keys = {t.key for t in sweep.targets}
    swept_targets = [t for t in chosen if t.key in keys]
    swept = frozenset(keys)
    if not sweep.targets:
        return RowSweep(found, swept, True, {}, 0.0)
    _open_checkpoints(ctx, swept_targets, found)
    with ctx.conn.begin():
        end, _ = partitions.heap_size(ctx.conn, ctx.tables)
        sweep = replace(sweep, table=workqueue.table_identity(ctx.conn, ctx.tables))
        _, kept = workqueue.prepare(
            ctx.conn, ctx.run_id, sweep, end=end, unit_blocks=crew.unit_blocks
        )
    if not kept:
        log.info("block sweep: %d blocks in units of %d", end + 1, crew.unit_blocks)
    holds = _Holds(ctx, swept_targets)
    logs.set_action("delete")
    result = _with_helpers(ctx, crew, sizer, holds)
    if not result.complete:
        _stand_down(ctx)
    marks = _reloaded(ctx, found)
    if result.complete:
        phases = []
        with ctx.conn.begin():
            for target in swept_targets:
                if target.key in holds.held:
                    # stays in the rows phase: a resume after the hold ends finishes it
                    continue
                current = holds.targets.get(target.key, target).resolution
                # Fewer rows than planned: a row may have moved during the sweep (an update
                # to the heap's end or into a swept block, a rewrite by VACUUM FULL) where
                # the sweep never looks. The index still finds it, and keyset batches
                # finish the target. (Only then: the probe walks the sweep's dead index
                # entries: on a 1M-row backlog, 50 probes cost as much as the sweep.)
                now_deleted = marks[target.key].rows - earlier.get(target.key, 0)
                short = now_deleted < target.counts.rows
                if short and dataplane.rows_left(ctx.conn, ctx.tables, current, None):
                    log.warning(
                        "block sweep: target=%s has expired rows outside the blocks swept; "
                        "keyset batches finish it",
                        target.key,
                    )
                    continue
                phase = after_rows(target, ctx)
                marks[target.key] = replace(marks[target.key], phase=phase)
                phases.append((target.key, phase))
            state.set_phases(ctx.conn, ctx.run_id, phases, clock=ctx.clock())
    log.info(
        "block sweep: %s, %d rows",
        "complete" if result.complete else result.note,
        sum(marks[k].rows for k in swept),
    )
    return RowSweep(
        marks, swept, result.complete, holds.held, result.longest, result.waits, result.note
    )


def _stand_down(ctx: BatchContext) -> None:
    """Before counting a sweep that stopped early: other workers' batches in flight finish
    first, and no more start (``workqueue.stand_down``). A batch stuck longer than the lock
    timeout is not waited for; the next run's counts include it."""
    try:
        with ctx.conn.begin():
            workqueue.stand_down(ctx.conn, ctx.run_id)
    except DBAPIError as error:
        if not timed_out(error):
            raise
        log.warning("block sweep: another worker's batch is still running; counted next run")


def _with_helpers(
    ctx: BatchContext, crew: Crew, sizer: blocksweep.BlockSizer, holds: _Holds
) -> blocksweep.SweepResult:
    """The leader's ``work_units``, with ``crew.helpers`` threads claiming units of the
    same queue on connections of their own (``RETENTION_SWEEP_CONNECTIONS``): the server
    deletes in several backends at once. A helper is a ``retention join`` inside this
    process; when the leader stops or fails, so do they, before it returns."""
    if crew.helpers <= 0:
        return work_units(ctx, crew, sizer, holds=holds)
    done = threading.Event()
    results: list[blocksweep.SweepResult] = []
    errors: list[BaseException] = []

    def helper(n: int) -> None:
        try:
            with ctx.conn.engine.connect() as conn:
                mine = replace(
                    ctx, conn=conn, should_stop=lambda: done.is_set() or ctx.should_stop()
                )
                sized = blocksweep.BlockSizer(blocks=sizer.blocks, target=sizer.target)
                results.append(work_units(mine, replace(crew, me=f"{crew.me}/{n}"), sized))
        except BaseException as error:  # handed to the leader's thread
            errors.append(error)

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(helper, n), name=f"sweep-{n}")
        for n in range(1, crew.helpers + 1)
    ]
    for thread in threads:
        thread.start()
    leader = replace(ctx, should_stop=lambda: bool(errors) or ctx.should_stop())
    try:
        result = work_units(leader, crew, sizer, holds=holds)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return replace(
        result,
        longest=max([result.longest] + [r.longest for r in results]),
        waits=result.waits + sum(r.waits for r in results),
        rows=result.rows + sum(r.rows for r in results),
        units=result.units + sum(r.units for r in results),
    )


def work_units(
    ctx: BatchContext,
    crew: Crew,
    sizer: blocksweep.BlockSizer,
    *,
    holds: _Holds | None = None,
) -> blocksweep.SweepResult:
    """Claim and sweep units until none is left. The leader (``holds`` given) also waits
    for units other workers hold, takes over those whose owner went silent, and applies
    holds added during the run for everyone; a helper stops when nothing is left to claim.
    """
    longest, waits, rows, finished = 0.0, 0, 0, 0
    reader = workqueue.SweepReader(ctx.run_id)
    own: _OwnHolds | None = None
    table: str | None = None  # another worker's: its events table, to check the sweep's
    while True:
        if ctx.should_stop():
            return blocksweep.SweepResult(False, longest, waits, "stopped", rows, finished)
        with ctx.conn.begin():
            unit = workqueue.claim(ctx.conn, ctx.run_id, crew.me, crew.stale)
            left = workqueue.remaining(ctx.conn, ctx.run_id) if unit is None else 1
            if holds is None and table is None:
                table = workqueue.table_identity(ctx.conn, ctx.tables)
            if holds is None and own is None and ctx.holds is not None:
                own = _OwnHolds(ctx.holds, state.pinned_now(ctx.conn, ctx.run_id))
            if holds is not None:
                current = reader.read(ctx.conn)
                refreshed = holds.refresh(current)
                if refreshed is not current and refreshed != current:
                    workqueue.publish(ctx.conn, ctx.run_id, refreshed)
            open_ = unit is not None or left == 0 or workqueue.still_led(ctx.conn, ctx.run_id)
        if unit is None:
            if left == 0:
                return blocksweep.SweepResult(True, longest, waits, "", rows, finished)
            if holds is None:  # another worker: the rest is others' (or the run stopped)
                note = "" if open_ else _RUN_STOPPED
                return blocksweep.SweepResult(open_, longest, waits, note, rows, finished)
            ctx.sleep(crew.poll)  # others are on the last units
            continue
        done = _work_unit(ctx, crew, sizer, unit, reader, holds or own, table)
        longest, waits, rows = max(longest, done.longest), waits + done.waits, rows + done.rows
        finished += done.units
        if done.note:
            return blocksweep.SweepResult(False, longest, waits, done.note, rows, finished)


_RUN_STOPPED = "the run stopped (its leader stopped it or is gone) before its sweep was done"


def _work_unit(
    ctx: BatchContext,
    crew: Crew,
    sizer: blocksweep.BlockSizer,
    unit: workqueue.Unit,
    reader: workqueue.SweepReader,
    holds: _Holds | _OwnHolds | None,
    table: str | None = None,
) -> blocksweep.SweepResult:
    """Sweep one claimed unit from its next block; note "" when it is done or was taken
    over, a note when the run stopped. ``table``: a worker other than the leader's, whose
    events table must be the sweep's."""
    lo, longest, waits, streak, rows = unit.next_block, 0.0, 0, 0, 0
    while lo < unit.hi:
        if ctx.should_stop():
            with ctx.conn.begin():
                workqueue.release(ctx.conn, unit, crew.me)
            return blocksweep.SweepResult(False, longest, waits, "stopped", rows)
        hi = min(lo + sizer.blocks, unit.hi)
        began = time.monotonic()
        try:
            with ctx.conn.begin():
                if not workqueue.advance(
                    ctx.conn, unit, crew.me, next_block=hi, rows=0, done=hi >= unit.hi
                ):
                    if not workqueue.still_led(ctx.conn, ctx.run_id):
                        log.warning("unit %d: %s; leaving it", unit.unit, _RUN_STOPPED)
                        return blocksweep.SweepResult(False, longest, waits, _RUN_STOPPED, rows)
                    log.warning("unit %d: taken over by another worker; leaving it", unit.unit)
                    return blocksweep.SweepResult(True, longest, waits, "", rows)
                sweep = reader.read(ctx.conn)
                if table is not None and sweep.table != table:
                    raise UsageError(
                        "this worker's events table (RETENTION_TABLE_EVENTS and its columns) "
                        "is not the one the run's leader sweeps; it deleted nothing"
                    )
                if isinstance(holds, _Holds):  # the leader: for everyone
                    refreshed = holds.refresh(sweep)
                    if refreshed is not sweep and refreshed != sweep:
                        workqueue.publish(ctx.conn, ctx.run_id, refreshed)
                        sweep = refreshed
                elif holds is not None:  # another worker: for its own batch
                    sweep = holds.apply(sweep)
                batch = (
                    blocksweep.delete_blocks(ctx.conn, ctx.tables, sweep, lo, hi)
                    if sweep.targets
                    else blocksweep.BlockBatch()
                )
                record(ctx, sweep, f"blocks {lo}-{hi}", batch.per_target)
                workqueue.count_rows(ctx.conn, unit, batch.rows)
        except DBAPIError as error:
            if not timed_out(error):
                raise
            waits += 1
            streak += 1
            if streak > ctx.lock_retries:
                log.error("block sweep: gave up at block %d after %d lock waits", lo, waits)
                with ctx.conn.begin():
                    workqueue.release(ctx.conn, unit, crew.me)
                return blocksweep.SweepResult(False, longest, waits, gave_up_note(waits), rows)
            sizer.blocks = max(blocksweep.MIN_BLOCKS, sizer.blocks // 2)
            pause = lock_pause(streak)
            log.warning(
                "block sweep: lock or statement timeout at block %d; retrying in %.1fs "
                "over %d blocks",
                lo,
                pause,
                sizer.blocks,
            )
            ctx.sleep(pause)
            continue
        streak = 0
        seconds = time.monotonic() - began
        longest = max(longest, seconds)
        sizer.update(seconds, hi - lo)
        rows += batch.rows
        lo = hi
    return blocksweep.SweepResult(True, longest, waits, "", rows, 1)
