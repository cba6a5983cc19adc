"""An experiment expires whole, by its own ``created`` in the registry: its rows, its
segments and its registry entry (DESIGN §2, §3), and only as a reviewed plan named it;
its receipts name it (§4)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from retention import engine as engine_module
from retention import planfile, report
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project
from tests.integration.helpers import purge, worker, write_policies
from tests.stores import FileStore
from tests.support import (
    NOW,
    Scenario,
    insert,
    policy_toml,
    registry,
    segment_states,
    surviving_rows,
)

P = UUID("a1000000-0000-4000-8000-000000000001")
Q = UUID("a2000000-0000-4000-8000-000000000002")
X = UUID("e1000000-0000-4000-8000-000000000001")
Y = UUID("e2000000-0000-4000-8000-000000000002")
V = UUID("e5000000-0000-4000-8000-000000000005")
SEG_V = UUID("5e000000-0000-4000-8000-0000000000f5")


def day(n: float):
    return NOW - timedelta(days=n)


def test_reviewed_plan_keeps_an_experiment_registered_after_the_review(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    """DESIGN §5: `purge --plan FILE` applies exactly a saved plan; the plan names the
    experiments and segments it expires, and rows written after it are left alone
    (newest_row). The registry phase and the segment marks are not bounded by the review:
    an experiment V (old `created`, no rows yet, one segment) registered after the review
    while the run is under way loses its registry entry and its segment file."""
    engine = engine_for(db_url)
    s = Scenario()
    s.add_object("experiment", X, P, day(200))
    s.add_event("experiment", X, P, day(199), "x")
    seg_x = s.add_segment("experiment", X, P, day(199), day(198))
    insert(engine, s)
    file_store.write(seg_x["object_key"])
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))
    reviewer = worker(db_url, policies, grace_period="0", **file_store.settings())
    sealed = planfile.seal(report.report_document(engine_module.plan(reviewer, identify=True)))
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(sealed), encoding="utf-8")
    reviewed = planfile.read(path)
    assert reviewed.targets[f"{P}/experiment"]["expired_object_ids"] == [str(X)]

    late = Scenario()  # an experiment copied in with its original created, after the review
    late.add_object("experiment", V, P, day(150))
    seg_v = late.add_segment("experiment", V, P, day(150), day(149), segment_id=SEG_V)
    written: list[bool] = []

    def arrives_during_the_run() -> bool:  # called before every batch
        if not written:
            insert(engine, late)
            file_store.write(seg_v["object_key"])
            written.append(True)
        return False

    applier = worker(
        db_url,
        policies,
        grace_period="0",
        should_stop=arrives_during_the_run,
        **file_store.settings(),
    )
    result = engine_module.purge(applier, plan_file=reviewed)

    assert written
    assert result.status is RunStatus.SUCCEEDED
    assert ("experiment", str(V)) in registry(engine), "an unreviewed experiment was removed"
    assert file_store.exists(seg_v["object_key"]), "an unreviewed segment file was deleted"
    assert segment_states(engine).get(str(SEG_V)) == ("live", False)
    # what was reviewed went
    assert ("experiment", str(X)) not in registry(engine)
    assert surviving_rows(engine) == set()
    assert not file_store.exists(seg_x["object_key"])
    assert sum(o.objects for o in result.outcomes) == 1


def test_an_expired_experiment_with_rows_under_another_project_is_kept_whole(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    """An experiment expires whole (rows, segments, registry entry) by its own `created`.
    X is registered under P; one of its rows carries project_id Q. The row walk was
    limited to the registry's project and the registry phase waited for every row of X
    anywhere: X's segment file and its row under P were deleted, its registry entry and
    the row under Q stayed for good, and every run reported success. The row under Q is
    not P's to judge (Q's holds, Q's policy): X is kept whole, and the plan says why."""
    engine = engine_for(db_url)
    s = Scenario()
    s.add_object("project_logs", P, P, day(400))
    s.add_object("project_logs", Q, Q, day(400))
    s.add_object("experiment", X, P, day(100))  # expired (30 days)
    s.add_event("experiment", X, P, day(99), "x-under-p")
    s.add_event("experiment", X, Q, day(99), "x-under-q")
    seg = s.add_segment("experiment", X, P, day(99), day(98))
    insert(engine, s)
    file_store.write(seg["object_key"])
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))
    w = worker(db_url, policies, grace_period="0", **file_store.settings())

    first = purge(w)

    assert surviving_rows(engine) == {"x-under-p", "x-under-q"}
    assert ("experiment", str(X)) in registry(engine)
    assert file_store.exists(seg["object_key"])
    assert sum(o.objects + o.rows for o in first.outcomes) == 0
    assert any(str(X) in warning and "another project" in warning for warning in first.warnings)


