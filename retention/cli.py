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

from . import __version__, commands, logs, report
from .errors import ExitCode, RetentionError
from .models import ObjectType
from .settings import Settings, load_settings

log = logging.getLogger("retention")


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
        "--grace-period",
        default=default,
        metavar="DURATION",
        help="RETENTION_GRACE_PERIOD: how long a segment stays unused before the sweep "
        "deletes its file (default 24h; 0 sweeps what the same run marked)",
    )
    group.add_argument(
        "--object-store-url",
        default=default,
        metavar="URL",
        help="RETENTION_OBJECT_STORE_URL: file://, s3://, gs:// or az:// (segment files)",
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


Command = Callable[[str, str], argparse.ArgumentParser]


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of every command that deletes: batches, budget, guards, plans, orphans."""
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="RETENTION_BATCH_SIZE: rows per batch transaction (default 1000)",
    )
    parser.add_argument(
        "--max-runtime",
        metavar="DURATION",
        help="RETENTION_MAX_RUNTIME: stop at a batch boundary after this long (exit 5, resumable)",
    )
    parser.add_argument(
        "--allow-large-deletes",
        action="store_true",
        help="override the safety guards for this run (first run on a database, "
        "RETENTION_MAX_DELETE_FRACTION), after reviewing the dry run",
    )
    parser.add_argument(
        "--purge-orphans",
        action="store_true",
        help="also delete the data of orphaned projects (deleted in, or unknown to, the "
        "control plane); holds and the safety floor still apply",
    )
    parser.add_argument(
        "--plan",
        type=Path,
        metavar="FILE",
        help="apply exactly this reviewed plan (from purge --dry-run --output FILE.json); "
        "refuses on drift (exit 6); with purge --dry-run, only checks for drift",
    )
    parser.add_argument(
        "--plan-max-age", metavar="DURATION", help="RETENTION_PLAN_MAX_AGE (default 24h)"
    )
    limits = parser.add_argument_group("guards (each overrides its environment variable)")
    limits.add_argument(
        "--max-delete-fraction",
        type=float,
        metavar="F",
        help="RETENTION_MAX_DELETE_FRACTION: of a target's rows (default 0.5)",
    )
    limits.add_argument(
        "--max-delete-rows",
        type=int,
        metavar="N",
        help="RETENTION_MAX_DELETE_ROWS: per target (default: no limit)",
    )
    limits.add_argument(
        "--max-delete-bytes",
        type=int,
        metavar="N",
        help="RETENTION_MAX_DELETE_BYTES: segment bytes per target",
    )
    limits.add_argument(
        "--max-run-rows",
        type=int,
        metavar="N",
        help="RETENTION_MAX_RUN_ROWS: rows in the whole run",
    )
    limits.add_argument(
        "--max-run-bytes",
        type=int,
        metavar="N",
        help="RETENTION_MAX_RUN_BYTES: segment bytes in the whole run",
    )
    limits.add_argument(
        "--max-policy-shrink",
        type=float,
        metavar="F",
        help="RETENTION_MAX_POLICY_SHRINK: how much shorter a policy may be "
        "than in the last successful run (default 0.5)",
    )


def _purge_command(command: Command) -> None:
    """purge and run: plan, guards, plan files."""
    purge = command("purge", "plan, then delete expired data (rows in batches, checkpointed)")
    purge.add_argument(
        "--dry-run",
        action="store_true",
        help="plan only, in a read-only session; writes nothing, takes no lock",
    )
    purge.add_argument(
        "--format",
        choices=report.FORMATS,
        help="table (default), json (the default for --output FILE.json: a plan file), markdown",
    )
    purge.add_argument("--output", type=Path, metavar="FILE", help="write the report to FILE")
    purge.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (it is only asked on a terminal)",
    )
    _run_flags(purge)
    purge.set_defaults(handler=commands.purge)

    run = command(
        "run",
        "the non-interactive one-shot for cron and Kubernetes: plan, guards, purge, sweep; "
        "writes metrics when configured",
    )
    run.add_argument("--format", choices=report.FORMATS, default="json")
    run.add_argument("--output", type=Path, metavar="FILE", help="write the report to FILE")
    _run_flags(run)
    run.set_defaults(handler=commands.run, dry_run=False, yes=True)

    join = command(
        "join",
        "another worker for a running purge (PostgreSQL): claim block-sweep units of its run "
        "until none is left; waits up to RETENTION_JOIN_WAIT for one to start",
    )
    join.add_argument("--format", choices=("table", "json"), default="table")
    join.set_defaults(handler=commands.join)

    schedule = command(
        "schedule",
        "a foreground loop running 'run' on a cron expression (hosts without cron); serves "
        "/metrics",
    )
    schedule.add_argument("--cron", metavar="EXPR", help="RETENTION_SCHEDULE, e.g. '0 3 * * *'")
    schedule.add_argument("--time-zone", metavar="TZ", help="RETENTION_SCHEDULE_TZ (default UTC)")
    schedule.add_argument(
        "--jitter",
        metavar="DURATION",
        help="RETENTION_SCHEDULE_JITTER: random delay added to each start",
    )
    schedule.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="RETENTION_METRICS_PORT (default 9464; 0: do not serve)",
    )
    _run_flags(schedule)
    schedule.set_defaults(
        handler=commands.schedule, dry_run=False, yes=True, format="json", output=None
    )

    status = command("status", "last runs, runs in progress, backlog and lag; a health check")
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.add_argument(
        "--max-age",
        metavar="DURATION",
        help="unhealthy (exit 1) when the last success is older than this",
    )
    status.add_argument(
        "--no-backlog",
        action="store_true",
        help="skip planning (no policies, no control plane needed)",
    )
    status.set_defaults(handler=commands.status)


def _audit_commands(command: Command) -> None:
    """policies, holds, receipts."""
    policies = command("policies", "effective policies per project and object type")
    policies.add_argument(
        "--explain",
        action="store_true",
        help="every source considered, the winner, floor, hold and cutoff",
    )
    policies.add_argument("--format", choices=("text", "json"), default="text")
    policies.set_defaults(handler=commands.policies)

    receipts = command("receipts", "the append-only deletion receipts")
    receipts.add_argument("--project", metavar="ID")
    receipts.add_argument("--object-type", choices=[t.value for t in ObjectType])
    receipts.add_argument("--action", choices=("delete", "detach", "mark", "sweep", "restore"))
    receipts.add_argument("--run", type=int, metavar="N", help="receipts of one run")
    receipts.add_argument("--since", metavar="TIME", help="recorded at or after TIME (ISO 8601)")
    receipts.add_argument("--format", choices=("table", "json", "csv"), default="table")
    receipts.set_defaults(handler=commands.receipts)

    holds = command("holds", "active holds with reason and expiry (from the policy files)")
    holds.add_argument("--all", action="store_true", help="also expired holds")
    holds.add_argument("--format", choices=("table", "json"), default="table")
    holds.set_defaults(handler=commands.holds)


def _segment_commands(command: Command) -> None:
    """sweep, restore, segments check."""
    sweep = command(
        "sweep",
        "only the second phase: delete the files of segments unused for longer than the "
        "grace period (RETENTION_GRACE_PERIOD), then their index rows",
    )
    sweep.add_argument(
        "--max-runtime",
        metavar="DURATION",
        help="RETENTION_MAX_RUNTIME: stop at a batch boundary after this long (exit 5)",
    )
    sweep.add_argument("--format", choices=("table", "json"), default="table")
    sweep.set_defaults(handler=commands.sweep)

    restore = command(
        "restore",
        "return unused segments still in the grace period to live (undoes a mark only)",
    )
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--project", metavar="ID", help="segments of this project")
    which.add_argument("--segment", metavar="ID", help="one segment")
    restore.add_argument("--object-type", choices=[t.value for t in ObjectType])
    restore.add_argument("--object-id", metavar="ID")
    restore.add_argument(
        "--since", metavar="TIME", help="only segments marked at or after TIME (ISO 8601)"
    )
    restore.add_argument("--format", choices=("table", "json"), default="table")
    restore.set_defaults(handler=commands.restore)

    segments_cmd = command("segments", "segment index and object store")
    segments_cmd.add_argument(
        "action",
        choices=("check",),
        help="check: list the store under --prefix and compare with the index (report only)",
    )
    segments_cmd.add_argument("--prefix", default="", help="key prefix to reconcile")
    segments_cmd.add_argument("--format", choices=("table", "json"), default="table")
    segments_cmd.set_defaults(handler=commands.segments)


def _setup_commands(command: Command) -> None:
    """controlplane, db, demo."""
    controlplane = command("controlplane", "the control plane: check URL, token and read access")
    controlplane.add_argument("action", choices=("check",))
    controlplane.set_defaults(handler=commands.controlplane)

    db = command("db", "the worker's own tables (alembic migrations)")
    db.add_argument(
        "action",
        choices=("upgrade", "current", "check"),
        help="upgrade: migrate to head; current: print the revision; check: exit 2 unless at head",
    )
    db.set_defaults(handler=commands.db)

    demo_cmd = command("demo", "seed a synthetic data plane in SQLite, then dry-run and purge it")
    demo_cmd.add_argument("--events", type=int, default=120_000, metavar="N")
    demo_cmd.add_argument("--seed", type=int, default=7)
    demo_cmd.add_argument("--format", choices=report.FORMATS, default="table")
    demo_cmd.set_defaults(handler=commands.demo_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retention",
        description="Enforce data retention on a self-hosted Braintrust data plane.",
        epilog="exit codes: 0 done, 1 unexpected error (or status: unhealthy), "
        "2 usage/configuration/policy, 3 control plane, 4 database or object store, "
        "5 partial (resumable), 6 safety guard or plan refused, 7 locked "
        "(docs/operations.md says what to do)",
    )
    parser.add_argument("--version", action="version", version=f"retention {__version__}")
    _common(parser, suppress=False)
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = subcommands.add_parser(name, help=help_text, description=help_text)
        _common(sub, suppress=True)
        return sub

    for add in (_purge_command, _audit_commands, _segment_commands, _setup_commands):
        add(command)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    renamed = {"cron": "schedule", "time_zone": "schedule_tz", "jitter": "schedule_jitter"}
    extra = {field: getattr(args, flag, None) for flag, field in renamed.items()}
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
        "grace_period",
        "object_store_url",
        "plan_max_age",
        "max_delete_fraction",
        "max_delete_rows",
        "max_delete_bytes",
        "max_run_rows",
        "max_run_bytes",
        "max_policy_shrink",
        "metrics_port",
    )
    return load_settings(**{k: getattr(args, k, None) for k in keys}, **extra)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get("RETENTION_DEBUG"))
    try:
        settings = _settings(args)
        logs.configure(settings.log_level, settings.log_format, debug=debug)
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except RetentionError as error:
        if debug:
            log.exception("failed")
        print(f"retention: error: {error.message}", file=sys.stderr)
        return int(error.exit_code)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        commands.silence_stdout()
        return int(ExitCode.UNEXPECTED)
    except KeyboardInterrupt:
        print("retention: interrupted", file=sys.stderr)
        return int(ExitCode.PARTIAL)
    except Exception as error:  # the one place an unexpected error becomes exit 1
        if debug:
            log.exception("unexpected error")
        print(f"retention: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return int(ExitCode.UNEXPECTED)
