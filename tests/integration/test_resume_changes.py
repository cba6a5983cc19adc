"""A run stopped, then resumed after the world changed (holds, clocks, policies), or
killed and abandoned: what it deletes, and what its records and report say."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import sqlalchemy as sa

from retention import status
from retention.errors import GuardError, UsageError
from retention.models import RunStatus
from retention.report import report_document
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml, segment_states, surviving_rows

P = UUID("aa000000-0000-4000-8000-000000000001")
D1 = UUID("d1000000-0000-4000-8000-000000000001")
D2 = UUID("d2000000-0000-4000-8000-000000000002")


def _receipted_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql("SELECT coalesce(sum(rows), 0) FROM retention_receipts").scalar()
        )


def _runs(engine: sa.Engine) -> list[tuple[int, str, int, int]]:
    with engine.connect() as conn:
        return [
            (int(r[0]), r[1], int(r[2]), int(r[3]))
            for r in conn.exec_driver_sql(
                "SELECT id, status, rows, resumed FROM retention_runs ORDER BY id"
            )
        ]


def test_an_object_hold_lifted_before_the_resume_lets_its_expired_rows_go(
    db_url: str, tmp_path: Path
) -> None:
    """Attempt 1 walks P's dataset rows with D1 held: the keyset cursor passes D1's rows.
    The hold is lifted; the resumed run plans D1's expired rows for deletion (same cutoff),
    so it must delete them, not report success with them left behind."""
    s = Scenario()
    s.add_object("dataset", D1, P, NOW - timedelta(days=400))
    s.add_object("dataset", D2, P, NOW - timedelta(days=400))
    expired: set[str] = set()
    for i in range(40):  # interleaved in time: D1, D2, D1, D2, ... all 50..89 days old
        object_id = D1 if i % 2 == 0 else D2
        expired.add(s.add_event("dataset", object_id, P, NOW - timedelta(days=90 - i), f"old{i}"))
    for i in range(5):
        s.add_event("dataset", D1, P, NOW - timedelta(days=i), f"new{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    rules = policy_toml(projects=[(P, {"dataset": 30})])
    hold = policy_toml(
        holds=[{"project": str(P), "object_type": "dataset", "object_id": str(D1), "reason": "x"}]
    )
    policies = write_policies(tmp_path / "p", rules)
    write_policies(policies, hold, name="hold.toml")

    first = purge(worker(db_url, policies, batch_size=5, should_stop=StopAfter(2)))
    assert first.status is RunStatus.PARTIAL
    gone_first = len(s.events) - len(surviving_rows(engine))
    assert gone_first == 10  # two batches of D2 rows; the cursor is past 10 D1 rows

    (policies / "hold.toml").unlink()  # the hold ends before the resume
    second = purge(worker(db_url, policies, batch_size=5))

    assert second.resumed and second.run_id == first.run_id
    (target,) = second.plan.targets
    assert target.counts.rows == 30  # the plan counts D1's 20 and D2's 10 left
    assert second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == {f"new{i}" for i in range(5)}
    (outcome,) = second.outcomes
    assert outcome.rows == 40 and outcome.earlier_rows == 10
    assert _receipted_rows(engine) == 40


L = UUID("bb000000-0000-4000-8000-000000000002")


def test_a_resume_after_the_clock_went_back_does_not_use_a_pinned_now_in_the_future(
    db_url: str, tmp_path: Path
) -> None:
    """Attempt 1 ran on a host whose clocks were 30 days ahead and was stopped. The clock is
    corrected; the resume must not go on deleting with a pinned now 30 days in the future
    (the worker refuses a future now, and a reviewed plan's, everywhere else): nothing newer
    than the cutoff of the present clock may go."""
    s = Scenario()
    s.add_object("project_logs", L, L, NOW - timedelta(days=400))
    for i in range(60):  # one row a day, 1..60 days old at NOW
        s.add_event("project_logs", L, L, NOW - timedelta(days=60 - i, hours=1), f"d{60 - i}")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(L, {"project_logs": 45})]))
    ahead = NOW + timedelta(days=30)  # cutoff 15 days before NOW

    first = purge(worker(db_url, policies, now=ahead, batch_size=5, should_stop=StopAfter(1)))
    assert first.status is RunStatus.PARTIAL
    assert surviving_rows(engine) == {f"d{i}" for i in range(1, 56)}  # d56..d60 went

    # the clock is right again: refusing (exit 2/6) or starting afresh are both fine
    try:
        second = purge(worker(db_url, policies, now=NOW, batch_size=5))
    except (UsageError, GuardError):
        second = None

    # rows under 45 days old at the real now (d1..d44: d45 is 45 days and an hour old)
    # must all stay, and the older ones are gone (a fresh run at the real now took them)
    survivors = surviving_rows(engine)
    assert {f"d{i}" for i in range(1, 45)} <= survivors, sorted(
        {f"d{i}" for i in range(1, 45)} - survivors, key=lambda k: int(k[1:])
    )
    if second is not None:
        assert second.plan.now <= NOW + timedelta(minutes=1)


def test_marks_undone_on_resume_are_not_counted_as_expired_segments(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """Attempt 1 marks P's two expired log segments, then stops before its sweep. The policy
    is lengthened; the resume puts both back to live (restore receipts). The run's report
    and its totals must not still say that 2 segments (2000 bytes) expired."""
    s = Scenario()
    s.add_object("project_logs", L, L, NOW - timedelta(days=400))
    for i in range(4):
        s.add_event("project_logs", L, L, NOW - timedelta(days=10 + i), f"r{i}")
    for i in range(2):
        s.add_segment(
            "project_logs", L, L, NOW - timedelta(days=60 + i), NOW - timedelta(days=40 + i)
        )
    engine = engine_for(db_url)
    insert(engine, s)
    for row in s.segments:
        file_store.write(row["object_key"])
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(L, {"project_logs": 30})]))

    first = purge(worker(db_url, policies, should_stop=StopAfter(1), **file_store.settings()))
    assert first.status is RunStatus.PARTIAL  # marked, stopped before the sweep
    assert {v[0] for v in segment_states(engine).values()} == {"unused"}

    write_policies(policies, policy_toml(projects=[(L, {"project_logs": 90})]))
    second = purge(worker(db_url, policies, **file_store.settings()))

    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert {v[0] for v in segment_states(engine).values()} == {"live"}  # both restored
    (outcome,) = second.outcomes
    assert (outcome.segments, outcome.bytes) == (0, 0)
    document = report_document(second)
    assert document["totals"]["segments"] == 0 and document["totals"]["bytes"] == 0
    with engine.connect() as conn:
        totals = conn.exec_driver_sql("SELECT segments, bytes FROM retention_runs").one()
    assert tuple(totals) == (0, 0)


_KILLER = """
import os, signal, sys
from pathlib import Path
from tests.integration.helpers import purge, worker

calls = 0
def stop():
    global calls
    calls += 1
    if calls > int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    return False

purge(worker(sys.argv[1], Path(sys.argv[2]), batch_size=5, should_stop=stop))
"""


def _killed_purge(url: str, policies: Path, batches: int) -> None:
    """A purge in a child process that SIGKILLs itself after ``batches`` batches."""
    done = subprocess.run(
        [sys.executable, "-c", _KILLER, url, str(policies), str(batches)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_an_abandoned_run_keeps_the_totals_of_what_it_deleted(db_url: str, tmp_path: Path) -> None:
    """A run killed mid-way and found again only after RETENTION_RESUME_MAX_AGE is marked
    abandoned. Its record must still say what it deleted (its checkpoints and receipts), not
    0 rows: `retention status` shows these totals."""
    s = Scenario()
    s.add_object("project_logs", L, L, NOW - timedelta(days=400))
    for i in range(40):
        s.add_event("project_logs", L, L, NOW - timedelta(days=100 - i), f"r{i}")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(L, {"project_logs": 30})]))

    _killed_purge(db_url, policies, 3)
    gone = len(s.events) - len(surviving_rows(engine))
    assert gone == 15  # three batches of 5 committed before the kill
    assert _runs(engine) == [(1, "running", 0, 0)]

    later = NOW + timedelta(days=3)  # past the 24 h resume age: a new run
    second = purge(worker(db_url, policies, now=later, batch_size=5))
    assert not second.resumed and second.run_id == 2

    with engine.connect() as conn:
        first_receipts = conn.exec_driver_sql(
            "SELECT coalesce(sum(rows), 0) FROM retention_receipts WHERE run_id = 1"
        ).scalar()
    assert first_receipts == 15
    (abandoned, _) = _runs(engine)
    assert abandoned[:3] == (1, "abandoned", 15)


def test_the_report_of_a_resumed_run_totals_what_the_run_deleted(
    db_url: str, tmp_path: Path
) -> None:
    """Attempt 1 deletes A's expired logs and some of B's; A's policy is then removed. The
    resumed run's report (its JSON totals) must add up to what the run deleted, as its
    record in retention_runs and its receipts do, not leave A's rows out."""
    a = UUID("a0000000-0000-4000-8000-00000000000a")
    b = UUID("b0000000-0000-4000-8000-00000000000b")
    s = Scenario()
    for project in (a, b):
        s.add_object("project_logs", project, project, NOW - timedelta(days=400))
        for i in range(10):
            s.add_event("project_logs", project, project, NOW - timedelta(days=50 + i))
    engine = engine_for(db_url)
    insert(engine, s)
    both = policy_toml(projects=[(a, {"project_logs": 30}), (b, {"project_logs": 30})])
    policies = write_policies(tmp_path / "p", both)

    first = purge(worker(db_url, policies, batch_size=5, should_stop=StopAfter(4)))
    assert first.status is RunStatus.PARTIAL
    assert len(s.events) - len(surviving_rows(engine)) == 15  # A's 10, B's first 5

    write_policies(policies, policy_toml(projects=[(b, {"project_logs": 30})]))
    second = purge(worker(db_url, policies, batch_size=5))

    assert second.resumed and second.status is RunStatus.SUCCEEDED
    gone = len(s.events) - len(surviving_rows(engine))
    assert gone == 20
    assert _receipted_rows(engine) == 20
    assert _runs(engine)[0][2] == 20  # the run's record
    assert report_document(second)["totals"]["rows"] == 20  # the report says the same


_SWEEP_KILLER = """
import os, signal, sys
from pathlib import Path
from retention import maintenance
from tests.integration.helpers import worker

def stop():
    os.kill(os.getpid(), signal.SIGKILL)

maintenance.sweep_only(
    worker(sys.argv[1], Path(sys.argv[2]), object_store_url=sys.argv[3], should_stop=stop)
)
"""


def test_a_killed_sweep_run_does_not_stay_running_after_the_next_run(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """`retention sweep` is killed: its run stays recorded as running. The next purge holds
    the lock, so it knows that run died (as it does for a purge's own runs); after that
    purge succeeded, no run may still be recorded as running, and `retention status` must
    not keep calling a dead run 'killed (the next purge resumes it)'."""
    s = Scenario()
    s.add_object("project_logs", L, L, NOW - timedelta(days=400))
    s.add_event("project_logs", L, L, NOW - timedelta(days=50), "old")
    engine = engine_for(db_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(L, {"project_logs": 30})]))
    done = subprocess.run(
        [sys.executable, "-c", _SWEEP_KILLER, db_url, str(policies), file_store.url],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [r[1] for r in _runs(engine)] == ["running"]

    after = purge(worker(db_url, policies, **file_store.settings()))
    assert after.status is RunStatus.SUCCEEDED and not after.resumed

    assert "running" not in [r[1] for r in _runs(engine)]
    report = status.collect(worker(db_url, policies), max_age=None, backlog=False)
    assert not [p for p in report.problems if "recorded as running" in p], report.problems
