"""Many small targets per transaction: the daily run's usual case on PostgreSQL.

When little has expired, most targets have a few hundred rows to go. Deleting them target
by target costs a transaction, a checkpoint and a receipt statement per target, which on a
daily run is as much as the deleting itself. Here targets whose planned rows fit in one
batch are taken together, up to ``RETENTION_BATCH_SIZE`` planned rows per group: one
``DELETE`` picks each target's first rows from its own index range, and the group's
checkpoints and receipts (one per target, as the per-target path writes them) commit with
it; the group's segments are marked in the same transaction. Experiment targets are
grouped the same way (the rows of their expired experiments), and then their registry
entries go in a second transaction, after the rows committed, as the per-target path does
it: a data plane has an experiment target for every project, and two transactions for
each were most of a purge over thousands of projects. Segments are marked by key among
those found for a chunk of groups in one pass before it (``CHUNK``), and a last pass per
chunk sends a target with one written meanwhile back to its segments phase; applying a
reviewed plan, among those its plan named. A target that turns out to have
more rows than a batch, or that a hold added during the run now covers, is left where it
stands for the per-target path in ``deleter``, which resumes it from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from uuid import UUID

from sqlalchemy.exc import DBAPIError

from . import dataplane, segments, state
from .db import timed_out
from .deleter import (
    BatchContext,
    after_rows,
    after_segments,
    apply_new_holds,
    initial_checkpoint,
    receipt_of,
)
from .models import ObjectType, Phase, Target
from .segments import Pair
from .state import Checkpoint

log = logging.getLogger(__name__)


def eligible(
    targets: Sequence[Target], found: dict[str, Checkpoint], batch_size: int
) -> list[Target]:
    """Targets whose rows, registry entries and segments each fit in one batch, not
    started yet in this run (or started over for a changed cutoff), of the kinds the
    grouped deletes take (``dataplane.groupable``)."""
    chosen = []
    for target in targets:
        r = target.resolution
        counts = target.counts
        fits = max(counts.rows, counts.objects, counts.segments) <= batch_size
        if not fits or not dataplane.groupable([r]):
            continue
        checkpoint = found.get(target.key)
        under_way = (
            checkpoint is not None
            and checkpoint.cutoff == r.cutoff
            and (checkpoint.phase is not Phase.ROWS or checkpoint.cursor is not None)
        )
        if not under_way:  # (one under way is resumed exactly by the per-target path)
            chosen.append(target)
    return chosen


def groups(targets: Sequence[Target], batch_size: int) -> list[list[Target]]:
    """The targets in their order, logs and datasets first, then experiments (a group is
    of one kind), up to ``batch_size`` planned rows, registry entries and segments per
    group, each target counting at least one."""
    out: list[list[Target]] = []
    for kind in (False, True):
        load = batch_size + 1  # a new group first
        for target in targets:
            if (target.object_type is ObjectType.EXPERIMENT) is not kind:
                continue
            counts = target.counts
            weight = max(counts.rows + counts.objects + counts.segments, 1)
            if load + weight > batch_size:
                out.append([])
                load = 0
            out[-1].append(target)
            load += weight
    return out


@dataclass
class Grouped:
    checkpoints: dict[str, Checkpoint]  # every checkpoint of the run, these targets' updated
    longest: dict[str, float] = field(default_factory=dict)  # target key -> its group's s


def purge_small_targets(
    ctx: BatchContext, targets: Sequence[Target], found: dict[str, Checkpoint]
) -> Grouped:
    """Purge ``eligible`` targets group by group.

    A group whose batch times out on a lock is left to the per-target path (which waits,
    shrinks and retries); so are the rest when the run is asked to stop.
    """
    out = Grouped(dict(found))
    planned = groups(targets, ctx.batch_size)
    for start in range(0, len(planned), CHUNK):
        chunk = planned[start : start + CHUNK]
        looked, known, stop = False, None, False
        for these in chunk:
            if stop := ctx.should_stop():
                break
            if not looked:  # (once the chunk's first group goes: none when stopping)
                looked, known = True, _known_segments(ctx, [t for g in chunk for t in g])
            group = _unheld(ctx, these)
            if not _transaction(ctx, group, partial(_group, known=known), out):
                continue
            # experiments: their registry entries in a transaction of their own, after
            # their rows committed (as the per-target path does); only the targets whose
            # rows this group just finished (a target a new hold took out goes alone)
            ready = [t for t in group if out.checkpoints[t.key].phase is Phase.REGISTRY]
            if ready and not ctx.should_stop():
                _transaction(ctx, _unheld(ctx, ready), _registry_group, out)
        if known is not None:  # (also when stopping: a resumed run goes on from the phases)
            _left_behind(ctx, [t for g in chunk for t in g], out)
        if stop:
            break
    return out


# Groups whose targets' expired segments are found in one pass over the segments index
# before them; each group then marks its targets' segments by key. (The reference schema
# indexes segments by id only: finding them per group read the whole index twice a group,
# 15 s of a 2,000-project purge with 64,000 segments.)
CHUNK = 64


def _known_segments(ctx: BatchContext, targets: list[Target]) -> dict[Pair, frozenset[UUID]] | None:
    """The expired live segments of these targets, by target, when their groups will mark
    segments and no reviewed plan names them (a plan's are found by key already)."""
    resolutions = [t.resolution for t in targets]
    if not ctx.mark_segments or any(r.reviewed_segments is not None for r in resolutions):
        return None
    try:
        with ctx.conn.begin():
            found = segments.expired_live_ids_many(ctx.conn, ctx.tables, resolutions)
    except DBAPIError as error:
        if not timed_out(error):
            raise
        log.warning("segments of %d small targets: timeout; each group looks alone", len(targets))
        return None
    return {key: frozenset(ids) for key, ids in found.items()}


def _left_behind(ctx: BatchContext, targets: list[Target], out: Grouped) -> None:
    """Targets whose segments phase their group finished by the segments found before the
    chunk, that have an expired live segment now (one written meanwhile): back to their
    segments phase, for the per-target path. One pass over the segments index a chunk."""
    finished = [
        t
        for t in targets
        if t.key in out.longest
        and out.checkpoints[t.key].phase in (Phase.REGISTRY, Phase.DONE)
        and dataplane.groupable([t.resolution])
    ]
    if not finished:
        return
    left: set[Pair] | None = set()
    try:
        with ctx.conn.begin():
            for experiments in (False, True):
                mine = [
                    t.resolution
                    for t in finished
                    if (t.object_type is ObjectType.EXPERIMENT) is experiments
                ]
                if mine and left is not None:
                    left |= segments.with_marks_left(ctx.conn, ctx.tables, mine)
    except DBAPIError as error:
        if not timed_out(error):
            raise
        log.warning("segments of %d small targets: timeout; each looks again", len(finished))
        left = None  # not known: every one looks again alone (exact, slower)
    back = [
        replace(out.checkpoints[t.key], phase=Phase.SEGMENTS, segment_cursor=None)
        for t in finished
        if left is None or (t.project_id, t.object_type.value) in left
    ]
    if back:
        with ctx.conn.begin():
            state.update_checkpoints(ctx.conn, ctx.run_id, back, clock=ctx.clock())
        log.info("%d targets have expired segments to look for again: marked alone", len(back))
    out.checkpoints.update((c.target, c) for c in back)


def _unheld(ctx: BatchContext, targets: list[Target]) -> list[Target]:
    """Without the targets a hold added during the run changes: they go alone."""
    if ctx.holds is None:
        return targets
    holds = ctx.holds()
    return [t for t in targets if apply_new_holds(t, holds) == (t, None)]


def _transaction(
    ctx: BatchContext,
    group: list[Target],
    step: Callable[[BatchContext, Sequence[Target], dict[str, Checkpoint]], dict[str, Checkpoint]],
    out: Grouped,
) -> bool:
    """``step`` for the group in one transaction; its checkpoints into ``out``. A lock or
    statement timeout leaves the group to the per-target path (False)."""
    if not group:
        return False
    began = time.monotonic()
    try:
        with ctx.conn.begin():
            done = step(ctx, group, out.checkpoints)
    except DBAPIError as error:
        if not timed_out(error):
            raise
        log.warning("%d small targets: lock or statement timeout; they go one by one", len(group))
        return False
    seconds = time.monotonic() - began
    out.checkpoints.update(done)
    for key in done:
        out.longest[key] = max(out.longest.get(key, 0.0), seconds)
    return True


def _group(
    ctx: BatchContext,
    group: Sequence[Target],
    found: dict[str, Checkpoint],
    known: dict[Pair, frozenset[UUID]] | None = None,
) -> dict[str, Checkpoint]:
    """One group's rows and segments with their checkpoints and receipts (inside the
    caller's transaction)."""
    now = ctx.clock()
    experiments = group[0].object_type is ObjectType.EXPERIMENT  # (a group is of one kind)
    delete_group = dataplane.delete_experiment_group if experiments else dataplane.delete_group
    deleted = delete_group(ctx.conn, ctx.tables, [t.resolution for t in group], ctx.batch_size)
    there = state.existing_checkpoints(ctx.conn, ctx.run_id, [t.key for t in group])

    def rows_of(target: Target) -> int:
        result = deleted.get((target.project_id, target.object_type.value))
        return result.rows if result else 0

    # a target whose batch was not full may still have expired rows: a row another writer
    # changed during the lock wait is skipped by the re-check, and one written since the
    # plan (backdated) is expired too; whatever is still expired must still go (one
    # statement for the group, as ``rows_left`` is for one target)
    short = [t.resolution for t in group if rows_of(t) < ctx.batch_size]
    rows_left = dataplane.experiments_with_rows_left if experiments else dataplane.with_rows_left
    left = rows_left(ctx.conn, ctx.tables, short) if short else set()
    done: dict[str, Checkpoint] = {}
    receipts: list[dict[str, Any]] = []
    for target in group:
        result = deleted.get((target.project_id, target.object_type.value))
        rows = rows_of(target)
        more = rows >= ctx.batch_size or (target.project_id, target.object_type.value) in left
        checkpoint = initial_checkpoint(target, found.get(target.key))
        checkpoint = replace(
            checkpoint,
            phase=Phase.ROWS if more else after_rows(target, ctx),
            cursor=result.last if result else None,
            rows=checkpoint.rows + rows,
            batches=checkpoint.batches + 1,
        )
        if ctx.progress is not None:
            ctx.progress.advance(rows)
        if result is not None:
            receipts.append(
                _receipt(
                    target,
                    rows=rows,
                    first_key=state.cursor_key(result.first),
                    last_key=state.cursor_key(result.last),
                    keys_digest=result.digest,
                )
            )
        done[target.key] = checkpoint
    marking = [t for t in group if done[t.key].phase is Phase.SEGMENTS]
    marks, unfinished = _marks(ctx, marking, now, known)
    for target in marking:
        checkpoint = done[target.key]
        marked = marks[target.key]
        more = marked.segments >= ctx.batch_size or target.key in unfinished
        done[target.key] = replace(
            checkpoint,
            phase=Phase.SEGMENTS if more else after_segments(target),
            segment_cursor=marked.last,
            segments=checkpoint.segments + marked.segments,
            bytes=checkpoint.bytes + marked.bytes,
            batches=checkpoint.batches + 1,
        )
        if marked.segments:
            receipts.append(
                _receipt(target, action="mark", segments=marked.segments, bytes=marked.bytes)
            )
    new = [(t.project_id, t.object_type.value, done[t.key]) for t in group if t.key not in there]
    state.update_checkpoints(
        ctx.conn, ctx.run_id, [c for key, c in done.items() if key in there], clock=now
    )
    state.insert_checkpoints(ctx.conn, ctx.run_id, new, clock=now)
    state.add_receipts(ctx.conn, ctx.run_id, receipts, clock=now)
    return done


def _marks(
    ctx: BatchContext,
    targets: list[Target],
    now: Any,
    known: dict[Pair, frozenset[UUID]] | None = None,
) -> tuple[dict[str, segments.MarkResult], set[str]]:
    """The first mark batch of each of these targets (a group of one kind), and which of
    them have expired live segments left: in two statements when every one is groupable
    (applying a reviewed plan too: each its own plan's segments), else target by target."""
    resolutions = [t.resolution for t in targets]
    if len(dataplane.groupable(resolutions)) != len(resolutions):
        marks = {
            t.key: segments.mark_batch(
                ctx.conn, ctx.tables, t.resolution, None, ctx.batch_size, now
            )
            for t in targets
        }
        unfinished = {
            t.key
            for t in targets
            if marks[t.key].segments < ctx.batch_size
            and segments.marks_left(ctx.conn, ctx.tables, t.resolution, marks[t.key].last)
        }
        return marks, unfinished
    none = segments.MarkResult(segments=0, bytes=0, last=None)
    if known is not None:
        # by key, among the segments found before the chunk: a target is done when it
        # marked them all; one that marked fewer (changed meanwhile) is looked at again
        among = [known.get((t.project_id, t.object_type.value), frozenset()) for t in targets]
        found = segments.mark_group(ctx.conn, ctx.tables, resolutions, ctx.batch_size, now, among)
        marks = {t.key: found.get((t.project_id, t.object_type.value), none) for t in targets}
        more = {t.key for t, ids in zip(targets, among, strict=True) if len(ids) > ctx.batch_size}
        unsure = [
            t.resolution
            for t, ids in zip(targets, among, strict=True)
            if marks[t.key].segments < len(ids) <= ctx.batch_size
        ]
        left = segments.with_marks_left(ctx.conn, ctx.tables, unsure) if unsure else set()
        unfinished = more | {t.key for t in targets if (t.project_id, t.object_type.value) in left}
        # the per-target path goes on from the start (what was marked is no longer live):
        # an expired segment not among those found may have a lower id than the last marked
        for key in unfinished:
            marks[key] = replace(marks[key], last=None)
        return marks, unfinished
    found = segments.mark_group(ctx.conn, ctx.tables, resolutions, ctx.batch_size, now)
    marks = {t.key: found.get((t.project_id, t.object_type.value), none) for t in targets}
    short = [t.resolution for t in targets if marks[t.key].segments < ctx.batch_size]
    left = segments.with_marks_left(ctx.conn, ctx.tables, short) if short else set()
    return marks, {t.key for t in targets if (t.project_id, t.object_type.value) in left}


def _registry_group(
    ctx: BatchContext, group: Sequence[Target], found: dict[str, Checkpoint]
) -> dict[str, Checkpoint]:
    """The registry entries of a group of experiment targets whose rows are gone, with
    their checkpoints and receipts (inside the caller's transaction), as
    ``deleter._registry_batch`` writes them."""
    now = ctx.clock()
    removed = dataplane.delete_registry_group(
        ctx.conn, ctx.tables, [t.resolution for t in group], ctx.batch_size
    )
    short = [
        t.resolution
        for t in group
        if len(removed.get((t.project_id, t.object_type.value), [])) < ctx.batch_size
    ]
    left = dataplane.with_registry_left(ctx.conn, ctx.tables, short) if short else set()
    done: dict[str, Checkpoint] = {}
    receipts: list[dict[str, Any]] = []
    for target in group:
        ids = removed.get((target.project_id, target.object_type.value), [])
        more = len(ids) >= ctx.batch_size or (target.project_id, target.object_type.value) in left
        checkpoint = replace(
            found[target.key],
            phase=Phase.REGISTRY if more else Phase.DONE,
            objects=found[target.key].objects + len(ids),
            batches=found[target.key].batches + 1,
        )
        if ids:
            receipts.append(
                _receipt(
                    target,
                    objects=len(ids),
                    first_key=str(ids[0]),
                    last_key=str(ids[-1]),
                    keys_digest=dataplane.ids_digest(ids),
                )
            )
        done[target.key] = checkpoint
    state.update_checkpoints(ctx.conn, ctx.run_id, list(done.values()), clock=now)
    state.add_receipts(ctx.conn, ctx.run_id, receipts, clock=now)
    return done


def _receipt(target: Target, **values: Any) -> dict[str, Any]:
    """A receipt as the per-target path writes it, every column given (one statement
    inserts the group's receipts)."""
    columns: dict[str, Any] = dict(
        rows=0,
        objects=0,
        segments=0,
        bytes=0,
        action="delete",
        first_key=None,
        last_key=None,
        keys_digest=None,
    )
    return receipt_of(target, **{**columns, **values})
