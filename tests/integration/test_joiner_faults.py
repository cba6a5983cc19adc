"""The shared block sweep under faults and races: a joiner whose run stopped, a joiner on
another table, a joiner's batch in flight when the leader stops (each was a bug)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from retention import blocksweep, workqueue
from retention import join as join_module
from retention.errors import UsageError
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker
from tests.integration.test_purge import _setup
from tests.integration.test_sweep_leader import _lead
from tests.support import surviving_rows

SMALL = {"sweep_blocks": 2, "sweep_unit_blocks": 8}
WAIT = 30.0


def _in_thread(name: str, call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except BaseException as error:  # handed to the test
            out["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, out


def _is(name: str) -> bool:
    return threading.current_thread().name == name


def test_a_joiner_whose_run_stopped_with_units_left_does_not_report_success(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader stops (time budget, signal) while a joiner works: the run is partial and
    units are left. The joiner's next batch finds the run stopped and leaves, but reports
    "succeeded" (exit 0), as if its part of the sweep were done."""
    _, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=41)
    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(2), **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    run_id = first.run_id
    assert run_id is not None
    batches = 0
    original = workqueue.count_rows

    def count_rows(conn: sa.Connection, unit: Any, rows: int) -> None:
        nonlocal batches
        original(conn, unit, rows)
        batches += 1
        if batches == 1:  # the leader stops the run after the joiner's first batch
            with engine_for(pg_url).begin() as other:
                other.execute(
                    sa.text("UPDATE retention_runs SET status = 'partial' WHERE id = :r"),
                    {"r": run_id},
                )

    monkeypatch.setattr(workqueue, "count_rows", count_rows)
    with engine_for(pg_url).connect() as leader:
        _lead(leader, run_id)
        joined = join_module.join(
            worker(pg_url, policy_dir, delete_strategy="blocks", join_wait="5s", **SMALL)
        )
    assert joined.run_id == run_id and batches == 1
    with engine.connect() as conn:
        left = conn.exec_driver_sql(
            "SELECT count(*) FROM retention_work_units WHERE NOT done"
        ).scalar_one()
    assert left > 0  # the sweep is not done
    assert not joined.complete, "the joiner reports success for a run that stopped"
    assert joined.as_dict()["status"] == "partial"


def _leader_waits_for_units(url: str) -> bool:
    """A session waits for a lock on the work units (the leader standing its sweep down)."""
    with sa.create_engine(url, poolclass=sa.NullPool).connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'UPDATE retention_work_units SET owner%%'"
            ).scalar_one()
        )


