"""The run: load policies, plan in a snapshot, then (unless dry) purge under the lock.

    plan()   policies -> read-only session, one snapshot -> Plan   (no lock, no writes)
    purge()  policies -> lock (the run's one connection) -> object store reachable?
             -> resume or start a run -> plan in a snapshot -> guards -> confirm
             -> per target: rows, segments marked, registry -> sweep -> finish the run

Time and I/O are injected: ``clock`` gives the current time, the settings name the database
and the sources give the policies, so tests control all three.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from . import (
    blocksweep,
    bulk,
    dataplane,
    grouped,
    logs,
    migrate,
    partitions,
    planfile,
    report,
    state,
)
from .db import first_line, make_engine, same_snapshot, server_now, snapshot, translate_errors
from .deleter import BatchContext, purge_target
from .errors import DatabaseUnavailable, GuardError
from .guards import GuardSettings, guard
from .models import (
    Phase,
    Plan,
    PolicySet,
    RunReport,
    RunStatus,
    SweepOutcome,
    Target,
    TargetOutcome,
)
from .objectstore import ObjectStore, open_store
from .planfile import PlanFile
from .planner import build_plan, identities, resolve_for_data_plane
from .policy import Resolved
from .runs import (
    ALL_TABLES,
    StopCheck,
    check_data_plane,
    error_text,
    finish,
    locked,
    open_run,
    run_problem,
    run_status,
    run_warnings,
)
from .sources import confirm_unknown
from .state import Checkpoint, RunRecord
from .sweeper import SweepContext, by_pair, restore_kept, sweep
from .worker import MAX_NOW_LEAD, Worker, utc_now

__all__ = ["Worker", "explain", "plan", "purge", "utc_now"]

log = logging.getLogger(__name__)


def explain(worker: Worker) -> Resolved:
    """Resolve policies for every known project, reading the data plane read-only."""
    policy_sets = worker.load_policies()
    database = worker.database
    tables = worker.tables
    with translate_errors(database):
        engine = make_engine(database, read_only=True)
        try:
            with engine.connect() as conn:
                check_data_plane(conn, tables, ALL_TABLES)
                with snapshot(conn):
                    now = worker.pinned_now(server_now(conn))
                    resolved, orphans = resolve_for_data_plane(
                        conn,
                        tables,
                        policy_sets,
                        now,
                        min_retention_days=worker.settings.min_retention_days,
                    )
                # an orphan has no policies to explain, but the rules that name it are not
                # applied: say so rather than leave it out
                said = tuple(
                    f"project {project} is an orphan ({reason} in the control plane): left "
                    "out of planning; its data is deleted only with --purge-orphans"
                    for project, reason in sorted(orphans.items())
                )
                return replace(resolved, warnings=(*resolved.warnings, *said))
        finally:
            engine.dispose()


PARALLEL_COUNT_MIN_ROWS = 200_000  # the planner's estimate: from here the plan counts on two


def _plan(
    conn: Connection,
    worker: Worker,
    policy_sets: Sequence[PolicySet],
    now: datetime,
    purge_orphans: bool,
    identify: bool = False,
    newest_row: int | None = None,
) -> Plan:
    with snapshot(conn), contextlib.ExitStack() as stack:  # one snapshot for every count
        helper = None
        if conn.dialect.name == "postgresql" and worker.settings.plan_connections > 1:
            _, estimate = partitions.heap_size(conn, worker.tables)
            if estimate >= PARALLEL_COUNT_MIN_ROWS:  # worth a second session
                try:
                    helper = stack.enter_context(same_snapshot(conn))
                except OperationalError as error:  # no second session (connection limit)
                    log.warning(
                        "plan: counting on one session; a second one could not connect: %s",
                        first_line(error),
                    )
        built = build_plan(
            conn,
            worker.tables,
            policy_sets,
            now,
            min_retention_days=worker.settings.min_retention_days,
            purge_orphans=purge_orphans,
            clock=worker.clock(),
            grace=worker.settings.grace_period,
            max_fraction=worker.settings.max_delete_fraction,
            helper=helper,
            newest_row=newest_row,
        )
        if purge_orphans:  # projects no listing named: are they really gone?
            confirm_unknown(
                worker.sources, [o.project_id for o in built.orphans if o.reason == "unknown"]
            )
        if not identify:
            return built
        return replace(
            built,
            identities=identities(conn, worker.tables, built),
            newest_row=dataplane.newest_row(conn, worker.tables),
        )


def plan(
    worker: Worker,
    *,
    purge_orphans: bool = False,
    now: datetime | None = None,
    identify: bool = False,
    newest_row: int | None = None,
) -> RunReport:
    """A dry run: the plan, in a read-only session. Takes no lock, writes nothing.

    ``now`` re-plans at an earlier pinned time (a reviewed plan's); ``identify`` names the
    experiments and segments that expire and the newest row (for a plan file, or checking
    one); ``newest_row`` (a reviewed plan's) counts no later row.
    """
    started = time.monotonic()
    policy_sets = worker.load_policies()
    database = worker.database
    warnings: list[str] = []
    with translate_errors(database):
        engine = make_engine(database, read_only=True)
        try:
            with engine.connect() as conn:
                check_data_plane(conn, worker.tables, ALL_TABLES)
                clocks = (worker.clock(), server_now(conn))
                now = now or worker.pinned_now(clocks[1])
                the_plan = replace(
                    _plan(conn, worker, policy_sets, now, purge_orphans, identify, newest_row),
                    clocks=clocks,
                )
                warnings.extend(_pending_warning(conn, worker))
        finally:
            engine.dispose()
    return RunReport(
        plan=the_plan,
        dry_run=True,
        warnings=(*the_plan.warnings, *warnings),
        timings={"plan": round(time.monotonic() - started, 3)},
    )


def _pending_warning(conn: Connection, worker: Worker) -> list[str]:
    """Say so when the next purge will resume an unfinished run with an older ``now``."""
    with snapshot(conn):
        if migrate.current(conn) is None:
            return []
        run = state.pending_run(conn, clock=worker.clock(), max_age=worker.settings.resume_max_age)
    if run is None:
        return []
    return [
        f"run {run.id} is unfinished ({run.status}); the next purge resumes it with its "
        f"pinned now {run.pinned_now.isoformat()}"
    ]


@dataclass(frozen=True)
class RunOptions:
    """Per-run choices of the operator (flags, not settings)."""

    mode: str = "purge"
    confirm: Callable[[Plan], bool] | None = None
    allow_large_deletes: bool = False
    purge_orphans: bool = False
    plan_file: PlanFile | None = None  # a reviewed plan to apply exactly


def purge(
    worker: Worker,
    *,
    mode: str = "purge",
    confirm: Callable[[Plan], bool] | None = None,
    allow_large_deletes: bool = False,
    purge_orphans: bool = False,
    plan_file: PlanFile | None = None,
) -> RunReport:
    """Plan and delete under the run lock; resume an interrupted run first.

    A lost or refused database connection (a restart, a terminated session) is retried with
    backoff for up to RETENTION_RECONNECT_TIMEOUT: the new session takes the lock again and
    resumes the run from its last checkpoint. After that it is exit 4.
    """
    policy_sets = worker.load_policies()
    worker.pinned_now()  # a pinned now in the future is refused before anything else
    options = RunOptions(
        mode=mode,
        confirm=confirm,
        allow_large_deletes=allow_large_deletes,
        purge_orphans=purge_orphans,
        plan_file=plan_file,
    )
    deadline = time.monotonic() + worker.settings.reconnect_timeout.total_seconds()
    pause = 0.5
    while True:
        try:
            with locked(worker) as conn:
                store = open_store(worker.settings)
                if store is not None:
                    store.check()  # unreachable or misconfigured: exit 4, nothing touched
                return _locked_purge(conn, worker, policy_sets, options, store)
        except DatabaseUnavailable as error:
            left = deadline - time.monotonic()
            if left <= 0 or worker.should_stop():
                raise
            wait = min(pause, left)
            log.warning("%s; reconnecting in %.1fs to resume the run", error.message, wait)
            time.sleep(wait)
            pause = min(pause * 2, 10.0)
            options = replace(options, confirm=None)  # the operator confirmed already


def _locked_purge(
    conn: Connection,
    worker: Worker,
    policy_sets: Sequence[PolicySet],
    options: RunOptions,
    store: ObjectStore | None,
) -> RunReport:
    settings = worker.settings
    started = time.monotonic()
    clocks = (worker.clock(), server_now(conn))
    now = worker.pinned_now(clocks[1])
    with conn.begin():
        # a run pinned in the future (by a clock that was ahead) is abandoned, not resumed
        resumed = state.resumable_run(
            conn,
            clock=worker.clock(),
            max_age=settings.resume_max_age,
            not_after=min(worker.clock(), now) + MAX_NOW_LEAD,
        )
        first_run = state.successful_runs(conn) == 0
        previous = state.last_success_days(conn)
    inherited = _approval_of(resumed) if not _approves(options) else None
    # a run approved by a reviewed plan resumes by applying that plan again: the same
    # drift checks, bounds (rows, experiments, segments) and age limit
    reviewed = options.plan_file or _recorded_plan(resumed, inherited)
    now = _pinned_now(worker, now, resumed, reviewed)
    logs.set_action("plan")
    # a reviewed plan: its experiments and segments are compared, and no later row goes
    # (nor on a resume that goes on with its approval)
    the_plan = replace(
        _plan(
            conn,
            worker,
            policy_sets,
            now,
            # a plan made with --purge-orphans applies (and resumes) with its orphans
            options.purge_orphans or (reviewed is not None and reviewed.orphans),
            bool(reviewed),
            reviewed.newest_row if reviewed is not None else None,
        ),
        clocks=clocks,
    )
    plan_done = time.monotonic()
    document = report.plan_document(the_plan)
    notes, the_plan = _check_review(reviewed, document, the_plan)
    guarded = guard(
        the_plan.targets,
        _guard_settings(
            worker,
            replace(options, plan_file=reviewed),
            first_run=first_run,
            previous=previous,
            approved=_approved_targets(the_plan, inherited),
        ),
    )
    if options.confirm is not None and not options.confirm(the_plan):
        return RunReport(plan=the_plan, dry_run=True, warnings=("aborted by the operator",))
    run_id, checkpoints = open_run(
        conn,
        worker.clock(),
        resumed,
        mode=options.mode,
        now=now,
        plan=document,
        plan_hash=reviewed.hash if reviewed is not None else None,
        approval=_approval(options, the_plan, guarded),
    )
    should_stop = StopCheck(worker, started)

    # marks and bookkeeping by the later clock: a host clock behind the database's must not
    # date a mark early (it would shorten the grace period)
    _, later = worker.clock_bounds(clocks[1], clocks[0])
    ahead = later - clocks[0]
    ctx = BatchContext(
        conn=conn,
        tables=worker.tables,
        run_id=run_id,
        batch_size=settings.batch_size,
        clock=(lambda: worker.clock() + ahead) if ahead else worker.clock,
        should_stop=should_stop,
        mark_segments=store is not None,
        holds=worker.hold_watcher(),
        progress=worker.progress,
        lock_retries=settings.lock_retries,
    )
    if worker.progress is not None:
        worker.progress.start(sum(t.counts.rows for t in the_plan.targets if t.key not in guarded))
    outcomes: list[TargetOutcome] = []
    swept: SweepOutcome | None = None
    logs.set_run(run_id)
    try:
        outcomes = _delete(conn, ctx, worker, the_plan, checkpoints, guarded, store)
        deleted = time.monotonic()
        if store is not None and all(o.phase is Phase.DONE for o in outcomes):
            logs.set_action("sweep")
            earlier, _ = worker.clock_bounds(server_now(conn))
            swept = sweep(
                SweepContext(
                    conn=conn,
                    tables=worker.tables,
                    store=store,
                    run_id=run_id,
                    threshold=earlier - settings.grace_period,
                    targets=by_pair([t.resolution for t in the_plan.targets]),
                    batch_size=settings.sweep_batch_size,
                    clock=worker.clock,
                    should_stop=should_stop,
                    holds=worker.active_holds(now),
                )
            )
    except BaseException as error:
        finish(conn, worker.clock, run_id, RunStatus.FAILED, error=error_text(error))
        raise
    finally:
        if worker.progress is not None:
            worker.progress.stop()
    warnings = notes + run_warnings(
        the_plan, run_id, checkpoints, guarded, swept, store is not None
    )
    status = run_status(outcomes, guarded, swept)
    reason = should_stop.reason if status is RunStatus.PARTIAL else ""
    if reason:
        warnings.append(f"run {run_id} {reason}: it resumes at the next run")
    finish(conn, worker.clock, run_id, status, error=run_problem(reason, outcomes, guarded, swept))
    logs.set_action("report")
    log.info("run %d %s", run_id, status.value)
    return RunReport(
        plan=the_plan,
        dry_run=False,
        run_id=run_id,
        status=status,
        resumed=resumed is not None,
        outcomes=tuple(outcomes),
        warnings=tuple(warnings),
        timings={
            "plan": round(plan_done - started, 3),
            "delete": round(deleted - plan_done, 3),
            "sweep": round(time.monotonic() - deleted, 3),
            "longest_batch": round(max((o.longest_batch for o in outcomes), default=0.0), 3),
        },
        sweep=swept,
        unplanned=_unplanned(the_plan, checkpoints),
    )


def _unplanned(the_plan: Plan, checkpoints: dict[str, Checkpoint]) -> tuple[int, int, int]:
    """What earlier attempts did for targets the plan no longer has (rows, segments, bytes)."""
    planned = {t.key for t in the_plan.targets}
    left = [c for key, c in checkpoints.items() if key not in planned]
    return (sum(c.rows for c in left), sum(c.segments for c in left), sum(c.bytes for c in left))


def _pinned_now(
    worker: Worker, now: datetime, resumed: RunRecord | None, reviewed: PlanFile | None
) -> datetime:
    """A reviewed plan's now, else a resumed run's, else ``now``."""
    if reviewed is not None:
        planfile.check_age(reviewed, worker.clock(), worker.settings.plan_max_age)
        if resumed is not None and resumed.pinned_now != reviewed.now:
            raise GuardError(
                f"run {resumed.id} is unfinished (pinned now {resumed.pinned_now.isoformat()}); "
                "finish it with 'retention purge' before applying a plan; nothing deleted"
            )
        # the earlier of the host's clock and ``now`` (RETENTION_NOW, or the earlier of the
        # host's and the database's clocks when they disagree): a host clock ahead of the
        # database's must not let a plan from the future through
        clock = min(worker.clock(), now)
        if reviewed.now > clock + MAX_NOW_LEAD:  # a skewed host's plan, or an edited one
            raise GuardError(
                f"the plan's pinned now {reviewed.now.isoformat()} is in the future (clock "
                f"{clock.isoformat()}); nothing deleted"
            )
        now = reviewed.now
    elif resumed is not None:
        now = resumed.pinned_now
    if resumed is not None:
        log.warning(
            "resuming run %d (%s) with its pinned now %s",
            resumed.id,
            resumed.status,
            resumed.pinned_now.isoformat(),
        )
    return now


def _bound_to_review(the_plan: Plan, reviewed: PlanFile) -> Plan:
    """Applying a reviewed plan: each target expires only the experiments and live
    segments the plan named (one registered or written since the review waits for the
    next run), as its rows stop at the plan's newest row."""
    targets = []
    for target in the_plan.targets:
        doc = reviewed.targets.get(target.key, {})
        resolution = replace(
            target.resolution,
            reviewed_objects=frozenset(UUID(i) for i in doc.get("expired_object_ids", ())),
            reviewed_segments=frozenset(UUID(i) for i in doc.get("segment_ids", ())),
        )
        targets.append(replace(target, resolution=resolution))
    return replace(the_plan, targets=tuple(targets))


def _check_review(
    reviewed: PlanFile | None, document: dict[str, Any], the_plan: Plan
) -> tuple[list[str], Plan]:
    """Refuse a drifted plan (exit 6); notes on targets with fewer rows than reviewed, and
    the plan bound to the review (``_bound_to_review``)."""
    if reviewed is None:
        return [], the_plan
    problems = planfile.drift(reviewed, document)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise GuardError(f"the plan {reviewed.path} drifted, nothing deleted: {shown}")
    return planfile.shortfall(reviewed, the_plan.targets), _bound_to_review(the_plan, reviewed)


def _approves(options: RunOptions) -> bool:
    """Does the operator approve this attempt (the override, or a reviewed plan)?"""
    return options.allow_large_deletes or options.plan_file is not None


def _approval(options: RunOptions, the_plan: Plan, guarded: Mapping[str, str]) -> str | None:
    """How this attempt was approved, kept by the run for a resumed attempt without an
    approval of its own: a reviewed plan's whole sealed document (the resume applies it
    again), or for ``--allow-large-deletes`` each target's cutoff and the objects it kept."""
    if options.plan_file is not None:
        return json.dumps({"by": "a reviewed plan", "plan": options.plan_file.document})
    if not options.allow_large_deletes:
        return None
    return json.dumps(
        {
            "by": "--allow-large-deletes",
            "targets": {
                t.key: {
                    "cutoff": t.resolution.cutoff.isoformat(),
                    "held": sorted(str(i) for i in t.resolution.held_object_ids),
                }
                for t in the_plan.targets
                if t.resolution.cutoff is not None and t.key not in guarded
            },
        },
        sort_keys=True,
    )


def _recorded_plan(run: RunRecord | None, inherited: dict[str, Any] | None) -> PlanFile | None:
    if run is None or inherited is None or not isinstance(inherited.get("plan"), dict):
        return None
    return planfile.parse(json.dumps(inherited["plan"]), Path(f"<the plan run {run.id} applies>"))


def _approval_of(run: RunRecord | None) -> dict[str, Any] | None:
    """A resumed run's approval (``_approval``), which an attempt without an override or a
    plan of its own goes on with."""
    if run is None or not run.approval:
        return None
    try:
        found = json.loads(run.approval)
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    log.warning(
        "resuming run %d with the approval of its first attempt (%s)", run.id, found.get("by")
    )
    return found


def _approved_targets(the_plan: Plan, inherited: dict[str, Any] | None) -> frozenset[str]:
    """The targets an inherited ``--allow-large-deletes`` covers: the same target at the
    same cutoff, keeping at least the objects it kept then (a policy changed or a hold
    lifted since asks for a review again)."""
    approved = (inherited or {}).get("targets")
    if not isinstance(approved, dict):
        return frozenset()
    found = []
    for t in the_plan.targets:
        then = approved.get(t.key)
        if not isinstance(then, dict) or t.resolution.cutoff is None:
            continue
        held = {str(i) for i in t.resolution.held_object_ids}
        if then.get("cutoff") == t.resolution.cutoff.isoformat() and held >= set(
            then.get("held", ())
        ):
            found.append(t.key)
    return frozenset(found)


def _guard_settings(
    worker: Worker,
    options: RunOptions,
    *,
    first_run: bool,
    previous: dict[str, float],
    approved: frozenset[str] = frozenset(),
) -> GuardSettings:
    settings = worker.settings
    return GuardSettings(
        max_delete_fraction=settings.max_delete_fraction,
        max_rows=settings.max_delete_rows,
        max_bytes=settings.max_delete_bytes,
        max_run_rows=settings.max_run_rows,
        max_run_bytes=settings.max_run_bytes,
        max_policy_shrink=settings.max_policy_shrink,
        previous_days=previous,
        first_run=first_run,
        # a reviewed plan file is the review the guards ask for
        allow_large_deletes=_approves(options),
        approved=approved,
    )


@contextlib.contextmanager
def _out_of_the_collector() -> Iterator[None]:
    """Everything made before the deletes (the plan, a reviewed plan file: millions of
    objects at 10,000 projects) left out of the garbage collector's full passes while the
    batches run, and put back after. Each such pass over them took 0.2-0.5 s inside some
    batch's transaction: the longest batch of a 10,000-project ``purge --plan`` was 0.55 s
    against a 0.2 s target."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@_out_of_the_collector()
def _delete(
    conn: Connection,
    ctx: BatchContext,
    worker: Worker,
    the_plan: Plan,
    checkpoints: dict[str, Checkpoint],
    guarded: dict[str, str],
    store: ObjectStore | None,
) -> list[TargetOutcome]:
    """Every target: logs and dataset rows by the block sweep or keyset batches, then
    segments and experiments target by target (first, marks that the plan now keeps are
    undone)."""
    earlier = {key: c.rows for key, c in checkpoints.items()}  # earlier attempts' rows
    if store is not None:
        resolutions = [t.resolution for t in the_plan.targets]
        orphans = frozenset(o.project_id for o in the_plan.orphans)
        with ctx.conn.begin():
            since = state.run_started(ctx.conn, ctx.run_id)
        undone = restore_kept(
            ctx.conn, ctx.tables, store, ctx.run_id, ctx.clock, resolutions, orphans, since
        )
        for (project_id, object_type), (n, size) in undone.items():
            key = f"{project_id}/{object_type}"
            if key in checkpoints:  # the run's own marks, undone: no longer counted
                c = checkpoints[key]
                checkpoints[key] = replace(
                    c, segments=max(c.segments - n, 0), bytes=max(c.bytes - size, 0)
                )
    logs.set_action("delete")
    allowed = [t for t in the_plan.targets if t.key not in guarded]
    dropped = 0  # rows that went with whole partitions
    if conn.dialect.name == "postgresql" and worker.settings.partition_action != "off":
        checkpoints, dropped = bulk.drop_partitions(
            ctx, allowed, checkpoints, worker.settings.partition_action
        )
    rows = _sweep_rows(conn, ctx, worker, allowed, checkpoints, dropped, earlier)
    longest: dict[str, float] = {}
    if conn.dialect.name == "postgresql" and worker.settings.delete_strategy == "auto":
        swept = rows.swept if rows is not None else frozenset()
        pending = [
            t for t in allowed if t.key not in swept and _has_work(ctx, t, checkpoints.get(t.key))
        ]
        small = grouped.eligible(pending, checkpoints, ctx.batch_size)
        if small:
            done = grouped.purge_small_targets(ctx, small, checkpoints)
            checkpoints, longest = done.checkpoints, done.longest
    outcomes = []
    for target in the_plan.targets:
        if rows is not None and target.key in rows.swept:
            outcomes.append(_after_sweep(ctx, target, rows))
        else:
            outcome = _purge_or_skip(
                ctx, target, checkpoints.get(target.key), guarded, resumed=target.key in earlier
            )
            if target.key in longest:
                outcome = replace(
                    outcome, longest_batch=max(outcome.longest_batch, longest[target.key])
                )
            outcomes.append(outcome)
    return [replace(o, earlier_rows=earlier.get(o.target.key, 0)) for o in outcomes]


def _sweep_rows(
    conn: Connection,
    ctx: BatchContext,
    worker: Worker,
    targets: Sequence[Target],
    checkpoints: dict[str, Checkpoint],
    dropped: int = 0,
    earlier: Mapping[str, int] | None = None,
) -> bulk.RowSweep | None:
    """The block-range sweep, when the strategy calls for it (PostgreSQL, much expired)."""
    settings = worker.settings
    if conn.dialect.name != "postgresql" or settings.delete_strategy == "keyset":
        return None
    if settings.delete_strategy == "auto":
        # the largest targets only, each with enough rows per batch to carry its receipts
        # (``blocksweep.worth_sweeping``); the rest go by index, small ones grouped
        rows_types = [t for t in targets if t.object_type in blocksweep.ROW_TYPES]
        worth = blocksweep.worth_sweeping(rows_types, settings.batch_target_seconds)
        keys = {t.key for t in worth}
        targets_swept = [t for t in targets if t.key in keys]
    else:
        targets_swept = list(targets)
    candidates = blocksweep.sweepable(targets_swept)
    if not candidates.targets:
        return None
    if settings.delete_strategy == "auto":
        with conn.begin():
            _, estimate = partitions.heap_size(conn, worker.tables)
        # before any ANALYZE the estimate is 0: the plan's own counts are a lower bound
        table_rows = max(estimate, sum(t.counts.total_rows for t in targets))
        share = sweep_share(targets, {t.key for t in candidates.targets}, dropped, table_rows)
        if table_rows < settings.block_sweep_min_rows:
            log.info("keyset batches: a small table (%d rows)", table_rows)
            return None
        if share < settings.block_sweep_fraction:
            log.info("keyset batches: %.1f%% of the table expired", share * 100)
            return None
        log.info("block-range sweep: %.1f%% of the table expired", share * 100)
    sizer = blocksweep.BlockSizer(
        blocks=settings.sweep_blocks, target=settings.batch_target_seconds
    )
    crew = bulk.Crew.for_this_process(settings)
    return bulk.sweep_rows(ctx, targets_swept, checkpoints, sizer, crew, earlier or {})


def sweep_share(targets: Sequence[Target], swept: set[str], dropped: int, table_rows: int) -> float:
    """The share of the table a sweep of the ``swept`` targets deletes: their planned
    rows, less their part of the ``dropped`` rows (gone with whole partitions, counted over
    every target; the swept ones' part taken in proportion to their planned rows)."""
    every = sum(t.counts.rows for t in targets if t.resolution.cutoff is not None)
    mine = sum(t.counts.rows for t in targets if t.key in swept)
    expired = max(mine - dropped * mine / every, 0.0) if every else 0.0
    return expired / max(table_rows, expired, 1)


def _after_sweep(ctx: BatchContext, target: Target, rows: bulk.RowSweep) -> TargetOutcome:
    """A swept target: its segments (and nothing more) by the per-target path."""
    checkpoint = rows.checkpoints[target.key]
    if target.key in rows.held:
        return TargetOutcome(
            target=target,
            rows=checkpoint.rows,
            phase=Phase.DONE,
            batches=checkpoint.batches,
            note=f"held during the run: {rows.held[target.key]}",
        )
    if not rows.complete:
        return TargetOutcome(
            target=target,
            rows=checkpoint.rows,
            batches=checkpoint.batches,
            phase=Phase.ROWS,
            note=rows.note,
            lock_waits=rows.waits_of(target.key),
        )
    outcome = purge_target(ctx, target, checkpoint)
    return replace(
        outcome,
        longest_batch=max(outcome.longest_batch, rows.longest),
        lock_waits=outcome.lock_waits + rows.waits_of(target.key),
    )


def _has_work(ctx: BatchContext, target: Target, found: Checkpoint | None) -> bool:
    """Whether an unguarded target has anything to do (or a checkpoint to finish)."""
    counts = target.counts
    work = counts.rows or counts.objects or (counts.segments and ctx.mark_segments) or found
    return bool(target.resolution.deletes and work)


def _purge_or_skip(
    ctx: BatchContext,
    target: Target,
    found: Checkpoint | None,
    guarded: dict[str, str],
    *,
    resumed: bool = False,
) -> TargetOutcome:
    """Purge the target unless a guard holds it back or there is nothing to do.

    A skipped target still reports what earlier attempts of this run deleted from it.
    """
    reason = guarded.get(target.key, "")
    if not reason and _has_work(ctx, target, found):
        return purge_target(ctx, target, found, resumed=resumed)
    if reason:
        log.warning("target=%s guarded: %s", target.key, reason)
    return TargetOutcome(
        target=target,
        rows=found.rows if found else 0,
        objects=found.objects if found else 0,
        segments=found.segments if found else 0,
        bytes=found.bytes if found else 0,
        phase=Phase.DONE,
        guard=reason,
    )


def iter_receipts(worker: Worker, **filters: Any) -> Iterator[dict[str, Any]]:
    """The deletion receipts, read-only and streamed (``state.list_receipts`` filters)."""
    database = worker.database
    with translate_errors(database):
        engine = make_engine(database, read_only=True)
        try:
            with engine.connect() as conn, snapshot(conn):
                migrate.require_current(conn)
                yield from state.list_receipts(conn, **filters)
        finally:
            engine.dispose()


def receipts(worker: Worker, **filters: Any) -> list[dict[str, Any]]:
    """The deletion receipts as a list (``iter_receipts``)."""
    return list(iter_receipts(worker, **filters))


def last_success(worker: Worker) -> datetime | None:
    """When the last successful purge ended (read-only)."""
    database = worker.database
    with translate_errors(database):
        engine = make_engine(database, read_only=True)
        try:
            with engine.connect() as conn, snapshot(conn):
                return state.last_success_time(conn)
        finally:
            engine.dispose()
