"""The segment lifecycle's safety: holds during the grace period, wrong clocks, refused keys,
restore after an interrupted sweep, and exact paging across stops."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from retention import maintenance
from retention import segments as segments_module
from retention.errors import ObjectStoreError
from retention.models import RunStatus
from retention.segments import RestoreFilter
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml, segment_states

P = UUID("10000000-0000-4000-8000-000000000001")
DS = UUID("d1000000-0000-4000-8000-000000000001")


def _world(db_url: str, store: FileStore, tmp_path: Path, now: datetime) -> tuple[Path, dict]:
    """P's logs kept 30 days; one log segment expired (A), one dataset segment expired (D)."""
    s = Scenario()
    s.add_object("project_logs", P, P, now - timedelta(days=400))
    s.add_object("dataset", DS, P, now - timedelta(days=400))
    a = s.add_segment("project_logs", P, P, now - timedelta(days=60), now - timedelta(days=40))
    d = s.add_segment("dataset", DS, P, now - timedelta(days=60), now - timedelta(days=40))
    insert(engine_for(db_url), s)
    for row in s.segments:
        store.write(row["object_key"])
    policies = write_policies(
        tmp_path / "p", policy_toml(projects=[(P, {"project_logs": 30, "dataset": 30})])
    )
    return policies, {"A": a, "D": d}


def _w(db_url: str, policies: Path, store: FileStore, **kw: Any):
    return worker(db_url, policies, **store.settings(), **kw)


