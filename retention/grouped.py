"""Many small targets per transaction: the daily run's usual case on PostgreSQL.

When little has expired, most targets have a few hundred rows to go. Deleting them target
by target costs a transaction, a checkpoint and a receipt statement per target, which on a
daily run is as much as the deleting itself. Here targets whose planned rows fit in one
batch are taken together, up to ``RETENTION_BATCH_SIZE`` planned rows per group: one
``DELETE`` picks each target's first rows from its own index range, and the group's
checkpoints and receipts (one per target, as the per-target path writes them) commit with
it; the group's segments are marked in the same transaction. A target that turns out to
have more rows than a batch, or that a hold added during the run now covers, is left
where it stands for the per-target path in ``deleter``, which resumes it from its
checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.exc import DBAPIError

from . import dataplane, segments, state
from .db import timed_out
from .deleter import (
    BatchContext,
    after_rows,
    apply_new_holds,
    initial_checkpoint,
    receipt_of,
)
from .models import ObjectType, Phase, Target
from .state import Checkpoint

log = logging.getLogger(__name__)


def eligible(
    targets: Sequence[Target], found: dict[str, Checkpoint], batch_size: int
) -> list[Target]:
    """Logs and dataset targets without object holds whose rows fit in one batch, not
    started yet in this run (or started over for a changed cutoff)."""
    chosen = []
    for target in targets:
        r = target.resolution
        if (
            r.cutoff is None
            or target.object_type is ObjectType.EXPERIMENT
            or r.held_object_ids
            or target.counts.rows > batch_size
        ):
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
    """Consecutive targets, up to ``batch_size`` planned rows per group."""
    out: list[list[Target]] = []
    rows = 0
    for target in targets:
        if not out or rows + target.counts.rows > batch_size:
            out.append([])
            rows = 0
        out[-1].append(target)
        rows += target.counts.rows
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
    for planned in groups(targets, ctx.batch_size):
        if ctx.should_stop():
            break
        group = planned
        if ctx.holds is not None:  # a hold added during the run: that target goes alone
            holds = ctx.holds()
            group = [t for t in planned if apply_new_holds(t, holds) == (t, None)]
        if not group:
            continue
        began = time.monotonic()
        try:
            with ctx.conn.begin():
                done = _group(ctx, group, out.checkpoints)
        except DBAPIError as error:
            if not timed_out(error):
                raise
            log.warning(
                "%d small targets: lock or statement timeout; they go one by one", len(group)
            )
            continue
        seconds = time.monotonic() - began
        out.checkpoints.update(done)
        out.longest.update((key, seconds) for key in done)
    return out


def _group(
    ctx: BatchContext, group: Sequence[Target], found: dict[str, Checkpoint]
) -> dict[str, Checkpoint]:
    """One group's rows and segments with their checkpoints and receipts (inside the
    caller's transaction)."""
    now = ctx.clock()
    deleted = dataplane.delete_group(
        ctx.conn, ctx.tables, [t.resolution for t in group], ctx.batch_size
    )
    there = state.existing_checkpoints(ctx.conn, ctx.run_id, [t.key for t in group])

    def rows_of(target: Target) -> int:
        result = deleted.get((target.project_id, target.object_type.value))
        return result.rows if result else 0

    # a target that got fewer rows than planned: a row another writer changed during the
    # lock wait is skipped by the re-check, and whatever is still expired must still go
    short = [t.resolution for t in group if rows_of(t) < min(ctx.batch_size, t.counts.rows)]
    left = dataplane.with_rows_left(ctx.conn, ctx.tables, short) if short else set()
    done: dict[str, Checkpoint] = {}
    receipts: list[dict[str, Any]] = []
    new: list[tuple[Any, str, Checkpoint]] = []
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
        if checkpoint.phase is Phase.SEGMENTS:
            marked = segments.mark_batch(
                ctx.conn, ctx.tables, target.resolution, None, ctx.batch_size, now
            )
            more = marked.segments >= ctx.batch_size or (
                marked.segments < target.counts.segments
                and segments.marks_left(ctx.conn, ctx.tables, target.resolution, marked.last)
            )
            checkpoint = replace(
                checkpoint,
                phase=Phase.SEGMENTS if more else Phase.DONE,
                segment_cursor=marked.last,
                segments=checkpoint.segments + marked.segments,
                bytes=checkpoint.bytes + marked.bytes,
                batches=checkpoint.batches + 1,
            )
            if marked.segments:
                receipts.append(
                    _receipt(target, action="mark", segments=marked.segments, bytes=marked.bytes)
                )
        done[target.key] = checkpoint
        if target.key in there:
            state.save_checkpoint(
                ctx.conn,
                ctx.run_id,
                project_id=target.project_id,
                object_type=target.object_type.value,
                checkpoint=checkpoint,
                clock=now,
            )
        else:
            new.append((target.project_id, target.object_type.value, checkpoint))
    state.insert_checkpoints(ctx.conn, ctx.run_id, new, clock=now)
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
