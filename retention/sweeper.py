"""The second phase: delete the files of segments unused for longer than the grace period.

Batch by batch (segment-id order): read candidates from the index, delete their files with
the store's bulk delete (outside any transaction), then, in one transaction, remove the
index rows of the files confirmed gone and write receipts. A file already missing counts as
deleted; so that a store URL pointing at the wrong place does not empty the index, the
sweep first looks for a few live segments' files, and stops (exit 4) if none is there. A
failed delete keeps its index row for the next sweep; a key outside the store URL is
refused and reported, never deleted. A segment that a hold covers is not swept, though it
was marked before the hold came: it waits, unused, for the hold to end (or for ``retention
restore``). A crash between the two steps leaves index rows of deleted files; the next
sweep finds them missing and finishes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import Connection

from . import segments, state
from .dataplane import keys_digest
from .errors import ObjectStoreError
from .models import Hold, SweepOutcome
from .objectstore import ObjectStore, key_problem
from .segments import SegmentFile
from .tables import DataPlaneTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    conn: Connection  # the run's connection (it holds the run lock)
    tables: DataPlaneTables
    store: ObjectStore
    run_id: int
    threshold: datetime  # unused_at <= threshold: past the grace period
    batch_size: int
    clock: Callable[[], datetime]
    should_stop: Callable[[], bool]
    holds: Callable[[], Sequence[Hold]] = tuple  # the active holds, re-read every batch


def sweep(ctx: SweepContext) -> SweepOutcome:
    outcome = SweepOutcome()
    log.debug("sweep: segments unused before %s", ctx.threshold.isoformat())
    check_the_store(ctx)
    after: UUID | None = None
    while True:
        if ctx.should_stop():
            outcome.stopped = True
            break
        with ctx.conn.begin():
            batch = segments.sweep_candidates(
                ctx.conn, ctx.tables, ctx.threshold, after, ctx.batch_size, ctx.holds()
            )
        if not batch:
            break
        after = batch[-1].segment_id
        _sweep_batch(ctx, batch, outcome)
    if outcome.files or outcome.failed or outcome.refused:
        log.info(
            "sweep: files=%d bytes=%d missing=%d failed=%d refused=%d",
            outcome.files,
            outcome.bytes,
            outcome.missing,
            outcome.failed,
            outcome.refused,
        )
    return outcome


def _sweep_batch(ctx: SweepContext, batch: list[SegmentFile], outcome: SweepOutcome) -> None:
    safe = []
    for item in batch:
        problem = key_problem(item.key)
        if problem:
            outcome.refused += 1
            log.error(
                "sweep: refusing segment %s: %s; its index row stays", item.segment_id, problem
            )
        else:
            safe.append(item)
    result = ctx.store.delete_many([item.key for item in safe])
    outcome.requests += result.requests
    gone = set(result.deleted)
    confirmed = [item for item in safe if item.key in gone]
    for error in result.failed.values():
        log.error("sweep: the store did not delete a segment file (%s); it stays indexed", error)
    with ctx.conn.begin():
        removed = segments.forget(
            ctx.conn, ctx.tables, [item.segment_id for item in confirmed], ctx.threshold
        )
        record_segments(
            ctx.conn,
            ctx.run_id,
            ctx.clock(),
            confirmed,
            action="sweep",
            source="sweep after the grace period",
        )
    outcome.files += removed
    outcome.bytes += sum(item.bytes for item in confirmed)
    outcome.missing += len(result.missing)
    outcome.failed += len(result.failed)
    outcome.batches += 1


LIVE_SAMPLE = 3  # live segments' files looked up when a whole batch was missing


def check_the_store(ctx: SweepContext) -> None:
    """Before sweeping: is this the data plane's store? A missing file counts as deleted,
    so a store URL pointing at the wrong place (an empty bucket, an unmounted folder) would
    drop every index row and leave the real files behind for good; an S3 bulk delete does
    not even say a key was missing. So look up a few live segments' files: if there are
    live segments and none of their files is there, stop (exit 4) before anything."""
    with ctx.conn.begin():
        keys = segments.live_keys(ctx.conn, ctx.tables, LIVE_SAMPLE)
    safe = [k for k in keys if not key_problem(k)]
    if safe and not ctx.store.present(safe):
        raise ObjectStoreError(
            f"object store {ctx.store.display}: none of {len(safe)} live segments' files is "
            "there; is RETENTION_OBJECT_STORE_URL the data plane's store? Nothing was swept"
        )


def record_segments(
    conn: Connection,
    run_id: int,
    clock: datetime,
    files: list[SegmentFile],
    *,
    action: str,
    source: str,
) -> None:
    """One receipt per (project, object type) for segments swept or restored."""
    groups: dict[tuple[UUID, str], list[SegmentFile]] = defaultdict(list)
    for item in files:
        groups[(item.project_id, item.object_type)].append(item)
    for (project_id, object_type), items in sorted(groups.items()):
        ids = sorted(item.segment_id for item in items)
        state.add_receipt(
            conn,
            run_id,
            clock=clock,
            action=action,
            project_id=project_id,
            object_type=object_type,
            policy_source=source,
            rows=0,
            segments=len(items),
            bytes=sum(item.bytes for item in items),
            first_key=str(ids[0]),
            last_key=str(ids[-1]),
            keys_digest=keys_digest(i.int for i in ids),
        )
