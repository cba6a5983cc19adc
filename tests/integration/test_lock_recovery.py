"""After a lock wait, keyset batches grow back to their size (PostgreSQL).

A batch that hits ``lock_timeout`` is retried at half the size. Once the lock has passed,
every ``GROW_AFTER`` batches in a row without a timeout double the size again, up to the
configured one, so one passing lock does not slow the rest of a large target for good.
Another session holds a row lock in an open transaction; ``pg_stat_activity`` tells when
the purge waits on it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import sqlalchemy as sa

from retention.deleter import GROW_AFTER
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, surviving_rows

P = UUID("b2000000-0000-4000-8000-000000000002")
BATCH = 8
EXPIRED = 90
WAIT = 30.0  # seconds: a deadline for things that take milliseconds


def _scenario() -> tuple[Scenario, set[str]]:
    """Row ``old-i`` is the i-th in keyset order; returns the kept ids."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(EXPIRED):
        s.add_event(
            "project_logs", P, P, NOW - timedelta(days=100) + timedelta(minutes=i), f"old-{i}"
        )
    kept = {
        s.add_event("project_logs", P, P, NOW - timedelta(days=10, minutes=i), f"new-{i}")
        for i in range(5)
    }
    return s, kept


def _waiting(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND replace(query, '\"', '') LIKE 'DELETE FROM events%%'"
        ).scalar_one()
    return bool(found)


def _batch_rows(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [
            int(r[0])
            for r in conn.exec_driver_sql("SELECT rows FROM retention_receipts ORDER BY id")
        ]


def _expected(waits: int) -> list[int]:
    """Batch sizes after ``waits`` timeouts at the first batch: halved once per timeout,
    then doubled after every GROW_AFTER batches, up to BATCH; the last one what is left."""
    sizes, size, left, calm = [], max(1, BATCH >> waits), EXPIRED, 0
    while left > 0:
        sizes.append(min(size, left))
        left -= sizes[-1]
        calm += 1
        if size < BATCH and calm >= GROW_AFTER:
            size, calm = min(BATCH, size * 2), 0
    return sizes


def test_batches_grow_back_after_the_lock_has_passed(pg_url: str, tmp_path: Path) -> None:
    scenario, kept = _scenario()
    engine = engine_for(pg_url)
    insert(engine, scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    w = worker(
        pg_url,
        policies,
        batch_size=BATCH,
        delete_strategy="keyset",
        lock_timeout="0.3s",
        lock_retries=10,
    )
    other = engine.connect()
    try:
        holder = other.begin()
        other.exec_driver_sql("SELECT id FROM events WHERE id = 'old-0' FOR UPDATE").all()
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(purge, w)
            deadline = time.monotonic() + WAIT
            while not _waiting(engine):
                assert time.monotonic() < deadline and not running.done(), "no lock wait"
                time.sleep(0.01)
            time.sleep(0.5)  # past the first lock_timeout: the batch has been halved
            holder.rollback()
            report = running.result(timeout=WAIT)
    finally:
        other.close()

    assert report.status is RunStatus.SUCCEEDED
    (outcome,) = [o for o in report.outcomes if o.rows]
    assert outcome.lock_waits >= 1
    assert _batch_rows(engine) == _expected(outcome.lock_waits)
    assert _batch_rows(engine)[-2] == BATCH  # back to full size before the end
    assert surviving_rows(engine) == kept
