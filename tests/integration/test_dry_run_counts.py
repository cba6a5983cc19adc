"""The dry run counts each target's kept rows only as far as the fraction guard needs
(PostgreSQL's many-target count): the total is exact when small, a lower bound otherwise,
and the guard decides the same either way."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from retention import dataplane, report
from retention import engine as engine_module
from retention.db import make_engine, parse_database_url, same_snapshot, snapshot
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, surviving_rows

MANY = UUID("a0000000-0000-4000-8000-0000000000aa")  # 4 expired, 20 kept
FEW = UUID("b0000000-0000-4000-8000-0000000000bb")  # 4 expired, 3 kept: over half
NONE = UUID("c0000000-0000-4000-8000-0000000000cc")  # nothing expired, 5 kept


def _data(url: str) -> None:
    s = Scenario()
    for project, expired, kept in ((MANY, 4, 20), (FEW, 4, 3), (NONE, 0, 5)):
        s.add_object("project_logs", project, project, NOW - timedelta(days=400))
        for n, days, tag in ((expired, 50, "old"), (kept, 1, "new")):
            for i in range(n):
                s.add_event(
                    "project_logs",
                    project,
                    project,
                    NOW - timedelta(days=days),
                    f"{project.hex[:2]}-{tag}-{i}",
                )
    insert(engine_for(url), s)


def _targets(url: str, tmp_path: Path, **settings: object) -> dict[str, dict[str, object]]:
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    done = engine_module.plan(worker(url, policies, **settings))
    doc = json.loads(report.render(done, "json"))
    return {t["project_id"]: t for t in doc["targets"]}


def test_totals_stop_where_the_guard_is_decided(pg_url: str, tmp_path: Path) -> None:
    _data(pg_url)
    found = _targets(pg_url, tmp_path)  # max fraction 0.5: count kept rows up to 4 + 2
    many, few, none = found[str(MANY)], found[str(FEW)], found[str(NONE)]
    assert (many["rows"], many["total_rows"], many["total_rows_exact"]) == (4, 10, False)
    assert (few["rows"], few["total_rows"], few["total_rows_exact"]) == (4, 7, True)
    assert (none["rows"], none["total_rows"], none["total_rows_exact"]) == (0, 1, False)
    # the oldest row: from the expired range, or the first kept row when none expired
    assert datetime.fromisoformat(str(many["oldest_row"])) == NOW - timedelta(days=50)
    assert datetime.fromisoformat(str(none["oldest_row"])) == NOW - timedelta(days=1)
    # a smaller fraction needs more of the count: 4 * 0.9 / 0.1 + 2 = 38 > 20, exact again
    exact = _targets(pg_url, tmp_path, max_delete_fraction=0.1)[str(MANY)]
    assert (exact["total_rows"], exact["total_rows_exact"]) == (24, True)


def test_the_table_marks_a_lower_bound(pg_url: str, tmp_path: Path) -> None:
    _data(pg_url)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    text = report.render(engine_module.plan(worker(pg_url, policies)), "table")
    line = next(row for row in text.splitlines() if str(MANY) in row)
    assert "≥10" in line.split()
    line = next(row for row in text.splitlines() if str(FEW) in row)
    assert "7" in line.split() and "≥7" not in line


def test_the_guard_refuses_exactly_the_target_over_the_fraction(
    pg_url: str, tmp_path: Path
) -> None:
    _data(pg_url)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    empty = write_policies(tmp_path / "none", "")
    assert purge(worker(pg_url, empty)).status is RunStatus.SUCCEEDED  # not the first run
    done = purge(worker(pg_url, policies), allow_large_deletes=False)
    assert done.status is RunStatus.GUARDED
    guards = {o.target.project_id: o.guard for o in done.outcomes}
    assert "would delete 4 of 7 rows (57.1%)" in guards[FEW]
    assert guards[MANY] == "" and guards[NONE] == ""
    left = surviving_rows(engine_for(pg_url))
    assert len(left) == 20 + (4 + 3) + 5
    assert not any(i.startswith("a0-old-") for i in left)


def test_a_helper_session_reads_in_the_same_snapshot(pg_url: str) -> None:
    """``same_snapshot``: what another session commits after the export is not seen by the
    helper, as it is not by the exporting session; the helper cannot write."""
    _data(pg_url)
    engine = make_engine(parse_database_url(pg_url), read_only=True)
    count = "SELECT count(*) FROM events"
    try:
        with engine.connect() as conn, snapshot(conn):
            before = conn.exec_driver_sql(count).scalar_one()
            with same_snapshot(conn) as helper:
                s = Scenario()
                s.add_event("project_logs", MANY, MANY, NOW, "late")
                insert(engine_for(pg_url), s)  # committed by another session
                assert helper.exec_driver_sql(count).scalar_one() == before
                assert conn.exec_driver_sql(count).scalar_one() == before
                with pytest.raises(sa.exc.DBAPIError, match="read-only"):
                    helper.exec_driver_sql("DELETE FROM events")
        with engine.connect() as fresh:
            assert fresh.exec_driver_sql(count).scalar_one() == before + 1
    finally:
        engine.dispose()


def test_a_plan_counted_on_two_sessions_is_the_same(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _data(pg_url)
    one = _targets(pg_url, tmp_path, plan_connections=1)
    monkeypatch.setattr(engine_module, "PARALLEL_COUNT_MIN_ROWS", 0)  # tables this small too
    calls: list[int] = []
    original = dataplane._count_row_targets

    def counting(conn: sa.Connection, *args: Any, **kwargs: Any) -> Any:
        calls.append(id(conn))
        return original(conn, *args, **kwargs)

    monkeypatch.setattr(dataplane, "_count_row_targets", counting)
    two = _targets(pg_url, tmp_path, plan_connections=2)
    assert len(set(calls)) == 2  # two sessions counted
    assert two == one


def test_without_a_second_session_the_plan_counts_on_one(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A role at its connection limit (a real refusal: ``CONNECTION LIMIT 1``): the plan's
    second session cannot connect, and the plan goes on with one."""
    _data(pg_url)
    one = _targets(pg_url, tmp_path, plan_connections=1)
    monkeypatch.setattr(engine_module, "PARALLEL_COUNT_MIN_ROWS", 0)
    role = f"limited_{uuid4().hex[:12]}"
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
        conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    limited = sa.make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    try:
        assert _targets(limited, tmp_path, plan_connections=2) == one
    finally:
        with engine_for(pg_url).begin() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
    assert "counting on one session" in caplog.text
    assert "too many connections for role" in caplog.text
