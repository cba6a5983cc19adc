"""Workers other than the leader (``retention join``, RETENTION_SWEEP_CONNECTIONS helpers)
delete only under a live leader's sweep of this attempt, and apply holds themselves."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa

from retention import join as join_module
from retention import runs, workqueue
from retention.models import RunStatus
from retention.state import LOCK_KEY
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.integration.test_purge import _setup
from tests.integration.test_races import (
    POLICY,
    WAIT,
    _in_background,
    _logs,
    _open_transaction,
    _purge_waits_on_a_lock,
    _wait_until,
)
from tests.support import NOW, insert, surviving_rows

SMALL = {"sweep_blocks": 2, "sweep_unit_blocks": 8}


def _rows_of(scenario: Any, project: Any, object_type: str, object_id: Any = None) -> set[str]:
    return {
        e["id"]
        for e in scenario.events
        if e["project_id"] == project
        and e["object_type"] == object_type
        and (object_id is None or e["object_id"] == object_id)
    }


def test_join_leaves_a_dead_leaders_run_alone(pg_url: str, tmp_path: Path) -> None:
    """A leader killed during its block sweep leaves its run 'running' with units left.
    Its sweep may be out of date (a hold added since, a policy changed), and only a leader
    re-reads them: ``retention join`` does not take it up; the next purge resumes it."""
    scenario, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=34)
    p = scenario.project_ids()
    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(2), **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    with engine.begin() as conn:  # what a SIGKILL / OOM kill of the leader leaves behind
        conn.exec_driver_sql("UPDATE retention_runs SET status = 'running'")
        assert conn.exec_driver_sql(
            "SELECT count(*) FROM retention_work_units WHERE NOT done"
        ).scalar_one()
    held = _rows_of(scenario, p[0], "project_logs") & surviving_rows(engine)
    before = surviving_rows(engine)
    (policy_dir / "hold.toml").write_text(
        f'[[holds]]\nproject = "{p[0]}"\nobject_type = "project_logs"\nreason = "legal"\n'
    )

    joined = join_module.join(
        worker(pg_url, policy_dir, delete_strategy="blocks", join_wait="1s", **SMALL)
    )

    assert (joined.run_id, joined.rows, joined.units) == (None, 0, 0)
    assert surviving_rows(engine) == before
    resumed = purge(worker(pg_url, policy_dir, delete_strategy="blocks", **SMALL))
    assert resumed.resumed and resumed.status is RunStatus.SUCCEEDED
    after = surviving_rows(engine)
    assert held <= after and after < before


def test_resumed_sweep_with_helpers_ignores_an_object_hold_added_between_attempts(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workqueue.prepare keeps the stored sweep when the signature (keys and cutoffs) is the
    same, and the signature leaves out ``held``: an object hold added before the resume is
    not published. Only the leader's first claim publishes it, so a helper connection (or a
    ``retention join``) that claims first deletes the held object's rows."""
    scenario, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=34)
    p = scenario.project_ids()
    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(2), **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    left = surviving_rows(engine)
    # the dataset of project 0 (14 days) with the most expired rows left
    datasets = {
        e["object_id"]
        for e in scenario.events
        if e["project_id"] == p[0] and e["object_type"] == "dataset"
    }

    def expired_left(d: Any) -> set[str]:
        return {
            e["id"]
            for e in scenario.events
            if e["object_id"] == d and e["created"] < NOW - timedelta(days=14) and e["id"] in left
        }

    dataset = max(datasets, key=lambda d: len(expired_left(d)))
    held = expired_left(dataset)
    assert held
    (policy_dir / "hold.toml").write_text(
        f'[[holds]]\nproject = "{p[0]}"\nobject_type = "dataset"\n'
        f'object_id = "{dataset}"\nreason = "legal"\n'
    )
    helper_swept = threading.Event()
    original_claim = workqueue.claim
    original_count = workqueue.count_rows

    def claim(conn: sa.Connection, run_id: int, me: str, stale: timedelta) -> Any:
        if "/" not in me:  # the leader: let the helper thread's first claim win the race
            helper_swept.wait(10)
        return original_claim(conn, run_id, me, stale)

    def count_rows(conn: sa.Connection, unit: Any, rows: int) -> None:
        original_count(conn, unit, rows)
        helper_swept.set()

    monkeypatch.setattr(workqueue, "claim", claim)
    monkeypatch.setattr(workqueue, "count_rows", count_rows)
    second = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", sweep_connections=2, **SMALL)
    )
    assert second.resumed and second.status is RunStatus.SUCCEEDED
    after = surviving_rows(engine)
    assert held <= after, f"{len(held - after)} rows of a held object deleted"


