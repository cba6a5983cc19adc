"""The ``retention`` command: parse, build settings, call the library, map to exit codes.

Exit codes (DESIGN §5): 0 done · 1 unexpected · 2 usage/config/policy · 3 control plane ·
4 database · 5 partial (resumable) · 6 guard · 7 locked. The mapping lives in ``main``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, demo, engine, migrate, report
from .db import make_engine, parse_database_url, translate_errors, use_wal
from .errors import ExitCode, RetentionError, UsageError
from .models import Plan, RunReport, RunStatus
from .settings import Settings, load_settings
from .signals import stop_on_signals
from .sources import control_plane_source

log = logging.getLogger("retention")

_RUN_EXIT = {
    RunStatus.SUCCEEDED: ExitCode.OK,
    RunStatus.PARTIAL: ExitCode.PARTIAL,
    RunStatus.GUARDED: ExitCode.GUARD,
    RunStatus.FAILED: ExitCode.UNEXPECTED,
}


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("settings (each overrides its environment variable)")
    group.add_argument(
        "--database-url",
        default=default,
        metavar="URL",
        help="RETENTION_DATABASE_URL (falls back to PG_URL; default: the "
        "embedded SQLite file in the state folder)",
    )
    group.add_argument(
        "--policy-dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="RETENTION_POLICY_DIR: folder of *.toml policy files (default: policies/)",
    )
    group.add_argument(
        "--state-dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="RETENTION_STATE_DIR (default: $XDG_STATE_HOME/retention)",
    )
    group.add_argument(
        "--min-retention-days",
        type=float,
        default=default,
        metavar="DAYS",
        help="RETENTION_MIN_RETENTION_DAYS: safety floor (default 1)",
    )
    group.add_argument(
        "--now",
        default=default,
        metavar="TIME",
        help="RETENTION_NOW: pin 'now' (ISO 8601 with offset; never in the "
        "future), for replays and tests",
    )
    group.add_argument(
        "--audit",
        action="store_const",
        const=True,
        default=default,
        help="RETENTION_AUDIT: send x-bt-enable-audit to the control plane and log the "
        "audit headers of each response",
    )
    group.add_argument(
        "--log-level", default=default, metavar="LEVEL", help="RETENTION_LOG_LEVEL (default INFO)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retention",
        description="Enforce data retention on a self-hosted Braintrust data plane.",
        epilog="exit codes: 0 done, 1 unexpected error, 2 usage/configuration/policy, "
        "3 control plane, 4 database, 5 partial (resumable), 6 safety guard, 7 locked",
    )
    parser.add_argument("--version", action="version", version=f"retention {__version__}")
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common(sub, suppress=True)
        return sub

    purge = command("purge", "plan, then delete expired data (rows in batches, checkpointed)")
    purge.add_argument(
        "--dry-run",
        action="store_true",
        help="plan only, in a read-only session; writes nothing, takes no lock",
    )
    purge.add_argument("--format", choices=report.FORMATS, default="table")
    purge.add_argument("--output", type=Path, metavar="FILE", help="write the report to FILE")
    purge.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="RETENTION_BATCH_SIZE: rows per batch transaction (default 1000)",
    )
    purge.add_argument(
        "--max-runtime",
        metavar="DURATION",
        help="RETENTION_MAX_RUNTIME: stop at a batch boundary after this long (exit 5, resumable)",
    )
    purge.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (it is only asked on a terminal)",
    )
    purge.add_argument(
        "--allow-large-deletes",
        action="store_true",
        help="override the safety guards for this run (first run on a database, "
        "RETENTION_MAX_DELETE_FRACTION), after reviewing the dry run",
    )
    purge.add_argument(
        "--purge-orphans",
        action="store_true",
        help="also delete the data of orphaned projects (deleted in, or unknown to, the "
        "control plane); holds and the safety floor still apply",
    )
    purge.set_defaults(handler=_purge)

    policies = command("policies", "effective policies per project and object type")
    policies.add_argument(
        "--explain",
        action="store_true",
        help="every source considered, the winner, floor, hold and cutoff",
    )
    policies.add_argument("--format", choices=("text", "json"), default="text")
    policies.set_defaults(handler=_policies)

    db = command("db", "the worker's own tables (alembic migrations)")
    db.add_argument(
        "action",
        choices=("upgrade", "current", "check"),
        help="upgrade: migrate to head; current: print the revision; check: exit 2 unless at head",
    )
    db.set_defaults(handler=_db)

    controlplane = command("controlplane", "the control plane: check URL, token and read access")
    controlplane.add_argument("action", choices=("check",))
    controlplane.set_defaults(handler=_controlplane)

    demo_cmd = command("demo", "seed a synthetic data plane in SQLite, then dry-run and purge it")
    demo_cmd.add_argument("--events", type=int, default=120_000, metavar="N")
    demo_cmd.add_argument("--seed", type=int, default=7)
    demo_cmd.add_argument("--format", choices=report.FORMATS, default="table")
    demo_cmd.set_defaults(handler=_demo)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    keys = (
        "database_url",
        "policy_dir",
        "state_dir",
        "min_retention_days",
        "now",
        "log_level",
        "batch_size",
        "max_runtime",
        "audit",
    )
    return load_settings(**{k: getattr(args, k, None) for k in keys})


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


def _purge(args: argparse.Namespace, settings: Settings) -> int:
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
        code = int(_RUN_EXIT[result.status]) if result.status else 0
        try:
            _emit(report.render(result, args.format), args.output)
        except BrokenPipeError:  # the work is done; its exit code still tells what happened
            _silence_stdout()
        return code


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _policies(args: argparse.Namespace, settings: Settings) -> int:
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


def _db(args: argparse.Namespace, settings: Settings) -> int:
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


def _controlplane(args: argparse.Namespace, settings: Settings) -> int:
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


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    if args.events < 1:
        raise UsageError("--events must be at least 1")
    done = demo.run(settings, events=args.events, seed_value=args.seed)
    print(
        f"Seeded {done.data.events:,} events and {done.data.objects} objects into "
        f"{done.database_url}\nPolicies: {done.policy_file}\n"
    )
    print("$ retention purge --dry-run")
    sys.stdout.write(report.render(done.dry_run, args.format))
    print("\n$ retention purge --yes --allow-large-deletes   # first run: reviewed above")
    sys.stdout.write(report.render(done.purge, args.format))
    print(
        f"\nInspect it: RETENTION_DATABASE_URL={done.database_url} "
        f"RETENTION_POLICY_DIR={done.policy_file.parent} retention policies --explain"
    )
    status = done.purge.status
    return int(_RUN_EXIT[status]) if status else 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper() if level.upper() in logging.getLevelNamesMapping() else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # alembic announces its context on every check; our own messages say what matters
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # we log requests ourselves


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get("RETENTION_DEBUG"))
    try:
        settings = _settings(args)
        _configure_logging(settings.log_level)
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except RetentionError as error:
        if debug:
            log.exception("failed")
        print(f"retention: error: {error.message}", file=sys.stderr)
        return int(error.exit_code)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        _silence_stdout()
        return int(ExitCode.UNEXPECTED)
    except KeyboardInterrupt:
        print("retention: interrupted", file=sys.stderr)
        return int(ExitCode.PARTIAL)
    except Exception as error:  # the one place an unexpected error becomes exit 1
        if debug:
            log.exception("unexpected error")
        print(f"retention: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return int(ExitCode.UNEXPECTED)
