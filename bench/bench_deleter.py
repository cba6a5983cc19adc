"""The deleter against the one-statement DELETE, side by side on identical copies.

    python bench/bench_deleter.py [--rows 1000000] [--steady | --partitioned] [--repeat 2]
                                  [--fast] [--memory-only] [--workers N] [--connections N]
                                  [--projects 50] [--blocks] [--all-types] [--rules] [--holds N]
                                  [--plan] [--segments] [--no-keyset]

Starts a throwaway PostgreSQL cluster (durable settings unless --fast), loads the reference
schema with ROWS log rows of 50 projects (--projects) interleaved on the heap, `created`
uniform over 120 days, ~400-byte jsonb, both indexes. Each approach runs on its own copy
(CREATE DATABASE ... TEMPLATE), --repeat times; medians are printed as ratios to the
one-statement DELETE measured in the same run, with the longest transaction of each.

  (default)      a backlog: half the rows expired (cutoff 60 days)
  --steady       a daily run: ~1% expired (cutoff 119 days)
  --partitioned  the backlog on events range-partitioned by 10 days of `created`: the purge
                 dropping whole partitions against the same purge deleting row by row
  --memory-only  only the peak RSS of `retention purge` (compare --rows 1000000 and 10000000)
  --workers N    the backlog purged by 1 worker against N (`retention join` helpers) on one run
  --connections N  also the backlog purged with RETENTION_SWEEP_CONNECTIONS=N (default 2)
  --projects N   the rows spread over N projects (50): many small targets
  --blocks       also the purge with every target swept (RETENTION_DELETE_STRATEGY=blocks)
  --all-types    half the rows logs, a quarter dataset rows, a quarter rows of 4 experiments
                 a project (whole experiments expire by their registry entry), policies for all
                 three types; the one DELETE and the count take the same rows
  --rules        a [[projects]] rule per project (as an automation per project would be)
  --holds N      object holds on N experiments (all types): kept by every approach
  --plan         also `retention purge --plan FILE`: a JSON dry run written to a plan file
                 (not timed), then the purge applying it (the reviewed workflow)
  --segments     a segment per 10 days of each logs and dataset object and two per
                 experiment, in the index and as empty files of a file:// store: the purges
                 mark the expired ones too (the one DELETE does not; nothing is swept within
                 the day's grace)
  --no-keyset    leave out the purge with every target alone (RETENTION_DELETE_STRATEGY=keyset)

Also: the dry run against an exact grouped count(*) of the expired rows. Not part of the
test command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retention import engine as engine_module  # noqa: E402
from retention import migrate, planfile  # noqa: E402
from retention.db import make_engine, parse_database_url  # noqa: E402
from retention.report import report_document  # noqa: E402
from retention.settings import load_settings  # noqa: E402
from tests.pg import throwaway_cluster  # noqa: E402
from tests.support import PG_DDL  # noqa: E402

PROJECTS = 50
SPAN_DAYS = 120
PART_DAYS = 10

LOAD = """
INSERT INTO events (object_type, object_id, project_id, id, _xact_id, created, data)
SELECT 'project_logs', p, p, 'r' || g, g, now() - (random() * interval '120 days'),
       jsonb_build_object('input', repeat(md5(g::text), 12))
FROM generate_series(1, {rows}) g,
     LATERAL (SELECT ('00000000-0000-4000-8000-' || lpad((g %% {projects})::text, 12, '0'))::uuid
              AS p) x
"""
OBJECTS = """
INSERT INTO objects (object_type, object_id, project_id, name, created)
SELECT 'project_logs', p, p, 'p' || g, now() - interval '400 days'
FROM generate_series(0, {projects} - 1) g,
     LATERAL (SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid AS p) x
"""
# --all-types: a dataset and 4 experiments a project; experiment e of project e % projects
# was created (10 + e * 37 % 110) days ago, its rows within a day after that
OBJECTS_ALL = """
INSERT INTO objects (object_type, object_id, project_id, name, created)
SELECT 'dataset', ('00000000-0000-4000-9000-' || lpad(g::text, 12, '0'))::uuid,
       ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'd' || g,
       now() - interval '400 days'
FROM generate_series(0, {projects} - 1) g;
INSERT INTO objects (object_type, object_id, project_id, name, created)
SELECT 'experiment', ('00000000-0000-4000-a000-' || lpad(e::text, 12, '0'))::uuid,
       ('00000000-0000-4000-8000-' || lpad((e %% {projects})::text, 12, '0'))::uuid, 'e' || e,
       now() - interval '1 day' * (10 + e * 37 %% 110)
