"""Concurrency on PostgreSQL: rows changed while a delete waits, a lost run lock, lock_timeout.

Another session holds row locks in an open transaction while the purge runs in a thread;
``pg_stat_activity`` tells when the purge waits, so nothing depends on sleeping long enough.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention.errors import DatabaseError
from retention.models import RunReport, RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, registry, surviving_rows

P = UUID("b1000000-0000-4000-8000-000000000001")
DAYS = 30
POLICY = policy_toml(defaults={"project_logs": DAYS, "experiment": DAYS})
WAIT = 30.0  # seconds: a deadline for things that take milliseconds


def _logs(expired: int, fresh: int) -> tuple[Scenario, set[str]]:
    """One project's logs; row ``old-i`` is the i-th in keyset order. Returns the kept ids."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(expired):
        s.add_event(
            "project_logs", P, P, NOW - timedelta(days=100) + timedelta(minutes=i), f"old-{i}"
        )
    kept = {
        s.add_event("project_logs", P, P, NOW - timedelta(days=10, minutes=i), f"new-{i}")
        for i in range(fresh)
    }
    return s, kept


def _scalar(url: str, sql: str, **params: object) -> Any:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        engine.dispose()


def _count(url: str) -> int:
    return int(_scalar(url, "SELECT count(*) FROM events"))


def _runs(url: str) -> list[tuple[int, str, int]]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT id, status, resumed FROM retention_runs ORDER BY id"
            ).all()
            return [(int(r[0]), r[1], int(r[2])) for r in rows]
    finally:
        engine.dispose()


def _sums(url: str) -> tuple[int, int]:
    """(rows in receipts, rows in checkpoints)."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            receipts = conn.exec_driver_sql(
                "SELECT coalesce(sum(rows), 0) FROM retention_receipts"
            ).scalar_one()
            checkpoints = conn.exec_driver_sql(
                "SELECT coalesce(sum(rows), 0) FROM retention_checkpoints"
            ).scalar_one()
            return int(receipts), int(checkpoints)
    finally:
        engine.dispose()


def _wait_until(
    condition: Callable[[], bool], what: str, future: Future[Any] | None = None
) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        if future is not None and future.done():
            raise AssertionError(f"the purge ended before {what}: {future.exception()!r}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _purge_waits_on_a_lock(url: str, statement: str) -> Callable[[], bool]:
    """True once the worker's session waits on a lock while running ``statement``."""

    def check() -> bool:
        found = _scalar(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'retention' AND wait_event_type = 'Lock' "
            "AND replace(query, '\"', '') ILIKE :statement",  # names may be quoted
            statement=f"%{statement}%",  # also inside a WITH (a group of targets)
        )
        return bool(found == 1)

    return check


@contextmanager
def _open_transaction(url: str) -> Iterator[sa.Connection]:
    """Another session with an open transaction; rolled back unless the test commits."""
    engine = engine_for(url)
    conn = engine.connect()
    try:
        conn.begin()
        yield conn
    finally:
        if conn.in_transaction():
            conn.rollback()
        conn.close()
        engine.dispose()


@contextmanager
def _in_background(call: Callable[[], RunReport]) -> Iterator[Future[RunReport]]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(call)


def test_row_moved_past_the_cutoff_while_the_delete_waits_is_kept(
    pg_url: str, tmp_path: Path
) -> None:
    scenario, kept = _logs(expired=40, fresh=10)
    engine = engine_for(pg_url)
    insert(engine, scenario)
    policy_dir = write_policies(tmp_path / "p", POLICY)
    w = worker(pg_url, policy_dir, batch_size=1000)  # one batch holds every expired row

    with _open_transaction(pg_url) as other:
        moved = other.execute(
            sa.text("UPDATE events SET created = :created WHERE id = 'old-17'"),
            {"created": NOW - timedelta(days=1)},
        ).rowcount
        assert moved == 1
        with _in_background(lambda: purge(w)) as running:
            _wait_until(
                _purge_waits_on_a_lock(pg_url, "DELETE FROM events"), "the lock wait", running
            )
            other.commit()
            report = running.result(timeout=WAIT)

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept | {"old-17"}
    (outcome,) = [o for o in report.outcomes if o.target.key == f"{P}/project_logs"]
    assert outcome.target.counts.rows == 40  # planned before the update committed
    assert outcome.rows == 39  # what was deleted
    assert _sums(pg_url) == (39, 39)
    assert _scalar(pg_url, "SELECT created FROM events WHERE id = 'old-17'") == NOW - timedelta(
        days=1
    )


