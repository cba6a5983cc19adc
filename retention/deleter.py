"""Batched deletion of one target, each batch one short transaction with its checkpoint.

A batch deletes up to ``batch_size`` rows past the keyset cursor, then writes the checkpoint
(phase, cursor, running counts) and a receipt in the same transaction, so a killed run
resumes exactly where the last committed batch left it.

Experiments go in two phases: their rows, then their registry entries (only entries whose
rows are all gone), so an interrupted run never leaves rows of an unregistered experiment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection

from . import dataplane, state
from .models import BatchResult, ObjectType, Phase, Target, TargetOutcome
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
    )


def _commit_batch(
    ctx: BatchContext,
    target: Target,
    checkpoint: Checkpoint,
    result: BatchResult | None,
    objects: int = 0,
) -> None:
    now = ctx.clock()
    state.save_checkpoint(
        ctx.conn,
        ctx.run_id,
        project_id=target.project_id,
        object_type=target.object_type.value,
        checkpoint=checkpoint,
        clock=now,
    )
    rows = result.rows if result else 0
    if not rows and not objects:
        return
    resolution = target.resolution
    assert resolution.retention_days is not None and resolution.cutoff is not None
    state.add_receipt(
        ctx.conn,
        ctx.run_id,
        clock=now,
        project_id=target.project_id,
        object_type=target.object_type.value,
        policy_source=resolution.winner.describe() if resolution.winner else resolution.source,
        retention_days=resolution.retention_days,
        cutoff=resolution.cutoff,
        rows=rows,
        objects=objects,
        first_key=state.cursor_key(result.first) if result else None,
        last_key=state.cursor_key(result.last) if result else None,
        keys_digest=result.digest if result else None,
    )


def purge_target(ctx: BatchContext, target: Target, found: Checkpoint | None) -> TargetOutcome:
    checkpoint = initial_checkpoint(target, found)
    resolution = target.resolution
    is_experiment = target.object_type is ObjectType.EXPERIMENT
    while checkpoint.phase is Phase.ROWS:
        if ctx.should_stop():
            return _outcome(target, checkpoint, "stopped")
        with ctx.conn.begin():
            result = dataplane.delete_batch(
                ctx.conn, ctx.tables, resolution, checkpoint.cursor, ctx.batch_size
            )
            done = result.rows < ctx.batch_size
            checkpoint = replace(
                checkpoint,
                phase=(Phase.REGISTRY if is_experiment else Phase.DONE) if done else Phase.ROWS,
                cursor=result.last or checkpoint.cursor,
                rows=checkpoint.rows + result.rows,
                batches=checkpoint.batches + 1,
            )
            _commit_batch(ctx, target, checkpoint, result)
        log.debug("target=%s batch rows=%d total=%d", target.key, result.rows, checkpoint.rows)
    while checkpoint.phase is Phase.REGISTRY:
        if ctx.should_stop():
            return _outcome(target, checkpoint, "stopped")
        with ctx.conn.begin():
            removed = dataplane.delete_registry_batch(
                ctx.conn, ctx.tables, resolution, ctx.batch_size
            )
            checkpoint = replace(
                checkpoint,
                phase=Phase.DONE if removed < ctx.batch_size else Phase.REGISTRY,
                objects=checkpoint.objects + removed,
                batches=checkpoint.batches + 1,
            )
            _commit_batch(ctx, target, checkpoint, None, objects=removed)
    log.info(
        "target=%s deleted rows=%d objects=%d batches=%d",
        target.key,
        checkpoint.rows,
        checkpoint.objects,
        checkpoint.batches,
    )
    return _outcome(target, checkpoint)


def _outcome(target: Target, checkpoint: Checkpoint, note: str = "") -> TargetOutcome:
    return TargetOutcome(
        target=target,
        rows=checkpoint.rows,
        objects=checkpoint.objects,
        batches=checkpoint.batches,
        phase=checkpoint.phase,
        note=note,
    )