FROM generate_series(0, 4 * {projects} - 1) e
"""
LOAD_ALL = """
INSERT INTO events (object_type, object_id, project_id, id, _xact_id, created, data)
SELECT ty, oid, p, 'r' || g, g, at, jsonb_build_object('input', repeat(md5(g::text), 12))
FROM generate_series(1, {rows}) g,
     LATERAL (SELECT ('00000000-0000-4000-8000-' || lpad((g %% {projects})::text, 12, '0'))::uuid
              AS p, (g / {projects}) %% 4 AS kind, (g / (4 * {projects})) %% 4 AS nth) x,
     LATERAL (SELECT CASE WHEN kind < 2 THEN 'project_logs'
                          WHEN kind = 2 THEN 'dataset' ELSE 'experiment' END AS ty,
                     CASE WHEN kind < 2 THEN p
                          WHEN kind = 2 THEN ('00000000-0000-4000-9000-'
                                              || lpad((g %% {projects})::text, 12, '0'))::uuid
                          ELSE ('00000000-0000-4000-a000-'
                                || lpad((nth * {projects} + g %% {projects})::text, 12, '0'))::uuid
                     END AS oid,
                     CASE WHEN kind < 3 THEN now() - (random() * interval '120 days')
                          ELSE now() - interval '1 day'
                               * (10 + (nth * {projects} + g %% {projects}) * 37 %% 110)
                               + random() * interval '1 day' END AS at) y
"""
# what every approach deletes (held experiments: the first --holds of them)
DELETE_ALL = """
DELETE FROM events WHERE
((object_type IN ('project_logs', 'dataset') AND created < %(c)s)
 OR (object_type = 'experiment' AND object_id IN (
       SELECT object_id FROM objects WHERE object_type = 'experiment' AND created < %(c)s
       AND object_id <> ALL(%(held)s))))
"""
COUNT_ALL = """
SELECT project_id, object_type, count(*) FROM events WHERE
((object_type IN ('project_logs', 'dataset') AND created < %(c)s)
 OR (object_type = 'experiment' AND object_id IN (
       SELECT object_id FROM objects WHERE object_type = 'experiment' AND created < %(c)s
       AND object_id <> ALL(%(held)s))))
GROUP BY 1, 2
"""
# --segments: index rows only (marking reads no file)
SEGMENTS = """
INSERT INTO segments (segment_id, object_type, object_id, project_id, min_created, max_created,
                      row_count, byte_size, object_key)
SELECT gen_random_uuid(), o.object_type, o.object_id, o.project_id,
       now() - interval '1 day' * (k + 1) * 10, now() - interval '1 day' * k * 10, 100, 1000000,
       o.object_type || '/' || o.object_id || '/' || k
FROM objects o, generate_series(0, 11) k WHERE o.object_type IN ('project_logs', 'dataset');
INSERT INTO segments (segment_id, object_type, object_id, project_id, min_created, max_created,
                      row_count, byte_size, object_key)
SELECT gen_random_uuid(), 'experiment', o.object_id, o.project_id, o.created,
       o.created + interval '1 day', 100, 1000000, 'experiment/' || o.object_id || '/' || k
