"""The block-range sweep (PostgreSQL's fast path for a backlog) against the same expectations
as the keyset batches: exact final rows, receipts that add up, resume from the checkpointed
block, holds and lock waits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from retention import workqueue
from retention.blocksweep import MAX_BLOCKS, MAX_GROWTH, MIN_BLOCKS, BlockSizer, SweepSet
from retention.models import RunStatus
from retention.state import LOCK_KEY
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker
from tests.integration.test_purge import _setup
from tests.support import registry, surviving_rows

SMALL = {
    "sweep_blocks": 2,
    "sweep_unit_blocks": 8,
}  # a few blocks per batch: many batches on test-sized data


def _receipted(engine: sa.Engine) -> tuple[int, int]:
    """(sum of receipted rows, receipts of block ranges)."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT coalesce(sum(rows), 0) FROM retention_receipts")
        total = int(rows.scalar_one())
        blocks = conn.execute(
            sa.text("SELECT count(*) FROM retention_receipts WHERE first_key LIKE 'blocks %'")
        ).scalar_one()
    return total, int(blocks)


@pytest.mark.parametrize(
    ("strategy", "extra", "sweeps"),
    [
        ("keyset", {}, False),
        ("blocks", {}, True),
        ("auto", {"block_sweep_min_rows": 0}, True),  # much expired: the sweep
        ("auto", {}, False),  # a table this small goes by keyset batches
        ("auto", {"block_sweep_min_rows": 0, "block_sweep_fraction": 1}, False),
    ],
)
def test_every_strategy_deletes_exactly_what_expired(
    pg_url: str, tmp_path: Path, strategy: str, extra: dict[str, float], sweeps: bool
) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=31)
    survivors = expect.survivors(scenario)

    report = purge(worker(pg_url, policy_dir, delete_strategy=strategy, **SMALL, **extra))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == survivors
    assert registry(engine) == expect.registry(scenario)
    deleted = len(scenario.events) - len(survivors)
    receipted, block_receipts = _receipted(engine)
    assert sum(o.rows for o in report.outcomes) == receipted == deleted
    assert (block_receipts > 0) is sweeps
    timings = report.timings  # the JSON report's "timings": where the time went
    assert set(timings) == {"plan", "delete", "sweep", "longest_batch"}
    assert 0 < timings["longest_batch"] <= timings["delete"]


def test_sqlite_ignores_the_block_strategy(sqlite_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, engine = _setup(sqlite_url, tmp_path, seed=32)
    report = purge(worker(sqlite_url, policy_dir, delete_strategy="blocks"))
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert _receipted(engine)[1] == 0


@pytest.mark.parametrize("stops", [3, 4, 6])
def test_a_stopped_sweep_resumes_from_its_block(pg_url: str, tmp_path: Path, stops: int) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=33)
    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(stops), **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    deleted = len(scenario.events) - len(surviving_rows(engine))
    assert 0 < deleted < len(scenario.events) - len(expect.survivors(scenario))
    assert _receipted(engine)[0] == deleted  # receipts commit with their batch
    with engine.connect() as conn:
        progress = conn.exec_driver_sql(
            "SELECT lo, hi, next_block FROM retention_work_units ORDER BY unit"
        ).all()
        seen = conn.exec_driver_sql("SELECT max(id) FROM retention_receipts").scalar_one()
    assert any(next_block > lo for lo, _, next_block in progress)

    second = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))

    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    total = len(scenario.events) - len(expect.survivors(scenario))
    assert _receipted(engine)[0] == total
    with engine.connect() as conn:
        resumed = [
            int(k.removeprefix("blocks ").split("-")[0])
            for (k,) in conn.execute(
                sa.text(
                    "SELECT first_key FROM retention_receipts "
                    "WHERE first_key LIKE 'blocks %' AND id > :seen"
                ),
                {"seen": seen},
            )
        ]
    assert resumed
    for start in resumed:  # the resumed sweep began where each unit had stopped
        *_, next_block = next(u for u in progress if u[0] <= start < u[1])
        assert start >= next_block


def test_a_hold_added_before_the_resume_is_kept(pg_url: str, tmp_path: Path) -> None:
    scenario, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=34)
    p = scenario.project_ids()
    purge(worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(2), **SMALL))
    before = surviving_rows(engine)
    # project 0's logs put on hold before the resume: its rows that are left stay
    (policy_dir / "hold.toml").write_text(
        f'[[holds]]\nproject = "{p[0]}"\nobject_type = "project_logs"\nreason = "audit"\n'
    )
    report = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))
    assert report.status is RunStatus.SUCCEEDED
    left = {
        e["id"]
        for e in scenario.events
        if e["project_id"] == p[0] and e["object_type"] == "project_logs"
    }
    after = surviving_rows(engine)
    assert left & before == left & after  # nothing of the held target went in the resume
    assert after < before  # the other targets did finish


