"""Where the block sweep's time goes: each statement shape alone, against the one DELETE.

    python bench/bench_shapes.py [--rows 1000000] [--blocks 6000] [--repeat 2]

Loads the same backlog as bench_deleter.py (half of ROWS log rows expired, 50 projects
with one cutoff) and deletes it block range by block range (BLOCKS heap blocks a
transaction) with each shape below, on its own copy, next to the one-statement DELETE
measured in the same run:

  bare        ctid range and the cutoff, no per-target filter (what batching costs)
  any         + project_id = ANY(projects) (one group of targets with one cutoff)
  joined      targets joined from unnest(arrays), as the sweep does, no RETURNING
  returning   + RETURNING into a CTE: count, first and last key per target
  digest      + the sha256 digest of each target's keys (what the sweep runs)
  digest x2   the digest shape on two connections at once

Not part of the test command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_deleter as base

from tests.pg import throwaway_cluster

PROJECTS = [f"00000000-0000-4000-8000-{g:012d}" for g in range(base.PROJECTS)]
# each statement written out whole: nothing is formatted into SQL
SHAPES = {
    "bare": (
        "DELETE FROM events e WHERE e.ctid >= %(lo)s::tid AND e.ctid < %(hi)s::tid AND "
        "object_type = 'project_logs' AND created < %(cut)s"
    ),
    "any": (
        "DELETE FROM events e WHERE e.ctid >= %(lo)s::tid AND e.ctid < %(hi)s::tid AND "
        "object_type = 'project_logs' AND created < %(cut)s AND project_id = "
        "ANY(%(ps)s::uuid[])"
    ),
    "joined": (
        "DELETE FROM events e USING unnest(%(ps)s::uuid[], %(ts)s::text[], "
        "%(cs)s::timestamptz[]) WITH ORDINALITY AS t(p, ty, cut, i) WHERE e.ctid >= "
        "%(lo)s::tid AND e.ctid < %(hi)s::tid AND e.project_id = t.p AND e.object_type "
        "= t.ty AND e.created < t.cut AND e.created < %(cut)s"
    ),
    "returning": (
        "WITH d AS (DELETE FROM events e USING unnest(%(ps)s::uuid[], %(ts)s::text[], "
        "%(cs)s::timestamptz[]) WITH ORDINALITY AS t(p, ty, cut, i) WHERE e.ctid >= "
        "%(lo)s::tid AND e.ctid < %(hi)s::tid AND e.project_id = t.p AND e.object_type "
        "= t.ty AND e.created < t.cut AND e.created < %(cut)s RETURNING t.i, "
        "e.sequence_id) SELECT count(*) FROM (SELECT i, count(*), min(sequence_id), "
        "max(sequence_id) FROM d GROUP BY i) g"
    ),
    "digest": (
        "WITH d AS (DELETE FROM events e USING unnest(%(ps)s::uuid[], %(ts)s::text[], "
        "%(cs)s::timestamptz[]) WITH ORDINALITY AS t(p, ty, cut, i) WHERE e.ctid >= "
        "%(lo)s::tid AND e.ctid < %(hi)s::tid AND e.project_id = t.p AND e.object_type "
        "= t.ty AND e.created < t.cut AND e.created < %(cut)s RETURNING t.i, "
        "e.sequence_id) SELECT count(*) FROM (SELECT i, count(*), min(sequence_id), "
        "max(sequence_id), encode(sha256(convert_to(string_agg(sequence_id::text || "
        "E'\\n', '' ORDER BY sequence_id), 'UTF8')), 'hex') FROM d GROUP BY i) g"
    ),
}


def sweep(url: str, cutoff: dt.datetime, shape: str, blocks: int, connections: int) -> float:
    """Seconds to delete the backlog range by range with ``shape`` on ``connections``."""
    engine = base.admin(url)
    with engine.connect() as conn:
        end = int(conn.exec_driver_sql("SELECT pg_relation_size('events') / 8192").scalar())
    params: dict[str, Any] = {
        "ps": PROJECTS,
        "ts": ["project_logs"] * len(PROJECTS),
        "cs": [cutoff] * len(PROJECTS),
        "cut": cutoff,
    }
    starts = iter(range(0, end + 1, blocks))
    lock = threading.Lock()

    def work() -> None:
        with engine.connect() as conn:
            while True:
                with lock:
                    lo = next(starts, None)
                if lo is None:
                    return
                conn.exec_driver_sql("BEGIN")
                conn.exec_driver_sql(
                    SHAPES[shape], {**params, "lo": f"({lo},0)", "hi": f"({lo + blocks},0)"}
                )
                conn.exec_driver_sql("COMMIT")

    started = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=6000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with throwaway_cluster(durable=True) as cluster:
        with base.admin(cluster.url).connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE tmpl")
        tmpl = cluster.url_for("tmpl")
        now = base.load(tmpl, args.rows, partitioned=False)
        cutoff = now - dt.timedelta(days=60)
        runs: list[tuple[str, Callable[[str], float]]] = [
            ("one DELETE statement", lambda u: base.one_statement(u, cutoff)["seconds"])
        ]
        for shape in SHAPES:
            runs.append((shape, lambda u, s=shape: sweep(u, cutoff, s, args.blocks, 1)))
        runs.append(("digest x2", lambda u: sweep(u, cutoff, "digest", args.blocks, 2)))
        seconds: dict[str, list[float]] = {}
        for rep in range(args.repeat):
            for n, (name, run) in enumerate(runs):
                db = f"s{rep}_{n}"
                url = base.copy(cluster.url, db, cluster.url_for)
                seconds.setdefault(name, []).append(run(url))
                base.drop(cluster.url, db)
        one = statistics.median(seconds["one DELETE statement"])
        print(f"rows={args.rows} blocks per transaction={args.blocks} repeat={args.repeat}")
        for name, values in seconds.items():
            median = statistics.median(values)
            print(f"{name:22} {median:6.2f} s {median / one:6.2f}x")


if __name__ == "__main__":
    main()
