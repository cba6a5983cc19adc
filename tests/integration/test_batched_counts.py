"""On PostgreSQL the plan counts most targets in a few statements, not one by one: logs
and datasets (``count_row_targets``, ``segments.count_many``), experiments
(``count_experiment_targets``, ``segments.count_experiments``), and targets an object hold
applies to but has nothing in (``planner._counted_as``). Every count must equal the
one-target form's (``count_target`` and ``segments.count`` with the target's own
resolution), on data with experiments at and around the cutoff, unregistered and misfiled
ones, held objects, live and unused segments, and a reviewed plan's newest row."""

from __future__ import annotations

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