def test_a_hold_added_during_the_grace_period_keeps_the_marked_file(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """DESIGN §2.4: a hold beats everything. A segment marked unused is still within its
    grace period (the file exists, `restore` could still bring it back) when a legal hold on
    the project arrives: the sweep leaves it, file and index row, unused."""
    policies, seg = _world(db_url, file_store, tmp_path, NOW)
    purge(_w(db_url, policies, file_store))  # marks A and D at NOW, grace 24 h
    assert segment_states(engine_for(db_url))[str(seg["A"]["segment_id"])][0] == "unused"
    write_policies(
        policies,
        policy_toml(holds=[{"project": str(P), "reason": "legal matter"}]),
        name="holds.toml",
    )
    later = NOW + timedelta(hours=25)
    maintenance.sweep_only(_w(db_url, policies, file_store, now=later))
    assert file_store.exists(seg["A"]["object_key"]), "held project's segment file was swept"
    assert file_store.exists(seg["D"]["object_key"]), "held project's segment file was swept"


def test_a_host_clock_ahead_does_not_shorten_the_grace_period(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """`retention sweep` on a host whose clock runs 30 days ahead does not delete files the
    database marked unused seconds ago: the sweep measures by the earlier clock."""
    real = datetime.now(UTC)
    policies, seg = _world(db_url, file_store, tmp_path, real)
    purge(_w(db_url, policies, file_store, now=None, clock=lambda: datetime.now(UTC)))
    assert segment_states(engine_for(db_url))[str(seg["A"]["segment_id"])][0] == "unused"
    ahead = maintenance.sweep_only(
        _w(
            db_url,
            policies,
            file_store,
            now=None,
            clock=lambda: datetime.now(UTC) + timedelta(days=30),
        )
    )
    assert ahead.outcome.files == 0, "swept within the grace period by the database's clock"
    assert file_store.exists(seg["A"]["object_key"])


def test_a_host_clock_behind_when_marking_does_not_shorten_the_grace_period(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """Marked by a host two days behind the database, a file is not swept at once by a
    correct host: the mark is dated by the later clock."""
    real = datetime.now(UTC)
    policies, seg = _world(db_url, file_store, tmp_path, real)
    purge(
        _w(
            db_url,
            policies,
            file_store,
            now=None,
            clock=lambda: datetime.now(UTC) - timedelta(days=2),
        )
    )
    assert segment_states(engine_for(db_url))[str(seg["A"]["segment_id"])][0] == "unused"
    done = maintenance.sweep_only(
        _w(db_url, policies, file_store, now=None, clock=lambda: datetime.now(UTC))
    )
    assert done.outcome.files == 0, "swept seconds after the mark by the database's clock"
    assert file_store.exists(seg["A"]["object_key"])


def test_a_refused_key_is_not_a_successful_sweep(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """A key outside the store is refused, and the run and `retention sweep` end partial
    (exit 4), not succeeded: the file is never deleted, and someone must fix the key."""
    policies, seg = _world(db_url, file_store, tmp_path, NOW)
    engine = engine_for(db_url)
    sql = (
        "UPDATE segments SET object_key = %s WHERE segment_id = %s"
        if engine.dialect.name == "postgresql"
        else "UPDATE segments SET object_key = ? WHERE segment_id = ?"
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(sql, ("../outside.seg", str(seg["A"]["segment_id"])))
    report = purge(_w(db_url, policies, file_store, grace_period="0"))
    assert report.sweep is not None and report.sweep.refused == 1
    assert report.status is not RunStatus.SUCCEEDED
    done = maintenance.sweep_only(_w(db_url, policies, file_store, grace_period="0"))
    assert done.outcome.refused == 1
    assert done.status is not RunStatus.SUCCEEDED


def test_marking_and_sweeping_in_small_batches_across_stops_is_exact(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """Mark and sweep paging over many batches, stopped and resumed repeatedly: exactly the
    expired files go; straddling, new and held-object segments all stay."""
    rng = random.Random(7)
    held = UUID("d2000000-0000-4000-8000-000000000002")
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    s.add_object("dataset", DS, P, NOW - timedelta(days=400))
    s.add_object("dataset", held, P, NOW - timedelta(days=400))
    expect_gone: set[str] = set()
    for n in range(40):
        kind = n % 4
        sid = uuid.UUID(int=rng.getrandbits(128), version=4)
        if kind == 0:  # expired log segment
            row = s.add_segment(
                "project_logs",
                P,
                P,
                NOW - timedelta(days=60),
                NOW - timedelta(days=31),
                segment_id=sid,
            )
            expect_gone.add(row["object_key"])
        elif kind == 1:  # straddling: max_created exactly at the cutoff is kept
            s.add_segment(
                "project_logs",
                P,
                P,
                NOW - timedelta(days=60),
                NOW - timedelta(days=30),
                segment_id=sid,
            )
        elif kind == 2:  # expired dataset segment
            row = s.add_segment(
                "dataset",
                DS,
                P,
                NOW - timedelta(days=60),
                NOW - timedelta(days=40),
                segment_id=sid,
            )
            expect_gone.add(row["object_key"])
        else:  # expired, but its dataset is held
            s.add_segment(
                "dataset",
                held,
                P,
                NOW - timedelta(days=60),
                NOW - timedelta(days=40),
                segment_id=sid,
            )
    insert(engine_for(db_url), s)
    for row in s.segments:
        file_store.write(row["object_key"])
    everything = file_store.keys()
    policies = write_policies(
        tmp_path / "p",
        policy_toml(
            projects=[(P, {"project_logs": 30, "dataset": 30})],
            holds=[{"project": str(P), "object_id": str(held), "reason": "audit"}],
        ),
    )
    for attempt in range(60):
        report = purge(
            _w(
                db_url,
                policies,
                file_store,
                batch_size=3,
                sweep_batch_size=4,
                grace_period="0",
                should_stop=StopAfter(2 + attempt % 3),
            )
        )
        if report.status is RunStatus.SUCCEEDED:
            break
    assert report.status is RunStatus.SUCCEEDED
    assert attempt >= 3  # stopped and resumed several times
    assert file_store.keys() == everything - expect_gone
    states = segment_states(engine_for(db_url))
    assert len(states) == 40 - len(expect_gone)
    assert {v[0] for v in states.values()} == {"live"}


def test_restore_after_an_interrupted_sweep_does_not_revive_a_deleted_file(
    db_url: str, file_store: FileStore, tmp_path: Path, monkeypatch: Any
) -> None:
    """A sweep that dies between deleting files and removing their index rows leaves
    `unused` rows of deleted files (the next sweep finishes them). A `restore` judging only
    by its own grace period would bring such a row back to `live` after a `sweep
    --grace-period 0`: it checks the store, and reports the file as missing instead."""
    policies, seg = _world(db_url, file_store, tmp_path, NOW)
    purge(_w(db_url, policies, file_store))  # marks A and D at NOW
    later = NOW + timedelta(hours=1)

    def crash(*_a: Any, **_k: Any) -> int:
        raise RuntimeError("killed between the file delete and the index delete")

    monkeypatch.setattr(segments_module, "forget", crash)
    with pytest.raises(RuntimeError):
        maintenance.sweep_only(_w(db_url, policies, file_store, now=later, grace_period="0"))
    monkeypatch.undo()
    assert not file_store.exists(seg["A"]["object_key"])
    done = maintenance.restore(
        _w(db_url, policies, file_store, now=later), RestoreFilter(project_id=P)
    )
    state = segment_states(engine_for(db_url))[str(seg["A"]["segment_id"])][0]
    assert state == "unused", "index row of a deleted file restored to live"
    assert sorted(str(f.segment_id) for f in done.result.missing) == sorted(
        str(seg[n]["segment_id"]) for n in ("A", "D")
    )
    assert done.result.restored == []


def test_a_store_url_pointing_elsewhere_stops_the_sweep_before_anything(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """A missing file counts as deleted, so a store URL pointing at an empty folder (or
    bucket) would drop every index row and leave the real files behind for good. The
    sweep first looks for a few live segments' files; none there: exit 4, nothing swept."""
    policies, seg = _world(db_url, file_store, tmp_path, NOW)
    s = Scenario()
    live = s.add_segment(
        "project_logs",
        P,
        P,
        NOW - timedelta(days=2),
        NOW - timedelta(days=1),
        segment_id=UUID("5e000000-0000-4000-8000-000000000999"),
    )
    insert(engine_for(db_url), s)
    file_store.write(live["object_key"])
    purge(_w(db_url, policies, file_store))  # marks A and D at NOW
    before = segment_states(engine_for(db_url))
    elsewhere = FileStore(tmp_path / "empty")
    elsewhere.root.mkdir()
    later = NOW + timedelta(hours=25)
    with pytest.raises(ObjectStoreError, match="none of 1 live segments' files is there"):
        maintenance.sweep_only(_w(db_url, policies, elsewhere, now=later))
    assert segment_states(engine_for(db_url)) == before
    done = maintenance.sweep_only(_w(db_url, policies, file_store, now=later))
    assert done.outcome.files == 2 and not file_store.exists(seg["A"]["object_key"])


def test_a_policy_lengthened_during_the_grace_period_undoes_the_mark(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """Marked under a 30-day policy; before the grace period ends the policy becomes 90
    days, which keeps the segment: the next purge puts it back to live (a restore receipt)
    instead of sweeping it. The dataset, still under 30 days, is swept."""
    policies, seg = _world(db_url, file_store, tmp_path, NOW)
    purge(_w(db_url, policies, file_store))  # marks A and D at NOW, grace 24 h
    write_policies(policies, policy_toml(projects=[(P, {"project_logs": 90, "dataset": 30})]))
    later = NOW + timedelta(hours=25)
    report = purge(_w(db_url, policies, file_store, now=later))
    states = segment_states(engine_for(db_url))
    assert states[str(seg["A"]["segment_id"])][0] == "live"
    assert file_store.exists(seg["A"]["object_key"])
    assert str(seg["D"]["segment_id"]) not in states
    assert not file_store.exists(seg["D"]["object_key"])
    assert report.sweep is not None and report.sweep.files == 1
    with engine_for(db_url).connect() as conn:
        restored = conn.exec_driver_sql(
            "SELECT object_type, segments FROM retention_receipts WHERE action = 'restore'"
        ).all()
    assert [tuple(r) for r in restored] == [("project_logs", 1)]
