"""Batched deletion of one target, each batch one short transaction with its checkpoint.

A batch deletes up to ``batch_size`` rows past the keyset cursor, then writes the checkpoint
(phase, cursor, running counts) and a receipt in the same transaction, so a killed run
resumes exactly where the last committed batch left it.

Phases of a target: its rows, then its segments (marked unused, in batches, when an object
store is configured), then, for experiments, the registry entries (only entries whose rows
are all gone), so an interrupted run never leaves rows of an unregistered experiment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from . import dataplane, logs, segments, state
from .dataplane import ids_digest
from .db import timed_out
from .models import BatchResult, Hold, ObjectType, Phase, Target, TargetOutcome
from .progress import ProgressSink
from .state import Checkpoint
from .tables import DataPlaneTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchContext:
    conn: Connection  # the run's one connection, which holds the run lock
    tables: DataPlaneTables
    run_id: int
    batch_size: int
    clock: Callable[[], datetime]
    should_stop: Callable[[], bool]
    mark_segments: bool = True  # False without an object store: segments stay live
    holds: Callable[[], Sequence[Hold]] | None = None  # re-read before every batch
    progress: ProgressSink | None = None
    lock_retries: int = 5  # consecutive lock or statement timeouts before giving up a target
    sleep: Callable[[float], None] = time.sleep


GAVE_UP = "gave up after"


def gave_up_note(waits: int) -> str:
    """Why a target or the sweep stopped after ``RETENTION_LOCK_RETRIES`` timeouts in a row."""
    return f"{GAVE_UP} {waits} lock waits (rows held by another transaction); the next run resumes"


GROW_AFTER = 4  # batches in a row without a timeout before a halved batch size doubles back


def lock_pause(streak: int) -> float:
    """Seconds to wait after the ``streak``-th timed-out batch in a row."""
    return float(min(0.1 * 2**streak, 5.0))


def initial_checkpoint(target: Target, found: Checkpoint | None) -> Checkpoint:
    """Continue from ``found`` when it was made for the same cutoff; otherwise start over.

    A changed cutoff (a policy changed before the resume) restarts the keyset walk, keeping
    the counts already deleted by this run.
    """
    cutoff = target.resolution.cutoff
    assert cutoff is not None
    if found is not None and found.cutoff == cutoff:
        return found
    return Checkpoint(
        target=target.key,
        phase=Phase.ROWS,
        cutoff=cutoff,
        cursor=None,
        rows=found.rows if found else 0,
        objects=found.objects if found else 0,
        batches=found.batches if found else 0,
        segments=found.segments if found else 0,
        bytes=found.bytes if found else 0,
    )


def _save(ctx: BatchContext, target: Target, checkpoint: Checkpoint, **receipt: Any) -> None:
    """The checkpoint, and a receipt when the batch changed anything: same transaction."""
    now = ctx.clock()
    state.save_checkpoint(
        ctx.conn,
        ctx.run_id,
        project_id=target.project_id,
        object_type=target.object_type.value,
        checkpoint=checkpoint,
        clock=now,
    )
    if not any(receipt.get(k) for k in ("rows", "objects", "segments")):
        return
    state.add_receipt(ctx.conn, ctx.run_id, clock=now, **receipt_of(target, **receipt))


def receipt_of(target: Target, **values: Any) -> dict[str, Any]:
    """A receipt of ``target``: its policy source, days and cutoff, and ``values``."""
    resolution = target.resolution
    return dict(
        project_id=target.project_id,
        object_type=target.object_type.value,
        policy_source=resolution.winner.describe() if resolution.winner else resolution.source,
        retention_days=resolution.retention_days,
        cutoff=resolution.cutoff,
        **values,
    )


def after_rows(target: Target, ctx: BatchContext) -> Phase:
    if ctx.mark_segments:
        return Phase.SEGMENTS
    return after_segments(target)


def after_segments(target: Target) -> Phase:
    return Phase.REGISTRY if target.object_type is ObjectType.EXPERIMENT else Phase.DONE


def _rows_batch(ctx: BatchContext, target: Target, checkpoint: Checkpoint) -> Checkpoint:
    result: BatchResult = dataplane.delete_batch(
        ctx.conn, ctx.tables, target.resolution, checkpoint.cursor, ctx.batch_size
    )
    if ctx.progress is not None:
        ctx.progress.advance(result.rows)
    cursor = result.last or checkpoint.cursor
    more = result.rows >= ctx.batch_size or dataplane.rows_left(
        ctx.conn, ctx.tables, target.resolution, cursor
    )
    checkpoint = replace(
        checkpoint,
        phase=Phase.ROWS if more else after_rows(target, ctx),
        cursor=cursor,
        rows=checkpoint.rows + result.rows,
        batches=checkpoint.batches + 1,
    )
    _save(
        ctx,
        target,
        checkpoint,
        rows=result.rows,
        first_key=state.cursor_key(result.first),
        last_key=state.cursor_key(result.last),
        keys_digest=result.digest or None,
    )
    return checkpoint


def _segments_batch(ctx: BatchContext, target: Target, checkpoint: Checkpoint) -> Checkpoint:
    marked = segments.mark_batch(
        ctx.conn,
        ctx.tables,
        target.resolution,
        checkpoint.segment_cursor,
        ctx.batch_size,
        ctx.clock(),
    )
    last = marked.last or checkpoint.segment_cursor
    more = marked.segments >= ctx.batch_size or segments.marks_left(
        ctx.conn, ctx.tables, target.resolution, last
    )
    checkpoint = replace(
        checkpoint,
        phase=Phase.SEGMENTS if more else after_segments(target),
        segment_cursor=last,
        segments=checkpoint.segments + marked.segments,
        bytes=checkpoint.bytes + marked.bytes,
        batches=checkpoint.batches + 1,
    )
    _save(ctx, target, checkpoint, action="mark", segments=marked.segments, bytes=marked.bytes)
    return checkpoint


def _registry_batch(ctx: BatchContext, target: Target, checkpoint: Checkpoint) -> Checkpoint:
    removed = dataplane.delete_registry_batch(
        ctx.conn, ctx.tables, target.resolution, ctx.batch_size
    )
    more = len(removed) >= ctx.batch_size or dataplane.registry_left(
        ctx.conn, ctx.tables, target.resolution
    )
    checkpoint = replace(
        checkpoint,
        phase=Phase.REGISTRY if more else Phase.DONE,
        objects=checkpoint.objects + len(removed),
        batches=checkpoint.batches + 1,
    )
    # the receipt names the experiments removed: first and last id, and a digest of all
    _save(
        ctx,
        target,
        checkpoint,
        objects=len(removed),
        first_key=str(removed[0]) if removed else None,
        last_key=str(removed[-1]) if removed else None,
        keys_digest=ids_digest(removed) if removed else None,
    )
    return checkpoint


_ACTIONS = {Phase.ROWS: "delete", Phase.SEGMENTS: "mark", Phase.REGISTRY: "registry"}

_STEPS = {
    Phase.ROWS: _rows_batch,
    Phase.SEGMENTS: _segments_batch,
    Phase.REGISTRY: _registry_batch,
}


def _steps(ctx: BatchContext, target: Target, checkpoint: Checkpoint) -> Checkpoint:
    """One batch; when a rows batch ends the rows phase short of a full batch, the first
    segments batch in the same transaction: a small target (a daily run's usual case)
    commits once, not once per phase. An experiment's registry entries always go in a
    transaction of their own, after its rows committed: the registry is where the
    application writes, and a wait there must not hold the rows back."""
    while True:
        phase = checkpoint.phase
        logs.set_action(_ACTIONS[phase])
        checkpoint = _STEPS[phase](ctx, target, checkpoint)
        if phase is not Phase.ROWS or checkpoint.phase is not Phase.SEGMENTS:
            return checkpoint


def apply_new_holds(target: Target, holds: Sequence[Hold]) -> tuple[Target, Hold | None]:
    """The target with holds added since planning; the hold that now covers all of it."""
    r = target.resolution
    active = [h for h in holds if h.active(r.now)]
    whole = next((h for h in active if h.covers_target(r.project_id, r.object_type)), None)
    if whole is not None:
        return target, whole
    objects = tuple(h for h in active if h.covers_object(r.project_id, r.object_type))
    known = r.held_object_ids
    if {h.object_id for h in objects} - known:
        extra = tuple(h for h in objects if h.object_id not in known)
        resolution = replace(r, object_holds=r.object_holds + extra)
        log.warning(
            "target=%s: %d more object(s) held since planning; they are kept",
            target.key,
            len(extra),
        )
        return replace(target, resolution=resolution), None
    return target, None


def _reopened(ctx: BatchContext, target: Target, checkpoint: Checkpoint) -> Checkpoint:
    """A target resumed from an earlier attempt whose walk there passed rows or segments it
    may not pass now (an object held then, its hold lifted since): the plan, made now,
    still counts expired rows (or live expired segments) in a phase the checkpoint has
    left, so that phase starts over from its beginning (the counts stay)."""
    order = (Phase.ROWS, Phase.SEGMENTS, Phase.REGISTRY, Phase.DONE)
    at = order.index(checkpoint.phase)
    if target.counts.rows and at > 0:
        log.warning("target=%s: expired rows left behind its checkpoint; rows again", target.key)
        return replace(checkpoint, phase=Phase.ROWS, cursor=None)
    if target.counts.segments and ctx.mark_segments and at > 1:
        log.warning("target=%s: expired segments left behind its checkpoint", target.key)
        return replace(checkpoint, phase=Phase.SEGMENTS, segment_cursor=None)
    return checkpoint


def _recheck(
    ctx: BatchContext, target: Target, before: Phase, checkpoint: Checkpoint, pending: set[Phase]
) -> Checkpoint:
    """A resumed target's rows (or segments) phase has just ended, after a walk that began
    in an earlier attempt: is anything expired left before where it began (an object held
    then, no longer)? Then once more from the beginning (call in the batch's transaction)."""
    if before is checkpoint.phase or before not in pending:
        return checkpoint
    pending.discard(before)
    r = target.resolution
    if before is Phase.ROWS and dataplane.rows_left(ctx.conn, ctx.tables, r, None):
        checkpoint = replace(checkpoint, phase=Phase.ROWS, cursor=None)
    elif before is Phase.SEGMENTS and segments.marks_left(ctx.conn, ctx.tables, r, None):
        checkpoint = replace(checkpoint, phase=Phase.SEGMENTS, segment_cursor=None)
    else:
        return checkpoint
    log.warning("target=%s: expired %s left before the resumed walk", target.key, before.value)
    _save(ctx, target, checkpoint)
    return checkpoint


def purge_target(
    ctx: BatchContext, target: Target, found: Checkpoint | None, *, resumed: bool = False
) -> TargetOutcome:
    """Batches for the target until it is done. ``resumed``: ``found`` comes from an
    earlier attempt of the run, whose walk may have passed objects held then."""
    checkpoint = initial_checkpoint(target, found)
    pending: set[Phase] = set()
    if resumed and found is not None:
        checkpoint = _reopened(ctx, target, checkpoint)
        pending = {Phase.ROWS, Phase.SEGMENTS}
    if checkpoint.phase is Phase.SEGMENTS and not ctx.mark_segments:
        checkpoint = replace(checkpoint, phase=after_segments(target))
    step = ctx
    waits = streak = calm = 0
    longest = 0.0  # the longest batch transaction, seconds
    while checkpoint.phase is not Phase.DONE:
        if ctx.should_stop():
            return _outcome(target, checkpoint, "stopped", waits)
        if ctx.holds is not None:  # a hold added during the run stops the next batch
            target, hold = apply_new_holds(target, ctx.holds())
            if hold is not None:
                log.warning("target=%s: held during the run (%s); stopped", target.key, hold.reason)
                return _outcome(
                    target,
                    replace(checkpoint, phase=Phase.DONE),
                    f"held during the run: {hold.reason}",
                    waits,
                )
        try:
            began = time.monotonic()
            with step.conn.begin():
                before = checkpoint.phase
                checkpoint = _steps(step, target, checkpoint)
                if pending:
                    checkpoint = _recheck(step, target, before, checkpoint, pending)
            longest = max(longest, time.monotonic() - began)
            streak = 0
            calm += 1
            if step.batch_size < ctx.batch_size and calm >= GROW_AFTER:  # the lock has passed
                step, calm = replace(step, batch_size=min(ctx.batch_size, step.batch_size * 2)), 0
        except DBAPIError as error:
            if not timed_out(error):
                raise
            # Rows locked by another transaction (lock_timeout) or a batch too slow
            # (statement_timeout): the batch rolled back; wait, then try a smaller one.
            waits += 1
            streak += 1
            calm = 0
            if streak > ctx.lock_retries:
                log.error("target=%s: gave up after %d lock waits", target.key, waits)
                return _outcome(target, checkpoint, gave_up_note(waits), waits)
            step = replace(step, batch_size=max(1, step.batch_size // 2))
            pause = lock_pause(streak)
            log.warning(
                "target=%s: lock or statement timeout; retrying in %.1fs with batches of %d",
                target.key,
                pause,
                step.batch_size,
            )
            ctx.sleep(pause)
    log.info(
        "target=%s deleted rows=%d objects=%d marked segments=%d batches=%d",
        target.key,
        checkpoint.rows,
        checkpoint.objects,
        checkpoint.segments,
        checkpoint.batches,
    )
    return replace(_outcome(target, checkpoint, "", waits), longest_batch=longest)


def _outcome(
    target: Target, checkpoint: Checkpoint, note: str = "", lock_waits: int = 0
) -> TargetOutcome:
    return TargetOutcome(
        target=target,
        rows=checkpoint.rows,
        objects=checkpoint.objects,
        batches=checkpoint.batches,
        phase=checkpoint.phase,
        note=note,
        segments=checkpoint.segments,
        bytes=checkpoint.bytes,
        lock_waits=lock_waits,
    )
