"""The sweep deletes only segments a target of the run still expires (a policy removed or
lengthened, an orphan, holds when the policy folder is gone), and checks the store first."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from retention import maintenance
from retention.errors import ObjectStoreError
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml, segment_states

P = UUID("10000000-0000-4000-8000-000000000001")
DS = UUID("d1000000-0000-4000-8000-000000000001")


def day(n: float) -> Any:
    return NOW - timedelta(days=n)


def _w(db_url: str, policies: Path, store: FileStore, **kw: Any):
    return worker(db_url, policies, **store.settings(), **kw)


def _world(db_url: str, store: FileStore, tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """P: logs and a dataset kept 30 days; one expired segment of each (A, D) and one new
    log segment (N)."""
    s = Scenario()
    s.add_object("project_logs", P, P, day(400))
    s.add_object("dataset", DS, P, day(400))
    seg = {
        "A": s.add_segment("project_logs", P, P, day(60), day(40), size=100),
        "D": s.add_segment("dataset", DS, P, day(60), day(40), size=200),
        "N": s.add_segment("project_logs", P, P, day(5), day(1), size=300),
    }
    insert(engine_for(db_url), s)
    for row in s.segments:
        store.write(row["object_key"])
    policies = write_policies(
        tmp_path / "p", policy_toml(projects=[(P, {"project_logs": 30, "dataset": 30})])
    )
    return policies, seg


def _state(db_url: str, row: dict) -> str:
    found = segment_states(engine_for(db_url))
    sid = str(row["segment_id"])
    return found[sid][0] if sid in found else "gone"


def test_a_policy_removed_during_the_grace_period_keeps_the_marked_file(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """DESIGN §2.2/§3: with no applicable retention data is kept forever, and a mark is
    undone when a changed policy now keeps the segment. Marked under a 30-day dataset
    policy; the dataset policy is then removed (logs keep theirs): the next purge must put
    D back to live, not sweep its file."""
    policies, seg = _world(db_url, file_store, tmp_path)
    purge(_w(db_url, policies, file_store))  # marks A and D at NOW, grace 24 h
    assert _state(db_url, seg["D"]) == "unused"
    write_policies(policies, policy_toml(projects=[(P, {"project_logs": 30})]))
    later = NOW + timedelta(hours=25)
    report = purge(_w(db_url, policies, file_store, now=later))
    assert file_store.exists(seg["D"]["object_key"]), "a file no policy expires was swept"
    assert _state(db_url, seg["D"]) == "live"
    assert _state(db_url, seg["A"]) == "gone" and not file_store.exists(seg["A"]["object_key"])
    assert report.sweep is not None and (report.sweep.files, report.sweep.bytes) == (1, 100)


def test_a_store_url_pointing_elsewhere_with_no_live_segment_left_sweeps_nothing(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """The wrong-store check looks only at live segments' files. When every segment left is
    unused (a project whose data all expired), a store URL pointing at an empty folder makes
    every file "missing", so every index row is dropped and the real files stay for good,
    while the sweep reports success. Expected: the sweep stops (exit 4) and drops nothing."""
    s = Scenario()
    s.add_object("project_logs", P, P, day(400))
    rows = [
        s.add_segment(
            "project_logs", P, P, day(90), day(80), size=10, state="unused", unused_at=day(2)
        )
        for _ in range(3)
    ]
    insert(engine_for(db_url), s)
    for row in rows:
        file_store.write(row["object_key"])
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"project_logs": 30})]))
    elsewhere = FileStore(tmp_path / "empty")
    elsewhere.root.mkdir()
    before = segment_states(engine_for(db_url))
    with pytest.raises(ObjectStoreError):
        maintenance.sweep_only(_w(db_url, policies, elsewhere))
    assert segment_states(engine_for(db_url)) == before, "index rows of existing files dropped"
    assert file_store.keys() == {row["object_key"] for row in rows}


def test_sweep_alone_keeps_a_segment_a_lengthened_policy_now_keeps(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """Marked under a 30-day policy; within the grace period the policy becomes 90 days,
    which keeps A (max_created 40 days ago). A purge would undo the mark; `retention sweep`
    run on its own (cron, or an operator) deletes A's file anyway. Expected: A stays (put
    back to live or left unused), the dataset segment D, still expired, is swept."""
    policies, seg = _world(db_url, file_store, tmp_path)
    purge(_w(db_url, policies, file_store))  # marks A and D at NOW
    write_policies(policies, policy_toml(projects=[(P, {"project_logs": 90, "dataset": 30})]))
    later = NOW + timedelta(hours=25)
    done = maintenance.sweep_only(_w(db_url, policies, file_store, now=later))
    assert file_store.exists(seg["A"]["object_key"]), "a file the policy now keeps was swept"
    assert _state(db_url, seg["A"]) in ("live", "unused")
    assert not file_store.exists(seg["D"]["object_key"]) and _state(db_url, seg["D"]) == "gone"
    assert (done.outcome.files, done.outcome.bytes) == (1, 200)


def test_sweep_alone_with_its_policy_folder_gone_does_not_ignore_holds(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """A hold on P keeps its marked segments from the sweep. `retention sweep` with
    RETENTION_POLICY_DIR set to a folder that is not there (an unmounted volume) must not
    take that as "no holds": a purge refuses such a folder (PolicyError, exit 2); the sweep
    reads no policies and deletes the held files."""
    from retention.errors import PolicyError

    policies, seg = _world(db_url, file_store, tmp_path)
    purge(_w(db_url, policies, file_store))  # marks A and D at NOW
    write_policies(
        policies,
        policy_toml(holds=[{"project": str(P), "reason": "legal matter"}]),
        name="holds.toml",
    )
    later = NOW + timedelta(hours=25)
    held = maintenance.sweep_only(_w(db_url, policies, file_store, now=later))
    assert held.outcome.files == 0  # the hold works while its folder is there
    policies.rename(tmp_path / "unmounted")
    with pytest.raises(PolicyError):
        maintenance.sweep_only(_w(db_url, policies, file_store, now=later))
    assert file_store.exists(seg["A"]["object_key"]), "held file swept"
    assert file_store.exists(seg["D"]["object_key"]), "held file swept"
    assert _state(db_url, seg["A"]) == "unused" and _state(db_url, seg["D"]) == "unused"


def test_an_orphaned_projects_marked_segments_are_not_swept_without_purge_orphans(
    db_url: str, file_store: FileStore, tmp_path: Path, fake_cp: Any, token_file: Path
) -> None:
    """DESIGN §2: an orphaned project (one the control plane no longer lists) is left out of
    planning, and its data is deleted only with --purge-orphans. P's segments A and D were
    marked while P was listed; then P drops out of the listing. The next purge (without
    --purge-orphans) sweeps their files anyway, since only planned targets' marks are
    re-checked. Expected: A and D stay (their marks undone or left), nothing swept."""
    from tests.fakecp import project

    policies, seg = _world(db_url, file_store, tmp_path)
    fake_cp.projects = [project(P, "p")]
    cp = {"api_url": fake_cp.url, "service_token_file": token_file}
    purge(_w(db_url, policies, file_store, **cp))  # marks A and D at NOW
    assert _state(db_url, seg["A"]) == "unused" and _state(db_url, seg["D"]) == "unused"
    fake_cp.projects = [project(P, "p", deleted=True)]  # P is deleted: an orphan
    later = NOW + timedelta(hours=25)
    report = purge(_w(db_url, policies, file_store, now=later, **cp))
    assert [str(o.project_id) for o in report.plan.orphans] == [str(P)]
    assert report.sweep is not None and report.sweep.files == 0, "an orphan's files were swept"
    assert file_store.exists(seg["A"]["object_key"]) and file_store.exists(seg["D"]["object_key"])
