"""On PostgreSQL the plan counts most targets in a few statements, not one by one: logs
and datasets (``count_row_targets``, ``segments.count_many``), experiments
(``count_experiment_targets``, ``segments.count_experiments``), and targets an object hold
applies to but has nothing in (``planner._counted_as``). Every count must equal the
one-target form's (``count_target`` and ``segments.count`` with the target's own
resolution), on data with experiments at and around the cutoff, unregistered and misfiled
ones, held objects, live and unused segments, and a reviewed plan's newest row."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from retention import dataplane, planner, segments
from retention.db import make_engine, parse_database_url, snapshot
from retention.models import ObjectType
from tests.conftest import engine_for
from tests.integration.helpers import worker, write_policies
from tests.integration.worlds import CUTOFF_DAYS, world
from tests.support import NOW, insert, policy_toml


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("reviewed", [False, True])
def test_every_batched_count_is_the_one_target_count(
    pg_url: str, tmp_path: Path, seed: int, reviewed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario, projects, holds = world(seed)
    insert(engine_for(pg_url), scenario)
    days = {"project_logs": CUTOFF_DAYS, "experiment": CUTOFF_DAYS, "dataset": CUTOFF_DAYS}
    shorter = [(projects[2], {"experiment": 10, "dataset": 400})]
    policies = write_policies(tmp_path / "p", policy_toml(days, shorter, holds))
    w = worker(pg_url, policies)
    one_by_one: list[str] = []
    count_target = dataplane.count_target

    def counted_alone(conn, tables, resolution):  # type: ignore[no-untyped-def]
        one_by_one.append(f"{resolution.project_id}/{resolution.object_type}")
        return count_target(conn, tables, resolution)

    engine = make_engine(parse_database_url(pg_url), read_only=True)
    try:
        with engine.connect() as conn, snapshot(conn):
            newest = dataplane.newest_row(conn, w.tables) // 2 if reviewed else None
            monkeypatch.setattr(dataplane, "count_target", counted_alone)
            plan = planner.build_plan(
                conn,
                w.tables,
                w.load_policies(),
                NOW,
                min_retention_days=None,
                newest_row=newest,
            )
            monkeypatch.undo()
            ids = {h.object_id for t in plan.targets for h in t.resolution.object_holds}
            present = dataplane.held_pairs(conn, w.tables, {i for i in ids if i})
            alone = {
                t.key: planner._counts(conn, w.tables, t.resolution, {}, {}) for t in plan.targets
            }
            # what a plan file names: the same, found for most targets at once
            named = planner.identities(conn, w.tables, plan)
            one_each = {
                t.key: (
                    [str(i) for i in dataplane.expired_experiment_ids(conn, w.tables, t.resolution)]
                    if t.counts.objects
                    else [],
                    [str(i) for i in segments.expired_live_ids(conn, w.tables, t.resolution)]
                    if t.counts.segments
                    else [],
                )
                for t in plan.targets
            }
    finally:
        engine.dispose()
    assert len(plan.targets) == 3 * len(projects)
    for target in plan.targets:
        assert target.counts == alone[target.key], (target.key, target.counts)
        found = named[target.key]
        assert (list(found.experiments), list(found.segments)) == one_each[target.key]
    assert any(n.experiments for n in named.values()) and any(n.segments for n in named.values())
    # only targets with held or misfiled objects in them were counted on their own
    assert sorted(one_by_one) == sorted(
        t.key
        for t in plan.targets
        if (t.resolution.project_id, t.resolution.object_type.value) in present
        or t.resolution.kept_whole
    )
    assert 0 < len(one_by_one) < len(plan.targets) / 2
    assert sum(t.counts.rows for t in plan.targets) > 0
    assert any(
        t.counts.objects and t.resolution.object_type is ObjectType.EXPERIMENT for t in plan.targets
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("reviewed", [False, True])
def test_marks_kept_found_together_are_the_one_target_ones(
    pg_url: str, tmp_path: Path, seed: int, reviewed: bool
) -> None:
    """Before its sweep, a purge restores the unused segments its policies and holds now
    keep (``sweeper.restore_kept``): found for most targets at once
    (``segments.marks_kept_many``), the same segments as ``marks_kept`` finds target by
    target; experiment targets under a reviewed plan are left to ``marks_kept``."""
    scenario, projects, holds = world(seed, count=9)
    engine = engine_for(pg_url)
    insert(engine, scenario)
    with engine.begin() as conn:  # about half of every target's segments marked earlier
        conn.exec_driver_sql(
            "UPDATE segments SET state = 'unused', unused_at = %(at)s "
            "WHERE get_byte(uuid_send(segment_id), 15) %% 2 = 0",
            {"at": NOW},
        )
    days = {"project_logs": CUTOFF_DAYS, "experiment": CUTOFF_DAYS, "dataset": CUTOFF_DAYS}
    longer = [(projects[3], {"project_logs": 400, "experiment": 400}), (projects[4], {})]
    policies = write_policies(tmp_path / "p", policy_toml(days, longer, holds))
    w = worker(pg_url, policies)
    with engine.connect() as conn:
        plan = planner.build_plan(conn, w.tables, w.load_policies(), NOW, min_retention_days=None)
        resolutions = [t.resolution for t in plan.targets]
        if reviewed:  # every other expired experiment named by the plan
            resolutions = [
                replace(
                    r,
                    reviewed_objects=frozenset(
                        dataplane.expired_experiment_ids(conn, w.tables, r)[::2]
                    ),
                )
                for r in resolutions
            ]
        unused = segments.unused_pairs(conn, w.tables)
        together = segments.marks_kept_many(conn, w.tables, resolutions)
        alone = {
            (r.project_id, r.object_type.value): segments.marks_kept(conn, w.tables, r)
            for r in resolutions
        }
    assert unused == {(f.project_id, f.object_type) for f in _unused(pg_url)}
    for key, found in together.items():
        assert sorted(found, key=str) == sorted(alone[key], key=str), key
    missing = {(r.project_id, r.object_type.value) for r in resolutions} - together.keys()
    assert all(
        r.cutoff is None
        or r.kept_whole
        or (reviewed and r.object_type is ObjectType.EXPERIMENT)
        or r.winner is None
        for r in resolutions
        if (r.project_id, r.object_type.value) in missing
    )
    assert len(together) > len(resolutions) / 2
    assert any(together.values()) and any(not found for found in together.values())
    kinds = {ty for (_, ty), found in together.items() if found}
    assert "project_logs" in kinds and (reviewed or "experiment" in kinds)


def _unused(url: str) -> list[segments.SegmentFile]:
    with engine_for(url).connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT segment_id, object_key, byte_size, project_id, object_type, unused_at "
            "FROM segments WHERE state = 'unused'"
        ).all()
    return [segments.SegmentFile(r[0], r[1], int(r[2]), r[3], r[4], r[5]) for r in rows]
