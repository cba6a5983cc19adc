"""Whole-partition drop/detach under races and odd bounds (``retention/partitions.py``,
``bulk.drop_partitions``).

The contract: a partition of ``events`` goes whole only when every row in it has expired for
its target; a partition holding any row that a policy, a hold or the absence of a policy
keeps is never dropped. And the worker drops (or detaches) partitions of ``events`` and
nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import partitions
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, partition_events, policy_toml, surviving_rows

MONTHS = 8  # events_2026_04 .. events_2026_11, plus events_default
P = UUID("11111111-1111-4111-8111-111111111111")
Q = UUID("22222222-2222-4222-8222-222222222222")
DATASET = UUID("33333333-3333-4333-8333-333333333333")
EXPERIMENT = UUID("44444444-4444-4444-8444-444444444444")
LOGS_45 = {"project_logs": 45}  # cutoff 2026-09-17 03:00: events_2026_04 .. _08 are candidates


def at(month: int, day: int = 15, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    built = engine_for(pg_url)
    partition_events(built, MONTHS)
    yield built
    built.dispose()


def leaf_partitions(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT relid::regclass::text FROM pg_partition_tree('events') WHERE isleaf"
            )
        }


def table_exists(engine: sa.Engine, name: str) -> bool:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT to_regclass(%s)", (name,)).scalar() is not None


def rows_of(engine: sa.Engine, name: str) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql(f"SELECT id FROM {name}")}


def logs_scenario() -> Scenario:
    """Project P: one logs row in the middle of every month from April to October."""
    scenario = Scenario()
    scenario.add_object("project_logs", P, P, at(1))
    for month in range(4, 11):
        scenario.add_event("project_logs", P, P, at(month), f"logs-{month:02d}")
    scenario.add_event("project_logs", P, P, at(10, 30), "logs-10b")
    return scenario


def before_lock(
    monkeypatch: pytest.MonkeyPatch, name: str, action: Any, *, after: bool = False
) -> list[str]:
    """Run ``action()`` right before (or after) the worker locks partition ``name``; the
    worker itself is unchanged. Returns the partitions locked, in order."""
    real = partitions.lock_writes
    locked: list[str] = []

    def wrapper(conn: sa.Connection, part: partitions.Partition) -> None:
        locked.append(part.name)
        if part.name == name and not after:
            action()
        real(conn, part)
        if part.name == name and after:
            action()

    monkeypatch.setattr(partitions, "lock_writes", wrapper)
    return locked


# --- bugs -----------------------------------------------------------------------------------


def _archive_during_run(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another session detaches events_2026_06 (to keep it as an archive table) after the
    worker listed the partitions and right before it locks that one."""

    def archive() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE events DETACH PARTITION events_2026_06")

    before_lock(monkeypatch, "events_2026_06", archive)