FROM objects o, generate_series(0, 1) k WHERE o.object_type = 'experiment'
"""
SHAPE: dict[str, Any] = {
    "all_types": False,
    "rules": False,
    "holds": [],
    "projects": PROJECTS,
    "store": None,  # --segments: a file:// URL
}


def _settings(url: str, work: Path, days: int, now: dt.datetime, **settings: Any) -> Any:
    if SHAPE["store"] is not None:
        settings.setdefault("object_store_url", SHAPE["store"])
    return load_settings(database_url=url, policy_dir=policies(work, days), now=now, **settings)


def held_experiments(count: int) -> list[str]:
    return [f"00000000-0000-4000-a000-{e:012d}" for e in range(count)]


PARTITIONED = [
    "DROP TABLE events",
    """CREATE TABLE events (
      sequence_id bigserial, object_type text NOT NULL, object_id uuid NOT NULL,
      project_id uuid NOT NULL, id text NOT NULL, _xact_id bigint NOT NULL,
      created timestamptz NOT NULL, data jsonb,
      PRIMARY KEY (sequence_id, created)) PARTITION BY RANGE (created)""",
    "CREATE INDEX ON events (project_id, object_type, created)",
    "CREATE INDEX ON events (object_type, object_id, created)",
]


def admin(url: str) -> sa.Engine:
    return sa.create_engine(
        parse_database_url(url).url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )


def copy(server: str, name: str, url_for: Callable[[str], str]) -> str:
    with admin(server).connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE tmpl')
    url = url_for(name)
    with admin(url).connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
        conn.exec_driver_sql("CHECKPOINT")
    return url


def drop(server: str, name: str) -> None:
    with admin(server).connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')


def wal(url: str) -> int:
    with admin(url).connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").scalar())


def one_statement(url: str, cutoff: dt.datetime) -> dict[str, float]:
    with admin(url).connect() as conn:
        started = time.perf_counter()
        conn.exec_driver_sql("BEGIN")
        if SHAPE["all_types"]:
            held = {"c": cutoff, "held": SHAPE["holds"]}
            rows = conn.exec_driver_sql(DELETE_ALL, held).rowcount
            conn.exec_driver_sql(
                "DELETE FROM objects WHERE object_type = 'experiment' AND created < %(c)s "
                "AND object_id <> ALL(%(held)s)",
                held,
            )
        else:
            rows = conn.exec_driver_sql(
                "DELETE FROM events WHERE object_type = 'project_logs' AND created < %(c)s",
                {"c": cutoff},
            ).rowcount
        conn.exec_driver_sql("COMMIT")
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "longest": seconds}


def policies(folder: Path, days: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    types = ("project_logs", "dataset", "experiment") if SHAPE["all_types"] else ("project_logs",)
    lines = ["[defaults]", *(f"{t} = {days}" for t in types)]
    if SHAPE["rules"]:
        for g in range(SHAPE["projects"]):
            lines += ["[[projects]]", f'id = "00000000-0000-4000-8000-{g:012d}"']
            lines += [f"{t} = {days}" for t in types]
    for e, held in enumerate(SHAPE["holds"]):
        project = f"00000000-0000-4000-8000-{e % SHAPE['projects']:012d}"
        lines += ["[[holds]]", f'project = "{project}"', 'object_type = "experiment"']
        lines += [f'object_id = "{held}"', 'reason = "bench"']
    (folder / "bench.toml").write_text("\n".join(lines) + "\n")
    return folder


def retention_purge(
    url: str, now: dt.datetime, days: int, work: Path, **settings: Any
) -> dict[str, float]:
    worker = engine_module.Worker.from_settings(_settings(url, work, days, now, **settings))
    started = time.perf_counter()
    return _measured(engine_module.purge(worker, allow_large_deletes=True), started)


def _measured(report: Any, started: float) -> dict[str, float]:
    return {
        "seconds": report.timings["delete"],
        "plan": report.timings["plan"],
        "total": time.perf_counter() - started,
        "rows": sum(o.rows for o in report.outcomes),
        "longest": report.timings.get("longest_batch", 0.0),
    }


def reviewed_purge(
    url: str, now: dt.datetime, days: int, work: Path, **settings: Any
) -> dict[str, float]:
    """``retention purge --plan FILE``: the plan file from a JSON dry run (not timed),
    then the purge that applies it."""
    worker = engine_module.Worker.from_settings(_settings(url, work, days, now, **settings))
    document = planfile.seal(report_document(engine_module.plan(worker, identify=True)))
    path = work / "plan.json"
    path.write_text(json.dumps(document))
    started = time.perf_counter()
    done = engine_module.purge(worker, allow_large_deletes=True, plan_file=planfile.read(path))
    return _measured(done, started)


def with_helpers(
    url: str, now: dt.datetime, days: int, work: Path, helpers: int, **settings: Any
) -> dict[str, float]:
    """The purge with ``helpers`` more workers (`retention join` processes) on its run."""
    env = {
        **os.environ,
        "RETENTION_DATABASE_URL": url,
        "RETENTION_JOIN_WAIT": "60s",
        "RETENTION_LOG_LEVEL": "WARNING",
        "RETENTION_DELETE_STRATEGY": "blocks",
        "RETENTION_SWEEP_UNIT_BLOCKS": str(settings.get("sweep_unit_blocks", 2048)),
    }
    command = str(Path(sys.executable).parent / "retention")
    joined = [
        subprocess.Popen([command, "join"], env=env, stdout=subprocess.DEVNULL)
        for _ in range(helpers)
    ]
    try:
        return retention_purge(url, now, days, work, delete_strategy="blocks", **settings)
    finally:
        for process in joined:
            process.wait(timeout=600)


def grouped_count(url: str, cutoff: dt.datetime) -> float:
    with admin(url).connect() as conn:
        started = time.perf_counter()
        if SHAPE["all_types"]:
            conn.exec_driver_sql(COUNT_ALL, {"c": cutoff, "held": SHAPE["holds"]}).all()
        else:
            conn.exec_driver_sql(
                "SELECT project_id, count(*) FROM events WHERE object_type = 'project_logs' "
                "AND created < %(c)s GROUP BY 1",
                {"c": cutoff},
            ).all()
        return time.perf_counter() - started


def dry_run(url: str, now: dt.datetime, days: int, work: Path, **settings: Any) -> float:
    worker = engine_module.Worker.from_settings(_settings(url, work, days, now, **settings))
    started = time.perf_counter()
    engine_module.plan(worker)
    return time.perf_counter() - started


def peak_rss_of_run(url: str, now: dt.datetime, days: int, work: Path) -> float:
    """Peak RSS in MiB of the installed command purging a copy."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [
            str(Path(sys.executable).parent / "retention"),
            "--database-url",
            url,
            "--policy-dir",
            str(policies(work, days)),
            "--now",
            now.isoformat(),
            "--log-level",
            "warning",
            "purge",
            "--yes",
            "--allow-large-deletes",
            "--format",
            "json",
        ],
        check=True,
        capture_output=True,
    )
    return max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024


