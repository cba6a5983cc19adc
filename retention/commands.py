"""The command handlers: each builds a worker, calls the library and prints the result.

Each returns its exit code; errors propagate to ``cli.main``, which maps them.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from uuid import UUID

from . import demo, engine, logs, maintenance, metrics, migrate, planfile, report, scheduler
from . import join as join_module
from . import status as status_module
from .db import make_engine, parse_database_url, translate_errors, use_wal
from .errors import ControlPlaneError, ExitCode, ObjectStoreError, RetentionError, UsageError
from .models import ObjectType, Plan, RunReport, RunStatus, as_utc
from .progress import TerminalProgress
from .segments import RestoreFilter
from .settings import Settings, parse_duration
from .signals import stop_on_signals
from .sources import control_plane_source
from .state import RECEIPT_FIELDS

log = logging.getLogger(__name__)

RUN_EXIT = {
    RunStatus.SUCCEEDED: ExitCode.OK,
    RunStatus.PARTIAL: ExitCode.PARTIAL,
    RunStatus.GUARDED: ExitCode.GUARD,
    RunStatus.FAILED: ExitCode.UNEXPECTED,
}


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write report to {output}: {exc.strerror}") from exc
    print(f"wrote report to {output}", file=sys.stderr)


def _check_writable(output: Path | None) -> None:
    """Refuse a report file we cannot write before anything is deleted."""
    if output is None:
        return
    try:
        with output.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write report to {output}: {exc.strerror}") from exc


def _confirm() -> Callable[[Plan], bool]:
    def ask(plan: Plan) -> bool:
        sys.stderr.write(report.render(RunReport(plan=plan, dry_run=True), "table"))
        rows = sum(t.counts.rows for t in plan.targets if t.resolution.deletes)
        answer = input(f"Delete {rows:,} rows as planned above? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    return ask


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    return "json" if args.output is not None and args.output.suffix == ".json" else "table"


def _render(result: RunReport, fmt: str) -> str:
    """The report; a dry run's JSON is a plan file (sealed with its content hash)."""
    if fmt == "json" and result.dry_run:
        return json.dumps(planfile.seal(report.report_document(result)), indent=2) + "\n"
    return report.render(result, fmt)


def _deleting_run(
    args: argparse.Namespace, settings: Settings, stop: Callable[[], bool], *, interactive: bool
) -> tuple[int, RunReport | None]:
    """One purge (or dry run) as the flags say: its exit code and report, metrics published.

    Errors propagate after the metrics record the failed outcome.
    """
    started = time.monotonic()
    result: RunReport | None = None
    code = int(ExitCode.UNEXPECTED)
    worker: engine.Worker | None = None
    try:
        # refused at the start (no place for the report, no plan file, bad settings): a
        # failed run too, published as one
        _check_writable(args.output)
        reviewed = planfile.read(args.plan) if args.plan is not None else None
        progress = TerminalProgress() if interactive and sys.stderr.isatty() else None
        worker = engine.Worker.from_settings(settings, should_stop=stop, progress=progress)
        if args.dry_run:
            # a dry run's JSON is a plan file: it names what expires
            identify = _format(args) == "json"
            result = engine.plan(worker, purge_orphans=args.purge_orphans, identify=identify)
            return 0, result
        confirm = None if args.yes or not sys.stdin.isatty() else _confirm()
        result = engine.purge(
            worker,
            mode="purge" if getattr(args, "command", "purge") == "purge" else "run",
            confirm=confirm,
            allow_large_deletes=args.allow_large_deletes,
            purge_orphans=args.purge_orphans,
            plan_file=reviewed,
        )
        code = int(RUN_EXIT[result.status]) if result.status else 0
        if result.sweep is not None and (result.sweep.failed or result.sweep.refused):
            # files not deleted (the store failed, or a key outside it): index rows kept
            code = int(ExitCode.DATABASE)
        return code, result
    except RetentionError as error:
        code = int(error.exit_code)
        raise
    finally:
        if not args.dry_run and (result is None or result.status is not None):
            _publish(settings, worker, result, code, time.monotonic() - started)


def _publish(
    settings: Settings,
    worker: engine.Worker | None,
    result: RunReport | None,
    code: int,
    seconds: float,
) -> None:
    """The run's metrics; never raises (it runs in a ``finally``: the run's own exit code
    and error must come through). ``worker``: None when the run was refused before it had
    one."""
    try:
        _publish_metrics(settings, worker, result, code, seconds)
    except Exception as exc:  # logged; the run's outcome stands
        log.error("metrics: not published: %s", type(exc).__name__)