def test_a_partition_detached_by_someone_else_during_the_run_is_not_dropped(
    engine: sa.Engine, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker lists the partitions of events once, then drops them one by one; under its
    lock it checks that each is still that partition of events (it once checked only the
    rows). A partition that an operator (or pg_partman's retention with
    retention_keep_table) detached from events meanwhile, to keep it as an archive table,
    must not be dropped: it is no longer part of events, so it is not the worker's to
    delete. The run goes on with the other partitions and succeeds; the archive table keeps
    its row; nothing is receipted for it."""
    insert(engine, logs_scenario())
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, LOGS_45)]))
    _archive_during_run(engine, monkeypatch)

    report = purge(worker(pg_url, policies, partition_action="drop"))

    assert report.status is RunStatus.SUCCEEDED
    assert table_exists(engine, "events_2026_06"), "the archived table was dropped"
    assert rows_of(engine, "events_2026_06") == {"logs-06"}
    assert surviving_rows(engine) == {"logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert left == {"events_2026_09", "events_2026_10", "events_2026_11", "events_default"}
    with engine.connect() as conn:
        named = conn.exec_driver_sql(
            "SELECT count(*) FROM retention_receipts WHERE first_key LIKE '%%events_2026_06%%'"
        ).scalar()
    assert named == 0


def test_detach_mode_survives_a_partition_detached_by_someone_else(
    engine: sa.Engine, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race with RETENTION_PARTITION_ACTION=detach: the worker skips the table that
    is no longer a partition and finishes. (Its ``DETACH PARTITION`` once failed with "is
    not a partition of relation events" and stopped the whole purge with exit 4.)"""
    insert(engine, logs_scenario())
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, LOGS_45)]))
    _archive_during_run(engine, monkeypatch)

    report = purge(worker(pg_url, policies, partition_action="detach"))

    assert report.status is RunStatus.SUCCEEDED
    assert rows_of(engine, "events_2026_06") == {"logs-06"}
    assert surviving_rows(engine) == {"logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert left == {"events_2026_09", "events_2026_10", "events_2026_11", "events_default"}


def test_a_writer_inserting_into_the_partition_under_check_is_not_aborted(
    engine: sa.Engine, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late row that no policy expires (project Q has none), inserted through events into
    a candidate partition while the worker checks it: the worker holds SHARE on the
    partition (the writer waits, holding ROW EXCLUSIVE on events), then asks for ACCESS
    EXCLUSIVE on events to drop it. That lock order can deadlock, and PostgreSQL once
    aborted the writer (which had waited longer) and dropped the partition. The worker gives
    way instead (it sees the writer queued, and waits for the parent less than half of
    deadlock_timeout): the writer's row is committed and survives, and the partition that
    holds it stays."""
    insert(engine, logs_scenario())
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, LOGS_45)]))
    real = partitions.contents
    outcome: list[str] = []
    threads: list[threading.Thread] = []

    def write() -> None:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO events (object_type, object_id, project_id, id, _xact_id, "
                    "created) VALUES ('project_logs', %s, %s, 'late-no-policy', 1, %s)",
                    (str(Q), str(Q), at(5, 2)),
                )
            outcome.append("committed")
        except sa.exc.DBAPIError as error:
            outcome.append(type(error.orig).__name__)

    def checking(conn: Any, tables: Any, part: partitions.Partition, sweep: Any) -> Any:
        found = real(conn, tables, part, sweep)
        if part.name == "events_2026_05":  # the writer arrives while the check runs
            thread = threading.Thread(target=write)
            thread.start()
            threads.append(thread)
            time.sleep(0.3)
        return found

    monkeypatch.setattr(partitions, "contents", checking)
    try:
        report = purge(worker(pg_url, policies, lock_timeout="30s"))
    finally:
        for thread in threads:
            thread.join()

    assert outcome == ["committed"]
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"late-no-policy", "logs-10", "logs-10b"}


def test_a_partition_bounded_by_infinity_does_not_stop_the_run(
    engine: sa.Engine, pg_url: str, tmp_path: Path
) -> None:
    """A partition ``FOR VALUES FROM ('2026-12-01') TO ('infinity')`` (a common catch-all
    instead of DEFAULT) is not a candidate (no finite bound), and the run finishes by the
    policy. (Its bound once went to psycopg as a datetime it cannot load, and every purge
    failed with exit 4 before deleting anything.)"""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE events_default")
        conn.exec_driver_sql(
            "CREATE TABLE events_future PARTITION OF events "
            "FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('infinity')"
        )
    insert(engine, logs_scenario())
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, LOGS_45)]))

    report = purge(worker(pg_url, policies))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"logs-10", "logs-10b"}
    assert leaf_partitions(engine) == {
        "events_2026_09",
        "events_2026_10",
        "events_2026_11",
        "events_future",
    }


# --- regression tests (not covered elsewhere) -----------------------------------


def test_a_writer_holding_a_kept_row_in_the_partition_keeps_it(
    engine: sa.Engine, pg_url: str, tmp_path: Path
) -> None:
    """A writer that has inserted (not yet committed) a row that no policy expires into the
    first candidate partition: the worker's write lock waits for it, and the row check that
    follows sees the row, so the partition stays and the row with it. The other expired
    partitions go."""
    insert(engine, logs_scenario())
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, LOGS_45)]))
    writer = engine.connect()
    tx = writer.begin()
    writer.exec_driver_sql(
        "INSERT INTO events (object_type, object_id, project_id, id, _xact_id, created) "
        "VALUES ('project_logs', %s, %s, 'late-no-policy', 1, %s)",
        (str(Q), str(Q), at(4, 2)),
    )

    def commit_later() -> None:
        time.sleep(1.5)
        tx.commit()
        writer.close()

    thread = threading.Thread(target=commit_later)
    thread.start()
    try:
        report = purge(worker(pg_url, policies, lock_timeout="30s"))
    finally:
        thread.join()

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"late-no-policy", "logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert "events_2026_04" in left
    assert not {"events_2026_05", "events_2026_06", "events_2026_07", "events_2026_08"} & left


def test_a_hold_added_during_the_run_keeps_a_later_partition(
    engine: sa.Engine, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holds are read again before every partition: a hold on a dataset written while the
    first partition is being dropped keeps the later partition that holds the dataset's
    old row (and the row); the dataset's rows outside the candidates are kept too."""
    scenario = logs_scenario()
    scenario.add_object("dataset", DATASET, P, at(1))
    scenario.add_event("dataset", DATASET, P, at(7, 3), "held-dataset-07")
    scenario.add_event("dataset", DATASET, P, at(9, 3), "held-dataset-09")
    insert(engine, scenario)
    days = {"project_logs": 45, "dataset": 45}
    folder = write_policies(tmp_path / "p", policy_toml(projects=[(P, days)]))
    hold = {"project": str(P), "object_id": str(DATASET), "reason": "litigation"}

    def add_hold() -> None:
        write_policies(folder, policy_toml(holds=[hold]), name="hold.toml")

    locked = before_lock(monkeypatch, "events_2026_04", add_hold, after=True)

    report = purge(worker(pg_url, folder))

    assert locked[0] == "events_2026_04"
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"held-dataset-07", "held-dataset-09", "logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert "events_2026_07" in left
    assert not {"events_2026_04", "events_2026_05", "events_2026_06", "events_2026_08"} & left


def test_an_experiment_created_recently_with_old_rows_keeps_its_partition(
    engine: sa.Engine, pg_url: str, tmp_path: Path
) -> None:
    """Experiments expire by their registry entry, not by their rows' created: rows imported
    with old timestamps into an experiment registered 10 days ago are kept, and so is the
    partition they are in (the logs row beside them goes by the row path)."""
    scenario = logs_scenario()
    scenario.add_object("experiment", EXPERIMENT, P, NOW - timedelta(days=10))
    scenario.add_event("experiment", EXPERIMENT, P, at(5, 2), "imported-05")
    scenario.add_event("experiment", EXPERIMENT, P, at(5, 3), "imported-05b")
    insert(engine, scenario)
    days = {"project_logs": 45, "experiment": 45}
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, days)]))

    report = purge(worker(pg_url, policies))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"imported-05", "imported-05b", "logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert "events_2026_05" in left
    assert not {"events_2026_04", "events_2026_06", "events_2026_07", "events_2026_08"} & left


