"""SQLite: a row in another spelling written while a purge runs, NULL timestamps, and
the lock timeout as the busy timeout."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention.errors import DatabaseError, SchemaError
from retention.models import RunReport, RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, registry, surviving_rows

PROJECT = UUID("12121212-1212-4212-8212-121212121212")
EXPERIMENT = UUID("34343434-3434-4434-8434-343434343434")


def _logs_scenario() -> Scenario:
    scenario = Scenario()
    scenario.add_object("project_logs", PROJECT, PROJECT, NOW - timedelta(days=400))
    for day in (10, 40, 50):
        scenario.add_event("project_logs", PROJECT, PROJECT, NOW - timedelta(days=day), f"d{day}")
    return scenario


def _path(url: str) -> str:
    return url.removeprefix("sqlite:///")


@pytest.mark.parametrize(
    "created",
    [
        "2026-10-02 03:00:00",  # CURRENT_TIMESTAMP spelling, exactly at the cutoff: stays
        "2026-10-01T23:00:00-05:00",  # 04:00 UTC, an hour after the cutoff: stays
    ],
)
def test_row_in_another_spelling_written_during_the_purge_is_kept(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, created: str
) -> None:
    """The spelling check runs once, before planning; the application writes on meanwhile.
    A row it writes in another spelling after the check is compared as text by the DELETE:
    the cutoff is 2026-10-02 03:00:00 UTC, and both rows here are not older than that."""
    engine = engine_for(sqlite_url)
    insert(engine, _logs_scenario())
    real_open_run = engine_module.open_run

    def application_writes_meanwhile(*args: Any, **kwargs: Any) -> Any:
        raw = sqlite3.connect(_path(sqlite_url))
        with raw:
            raw.execute(
                "INSERT INTO events (object_type, object_id, project_id, id, _xact_id, created) "
                "VALUES ('project_logs', ?, ?, 'odd', 9, ?)",
                (str(PROJECT), str(PROJECT), created),
            )
        raw.close()
        return real_open_run(*args, **kwargs)

    monkeypatch.setattr(engine_module, "open_run", application_writes_meanwhile)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    with contextlib.suppress(SchemaError):  # refusing the odd spelling (exit 2) is fine too
        purge(worker(sqlite_url, policies))
    assert {"odd", "d10"} <= surviving_rows(engine)


def test_expired_experiment_with_a_null_created_row(sqlite_url: str, tmp_path: Path) -> None:
    """An application table without NOT NULL on ``created``. The experiment expires by its
    registry entry's ``created`` (DESIGN §1): all of it goes. Refusing the NULL up front
    (exit 2, nothing deleted) would be acceptable too; a crash (exit 1) is not."""
    engine = engine_for(sqlite_url)
    raw = sqlite3.connect(_path(sqlite_url))
    with raw:
        raw.execute("DROP TABLE events")
        raw.execute(
            "CREATE TABLE events (sequence_id INTEGER PRIMARY KEY, object_type text NOT NULL, "
            "object_id text NOT NULL, project_id text NOT NULL, id text NOT NULL, "
            "_xact_id bigint NOT NULL, created text, data text)"
        )
    raw.close()
    scenario = Scenario()
    scenario.add_object("project_logs", PROJECT, PROJECT, NOW - timedelta(days=400))
    scenario.add_object("experiment", EXPERIMENT, PROJECT, NOW - timedelta(days=400))
    scenario.add_event("experiment", EXPERIMENT, PROJECT, NOW - timedelta(days=300), "e1")
    scenario.add_event("experiment", EXPERIMENT, PROJECT, NOW - timedelta(days=300), "e2")
    insert(engine, scenario)
    raw = sqlite3.connect(_path(sqlite_url))
    with raw:
        raw.execute("UPDATE events SET created = NULL WHERE id = 'e2'")
    raw.close()
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))
    try:
        report = purge(worker(sqlite_url, policies))
    except SchemaError:
        assert surviving_rows(engine) == {"e1", "e2"}
        return
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == set()
    assert registry(engine) == {("project_logs", str(PROJECT))}


def test_lock_timeout_bounds_the_wait_for_a_busy_sqlite_file(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The application holds the write lock (a long transaction). With
    RETENTION_LOCK_TIMEOUT=1s the run must not wait 30 s (the hard-coded busy timeout) for
    it: it gives up within about a second (exit 4, or exit 5 with the target unfinished)."""
    engine = engine_for(sqlite_url)
    insert(engine, _logs_scenario())
    application = sqlite3.connect(_path(sqlite_url), isolation_level=None, check_same_thread=False)
    application.execute("BEGIN IMMEDIATE")
    release = threading.Timer(8, application.rollback)
    release.start()
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    started = time.monotonic()
    try:
        outcome: object
        try:
            outcome = purge(worker(sqlite_url, policies, lock_timeout="1s", lock_retries=0))
        except DatabaseError as error:
            outcome = error
        waited = time.monotonic() - started
    finally:
        release.join()
        application.close()
    assert waited < 5
    if isinstance(outcome, DatabaseError):
        assert outcome.exit_code == 4
    else:
        assert isinstance(outcome, RunReport) and outcome.status is RunStatus.PARTIAL
