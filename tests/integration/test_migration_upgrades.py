"""Migrations and upgrades of the worker's own tables on populated databases (a review in
the sixth session).

Databases are built at an older revision (alembic ``command.upgrade(cfg, rev)``), filled
with rows as that revision's code wrote them, then upgraded to head.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import migrate, state
from retention import status as status_module
from retention.db import make_engine, parse_database_url
from retention.engine import iter_receipts
from retention.models import RunStatus
from tests.conftest import at_revision, engine_for, prepare
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")


# --- building a database at an older revision ---------------------------------------------


def upgrade_to_head(url: str) -> None:
    engine = make_engine(parse_database_url(url), create=True)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def _ts(url: str, value: datetime) -> Any:
    if url.startswith("sqlite"):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _execute(url: str, sql: str, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), rows)
    finally:
        engine.dispose()


def _scalar(url: str, sql: str) -> Any:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()
    finally:
        engine.dispose()


def _event_ids(url: str) -> set[str]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.exec_driver_sql("SELECT id FROM events")}
    finally:
        engine.dispose()


def _logs_world(url: str) -> list[datetime]:
    """Twelve log rows of P1, 10..120 days old (a 30-day policy expires nine)."""
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=500))
    created = [NOW - timedelta(days=10 * (i + 1)) for i in range(12)]
    for i, c in enumerate(created):
        s.add_event("project_logs", P1, P1, c, f"l-{i}")
    insert(engine_for(url), s)
    return created


def _policies(tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies", policy_toml(projects=[(P1, {"project_logs": 30})]))


def insert_run_0001(
    url: str,
    *,
    run_id: int,
    status: str,
    started: datetime,
    pinned: datetime,
    finished: datetime | None = None,
    rows: int = 0,
    mode: str = "purge",
    error: str | None = None,
) -> None:
    _execute(
        url,
        "INSERT INTO retention_runs (id, mode, status, started_at, finished_at, heartbeat_at, "
        "pinned_now, plan_hash, plan, rows, segments, bytes, error, host, pid, resumed) "
        "VALUES (:id, :mode, :status, :started, :finished, :started, :pinned, 'h', '{}', "
        ":rows, 0, 0, :error, 'old-host', 4242, 0)",
        {
            "id": run_id,
            "mode": mode,
            "status": status,
            "started": _ts(url, started),
            "finished": _ts(url, finished) if finished else None,
            "pinned": _ts(url, pinned),
            "rows": rows,
            "error": error,
        },
    )


def insert_checkpoint_0001(
    url: str,
    *,
    run_id: int,
    phase: str,
    cutoff: datetime,
    last_created: datetime | None,
    last_sequence_id: int | None,
    rows: int,
    batches: int,
    updated: datetime,
) -> None:
    _execute(
        url,
        "INSERT INTO retention_checkpoints (run_id, target, project_id, object_type, phase, "
        "cutoff, last_created, last_sequence_id, last_object_id, rows, objects, batches, "
        "updated_at) VALUES (:run_id, :target, :project_id, 'project_logs', :phase, :cutoff, "
        ":last_created, :last_seq, NULL, :rows, 0, :batches, :updated)",
        {
            "run_id": run_id,
            "target": f"{P1}/project_logs",
            "project_id": str(P1),
            "phase": phase,
            "cutoff": _ts(url, cutoff),
            "last_created": _ts(url, last_created) if last_created else None,
            "last_seq": last_sequence_id,
            "rows": rows,
            "batches": batches,
            "updated": _ts(url, updated),
        },
    )


def insert_receipt_0001(
    url: str, *, run_id: int, cutoff: datetime, rows: int, recorded: datetime
) -> None:
    _execute(
        url,
        "INSERT INTO retention_receipts (run_id, project_id, object_type, policy_source, "
        "retention_days, cutoff, rows, objects, segments, bytes, first_key, last_key, "
        "keys_digest, recorded_at) VALUES (:run_id, :project_id, 'project_logs', "
        "'policy.toml', 30.0, :cutoff, :rows, 0, 0, 0, 'a', 'b', 'd', :recorded)",
        {
            "run_id": run_id,
            "project_id": str(P1),
            "cutoff": _ts(url, cutoff),
            "rows": rows,
            "recorded": _ts(url, recorded),
        },
    )


# --- populated upgrades ---------------------------------------------------------------------


def test_receipts_and_runs_written_at_0001_survive_the_upgrade(
    bare_url: str, tmp_path: Path
) -> None:
    """passes: a 0001 database with a succeeded run and its receipts upgrades to head: the
    receipts keep their values (cutoff and retention_days through SQLite's table copy), get
    action 'delete', and ``receipts``/``status`` read them."""
    at_revision(bare_url, "0001")
    _logs_world(bare_url)
    yesterday = NOW - timedelta(days=1)
    insert_run_0001(
        bare_url,
        run_id=1,
        status="succeeded",
        started=yesterday,
        pinned=yesterday,
        finished=yesterday + timedelta(minutes=1),
        rows=5,
    )
    insert_receipt_0001(
        bare_url, run_id=1, cutoff=yesterday - timedelta(days=30), rows=5, recorded=yesterday
    )
    upgrade_to_head(bare_url)
    w = worker(bare_url, _policies(tmp_path))
    found = list(iter_receipts(w))
    assert len(found) == 1
    assert found[0]["action"] == "delete"
    assert found[0]["retention_days"] == 30.0
    assert found[0]["cutoff"] == (yesterday - timedelta(days=30)).isoformat()
    assert found[0]["recorded_at"] == yesterday.isoformat()
    report = status_module.collect(w, max_age=timedelta(hours=36), backlog=False)
    assert report.last_success == yesterday + timedelta(minutes=1)
    assert report.problems == []


@pytest.mark.parametrize("left_as", ["running", "partial"])
def test_a_run_interrupted_at_0001_resumes_after_the_upgrade(
    bare_url: str, tmp_path: Path, left_as: str
) -> None:
    """passes: a run left running (killed) or partial by a 0001 worker, mid rows phase, is
    resumed after the upgrade with its pinned now and checkpoint; an older failed run is
    abandoned; counts include the earlier attempt; status is healthy after."""
    at_revision(bare_url, "0001")
    _logs_world(bare_url)
    started = NOW - timedelta(hours=1)
    insert_run_0001(
        bare_url,
        run_id=1,
        status="failed",
        started=NOW - timedelta(days=3),
        pinned=NOW - timedelta(days=3),
        finished=NOW - timedelta(days=3),
        error="boom",
    )
    insert_run_0001(bare_url, run_id=2, status=left_as, started=started, pinned=started)
    # the first batch deleted the three oldest rows (120, 110, 100 days; sequence 12..10)
    _execute(bare_url, "DELETE FROM events WHERE id IN ('l-11', 'l-10', 'l-9')", {})
    insert_checkpoint_0001(
        bare_url,
        run_id=2,
        phase="rows",
        cutoff=started - timedelta(days=30),
        last_created=NOW - timedelta(days=100),
        last_sequence_id=10,
        rows=3,
        batches=1,
        updated=started,
    )
    insert_receipt_0001(
        bare_url, run_id=2, cutoff=started - timedelta(days=30), rows=3, recorded=started
    )
    upgrade_to_head(bare_url)

    w = worker(bare_url, _policies(tmp_path), batch_size=2)
    done = purge(w)
    assert done.resumed and done.run_id == 2
    assert done.status == RunStatus.SUCCEEDED
    assert _event_ids(bare_url) == {"l-0", "l-1", "l-2"}
    engine = engine_for(bare_url)
    with engine.connect() as conn:
        runs = {r.id: r for r in state.recent_runs(conn)}
    engine.dispose()
    assert runs[1].status == RunStatus.ABANDONED.value
    assert (runs[2].status, runs[2].rows, runs[2].resumed) == ("succeeded", 9, 1)
    receipts = list(iter_receipts(w, run_id=2))
    assert sum(r["rows"] for r in receipts) == 9
    assert {r["action"] for r in receipts} == {"delete"}
    report = status_module.collect(w, max_age=timedelta(hours=36), backlog=False)
    assert report.problems == []


def test_a_block_sweep_left_running_at_0003_resumes_after_the_upgrade(
    empty_pg_url: str, tmp_path: Path
) -> None:
    """passes: a PostgreSQL run killed mid block sweep by a 0003 worker (its sweep JSON
    without the table identity, a unit owned by a dead worker, no leader_pid column yet)
    is resumed after the upgrade: the sweep is made afresh, the rows the earlier attempt
    deleted are counted once, and the run succeeds."""
    prepare(empty_pg_url, worker_tables=False)
    at_revision(empty_pg_url, "0003")
    url = empty_pg_url
    _logs_world(url)
    started = NOW - timedelta(hours=1)
    cutoff = started - timedelta(days=30)
    insert_run_0001(url, run_id=1, status="running", started=started, pinned=started)
    _execute(url, "DELETE FROM events WHERE id IN ('l-11', 'l-10', 'l-9')", {})
    insert_checkpoint_0001(
        url,
        run_id=1,
        phase="rows",
        cutoff=cutoff,
        last_created=None,
        last_sequence_id=None,
        rows=3,
        batches=1,
        updated=started,
    )
    target = {
        "key": f"{P1}/project_logs",
        "project_id": str(P1),
        "object_type": "project_logs",
        "cutoff": cutoff.isoformat(),
        "retention_days": 30.0,
        "policy_source": "p",
    }
    sweep = json.dumps({"targets": [target], "held": []})  # as 0003's SweepSet.to_json
    _execute(
        url,
        "INSERT INTO retention_work (run_id, signature, revision, sweep, updated_at) "
        "VALUES (1, 'sig', 0, :sweep, :t)",
        {"sweep": sweep, "t": started},
    )
    _execute(
        url,
        "INSERT INTO retention_work_units (run_id, unit, lo, hi, next_block, done, owner, "
        "owner_pid, heartbeat_at, rows, batches, claims) VALUES (1, 0, 0, 16384, 0, false, "
        "'old-host:1', 999999, :t, 3, 1, 1)",
        {"t": started},
    )
    upgrade_to_head(url)
    w = worker(url, _policies(tmp_path), delete_strategy="blocks")
    done = purge(w)
    assert (done.resumed, done.run_id, done.status) == (True, 1, RunStatus.SUCCEEDED)
    assert _event_ids(url) == {"l-0", "l-1", "l-2"}
    assert _scalar(url, "SELECT rows FROM retention_runs WHERE id = 1") == 9