def test_an_expired_experiment_with_a_segment_under_another_project_is_kept_whole(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    """The same for a segment: X's rows are all under P, one of its segment files is
    indexed under Q. X is kept whole (rows, both segments, registry entry); Y, filed
    consistently, expires as usual. (The plan finds such experiments by joining the
    segments with the registry once, not per experiment.)"""
    from retention import dataplane

    y = UUID("e2000000-0000-4000-8000-000000000002")
    engine = engine_for(db_url)
    s = Scenario()
    s.add_object("experiment", X, P, day(100))
    s.add_event("experiment", X, P, day(99), "x-row")
    s.add_object("experiment", y, P, day(100))
    s.add_event("experiment", y, P, day(99), "y-row")
    mine = s.add_segment("experiment", X, P, day(99), day(98))
    theirs = s.add_segment("experiment", X, Q, day(99), day(98))
    s.add_segment("experiment", y, P, day(99), day(98))
    insert(engine, s)
    for row in s.segments:
        file_store.write(row["object_key"])
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))
    w = worker(db_url, policies, grace_period="0", **file_store.settings())
    with engine.connect() as conn:
        found = dataplane.misfiled_experiments(conn, w.tables)
    assert [(p, x) for p, x, _ in found] == [(P, X)]

    first = purge(w)

    assert surviving_rows(engine) == {"x-row"}
    assert registry(engine) == {("experiment", str(X))}
    assert file_store.exists(mine["object_key"]) and file_store.exists(theirs["object_key"])
    assert sum(o.objects for o in first.outcomes) == 1
    assert any(str(X) in warning and "another project" in warning for warning in first.warnings)


def test_purge_orphans_deletes_rows_of_unregistered_experiments(
    db_url: str,
    tmp_path: Path,
    file_store: FileStore,
    fake_cp: FakeControlPlane,
    token_file: Path,
) -> None:
    """DESIGN §2: an orphaned project's data is deleted (all of it, past the floor) with
    --purge-orphans. Its experiment rows are deleted only through registry entries, so the
    rows of an experiment with no registry entry (Y, 199 days old) stay for good, while the
    segment of the same experiment is swept (an unregistered experiment's segments count as
    expired). The run succeeds and the orphan keeps being reported with that row."""
    engine = engine_for(db_url)
    s = Scenario()
    s.add_object("project_logs", P, P, day(400))
    s.add_event("project_logs", P, P, day(1), "p-new")
    s.add_object("experiment", X, Q, day(200))
    s.add_event("experiment", X, Q, day(199), "x")
    s.add_event("experiment", Y, Q, day(199), "y-unregistered")
    seg_y = s.add_segment("experiment", Y, Q, day(199), day(198))
    insert(engine, s)
    file_store.write(seg_y["object_key"])
    fake_cp.projects = [project(P, "live"), project(Q, "gone", deleted=True)]
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    w = worker(
        db_url,
        policies,
        api_url=fake_cp.url,
        service_token_file=token_file,
        grace_period="0",
        **file_store.settings(),
    )

    result = purge(w, purge_orphans=True)

    assert result.status is RunStatus.SUCCEEDED
    assert not file_store.exists(seg_y["object_key"])
    assert surviving_rows(engine) == {"p-new"}, "an orphan's experiment rows were left"
    after = engine_module.plan(w).plan.orphans
    assert [(o.project_id, o.rows) for o in after if o.rows] == []


def test_registry_receipt_names_the_experiments_it_removed(db_url: str, tmp_path: Path) -> None:
    """DESIGN §4: receipts record each batch's first and last key. A registry batch (the
    irreversible removal of experiments) writes a receipt with objects=N and no key at all:
    nothing records which experiments were removed."""
    engine = engine_for(db_url)
    s = Scenario()
    s.add_object("experiment", X, P, day(200))
    s.add_object("experiment", Y, P, day(150))
    s.add_event("experiment", X, P, day(199), "x")
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))
    w = worker(db_url, policies)

    purge(w)

    assert registry(engine) == set()
    removals = [r for r in engine_module.receipts(w) if r["objects"]]
    assert sum(r["objects"] for r in removals) == 2
    named = {r["first_key"] for r in removals} | {r["last_key"] for r in removals}
    assert None not in named, "a registry receipt names no experiment"
    assert any(str(X) in k for k in named) and any(str(Y) in k for k in named)