def test_a_row_exactly_at_its_cutoff_keeps_a_candidate_partition(
    engine: sa.Engine, pg_url: str, tmp_path: Path
) -> None:
    """Project Q keeps logs 109 days (cutoff 2026-07-15 03:00) and has a row exactly at its
    cutoff in events_2026_07, a candidate because P's cutoff (45 days) is later: the row
    stays (equal does not expire) and so does the partition; Q's row a microsecond older
    goes by the row path."""
    scenario = logs_scenario()
    scenario.add_object("project_logs", Q, Q, at(1))
    cutoff = NOW - timedelta(days=109)
    assert cutoff == datetime(2026, 7, 15, 3, tzinfo=UTC)
    scenario.add_event("project_logs", Q, Q, cutoff, "q-at-cutoff")
    scenario.add_event("project_logs", Q, Q, cutoff - timedelta(microseconds=1), "q-before")
    insert(engine, scenario)
    text = policy_toml(projects=[(P, LOGS_45), (Q, {"project_logs": 109})])
    policies = write_policies(tmp_path / "p", text)

    report = purge(worker(pg_url, policies))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"q-at-cutoff", "logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert "events_2026_07" in left
    assert not {"events_2026_04", "events_2026_05", "events_2026_06", "events_2026_08"} & left


def test_rows_of_other_object_types_keep_their_partition(
    engine: sa.Engine, pg_url: str, tmp_path: Path
) -> None:
    """A row of an object type no policy speaks of (``prompt_session``) in a project whose
    every policied type has expired keeps its partition."""
    scenario = logs_scenario()
    scenario.add_event("prompt_session", Q, P, at(6, 2), "prompt-06")
    insert(engine, scenario)
    defaults = {"project_logs": 45, "dataset": 45, "experiment": 45}
    policies = write_policies(tmp_path / "p", policy_toml(defaults=defaults))

    report = purge(worker(pg_url, policies))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"prompt-06", "logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert "events_2026_06" in left
    assert not {"events_2026_04", "events_2026_05", "events_2026_07", "events_2026_08"} & left


def test_sub_partitions_are_never_dropped_and_keep_their_kept_rows(
    engine: sa.Engine, pg_url: str, tmp_path: Path
) -> None:
    """events_2026_05 sub-partitioned by halves of the month: its leaves are at level 2,
    are not candidates and are never dropped; the expired logs rows in them go by the row
    path and the dataset row that no policy expires stays."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE events_2026_05")
        conn.exec_driver_sql(
            "CREATE TABLE events_2026_05 PARTITION OF events FOR VALUES FROM "
            "('2026-05-01 00:00:00+00') TO ('2026-06-01 00:00:00+00') "
            "PARTITION BY RANGE (created)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE events_2026_05a PARTITION OF events_2026_05 FOR VALUES FROM "
            "('2026-05-01 00:00:00+00') TO ('2026-05-16 00:00:00+00')"
        )
        conn.exec_driver_sql(
            "CREATE TABLE events_2026_05b PARTITION OF events_2026_05 FOR VALUES FROM "
            "('2026-05-16 00:00:00+00') TO ('2026-06-01 00:00:00+00')"
        )
    scenario = logs_scenario()
    scenario.add_event("project_logs", P, P, at(5, 20), "logs-05b")
    scenario.add_object("dataset", DATASET, P, at(1))
    scenario.add_event("dataset", DATASET, P, at(5, 2), "dataset-05")
    insert(engine, scenario)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, LOGS_45)]))

    report = purge(worker(pg_url, policies))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {"dataset-05", "logs-10", "logs-10b"}
    left = leaf_partitions(engine)
    assert {"events_2026_05a", "events_2026_05b"} <= left
    assert rows_of(engine, "events_2026_05a") == {"dataset-05"}
    assert not {"events_2026_04", "events_2026_06", "events_2026_07", "events_2026_08"} & left
