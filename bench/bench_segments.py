"""The segment sweep's delete rate: files per second on file:// and on an S3-compatible server.

    python bench/bench_segments.py [--files 5000]

Starts a throwaway PostgreSQL cluster and a moto S3 server on loopback, writes FILES segment
files to each store with index rows already marked unused past the grace period, and times
`retention segments sweep` (library call). Deletes go through the store's bulk delete (S3:
DeleteObjects, up to 1,000 keys a request); the request count is printed. As a baseline in
the same run, up to 1,000 files deleted one request each.
Not part of the test command.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retention import maintenance, migrate  # noqa: E402
from retention.db import make_engine, parse_database_url  # noqa: E402
from retention.engine import Worker  # noqa: E402
from retention.objectstore import open_store  # noqa: E402
from retention.settings import load_settings  # noqa: E402
from tests.pg import free_port, throwaway_cluster  # noqa: E402
from tests.stores import FileStore, S3Store, new_bucket  # noqa: E402
from tests.support import PG_DDL  # noqa: E402

PROJECT = uuid.UUID("00000000-0000-4000-8000-000000000001")


def seed(url: str, store: FileStore | S3Store, files: int) -> None:
    old = datetime.now(UTC) - timedelta(days=30)
    rows = []
    for i in range(files):
        key = f"{PROJECT}/seg-{i:06d}.parquet"
        store.write(key, b"x" * 256)
        rows.append(
            {
                "segment_id": str(uuid.uuid4()),
                "object_type": "project_logs",
                "object_id": str(PROJECT),
                "project_id": str(PROJECT),
                "min_created": old,
                "max_created": old,
                "row_count": 1,
                "byte_size": 256,
                "object_key": key,
                "state": "unused",
                "unused_at": old,
            }
        )
    engine = sa.create_engine(parse_database_url(url).url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO segments (segment_id, object_type, object_id, project_id, "
                "min_created, max_created, row_count, byte_size, object_key, state, unused_at) "
                "VALUES (:segment_id, :object_type, :object_id, :project_id, :min_created, "
                ":max_created, :row_count, :byte_size, :object_key, :state, :unused_at)"
            ),
            rows,
        )
    engine.dispose()


def timed_sweep(url: str, store: FileStore | S3Store, work: Path) -> tuple[float, int, int]:
    settings: dict[str, Any] = {"grace_period": "1h", **store.settings()}
    # the sweep deletes only what a policy expires: the seeded segments are 30 days old
    (work / "bench.toml").write_text("[defaults]\nproject_logs = 7\n")
    worker = Worker.from_settings(
        load_settings(database_url=url, policy_dir=work, **settings),
    )
    started = time.perf_counter()
    report = maintenance.sweep_only(worker)
    return time.perf_counter() - started, report.outcome.files, report.outcome.requests


def one_by_one(store: FileStore | S3Store, files: int) -> float:
    keys = [f"{PROJECT}/one-{i:06d}.parquet" for i in range(files)]
    for key in keys:
        store.write(key, b"x" * 256)
    opened = open_store(load_settings(policy_dir=Path("."), **store.settings()))
    started = time.perf_counter()
    assert opened is not None
    for key in keys:
        opened.delete_many([key])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    stores: list[tuple[str, Callable[[], FileStore | S3Store]]] = [
        ("file://", lambda: FileStore(Path(tempfile.mkdtemp(prefix="store-", dir=work)))),
        ("s3 (moto)", lambda: new_bucket(f"http://127.0.0.1:{port}")),
    ]
    try:
        with throwaway_cluster() as cluster:
            print(
                f"{'store':10} {'files':>7} {'seconds':>8} {'files/s':>9} {'requests':>8} "
                f"{'one-by-one files/s':>18} {'speedup':>7}"
            )
            for n, (name, make) in enumerate(stores):
                admin = sa.create_engine(
                    parse_database_url(cluster.url).url, isolation_level="AUTOCOMMIT"
                )
                with admin.connect() as conn:
                    conn.exec_driver_sql(f"CREATE DATABASE s{n}")
                admin.dispose()
                url = cluster.url_for(f"s{n}")
                engine = make_engine(parse_database_url(url))
                with engine.begin() as conn:
                    for statement in PG_DDL:
                        conn.exec_driver_sql(statement)
                migrate.upgrade(engine)
                engine.dispose()
                store = make()
                seed(url, store, args.files)
                seconds, files, requests = timed_sweep(url, store, work)
                assert files == args.files, (files, args.files)
                single = one_by_one(store, min(args.files, 1000))
                single_rate = min(args.files, 1000) / single
                rate = files / seconds
                print(
                    f"{name:10} {files:7d} {seconds:8.2f} {rate:9.0f} {requests:8d} "
                    f"{single_rate:18.0f} {rate / single_rate:7.1f}"
                )
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
