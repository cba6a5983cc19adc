"""The second phase: delete the files of segments unused for longer than the grace period.

Batch by batch (segment-id order): read candidates from the index, delete their files with
the store's bulk delete (outside any transaction), then, in one transaction, remove the
index rows of the files confirmed gone and write receipts. Only segments of the run's
targets are swept: before the sweep, ``restore_kept`` puts back to live what the policies
and holds now keep, also of a (project, object type) no target covers any more (its policy
was removed, its project became an orphan the run does not purge). A file already missing
counts as deleted; so that a store URL pointing at the wrong place does not empty the index,
the sweep first looks for a few live segments' files (with none, a few of the files to
sweep), and stops (exit 4) if none is there. A failed delete keeps its index row for the
next sweep; a key outside the store URL is refused and reported, never deleted. A segment
that a hold covers is not swept, though it was marked before the hold came: it waits,
unused, for the hold to end (or for ``retention restore``). A crash between the two steps
leaves index rows of deleted files; the next sweep finds them missing and finishes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import Connection

from . import segments, state
from .dataplane import ids_digest
from .errors import ObjectStoreError
from .models import Hold, Resolution, SweepOutcome
from .objectstore import ObjectStore, key_problem
from .segments import Pair, SegmentFile
from .tables import DataPlaneTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    conn: Connection  # the run's connection (it holds the run lock)
    tables: DataPlaneTables
    store: ObjectStore
    run_id: int
    threshold: datetime  # unused_at <= threshold: past the grace period
    # the run's targets: only segments one of them expires now are swept
    targets: Mapping[Pair, Resolution]
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
        ours = _expired_now(ctx, batch)
        if len(ours) < len(batch):
            log.info(
                "sweep: %d unused segments past the grace period are not swept: no target of "
                "this run expires them (a policy removed or lengthened, an orphan)",
                len(batch) - len(ours),
            )
        if ours:
            _sweep_batch(ctx, ours, outcome)
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


def _expired_now(ctx: SweepContext, batch: list[SegmentFile]) -> list[SegmentFile]:
    """The segments of ``batch`` that a target of the run expires now (its policy, holds
    and registry as the run resolved them): a mark alone is not enough."""
    by_pair: dict[Pair, list[UUID]] = defaultdict(list)
    for item in batch:
        by_pair[item.pair].append(item.segment_id)
    expired: set[UUID] = set()
    with ctx.conn.begin():
        for pair, ids in by_pair.items():
            resolution = ctx.targets.get(pair)
            if resolution is not None:
                expired |= segments.expired_among(ctx.conn, ctx.tables, resolution, ids)
    return [item for item in batch if item.segment_id in expired]


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


SAMPLE = 3  # files looked up before a sweep


def check_the_store(ctx: SweepContext) -> None:
    """Before sweeping: is this the data plane's store? A missing file counts as deleted,
    so a store URL pointing at the wrong place (an empty bucket, an unmounted folder) would
    drop every index row and leave the real files behind for good; an S3 bulk delete does
    not even say a key was missing. So look up a few live segments' files: if there are
    live segments and none of their files is there, stop (exit 4) before anything. With no
    live segment (all of the data plane's data expired), look up a few of the files to
    sweep, picked at random, instead."""
    with ctx.conn.begin():
        keys = segments.live_keys(ctx.conn, ctx.tables, SAMPLE)
    what = "live segments' files is there"
    if not keys:
        with ctx.conn.begin():
            picked = segments.sample_candidates(
                ctx.conn, ctx.tables, ctx.threshold, SAMPLE * 4, ctx.holds()
            )
        keys = [f.key for f in picked if f.pair in ctx.targets][:SAMPLE]
        what = "files to sweep is there (and no live segment to compare with)"
    safe = [k for k in keys if not key_problem(k)]
    if safe and not ctx.store.present(safe):
        raise ObjectStoreError(
            f"object store {ctx.store.display}: none of {len(safe)} {what}; "
            "is RETENTION_OBJECT_STORE_URL the data plane's store? Nothing was swept"
        )


def by_pair(resolutions: Sequence[Resolution]) -> dict[Pair, Resolution]:
    """A run's targets by (project, object type): what ``SweepContext.targets`` takes."""
    return {(r.project_id, r.object_type.value): r for r in resolutions}


def restore_kept(
    conn: Connection,
    tables: DataPlaneTables,
    store: ObjectStore,
    run_id: int,
    clock: Callable[[], datetime],
    resolutions: Sequence[Resolution],
    orphans: frozenset[UUID],
    since: datetime | None = None,
) -> dict[Pair, tuple[int, int]]:
    """Before a purge's sweep: segments marked unused earlier that the run's policies and
    holds now keep go back to live, as ``retention restore`` would: of each target (a
    policy lengthened, a hold added), and of every (project, object type) that is no target
    of the run (its policy removed: no policy keeps data forever). An orphan project's
    marks stay as they are (``--purge-orphans`` sweeps them; the sweep skips them without).
    Only segments whose file is still there come back (a live index row must have its
    file); the others stay unused. Restore receipts say why.

    ``since``: when the run began (a resumed run's first attempt): marks made since are the
    run's own, and are taken back from its checkpoints. Returns those, by target."""
    covered = by_pair(resolutions).keys()
    revived: list[SegmentFile] = []
    with conn.begin():  # (only targets with an unused segment; most together)
        unused = segments.unused_pairs(conn, tables)
        mine = [r for r in resolutions if (r.project_id, r.object_type.value) in unused]
        many = conn.dialect.name == "postgresql"
        found = segments.marks_kept_many(conn, tables, mine) if many else {}
    for resolution in mine:
        kept = found.get((resolution.project_id, resolution.object_type.value))
        if kept is None:
            with conn.begin():
                kept = segments.marks_kept(conn, tables, resolution)
        why = "kept now (a longer policy or a hold) since it was marked"
        revived += _revive(conn, tables, store, run_id, clock, kept, why, since)
    with conn.begin():
        pages = list(segments.marks_uncovered(conn, tables, covered))
    why = "kept now (no policy) since it was marked"
    for page in pages:
        unowned = [f for f in page if f.project_id not in orphans]
        revived += _revive(conn, tables, store, run_id, clock, unowned, why, since)
    if revived:
        log.warning(
            "%d segments marked unused earlier are kept now (policy or hold); restored",
            len(revived),
        )
    return _own_marks(revived, since)


def _own_marks(files: list[SegmentFile], since: datetime | None) -> dict[Pair, tuple[int, int]]:
    """(segments, bytes) by target of the files marked at or after ``since``."""
    own: dict[Pair, tuple[int, int]] = {}
    for f in files:
        if since is not None and f.unused_at is not None and f.unused_at >= since:
            n, size = own.get(f.pair, (0, 0))
            own[f.pair] = (n + 1, size + f.bytes)
    return own


def _revive(
    conn: Connection,
    tables: DataPlaneTables,
    store: ObjectStore,
    run_id: int,
    clock: Callable[[], datetime],
    files: list[SegmentFile],
    source: str,
    since: datetime | None = None,
) -> list[SegmentFile]:
    if not files:
        return []
    there = store.present([f.key for f in files])
    gone = [f for f in files if f.key not in there]
    if gone:
        log.warning(
            "%d segments kept now have no file in the store (a sweep deleted it); they stay unused",
            len(gone),
        )
    with conn.begin():
        back = segments.unmark(conn, tables, [f for f in files if f.key in there])
        record_segments(conn, run_id, clock(), back, action="restore", source=source)
        for (project_id, object_type), (n, size) in _own_marks(back, since).items():
            state.take_back_marks(conn, run_id, f"{project_id}/{object_type}", n, size)
    return back


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
            keys_digest=ids_digest(ids),
        )
