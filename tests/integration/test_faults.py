"""Faults the worker survives: a database restart, clock trouble, concurrent writers,
hostile control-plane payloads."""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from retention import engine as engine_module
from retention.automations import parse_automations, parse_projects
from retention.errors import ControlPlaneError
from retention.models import RunStatus
from tests.conftest import PgServer, engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import Expect, Scenario, generate, insert, policy_toml, surviving_rows


def test_a_database_restart_mid_purge_reconnects_and_finishes(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    if pg_server.cluster is None:
        pytest.skip("needs the throwaway cluster (it restarts the server)")
    scenario = generate(91, projects=3, events=6000)
    insert(engine_for(pg_url), scenario)
    policies = write_policies(
        tmp_path / "p", policy_toml(defaults={"project_logs": 20, "dataset": 20})
    )
    calls = {"n": 0}
    cluster = pg_server.cluster

    def restart_once() -> bool:
        calls["n"] += 1
        if calls["n"] == 5:
            cluster.restart("fast")  # every session is cut, the batch in flight rolls back
        return False

    report = purge(
        worker(pg_url, policies, batch_size=25, should_stop=restart_once, reconnect_timeout="60s")
    )
    assert report.status is RunStatus.SUCCEEDED
    assert report.resumed  # the new session took the lock again and resumed the same run
    days = {(p, t): 20.0 for p in scenario.project_ids() for t in ("project_logs", "dataset")}
    assert surviving_rows(engine_for(pg_url)) == Expect(days=days).survivors(scenario)
    with engine_for(pg_url).connect() as conn:
        runs = conn.exec_driver_sql("SELECT id, status, resumed FROM retention_runs").all()
        receipts = conn.exec_driver_sql("SELECT sum(rows) FROM retention_receipts").scalar()
    assert [(r[1], r[2] >= 1) for r in runs] == [("succeeded", True)]
    assert receipts == len(scenario.events) - len(Expect(days=days).survivors(scenario))


def test_a_local_clock_a_year_ahead_does_not_delete_a_year(db_url: str, tmp_path: Path) -> None:
    real = datetime.now(UTC)
    project = UUID("99999999-9999-4999-8999-999999999999")
    s = Scenario()
    s.add_object("project_logs", project, project, real - timedelta(days=400))
    for days in (1, 10, 100, 200):
        s.add_event("project_logs", project, project, real - timedelta(days=days), f"d{days}")
    insert(engine_for(db_url), s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    ahead = real + timedelta(days=365)
    report = purge(worker(db_url, policies, now=None, clock=lambda: ahead))
    assert surviving_rows(engine_for(db_url)) == {"d1", "d10"}
    assert report.plan.clocks is not None
    local, database = report.plan.clocks
    assert local == ahead and abs((database - real).total_seconds()) < 60
    assert abs((report.plan.now - database).total_seconds()) < 60  # the earlier clock


def test_clocks_within_the_skew_use_the_local_clock(db_url: str, tmp_path: Path) -> None:
    real = datetime.now(UTC)
    insert(engine_for(db_url), generate(92, projects=1, events=10))
    policies = write_policies(tmp_path / "p", "")
    local = real + timedelta(minutes=2)  # inside the default 5 minutes
    report = engine_module.plan(worker(db_url, policies, now=None, clock=lambda: local))
    assert report.plan.now == local


def test_writers_during_a_purge_never_lose_a_row_newer_than_the_cutoff(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = datetime.now(UTC)
    project = UUID("88888888-8888-4888-8888-888888888888")
    s = Scenario()
    s.add_object("project_logs", project, project, real - timedelta(days=400))
    for i in range(6000):
        s.add_event(
            "project_logs", project, project, real - timedelta(days=40, seconds=i), f"old-{i}"
        )
    insert(engine_for(pg_url), s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    stop = threading.Event()
    latencies: list[float] = []
    inserted: list[tuple[str, datetime]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        engine = engine_for(pg_url)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                # new rows, and backdated ones on both sides of the cutoff
                created = datetime.now(UTC) - timedelta(days=(0, 29, 31)[n % 3])
                row_id = f"w-{n}"
                began = time.perf_counter()
                with engine.begin() as conn:
                    conn.execute(
                        sa.text(
                            "INSERT INTO events (object_type, object_id, project_id, id, "
                            "_xact_id, created) VALUES ('project_logs', :p, :p, :id, 1, "
                            ":c)"
                        ),
                        {"p": str(project), "id": row_id, "c": created},
                    )
                latencies.append(time.perf_counter() - began)
                inserted.append((row_id, created))
                time.sleep(0.002)
        except BaseException as error:
            errors.append(error)
        finally:
            engine.dispose()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        report = purge(worker(pg_url, policies, now=None, batch_size=50))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    assert report.status is RunStatus.SUCCEEDED
    cutoff = report.plan.now - timedelta(days=30)
    left = surviving_rows(engine_for(pg_url))
    newer = {row for row, created in inserted if created >= cutoff}
    assert newer <= left  # no row newer than the cutoff was deleted
    assert not {f"old-{i}" for i in range(6000)} & left
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 100 else p50
    with capsys.disabled():
        print(
            f"\ninsert latency during the purge: {len(latencies)} inserts, "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def _automation_like() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {
            "id": st.one_of(st.just(str(uuid4())), st.text(max_size=10), st.integers()),
            "project_id": st.one_of(st.just(str(uuid4())), st.none(), st.text(max_size=5)),
            "name": st.one_of(st.text(max_size=10), st.none(), st.integers()),
            "config": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {
                        "event_type": st.sampled_from(["retention", "logs", "unknown"]),
                        "object_type": st.one_of(
                            st.sampled_from(["project_logs", "experiment", "dataset", "logs"]),
                            json_values,
                        ),
                        "retention_days": st.one_of(
                            st.floats(allow_nan=True, allow_infinity=True),
                            st.integers(),
                            st.just(10**400),
                            st.text(max_size=5),
                            st.booleans(),
                            st.none(),
                        ),
                    }
                ),
            ),
        }
    )


@settings(max_examples=400, deadline=None)
@given(items=st.lists(st.one_of(_automation_like(), json_values), max_size=5))
def test_hostile_automation_payloads_are_parsed_or_refused(items: list[Any]) -> None:
    try:
        rules, _skipped = parse_automations([i for i in items if isinstance(i, dict)])
    except ControlPlaneError as error:
        codes = {error.exit_code}
        rules = ()
    else:
        codes = {3}
    assert codes == {3}  # a refusal is always exit 3, never another error
    for rule in rules:
        assert 0 <= rule.days <= 1_000_000


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "id": st.one_of(st.just(str(uuid4())), json_values),
                    "org_id": st.one_of(st.just(str(uuid4())), json_values),
                    "name": json_values,
                    "deleted_at": st.one_of(
                        st.none(), st.just("2026-01-01T00:00:00Z"), json_values
                    ),
                }
            ),
        ),
        max_size=5,
    )
)
def test_hostile_project_payloads_are_parsed_or_refused(items: list[Any]) -> None:
    try:
        parse_projects([i for i in items if isinstance(i, dict)])
    except ControlPlaneError as error:
        refused = error.exit_code
    else:
        refused = 3
    assert refused == 3


def test_worker_sessions_use_keepalives_the_url_can_override(pg_url: str) -> None:
    """A worker cut off by the network mid-batch: the server notices within about a minute
    (not the system's two hours) and rolls the batch back, releasing its rows and its work
    unit. The operator's own options in the URL win."""
    from retention.db import make_engine, parse_database_url

    def settings(url: str) -> tuple[str, ...]:
        engine = make_engine(parse_database_url(url))
        try:
            with engine.connect() as conn:
                return tuple(
                    str(conn.exec_driver_sql(f"SHOW {name}").scalar_one())
                    for name in ("tcp_keepalives_idle", "tcp_keepalives_count", "TimeZone")
                )
        finally:
            engine.dispose()

    assert settings(pg_url) == ("30", "3", "UTC")
    own = "?options=-c%20tcp_keepalives_idle%3D7"
    assert settings(pg_url + own) == ("7", "3", "UTC")