def test_experiment_moved_past_the_cutoff_while_its_registry_delete_waits_is_kept(
    pg_url: str, tmp_path: Path
) -> None:
    s = Scenario()
    old = [UUID(f"e1000000-0000-4000-8000-00000000000{i}") for i in range(4)]
    empty = UUID("e2000000-0000-4000-8000-000000000000")  # expired, no rows: registry only
    new = UUID("e3000000-0000-4000-8000-000000000000")
    for experiment in old:
        s.add_object("experiment", experiment, P, NOW - timedelta(days=90))
        for i in range(3):
            s.add_event("experiment", experiment, P, NOW - timedelta(days=89), f"{experiment}-{i}")
    s.add_object("experiment", empty, P, NOW - timedelta(days=90))
    s.add_object("experiment", new, P, NOW - timedelta(days=5))
    kept = {
        s.add_event("experiment", new, P, NOW - timedelta(days=4), f"new-{i}") for i in range(3)
    }
    engine = engine_for(pg_url)
    insert(engine, s)
    policy_dir = write_policies(tmp_path / "p", POLICY)
    w = worker(pg_url, policy_dir, batch_size=1000)

    with _open_transaction(pg_url) as other:
        moved = other.execute(
            sa.text("UPDATE objects SET created = :created WHERE object_id = :id"),
            {"created": NOW - timedelta(days=1), "id": empty},
        ).rowcount
        assert moved == 1
        with _in_background(lambda: purge(w)) as running:
            _wait_until(
                _purge_waits_on_a_lock(pg_url, "DELETE FROM objects"), "the lock wait", running
            )
            assert surviving_rows(engine) == kept  # the rows phase is done and committed
            other.commit()
            report = running.result(timeout=WAIT)

    assert report.status is RunStatus.SUCCEEDED
    assert registry(engine) == {("experiment", str(empty)), ("experiment", str(new))}
    assert surviving_rows(engine) == kept
    (outcome,) = [o for o in report.outcomes if o.target.key == f"{P}/experiment"]
    assert outcome.target.counts.objects == 5  # planned before the update committed
    assert (outcome.rows, outcome.objects) == (12, 4)
    assert _scalar(
        pg_url, "SELECT created FROM objects WHERE object_id = :id", id=empty
    ) == NOW - timedelta(days=1)


class TerminateRunBackend:
    """A should_stop callback that, on its ``n``-th call, kills the session holding the run
    lock from another connection, waits until that backend is gone, then says "go on"."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.n = n
        self.calls = 0
        self.terminated: int | None = None

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls != self.n:
            return False
        engine = engine_for(self.url)
        try:
            with engine.connect() as conn:
                holders = conn.exec_driver_sql(
                    "SELECT l.pid, a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                ).all()
                assert [app for _, app in holders] == ["retention"], holders
                pid = int(holders[0][0])
                assert conn.execute(
                    sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                ).scalar()
                conn.rollback()
                deadline = time.monotonic() + WAIT
                while True:  # each check in its own transaction: a fresh statistics snapshot
                    alive = conn.execute(
                        sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                        {"pid": pid},
                    ).scalar()
                    conn.rollback()
                    if not alive:
                        break
                    assert time.monotonic() < deadline, "the terminated backend stays"
                    time.sleep(0.02)
        finally:
            engine.dispose()
        self.terminated = pid
        return False


def test_lost_run_lock_stops_the_run_and_it_resumes(pg_url: str, tmp_path: Path) -> None:
    scenario, kept = _logs(expired=600, fresh=50)
    engine = engine_for(pg_url)
    insert(engine, scenario)
    policy_dir = write_policies(tmp_path / "p", POLICY)
    killer = TerminateRunBackend(pg_url, n=5)

    with pytest.raises(DatabaseError) as caught:
        purge(worker(pg_url, policy_dir, batch_size=10, should_stop=killer))

    remaining = _count(pg_url)
    assert caught.value.exit_code == 4
    assert killer.terminated is not None and killer.calls == 5
    # four batches of 10 went before the fifth found its session gone
    assert remaining == 650 - 40
    assert _sums(pg_url) == (40, 40)
    time.sleep(1)  # nothing keeps deleting in the background
    assert _count(pg_url) == remaining
    ((run_id, status, resumed),) = _runs(pg_url)
    assert status in ("failed", "running") and resumed == 0
    # the lock went with the session: nobody holds it now
    assert (
        _scalar(
            pg_url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        == 0
    )

    report = purge(worker(pg_url, policy_dir, batch_size=10))

    assert report.resumed and report.run_id == run_id
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept
    assert _runs(pg_url) == [(run_id, "succeeded", 1)]
    assert _sums(pg_url) == (600, 600)


def test_lock_timeout_backs_off_shrinks_the_batch_and_gives_up_bounded(
    pg_url: str, tmp_path: Path
) -> None:
    scenario, kept = _logs(expired=30, fresh=5)
    engine = engine_for(pg_url)
    insert(engine, scenario)
    policy_dir = write_policies(tmp_path / "p", POLICY)

    with _open_transaction(pg_url) as other:
        locked = other.execute(
            sa.text("SELECT id FROM events WHERE id = 'old-12' FOR UPDATE")
        ).all()
        assert locked == [("old-12",)]
        started = time.monotonic()
        report = purge(
            worker(pg_url, policy_dir, batch_size=1000, lock_timeout="1s", lock_retries=3)
        )
        elapsed = time.monotonic() - started
        # four attempts of about a second each, with pauses of 0.2, 0.4 and 0.8 s
        assert 4.0 <= elapsed < 15, elapsed
        assert report.status is RunStatus.PARTIAL
        (outcome,) = [o for o in report.outcomes if o.rows or o.lock_waits]
        assert outcome.lock_waits == 4
        assert outcome.note.startswith("gave up after 4 lock waits")
        # batches of 1000, 500, 250 and 125 all began at or before the locked row: none went
        assert _count(pg_url) == 35
        assert _sums(pg_url) == (0, 0)
        ((run_id, status, _),) = _runs(pg_url)
        assert status == "partial"

    report = purge(worker(pg_url, policy_dir, batch_size=1000, lock_timeout="1s"))
    assert report.resumed and report.run_id == run_id
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept
    assert _sums(pg_url) == (30, 30)