def test_a_joiner_batch_in_flight_when_the_leader_stops_is_in_the_runs_totals(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader stops (time budget, signal) while a joiner's batch is in flight: the
    joiner's ``advance`` checked ``status = 'running'`` without locking the run, so the
    leader read its counts and finished the run (partial) while that batch was open; the
    batch then deleted and committed, and the run's recorded totals and the leader's report
    missed rows that are gone and receipted. Now the leader stands the sweep down first,
    which waits for the batches in flight (the joiner's deletes only once it waits)."""
    _, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=42)
    joiner_claimed = threading.Event()
    joiner_in_batch = threading.Event()
    late: list[int] = []
    original_claim = workqueue.claim
    original_delete = blocksweep.delete_blocks

    def claim(conn: sa.Connection, run_id: int, me: str, stale: timedelta) -> Any:
        if not _is("joiner"):  # the leader starts once the joiner has a unit
            assert joiner_claimed.wait(WAIT)
        unit = original_claim(conn, run_id, me, stale)
        if _is("joiner") and unit is not None:
            joiner_claimed.set()
        return unit

    def delete_blocks(conn: sa.Connection, tables: Any, sweep: Any, lo: int, hi: int) -> Any:
        if _is("joiner") and not joiner_in_batch.is_set():
            joiner_in_batch.set()  # the leader stops now; this batch goes on afterwards
            deadline = time.monotonic() + WAIT  # until the leader counts (or waits to)
            while not _leader_waits_for_units(pg_url) and time.monotonic() < deadline:
                time.sleep(0.02)
            batch = original_delete(conn, tables, sweep, lo, hi)
            late.append(batch.rows)
            return batch
        return original_delete(conn, tables, sweep, lo, hi)

    monkeypatch.setattr(workqueue, "claim", claim)
    monkeypatch.setattr(blocksweep, "delete_blocks", delete_blocks)
    before = len(surviving_rows(engine))
    thread, out = _in_thread(
        "joiner",
        lambda: join_module.join(
            worker(pg_url, policy_dir, delete_strategy="blocks", join_wait="30s", **SMALL)
        ),
    )
    report = purge(
        worker(
            pg_url,
            policy_dir,
            delete_strategy="blocks",
            should_stop=joiner_in_batch.is_set,
            **SMALL,
        )
    )
    thread.join(WAIT)
    assert not thread.is_alive() and "error" not in out, out
    assert report.status is RunStatus.PARTIAL
    assert late and late[0] > 0  # the joiner's batch deleted rows after the leader stopped

    gone = before - len(surviving_rows(engine))
    with engine.connect() as conn:
        receipted = conn.exec_driver_sql(
            "SELECT coalesce(sum(rows), 0) FROM retention_receipts"
        ).scalar_one()
        recorded = conn.exec_driver_sql(
            "SELECT rows FROM retention_runs WHERE id = %(r)s", {"r": report.run_id}
        ).scalar_one()
    assert receipted == gone
    assert sum(o.rows for o in report.outcomes) == gone, "the report misses the joiner's batch"
    assert recorded == gone, "the run's totals miss the joiner's batch"


def test_a_joiner_configured_with_another_events_table_does_not_sweep_it(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``retention join`` takes targets, cutoffs and held objects from the leader, but the
    tables from its own settings (RETENTION_TABLE_EVENTS, RETENTION_TABLE_COLUMNS). A
    joiner configured with another table (a copy kept as an archive, a forgotten env var)
    deletes that table's rows by the leader's cutoffs, marks the units done and counts its
    rows into the run's checkpoints: the run says SUCCEEDED with every expired row of the
    real table left, and a table no policy names lost its rows."""
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=43)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE events_archive (LIKE events INCLUDING ALL)")
        conn.exec_driver_sql(
            "INSERT INTO events_archive OVERRIDING SYSTEM VALUE SELECT * FROM events ORDER BY ctid"
        )
    joiner_done = threading.Event()
    original_claim = workqueue.claim

    def claim(conn: sa.Connection, run_id: int, me: str, stale: timedelta) -> Any:
        if not _is("joiner"):  # the leader is slow to start; the joiner is quick
            assert joiner_done.wait(WAIT)
        return original_claim(conn, run_id, me, stale)

    monkeypatch.setattr(workqueue, "claim", claim)

    def run_joiner() -> Any:
        try:
            return join_module.join(
                worker(
                    pg_url,
                    policy_dir,
                    delete_strategy="blocks",
                    join_wait="30s",
                    table_events="events_archive",
                    **SMALL,
                )
            )
        finally:
            joiner_done.set()

    thread, out = _in_thread("joiner", run_joiner)
    report = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))
    thread.join(WAIT)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), UsageError), out  # refused: exit 2
    assert "events table" in str(out["error"])

    with engine.connect() as conn:
        archived = conn.exec_driver_sql("SELECT count(*) FROM events_archive").scalar_one()
        receipted = conn.exec_driver_sql(
            "SELECT coalesce(sum(rows), 0) FROM retention_receipts"
        ).scalar_one()
    total = len(scenario.events)
    assert archived == total, f"the joiner deleted {total - archived} rows of events_archive"
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert receipted == len(scenario.events) - len(expect.survivors(scenario))