@contextmanager
def _locked(url: str, row_id: str) -> Iterator[sa.Connection]:
    """Another session holding a row lock on one row until it rolls back."""
    engine = sa.create_engine(engine_for(url).url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1 FROM events WHERE id = %(i)s FOR UPDATE", {"i": row_id})
        try:
            yield conn
        finally:
            conn.rollback()
    engine.dispose()


def test_a_locked_row_makes_the_sweep_wait_then_give_up_resumably(
    pg_url: str, tmp_path: Path
) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=35)
    expired = sorted({e["id"] for e in scenario.events} - expect.survivors(scenario))
    settings = dict(delete_strategy="blocks", lock_timeout="0.2s", lock_retries=2, **SMALL)
    with _locked(pg_url, expired[len(expired) // 2]):
        stuck = purge(worker(pg_url, policy_dir, **settings))
    assert stuck.status is RunStatus.PARTIAL
    assert sum(o.lock_waits for o in stuck.outcomes) == 3
    assert any("lock waits" in o.note for o in stuck.outcomes)
    deleted = len(scenario.events) - len(surviving_rows(engine))
    assert _receipted(engine)[0] == deleted

    done = purge(worker(pg_url, policy_dir, **settings))

    assert done.resumed and done.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)


@given(st.integers(MIN_BLOCKS, MAX_BLOCKS), st.floats(0.0001, 100), st.floats(0.01, 5))
def test_block_sizer_stays_in_bounds_and_moves_toward_the_target(
    blocks: int, seconds: float, target: float
) -> None:
    sizer = BlockSizer(blocks=blocks, target=target)
    sizer.update(seconds)
    assert MIN_BLOCKS <= sizer.blocks <= MAX_BLOCKS
    assert sizer.blocks <= max(MIN_BLOCKS, int(blocks * MAX_GROWTH))  # grows at most 4x
    assert sizer.blocks >= min(MAX_BLOCKS, int(blocks / 4))  # shrinks at most 4x
    aim = 0.8 * target  # a little under the target
    if seconds > aim * 1.01:
        assert sizer.blocks <= blocks
    elif seconds < aim * 0.99:
        assert sizer.blocks >= blocks


def test_a_dead_workers_unit_is_taken_over(pg_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=36)
    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(4), **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    with engine.begin() as conn:  # a worker claimed the next unit a moment ago, then died
        dead = conn.exec_driver_sql(
            "UPDATE retention_work_units SET owner = 'dead-worker', "
            "owner_pid = 2147483647, heartbeat_at = now() "
            "WHERE unit = (SELECT min(unit) FROM retention_work_units WHERE NOT done) "
            "RETURNING unit"
        ).scalar_one()

    second = purge(
        # its session is gone, so there is no waiting for its heartbeat to go stale
        worker(pg_url, policy_dir, delete_strategy="blocks", worker_stale="1h", **SMALL)
    )

    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    with engine.connect() as conn:
        done, done_by, claims = conn.execute(
            sa.text("SELECT done, done_by, claims FROM retention_work_units WHERE unit = :u"),
            {"u": dead},
        ).one()
        left = conn.exec_driver_sql(
            "SELECT count(*) FROM retention_work_units WHERE NOT done"
        ).scalar_one()
    assert done and done_by != "dead-worker" and claims >= 1 and left == 0


def test_a_worker_that_lost_its_unit_deletes_nothing_more(pg_url: str) -> None:
    engine = sa.create_engine(engine_for(pg_url).url, poolclass=sa.NullPool)
    sweep = SweepSet(targets=())
    leader = engine.connect()  # holds the run lock and prepares the sweep
    assert leader.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
    leader.commit()
    with leader.begin():
        run_id = leader.exec_driver_sql(
            "INSERT INTO retention_runs (status, mode, started_at, pinned_now, plan_hash, plan) "
            "VALUES ('running', 'purge', now(), now(), '', '{}') RETURNING id"
        ).scalar_one()
        workqueue.prepare(leader, run_id, sweep, end=39, unit_blocks=10)
    stale = timedelta(seconds=30)
    # each worker on its own session, as in real life
    with engine.connect() as a_conn, engine.connect() as b_conn, engine.connect() as c_conn:

        def claim(conn: sa.Connection, me: str) -> workqueue.Unit | None:
            with conn.begin():
                return workqueue.claim(conn, run_id, me, stale)

        a, b = claim(a_conn, "a"), claim(b_conn, "b")
        assert a is not None and b is not None and (a.unit, b.unit) == (0, 1)
        c = claim(c_conn, "c")
        assert c is not None and c.unit == 2  # live owners keep their units
        with b_conn.begin():  # a's heartbeat went stale (a live but stuck worker)
            b_conn.exec_driver_sql(
                "UPDATE retention_work_units SET heartbeat_at = now() - interval '1 minute' "
                "WHERE unit = 0"
            )
        taken = claim(b_conn, "b")
        assert taken is not None and taken.unit == 0  # b takes unit 0 over
        with a_conn.begin():
            assert not workqueue.advance(a_conn, a, "a", next_block=5, rows=0, done=False)
        with b_conn.begin():
            assert workqueue.advance(b_conn, taken, "b", next_block=10, rows=0, done=True)
        c_conn.close()  # c dies: its session ends, and its unit is free at once
        freed = claim(a_conn, "a")
        assert freed is not None and freed.unit == 2
        with b_conn.begin():  # the leader stopped the run (time budget, signal)
            b_conn.execute(
                sa.text("UPDATE retention_runs SET status = 'partial' WHERE id = :r"),
                {"r": run_id},
            )
        with a_conn.begin():  # a's next batch in its unit deletes nothing
            assert not workqueue.advance(a_conn, freed, "a", next_block=25, rows=0, done=False)
        assert claim(a_conn, "a") is None  # and no unit is handed out any more
        with b_conn.begin():
            b_conn.execute(
                sa.text("UPDATE retention_runs SET status = 'running' WHERE id = :r"),
                {"r": run_id},
            )
        again = claim(a_conn, "a")
        assert again is not None and again.unit == 2  # its own unit, running again
        leader.close()  # the leader dies: its lock goes, and with it every worker's license
        with a_conn.begin():
            assert not workqueue.advance(a_conn, again, "a", next_block=35, rows=0, done=False)
        assert claim(b_conn, "b") is None
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT done, done_by, claims, next_block FROM retention_work_units WHERE unit = 0"
        ).one()
    assert tuple(row) == (True, "b", 2, 10)
    engine.dispose()