def test_block_sweep_keeps_a_row_moved_past_the_cutoff_while_it_waits(
    pg_url: str, tmp_path: Path
) -> None:
    """Gap: the READ COMMITTED re-check is tested for keyset and grouped deletes, not for
    the block sweep's DELETE ... USING unnest(...). The row moved past its cutoff while the
    sweep waited for its lock stays, and the receipts (rows, digest) match what went."""
    scenario, kept = _logs(expired=40, fresh=10)
    engine = engine_for(pg_url)
    insert(engine, scenario)
    with engine.connect() as conn:
        ids = dict(conn.exec_driver_sql("SELECT id, sequence_id FROM events").all())
    policy_dir = write_policies(tmp_path / "p", POLICY)
    w = worker(pg_url, policy_dir, delete_strategy="blocks", sweep_blocks=1024)

    with _open_transaction(pg_url) as other:
        other.execute(
            sa.text("UPDATE events SET created = :created WHERE id = 'old-17'"),
            {"created": NOW - timedelta(days=1)},
        )
        with _in_background(lambda: purge(w)) as running:
            _wait_until(_purge_waits_on_a_lock(pg_url, "DELETE FROM events"), "the wait", running)
            other.commit()
            report = running.result(timeout=WAIT)

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept | {"old-17"}
    gone = sorted(ids[i] for i in ids if i not in kept and i != "old-17")
    expected = hashlib.sha256(b"".join(b"%d\n" % s for s in gone)).hexdigest()
    with engine.connect() as conn:
        receipts = conn.exec_driver_sql(
            "SELECT rows, keys_digest, first_key FROM retention_receipts WHERE action = 'delete'"
        ).all()
    assert [(r[0], r[1]) for r in receipts] == [(39, expected)]
    assert receipts[0][2].startswith("blocks ")


def _stopped_sweep(pg_url: str, tmp_path: Path) -> tuple[Any, Path, sa.Engine, int]:
    """A block sweep stopped after two checks: its run, work and units stay."""
    scenario, _, policy_dir, engine = _setup(pg_url, tmp_path, seed=35)
    first = purge(
        worker(pg_url, policy_dir, delete_strategy="blocks", should_stop=StopAfter(2), **SMALL)
    )
    assert first.status is RunStatus.PARTIAL
    with engine.connect() as conn:
        run_id = conn.exec_driver_sql("SELECT run_id FROM retention_work").scalar_one()
    return scenario, policy_dir, engine, int(run_id)


def _lead(conn: sa.Connection, run_id: int) -> None:
    """Be the run's leader on ``conn``: its lock, its sweep, its run running."""
    assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
    conn.exec_driver_sql(
        "UPDATE retention_runs SET status = 'running' WHERE id = %(r)s", {"r": run_id}
    )
    conn.exec_driver_sql(
        "UPDATE retention_work SET leader_pid = pg_backend_pid() WHERE run_id = %(r)s",
        {"r": run_id},
    )
    conn.commit()


def test_a_joiner_under_a_live_leader_applies_holds_itself(pg_url: str, tmp_path: Path) -> None:
    """The leader publishes holds between its own batches, and a batch of it may wait on a
    lock for long: a joiner reads the holds of its own policy folder before every batch.
    It deletes exactly the published sweep's expired rows, less what its holds keep."""
    scenario, policy_dir, engine, run_id = _stopped_sweep(pg_url, tmp_path)
    p = scenario.project_ids()
    with engine.connect() as conn:
        sweep = workqueue.current_sweep(conn, run_id)
    assert {(t.project_id, t.object_type.value) for t in sweep.targets} >= {
        (p[0], "project_logs"),
        (p[0], "dataset"),
    }
    dataset = next(
        o["object_id"]
        for o in scenario.objects
        if o["project_id"] == p[0] and o["object_type"] == "dataset"
    )
    (policy_dir / "hold.toml").write_text(
        f'[[holds]]\nproject = "{p[0]}"\nobject_type = "project_logs"\nreason = "legal"\n'
        f'[[holds]]\nproject = "{p[0]}"\nobject_type = "dataset"\nobject_id = "{dataset}"\n'
        'reason = "audit"\n'
    )
    cutoffs = {(t.project_id, t.object_type.value): t.cutoff for t in sweep.targets}
    before = surviving_rows(engine)
    by_id = {e["id"]: e for e in scenario.events}
    expected = {
        i
        for i in before
        if (key := (by_id[i]["project_id"], by_id[i]["object_type"])) in cutoffs
        and by_id[i]["created"] < cutoffs[key]
        and key != (p[0], "project_logs")
        and by_id[i]["object_id"] != dataset
        and by_id[i]["object_id"] not in sweep.held
    }
    assert expected

    with engine_for(pg_url).connect() as leader:
        _lead(leader, run_id)
        joined = join_module.join(
            worker(pg_url, policy_dir, delete_strategy="blocks", join_wait="1s", **SMALL)
        )
        assert joined.run_id == run_id and joined.complete

    assert before - surviving_rows(engine) == expected
    assert joined.rows == len(expected)