def load(tmpl: str, rows: int, partitioned: bool, projects: int = PROJECTS) -> dt.datetime:
    with admin(tmpl).connect() as conn:
        for statement in PG_DDL:
            conn.exec_driver_sql(statement)
        now: dt.datetime = conn.exec_driver_sql("SELECT now()").scalar()
        if partitioned:
            for statement in PARTITIONED:
                conn.exec_driver_sql(statement)
            top = now + dt.timedelta(days=1)
            for i in range(SPAN_DAYS // PART_DAYS + 1):
                hi, lo = (
                    top - dt.timedelta(days=i * PART_DAYS),
                    top - dt.timedelta(days=(i + 1) * PART_DAYS),
                )
                conn.exec_driver_sql(
                    f"CREATE TABLE events_p{i} PARTITION OF events FOR VALUES "
                    f"FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
                )
            conn.exec_driver_sql("CREATE TABLE events_default PARTITION OF events DEFAULT")
        conn.exec_driver_sql(OBJECTS.format(projects=projects))
        if SHAPE["all_types"]:
            for statement in OBJECTS_ALL.format(projects=projects).split(";"):
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql(LOAD_ALL.format(rows=rows, projects=projects))
        else:
            conn.exec_driver_sql(LOAD.format(rows=rows, projects=projects))
        if SHAPE["store"] is not None:
            for statement in SEGMENTS.split(";"):
                conn.exec_driver_sql(statement)
            # the files (empty): a sweep checks that live segments' files are there
            store = Path(SHAPE["store"].removeprefix("file://"))
            for (key,) in conn.exec_driver_sql("SELECT object_key FROM segments"):
                (store / key).parent.mkdir(parents=True, exist_ok=True)
                (store / key).touch()
    engine = make_engine(parse_database_url(tmpl))
    migrate.upgrade(engine)
    engine.dispose()
    with admin(tmpl).connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    return now


def _approaches(
    args: argparse.Namespace, now: dt.datetime, days: int, work: Path, cutoff: dt.datetime
) -> list[tuple[str, Callable[[str], dict[str, float]]]]:
    """The approaches of this run, each a function of a copy's URL."""
    approaches: list[tuple[str, Callable[[str], dict[str, float]]]] = [
        ("one DELETE statement", lambda u: one_statement(u, cutoff)),
        ("retention purge (auto)", lambda u: retention_purge(u, now, days, work)),
    ]
    if args.partitioned:
        approaches.append(
            (
                "retention purge, partitions off",
                lambda u: retention_purge(u, now, days, work, partition_action="off"),
            )
        )
    elif args.workers > 1:
        units = {"sweep_unit_blocks": 2048}
        approaches[1] = (
            "retention purge, 1 worker",
            lambda u: retention_purge(u, now, days, work, delete_strategy="blocks", **units),
        )
        approaches.append(
            (
                f"retention purge, {args.workers} workers",
                lambda u: with_helpers(u, now, days, work, args.workers - 1, **units),
            )
        )
    else:
        if not args.no_keyset:
            approaches.append(
                (
                    "retention purge (keyset)",
                    lambda u: retention_purge(u, now, days, work, delete_strategy="keyset"),
                )
            )
        if args.plan:
            approaches.append(
                ("retention purge --plan (auto)", lambda u: reviewed_purge(u, now, days, work))
            )
        if args.blocks:
            approaches.append(
                (
                    "retention purge (blocks)",
                    lambda u: retention_purge(u, now, days, work, delete_strategy="blocks"),
                )
            )
        if args.connections > 1 and not args.steady:
            approaches.append(
                (
                    f"retention purge, {args.connections} connections",
                    lambda u: retention_purge(
                        u, now, days, work, sweep_connections=args.connections
                    ),
                )
            )
    return approaches


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--steady", action="store_true")
    mode.add_argument("--partitioned", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--projects", type=int, default=PROJECTS, help="projects the rows are spread over"
    )
    parser.add_argument(
        "--blocks", action="store_true", help="also the purge with RETENTION_DELETE_STRATEGY=blocks"
    )
    parser.add_argument("--fast", action="store_true", help="fsync off (not for the ratios)")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=1, help="also the purge with N workers on one run"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=2,
        help="also the purge with RETENTION_SWEEP_CONNECTIONS=N (backlog; 1: not)",
    )
    parser.add_argument("--all-types", action="store_true", help="logs, datasets, experiments")
    parser.add_argument("--rules", action="store_true", help="a per-project rule each")
    parser.add_argument("--holds", type=int, default=0, help="held experiments (--all-types)")
    parser.add_argument("--plan", action="store_true", help="also purge --plan of a dry run")
    parser.add_argument("--segments", action="store_true", help="segments to mark, a store")
    parser.add_argument(
        "--no-keyset", action="store_true", help="not the keyset purge (hours at 10,000 projects)"
    )
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    SHAPE.update(
        all_types=args.all_types,
        rules=args.rules,
        holds=held_experiments(args.holds) if args.all_types else [],
        projects=args.projects,
    )
    days = 119 if args.steady else 60
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    if args.segments:
        (work / "store").mkdir()
        SHAPE["store"] = f"file://{work / 'store'}"
    with throwaway_cluster(durable=not args.fast) as cluster:
        server = cluster.url
        with admin(server).connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE tmpl")
        tmpl = cluster.url_for("tmpl")
        started = time.perf_counter()
        now = load(tmpl, args.rows, args.partitioned, args.projects)
        print(
            f"rows={args.rows} projects={args.projects} durable={not args.fast} "
            f"expired_age_days={days} "
            f"partitioned={args.partitioned} all_types={args.all_types} rules={args.rules} "
            f"holds={args.holds} segments={args.segments} "
            f"load_s={time.perf_counter() - started:.1f}"
        )
        if args.memory_only:
            url = copy(server, "mem", cluster.url_for)
            rss = peak_rss_of_run(url, now, days, work)
            print(f"peak RSS of 'retention purge' over {args.rows} rows: {rss:.0f} MiB")
            return
        cutoff = now - dt.timedelta(days=days)
        approaches = _approaches(args, now, days, work, cutoff)
        results: dict[str, list[dict[str, float]]] = {}
        for rep in range(args.repeat):
            for n, (name, fn) in enumerate(approaches):
                db = f"r{rep}_{n}"
                url = copy(server, db, cluster.url_for)
                before = wal(url)
                out = fn(url)
                out["wal_mb"] = (wal(url) - before) / 2**20
                results.setdefault(name, []).append(out)
                drop(server, db)
        counts = [grouped_count(tmpl, cutoff) for _ in range(5)]
        dries = [dry_run(tmpl, now, days, work) for _ in range(5)]
        # the fraction guard at 0.5 (the default) needs as many kept rows counted as expired
        # ones on a backlog; at 0.9 it needs a ninth of that
        loose = [dry_run(tmpl, now, days, work, max_delete_fraction=0.9) for _ in range(5)]
        base = statistics.median(r["seconds"] for r in results["one DELETE statement"])
        print(
            f"{'approach (delete phase)':34} {'seconds':>8} {'rows':>9} {'x one-stmt':>10} "
            f"{'WAL MB':>7} {'longest txn s':>13} {'plan s':>7}"
        )
        for name, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            print(
                f"{name:34} {seconds:8.2f} {int(runs[0]['rows']):9d} {seconds / base:10.2f} "
                f"{statistics.median(r['wal_mb'] for r in runs):7.0f} "
                f"{max(r['longest'] for r in runs):13.3f} "
                f"{statistics.median(r.get('plan', 0.0) for r in runs):7.2f}"
            )
        count, dry = statistics.median(counts), statistics.median(dries)
        print(f"dry run {dry:.3f} s vs exact grouped count {count:.3f} s: {dry / count:.2f}x")
        dry = statistics.median(loose)
        print(f"dry run, max delete fraction 0.9: {dry:.3f} s: {dry / count:.2f}x")


if __name__ == "__main__":
    main()