def test_helper_connections_share_the_sweep_exactly(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RETENTION_SWEEP_CONNECTIONS: threads of the leader's process claim units of the same
    queue; the result is exact and every unit is done once, by one of them."""
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=37)
    claimed: list[tuple[str, int]] = []  # (worker, unit) of every successful claim
    original = workqueue.claim

    def claim(conn: sa.Connection, run_id: int, me: str, stale: timedelta) -> object:
        unit = original(conn, run_id, me, stale)
        if unit is not None:
            claimed.append((me, unit.unit))
        return unit

    monkeypatch.setattr(workqueue, "claim", claim)
    w = worker(
        pg_url,
        policy_dir,
        delete_strategy="blocks",
        sweep_connections=3,
        sweep_blocks=1,
        sweep_unit_blocks=1,
    )

    report = purge(w)

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    deleted = len(scenario.events) - len(expect.survivors(scenario))
    assert sum(o.rows for o in report.outcomes) == _receipted(engine)[0] == deleted
    with engine.connect() as conn:
        units = conn.exec_driver_sql(
            "SELECT lo, hi, next_block, done, unit FROM retention_work_units ORDER BY lo"
        ).all()
    assert len(units) > 3 and all(done and next_block == hi for _, hi, next_block, done, _ in units)
    assert all(a[1] == b[0] for a, b in pairwise(units))  # no gap, no overlap
    assert sorted(u for _, u in claimed) == sorted(u for *_, u in units)  # each claimed once
    owners = {me for me, _ in claimed}
    leader = min(owners, key=len)
    assert owners <= {leader, f"{leader}/1", f"{leader}/2"}
    assert len(owners) > 1  # the helpers took part


def test_a_helper_connection_that_fails_fails_the_run(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper thread's error stops the leader and comes out of the purge (the next run
    resumes); nothing is counted that was not deleted."""
    scenario, expect, policy_dir, engine = _setup(pg_url, tmp_path, seed=38)
    original = workqueue.claim
    calls: list[str] = []

    def claim(conn: sa.Connection, run_id: int, me: str, stale: timedelta) -> object:
        calls.append(me)
        if me.endswith("/1"):
            raise RuntimeError("helper connection broke")
        return original(conn, run_id, me, stale)

    w = worker(
        pg_url,
        policy_dir,
        delete_strategy="blocks",
        sweep_connections=2,
        sweep_blocks=1,
        sweep_unit_blocks=1,
    )
    monkeypatch.setattr(workqueue, "claim", claim)
    with pytest.raises(RuntimeError, match="helper connection broke"):
        purge(w)
    monkeypatch.undo()
    assert any(me.endswith("/1") for me in calls)
    deleted = len(scenario.events) - len(surviving_rows(engine))
    assert _receipted(engine)[0] == deleted

    again = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))
    assert again.resumed and again.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