def test_a_new_lock_holder_disowns_the_sweeps_before_it(pg_url: str, tmp_path: Path) -> None:
    """A new leader takes the lock, then plans (seconds, minutes) before it prepares its
    sweep: meanwhile no worker deletes by the sweep of an earlier attempt, even one led by
    the very same session."""
    _, policy_dir, engine, run_id = _stopped_sweep(pg_url, tmp_path)
    before = surviving_rows(engine)
    join_worker = worker(pg_url, policy_dir, delete_strategy="blocks", join_wait="0.5s", **SMALL)
    with engine_for(pg_url).connect() as leader:
        _lead(leader, run_id)
        with leader.begin():
            workqueue.disown(leader)
        assert join_module.join(join_worker).run_id is None
    assert surviving_rows(engine) == before
    with engine_for(pg_url).connect() as conn:  # what every new lock holder does first
        _lead(conn, run_id)
        conn.exec_driver_sql("SELECT pg_advisory_unlock_all()")
        conn.commit()
    with runs.locked(join_worker), engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT leader_pid FROM retention_work").scalar() is None


def test_a_resumed_sweep_publishes_what_changed(pg_url: str, tmp_path: Path) -> None:
    """Same targets and cutoffs: the sweep carries on where it stopped, but objects held
    since and the receipts' rule names are published, with the new signature and leader."""
    _, _, engine, run_id = _stopped_sweep(pg_url, tmp_path)
    with engine.connect() as conn:
        stored = workqueue.load(conn, run_id)
        assert stored is not None
        units_before = conn.exec_driver_sql(
            "SELECT unit, next_block FROM retention_work_units ORDER BY unit"
        ).all()
    target = stored.sweep.targets[0]
    renamed = replace(target, policy_source="local:renamed.toml [defaults]")
    held = uuid4()
    changed = replace(
        stored.sweep,
        targets=(renamed, *stored.sweep.targets[1:]),
        held=stored.sweep.held | {held},
    )
    with engine.connect() as conn, conn.begin():
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        work, kept = workqueue.prepare(conn, run_id, changed, end=10**6, unit_blocks=8)
    assert kept and work.sweep == changed and work.signature == changed.signature
    with engine.connect() as conn:
        assert workqueue.load(conn, run_id) == work
        assert conn.exec_driver_sql("SELECT leader_pid FROM retention_work").scalar() == pid
        assert (
            conn.exec_driver_sql(
                "SELECT unit, next_block FROM retention_work_units ORDER BY unit"
            ).all()
            == units_before
        )


def test_sweep_reader_sees_a_fresh_and_a_published_sweep(pg_url: str, tmp_path: Path) -> None:
    """Workers parse the run's sweep again only when its text changed: a sweep prepared
    afresh (other cutoffs, at revision 0 again) and a hold published (revision + 1) are
    both seen at the next read; an unchanged sweep is the same object."""
    _, _, engine, run_id = _stopped_sweep(pg_url, tmp_path)
    reader = workqueue.SweepReader(run_id)
    revision = "SELECT revision FROM retention_work WHERE run_id = %(r)s"
    with engine.begin() as conn:
        assert conn.exec_driver_sql(revision, {"r": run_id}).scalar_one() == 0
        first = reader.read(conn)
        assert reader.read(conn) is first
        assert first == workqueue.current_sweep(conn, run_id)
        earlier = replace(first.targets[0], cutoff=first.targets[0].cutoff - timedelta(days=1))
        fresh = replace(first, targets=(earlier,))
        _, kept = workqueue.prepare(conn, run_id, fresh, end=10, unit_blocks=4)
        assert not kept
        assert conn.exec_driver_sql(revision, {"r": run_id}).scalar_one() == 0
        assert reader.read(conn) == fresh
        held = replace(fresh, held=fresh.held | {uuid4()})
        workqueue.publish(conn, run_id, held)
        assert reader.read(conn) == held
