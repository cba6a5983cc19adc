"""The command handlers: each builds a worker, calls the library and prints the result.

Each returns its exit code; errors propagate to ``cli.main``, which maps them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from uuid import UUID

from . import demo, engine, maintenance, migrate, report
from .db import make_engine, parse_database_url, translate_errors, use_wal
from .errors import ExitCode, UsageError
from .models import ObjectType, Plan, RunReport, RunStatus, as_utc
from .segments import RestoreFilter
from .settings import Settings
from .signals import stop_on_signals
from .sources import control_plane_source

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


def purge(args: argparse.Namespace, settings: Settings) -> int:
    _check_writable(args.output)
    # The handlers stay in place while the report is written: a signal then must not kill
    # the process with a signal status after the run was recorded.
    with stop_on_signals() as stop:
        worker = engine.Worker.from_settings(settings, should_stop=stop)
        if args.dry_run:
            result = engine.plan(worker, purge_orphans=args.purge_orphans)
        else:
            confirm = None if args.yes or not sys.stdin.isatty() else _confirm()
            result = engine.purge(
                worker,
                confirm=confirm,
                allow_large_deletes=args.allow_large_deletes,
                purge_orphans=args.purge_orphans,
            )
        if not args.dry_run and result.status is None:
            print("aborted; nothing deleted", file=sys.stderr)
            return int(ExitCode.OK)
        code = int(RUN_EXIT[result.status]) if result.status else 0
        if result.sweep is not None and result.sweep.failed:
            code = int(ExitCode.DATABASE)  # the store failed: index rows kept, next sweep retries
        try:
            _emit(report.render(result, args.format), args.output)
        except BrokenPipeError:  # the work is done; its exit code still tells what happened
            silence_stdout()
        return code


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
    print("$ retention purge --dry-run")
    sys.stdout.write(report.render(done.dry_run, args.format))
    print("\n$ retention purge --yes --allow-large-deletes   # first run: reviewed above")
    sys.stdout.write(report.render(done.purge, args.format))
    print(
        f"\nInspect it: RETENTION_DATABASE_URL={done.database_url} "
        f"RETENTION_POLICY_DIR={done.policy_file.parent} "
        f"RETENTION_OBJECT_STORE_URL={done.store_url} retention policies --explain"
    )
    status = done.purge.status
    return int(RUN_EXIT[status]) if status else 0


def sweep(args: argparse.Namespace, settings: Settings) -> int:
    with stop_on_signals() as stop:
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
    since = None
    if args.since:
        try:
            since = as_utc(datetime.fromisoformat(args.since.replace("Z", "+00:00")))
        except ValueError:
            raise UsageError(
                f"--since: {args.since!r} is not an ISO 8601 time with offset"
            ) from None
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
        if not result.restored and not result.past_grace:
            print("No unused segment matched (never marked, or already swept: see receipts).")
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