def _publish_metrics(
    settings: Settings,
    worker: engine.Worker | None,
    result: RunReport | None,
    code: int,
    seconds: float,
) -> None:
    if settings.metrics_textfile is None and settings.pushgateway_url is None:
        return
    last = None
    if code != 0:
        try:
            last = engine.last_success(worker or engine.Worker.from_settings(settings))
        except RetentionError:
            last = None
    metrics.publish(
        metrics.RunMetrics(
            report=result,
            exit_code=code,
            duration_seconds=seconds,
            finished=(worker.clock if worker is not None else engine.utc_now)(),
            last_success=last,
        ),
        textfile=settings.metrics_textfile,
        pushgateway=settings.pushgateway_url,
    )


def purge(args: argparse.Namespace, settings: Settings) -> int:
    if args.dry_run:  # a deleting run checks it itself (and publishes a refusal)
        _check_writable(args.output)
    fmt = _format(args)
    started = time.monotonic()
    # The handlers stay in place while the report is written: a signal then must not kill
    # the process with a signal status after the run was recorded.
    with stop_on_signals(settings.stop_timeout.total_seconds()) as stop:
        if args.dry_run and args.plan is not None:
            worker = engine.Worker.from_settings(settings, should_stop=stop)
            return _check_plan(worker, planfile.read(args.plan))
        code, result = _deleting_run(args, settings, stop, interactive=True)
        assert result is not None
        if not args.dry_run and result.status is None:
            print("aborted; nothing deleted", file=sys.stderr)
            return int(ExitCode.OK)
        try:
            _emit(_render(result, fmt), args.output)
        except BrokenPipeError:  # the work is done; its exit code still tells what happened
            silence_stdout()
        except UsageError as error:
            if args.dry_run:
                raise
            # The run is recorded, but its report is lost (a full disk): say which run, and
            # exit (and publish) non-zero so that neither the job nor the metrics say "done".
            code = code or int(ExitCode.UNEXPECTED)
            _publish(
                settings,
                engine.Worker.from_settings(settings),
                result,
                code,
                time.monotonic() - started,
            )
            rows = sum(o.rows for o in result.outcomes)
            print(
                f"retention: {error.message}; run {result.run_id} ({result.status}) deleted "
                f"{rows:,} rows: see 'retention receipts --run {result.run_id}'",
                file=sys.stderr,
            )
        return code


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The non-interactive one-shot: never prompts; a JSON report by default."""
    return purge(args, settings)


def schedule(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.schedule:
        raise UsageError("no schedule: give --cron or RETENTION_SCHEDULE, e.g. '0 3 * * *'")
    plan = scheduler.CronSchedule(
        settings.schedule, time_zone=settings.schedule_tz, jitter=settings.schedule_jitter
    )
    registry = metrics.CollectorRegistry()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, registry)
    with stop_on_signals(settings.stop_timeout.total_seconds()) as stop:

        def once() -> int:
            started = time.monotonic()
            result: RunReport | None = None
            logs.outside_run()  # until this run opens: no earlier run's id on its lines
            try:
                code, result = _deleting_run(args, settings, stop, interactive=False)
            except RetentionError as error:
                log.error("run failed: %s", error.message)
                code = int(error.exit_code)
            except Exception as error:  # a bug: this run failed, the schedule goes on
                log.error(
                    "run failed with an unexpected error (%s); RETENTION_DEBUG=1 for a traceback",
                    type(error).__name__,
                )
                if os.environ.get("RETENTION_DEBUG"):
                    log.error("the unexpected error", exc_info=True)
                code = int(ExitCode.UNEXPECTED)
            last = None
            if code != 0:  # after a success its own end is the last success
                try:
                    last = engine.last_success(engine.Worker.from_settings(settings))
                except RetentionError:
                    last = None
            metrics.update(
                registry,
                metrics.RunMetrics(
                    report=result,
                    exit_code=code,
                    duration_seconds=time.monotonic() - started,
                    finished=engine.utc_now(),
                    last_success=last,
                ),
            )
            if result is not None:
                sys.stdout.write(_render(result, "json"))
                sys.stdout.flush()
            return code

        codes = scheduler.run_forever(
            plan, once, clock=engine.utc_now, sleep=stop.wait, should_stop=stop
        )
    return int(ExitCode.PARTIAL) if stop() and codes and codes[-1] == ExitCode.PARTIAL else 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    try:
        max_age = parse_duration(args.max_age) if args.max_age else None
    except ValueError:
        raise UsageError(f"--max-age: {args.max_age!r} is not a duration (e.g. 36h)") from None
    found = status_module.collect(
        engine.Worker.from_settings(settings), max_age=max_age, backlog=not args.no_backlog
    )
    doc = status_module.document(found)
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"healthy: {'yes' if found.healthy else 'NO'}; last success: "
            f"{doc['last_success'] or 'never'}"
        )
        for problem in found.problems:
            print(f"  problem: {problem}")
        print("recent runs:")
        for r in doc["runs"]:
            print(
                f"  {r['id']:>5} {r['mode']:<8} {r['status']:<10} started {r['started_at'][:19]}"
                f" rows {r['rows']:,} segments {r['segments']:,}"
                + (f" ({r['error']})" if r["error"] else "")
            )
        for run_id, checkpoints in doc["in_progress"].items():
            print(f"run {run_id} in progress:")
            for c in checkpoints:
                print(f"  {c['target']} {c['phase']} rows {c['rows']:,} batches {c['batches']}")
        if doc["backlog"] is not None:
            print("backlog (expired, not yet deleted):")
            for kind, b in doc["backlog"].items():
                print(
                    f"  {kind:<12} rows {b['rows']:,} segments {b['segments']:,} "
                    f"oldest {b['lag_seconds']:,} s past its cutoff"
                )
    return 0 if found.healthy else int(ExitCode.UNEXPECTED)


def _check_plan(worker: engine.Worker, reviewed: planfile.PlanFile) -> int:
    """``purge --dry-run --plan FILE``: would the plan still apply? Exit 6 if not."""
    planfile.check_age(reviewed, worker.clock(), worker.settings.plan_max_age)
    fresh = engine.plan(
        worker,
        purge_orphans=reviewed.orphans,
        now=reviewed.now,
        identify=True,
        newest_row=reviewed.newest_row,
    )
    problems = planfile.drift(reviewed, report.plan_document(fresh.plan))
    for line in problems:
        print(f"drift: {line}")
    for line in planfile.shortfall(reviewed, fresh.plan.targets):
        print(f"note: {line}")
    if problems:
        print(f"retention: the plan {reviewed.path} no longer applies", file=sys.stderr)
        return int(ExitCode.GUARD)
    print(f"the plan {reviewed.path} applies as reviewed ({reviewed.hash})")
    return 0


def silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def policies(args: argparse.Namespace, settings: Settings) -> int:
    resolved = engine.explain(engine.Worker.from_settings(settings))
    if not args.explain:
        resolved = type(resolved)(
            now=resolved.now,
            floor_days=resolved.floor_days,
            resolutions=tuple(r for r in resolved.resolutions if r.has_policy_or_hold),
            warnings=resolved.warnings,
        )
    sys.stdout.write(report.render_explain(resolved, fmt=args.format))
    return 0


def db(args: argparse.Namespace, settings: Settings) -> int:
    database = parse_database_url(settings.resolved_database_url)
    upgrade = args.action == "upgrade"
    with translate_errors(database):
        db_engine = make_engine(database, create=upgrade, read_only=not upgrade)
        try:
            if upgrade:
                revision = migrate.upgrade(db_engine)
                use_wal(db_engine)
                print(f"worker tables at revision {revision} (head)")
                return 0
            with db_engine.connect() as conn:
                found = migrate.status(conn)
        finally:
            db_engine.dispose()
    print(f"current {found.current or 'none'} · head {found.head}")
    if args.action == "check" and not found.up_to_date:
        if found.current is not None and not migrate.known(found.current):
            print(
                f"worker tables are at {found.current}, unknown to this version: a newer "
                "worker migrated them; upgrade the worker, not the tables",
                file=sys.stderr,
            )
        else:
            print("worker tables are not at head: run 'retention db upgrade'", file=sys.stderr)
        return int(ExitCode.USAGE)
    return 0


def controlplane(args: argparse.Namespace, settings: Settings) -> int:
    source = control_plane_source(settings)
    if source is None:
        raise UsageError("BRAINTRUST_API_URL is not set: there is no control plane to check")
    data = source.fetch()
    deleted = sum(1 for p in data.projects if p.deleted_at is not None)
    org = settings.org_name or "the token's organization"
    print(f"control plane: {source.config.base_url} ({org})")
    print(f"token: {source.token.describe()}: accepted")
    print(
        f"projects: {len(data.projects)} ({len(data.projects) - deleted} live, {deleted} deleted)"
    )
    print(f"retention automations: {len(data.rules)} project")
    if data.org_endpoint:
        print(f"org retention automations: {len(data.org_rules)}")
    else:
        print("org retention automations: none (the server has no /v1/org_automation)")
    print(f"other automations (ignored): {data.skipped_automations}")
    print(f"requests: {data.requests}")
    if not data.projects:
        raise ControlPlaneError(
            "the control plane lists no projects for this token: is it this organization's "
            "token? (a run would then keep every project's data as an orphan's)"
        )
    return 0


def demo_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.events < 1:
        raise UsageError("--events must be at least 1")
    done = demo.run(settings, events=args.events, seed_value=args.seed)
    print(
        f"Seeded {done.data.events:,} events and {done.data.objects} objects into "
        f"{done.database_url}\n{done.data.segments} segment files in {done.store_url}\n"
        f"Policies: {done.policy_file}\n"
    )
    print(f"$ retention purge --dry-run --output {done.plan_path}   # the plan to review")
    sys.stdout.write(report.render(done.dry_run, args.format))
    print(f"\n$ retention purge --yes --plan {done.plan_path}   # applies exactly that plan")
    sys.stdout.write(report.render(done.purge, args.format))
    print(
        f"\nInspect it: RETENTION_DATABASE_URL={done.database_url} "
        f"RETENTION_POLICY_DIR={done.policy_file.parent} "
        f"RETENTION_OBJECT_STORE_URL={done.store_url} retention policies --explain"
    )
    status = done.purge.status
    return int(RUN_EXIT[status]) if status else 0


def join(args: argparse.Namespace, settings: Settings) -> int:
    with stop_on_signals(settings.stop_timeout.total_seconds()) as stop:
        worker = engine.Worker.from_settings(settings, should_stop=stop)
        done = join_module.join(worker)
    if args.format == "json":
        print(json.dumps(done.as_dict(), indent=2))
    elif done.run_id is None:
        print("Join: no running purge with block-sweep work came; nothing done")
    else:
        print(
            f"Join: worker {done.worker} on run {done.run_id}: {done.rows:,} rows in "
            f"{done.units:,} units, {done.seconds:.1f}s"
            + ("" if done.complete else f" (stopped: {done.note})")
        )
    return int(ExitCode.OK if done.complete else ExitCode.PARTIAL)


def sweep(args: argparse.Namespace, settings: Settings) -> int:
    with stop_on_signals(settings.stop_timeout.total_seconds()) as stop:
        worker = engine.Worker.from_settings(settings, should_stop=stop)
        done = maintenance.sweep_only(worker)
    outcome = done.outcome
    doc = {
        "run_id": done.run_id,
        "status": done.status.value,
        "unused_before": done.threshold.isoformat(),
        "files": outcome.files,
        "bytes": outcome.bytes,
        "missing": outcome.missing,
        "failed": outcome.failed,
        "refused": outcome.refused,
        "requests": outcome.requests,
        "seconds": round(done.seconds, 3),
    }
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"Sweep: run {done.run_id} {done.status.value}: {outcome.files:,} files deleted "
            f"({outcome.bytes:,} bytes; {outcome.missing:,} already gone), {outcome.failed:,} "
            f"failed, {outcome.refused:,} refused; segments unused before "
            f"{done.threshold.isoformat()}"
        )
    if outcome.failed:
        print(
            f"retention: {outcome.failed:,} files could not be deleted; their index rows stay",
            file=sys.stderr,
        )
    if outcome.refused:
        print(
            f"retention: {outcome.refused:,} segments have object keys outside the store URL; "
            "refused, their index rows stay",
            file=sys.stderr,
        )
    if outcome.failed or outcome.refused:
        return int(ExitCode.DATABASE)
    return int(RUN_EXIT[done.status])


def _uuid_arg(value: str | None, flag: str) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise UsageError(f"{flag}: {value!r} is not a UUID") from None


def restore(args: argparse.Namespace, settings: Settings) -> int:
    since = _time_arg(args.since, "--since")
    which = RestoreFilter(
        project_id=_uuid_arg(args.project, "--project"),
        segment_id=_uuid_arg(args.segment, "--segment"),
        object_type=ObjectType(args.object_type) if args.object_type else None,
        object_id=_uuid_arg(args.object_id, "--object-id"),
        since=since,
    )
    done = maintenance.restore(engine.Worker.from_settings(settings), which)
    result = done.result
    doc = {
        "run_id": done.run_id,
        "restored": len(result.restored),
        "bytes": sum(f.bytes for f in result.restored),
        "past_grace": result.past_grace,
        "missing": [str(f.segment_id) for f in result.missing],
        "segments": [str(f.segment_id) for f in result.restored],
    }
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"Restored {doc['restored']:,} segments ({doc['bytes']:,} bytes) to live "
            f"(run {done.run_id})."
        )
        if result.past_grace:
            print(
                f"{result.past_grace:,} matching segments are past the grace period "
                f"(unused before {done.threshold.isoformat()}) and can no longer be restored."
            )
        if result.missing:
            print(
                f"{len(result.missing):,} matching segments were not restored: their files "
                "are no longer in the store (a sweep deleted them; see receipts)."
            )
        if not result.restored and not result.past_grace and not result.missing:
            print("No unused segment matched (never marked, or already swept: see receipts).")
    if result.missing:  # asked for, still in grace, and gone: a store problem, not done
        print(
            f"retention: {len(result.missing):,} segments could not be restored: their files "
            "are not in the store",
            file=sys.stderr,
        )
        return int(ObjectStoreError.exit_code)
    return 0


def segments(args: argparse.Namespace, settings: Settings) -> int:
    found = maintenance.check(engine.Worker.from_settings(settings), args.prefix or None)
    doc = {
        "prefix": found.prefix,
        "files": found.files,
        "indexed": found.indexed,
        "unindexed_files": found.unindexed_files,
        "missing_files": found.missing_files,
    }
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"Prefix {found.prefix or '(all)'}: {found.files:,} files in the store, "
            f"{found.indexed:,} index rows"
        )
        print(f"files without an index row: {len(found.unindexed_files):,}")
        for key in found.unindexed_files[:20]:
            print(f"  {key}")
        print(f"index rows without a file: {len(found.missing_files):,}")
        for key in found.missing_files[:20]:
            print(f"  {key}")
        print("Nothing was deleted.")
    return 0


def receipts(args: argparse.Namespace, settings: Settings) -> int:
    since = _time_arg(args.since, "--since")
    if args.run is not None and not 1 <= args.run < 2**63:
        raise UsageError(f"--run: {args.run} is not a run id")
    found = engine.iter_receipts(
        engine.Worker.local_only(settings),
        project_id=_uuid_arg(args.project, "--project"),
        object_type=args.object_type,
        action=args.action,
        run_id=args.run,
        since=since,
    )
    # streamed: the table only grows. The first receipt is read before anything is printed,
    # so a missing table or an old schema is one error line, not half a document.
    first = next(found, None)
    items = found if first is None else itertools.chain((first,), found)
    if args.format == "json":  # one receipt per line, inside one array
        sys.stdout.write("[")
        for n, item in enumerate(items):
            sys.stdout.write(("\n  " if n == 0 else ",\n  ") + json.dumps(item))
        sys.stdout.write("\n]\n" if first is not None else "]\n")
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(RECEIPT_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(items)
    else:
        count = 0
        for item in items:
            count += 1
            days = "-" if item["retention_days"] is None else f"{item['retention_days']:g}d"
            print(
                f"{item['recorded_at'][:19]} run {item['run_id']} {item['action']:<7} "
                f"{item['project_id']} {item['object_type']:<12} {days:>6} "
                f"cutoff {(item['cutoff'] or '-')[:19]} rows {item['rows']:,} "
                f"experiments {item['objects']:,} segments {item['segments']:,} "
                f"bytes {item['bytes']:,} digest {(item['keys_digest'] or '-')[:16]}"
            )
        print(f"{count:,} receipts")
    return 0


def holds(args: argparse.Namespace, settings: Settings) -> int:
    """The policy folder's holds (the only place holds come from): works while the control
    plane is down, which is when someone checks them."""
    worker = engine.Worker.local_only(settings)
    now = worker.pinned_now()
    policy_sets = worker.load_policies()
    for policy_set in policy_sets:
        for warning in policy_set.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    found = [h for s in policy_sets for h in s.holds if args.all or h.active(now)]
    doc = [
        {
            "project_id": str(h.project_id),
            "object_type": h.object_type.value if h.object_type else None,
            "object_id": str(h.object_id) if h.object_id else None,
            "reason": h.reason,
            "expires": h.expires.isoformat() if h.expires else None,
            "active": h.active(now),
            "source": h.origin,
        }
        for h in found
    ]
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return 0
    for hold in found:
        scope = str(hold.project_id)
        scope += f"/{hold.object_type}" if hold.object_type else ""
        scope += f"/{hold.object_id}" if hold.object_id else ""
        until = f"until {hold.expires.isoformat()}" if hold.expires else "no expiry"
        state = "" if hold.active(now) else " (expired, ignored)"
        print(f"{scope}: {hold.reason} ({until}; {hold.origin}){state}")
    print(f"{sum(1 for h in found if h.active(now))} active holds")
    return 0


def _time_arg(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag}: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{flag}: {value!r} needs a UTC offset, e.g. Z")
    try:
        return as_utc(parsed)
    except OverflowError:
        raise UsageError(f"{flag}: {value!r} is out of range in UTC") from None
