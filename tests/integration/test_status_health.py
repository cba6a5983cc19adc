"""``retention status`` as a health check after runs that did not simply succeed.

A run held back by a guard, or left partial by files the store did not delete, needs a
person: status says so (unhealthy) with the run's recorded reason. A run stopped by its
time budget or a signal resumes by itself: status stays healthy. ``retention sweep`` alone
keeps to the time budget too.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

from retention import engine as engine_module
from retention import maintenance, status
from retention.guards import FIRST_RUN
from retention.models import RunStatus
from retention.runs import STOPPED_BY_BUDGET
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml, segment_states

P = UUID("5a000000-0000-4000-8000-000000000001")
LOGS = f"{P}/project_logs"


def _world(url: str, store: FileStore | None = None) -> Scenario:
    """P's logs: 3 rows and 2 segments expired (30-day policy), 4 rows and 1 segment kept."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(3):
        s.add_event("project_logs", P, P, NOW - timedelta(days=40, minutes=i), f"old-{i}")
    for i in range(4):
        s.add_event("project_logs", P, P, NOW - timedelta(days=10, minutes=i), f"new-{i}")
    for start, end in ((90, 80), (70, 60), (20, 1)):
        s.add_segment("project_logs", P, P, NOW - timedelta(days=start), NOW - timedelta(days=end))
    insert(engine_for(url), s)
    if store is not None:
        for row in s.segments:
            store.write(row["object_key"])
    return s


def _policies(tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies", policy_toml(defaults={"project_logs": 30}))


def _health(url: str, policies: Path) -> list[str]:
    return status.collect(worker(url, policies), max_age=None, backlog=False).problems


def _runs(url: str) -> list[tuple[str, str | None]]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return [
                (r[0], r[1])
                for r in conn.exec_driver_sql(
                    "SELECT status, error FROM retention_runs ORDER BY id"
                )
            ]
    finally:
        engine.dispose()


def test_a_guarded_run_is_unhealthy_until_a_run_succeeds(db_url: str, tmp_path: Path) -> None:
    _world(db_url)
    policies = _policies(tmp_path)

    guarded = engine_module.purge(worker(db_url, policies))  # the first run: guarded

    assert guarded.status is RunStatus.GUARDED
    reason = f"held back by a guard: {LOGS}: {FIRST_RUN}"
    assert _runs(db_url) == [("guarded", reason)]
    assert _health(db_url, policies) == [
        f"the last run (1) was {reason}; review it with 'retention purge --dry-run'"
    ]

    assert purge(worker(db_url, policies)).status is RunStatus.SUCCEEDED
    assert _runs(db_url)[-1] == ("succeeded", None)
    assert _health(db_url, policies) == []


def test_a_run_stopped_by_its_time_budget_stays_healthy(db_url: str, tmp_path: Path) -> None:
    _world(db_url)
    policies = _policies(tmp_path)

    stopped = purge(worker(db_url, policies, max_runtime="0s"))

    assert stopped.status is RunStatus.PARTIAL
    assert sum(o.rows for o in stopped.outcomes) == 0
    assert _runs(db_url) == [("partial", STOPPED_BY_BUDGET)]
    assert _health(db_url, policies) == []  # it resumes at the next run


def test_files_the_store_did_not_delete_make_the_run_unhealthy(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    scenario = _world(db_url, file_store)
    policies = _policies(tmp_path)
    # A real failure on real files: the key names a non-empty folder, which a file delete
    # cannot remove (permissions would not stop root, under which CI runs).
    blocked = file_store.root / scenario.segments[0]["object_key"]
    blocked.unlink()
    blocked.mkdir()
    (blocked / "inside").write_bytes(b"x")

    report = purge(worker(db_url, policies, grace_period="0", **file_store.settings()))

    assert report.status is RunStatus.PARTIAL
    assert report.sweep is not None
    assert (report.sweep.files, report.sweep.failed) == (1, 1)
    problem = "segment files not deleted: 1 failed, 0 refused"
    assert _runs(db_url) == [("partial", problem)]
    assert _health(db_url, policies) == [f"the last run (1) is partial: {problem}"]


def test_sweep_alone_keeps_to_the_time_budget(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    scenario = _world(db_url, file_store)
    policies = _policies(tmp_path)
    marked = purge(worker(db_url, policies, grace_period="7d", **file_store.settings()))
    assert sum(o.segments for o in marked.outcomes) == 2
    unused = {
        sid: state
        for sid, (state, *_) in segment_states(engine_for(db_url)).items()
        if state == "unused"
    }
    assert len(unused) == 2

    # eight days later, past the grace period; the budget is already spent at the start
    later = NOW + timedelta(days=8)
    settings = {"grace_period": "7d", **file_store.settings()}
    stopped = maintenance.sweep_only(
        worker(db_url, policies, now=later, max_runtime="0s", **settings)
    )

    assert stopped.outcome.stopped and stopped.outcome.files == 0
    assert stopped.status is RunStatus.PARTIAL
    assert _runs(db_url)[-1] == ("partial", STOPPED_BY_BUDGET)
    assert all(file_store.exists(row["object_key"]) for row in scenario.segments)

    done = maintenance.sweep_only(worker(db_url, policies, now=later, **settings))
    assert (done.outcome.files, done.status) == (2, RunStatus.SUCCEEDED)
    assert set(unused).isdisjoint(segment_states(engine_for(db_url)))


def test_a_last_success_recorded_in_the_future_is_a_problem(db_url: str, tmp_path: Path) -> None:
    """A success recorded by a host clock a month ahead would hide every later failure from
    --max-age for a month: status says a clock is wrong instead of judging the age."""
    _world(db_url)
    policies = _policies(tmp_path)
    ahead = NOW + timedelta(days=30)
    done = purge(worker(db_url, policies, now=None, clock=lambda: ahead))
    assert done.status == RunStatus.SUCCEEDED
    here = worker(db_url, policies, now=None, clock=lambda: NOW + timedelta(days=1))
    found = status.collect(here, max_age=timedelta(hours=36), backlog=False)
    assert [p for p in found.problems if "in the future" in p] == [
        f"the last success is recorded at {ahead.isoformat()}, in the future of this host's "
        f"clock ({(NOW + timedelta(days=1)).isoformat()}): a clock is wrong, and --max-age "
        "cannot be judged"
    ]
    # within the clock-skew tolerance, the age is judged as usual: a fresh success is healthy
    near = worker(db_url, policies, now=None, clock=lambda: ahead - timedelta(minutes=1))
    assert status.collect(near, max_age=timedelta(hours=36), backlog=False).problems == []
