"""Purge correctness on SQLite and PostgreSQL against an independent expectation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import engine as engine_module
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.support import (
    NOW,
    Expect,
    Scenario,
    generate,
    insert,
    policy_toml,
    registry,
    surviving_rows,
)


def _setup(url: str, tmp_path: Path, seed: int = 1, events: int = 3000):
    scenario = generate(seed, projects=5, events=events)
    p = scenario.project_ids()
    held_experiment = next(
        o["object_id"]
        for o in scenario.objects
        if o["object_type"] == "experiment" and o["project_id"] == p[3]
    )
    text = policy_toml(
        defaults={"project_logs": 90, "experiment": 120},  # no default for datasets
        projects=[
            (p[0], {"project_logs": 30, "dataset": 14}),
            (p[1], {"project_logs": 150, "experiment": 45.5}),  # 150 loses to the default 90
            (p[3], {"experiment": 10, "dataset": 60}),
        ],
        holds=[
            {"project": str(p[2]), "reason": "legal matter"},
            {
                "project": str(p[3]),
                "object_type": "experiment",
                "object_id": str(held_experiment),
                "reason": "baseline",
            },
        ],
    )
    policy_dir = write_policies(tmp_path / "policies", text)
    days: dict[tuple[UUID, str], float] = {}
    for project in p:
        days[(project, "project_logs")] = 90
        days[(project, "experiment")] = 120
    days[(p[0], "project_logs")] = 30
    days[(p[0], "dataset")] = 14
    days[(p[1], "experiment")] = 45.5
    days[(p[3], "experiment")] = 10
    days[(p[3], "dataset")] = 60
    expect = Expect(
        days=days,
        held=[(p[2], None, None), (p[3], "experiment", held_experiment)],
    )
    engine = engine_for(url)
    insert(engine, scenario)
    return scenario, expect, policy_dir, engine


def test_purge_deletes_exactly_what_expired(db_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, engine = _setup(db_url, tmp_path)
    survivors = expect.survivors(scenario)
    assert 0 < len(survivors) < len(scenario.events)  # the scenario deletes some, keeps some

    report = purge(worker(db_url, policy_dir, batch_size=37))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == survivors
    assert registry(engine) == expect.registry(scenario)
    assert sum(o.rows for o in report.outcomes) == len(scenario.events) - len(survivors)
    # dataset registry entries stay even when all their rows are gone
    datasets = {
        ("dataset", str(o["object_id"])) for o in scenario.objects if o["object_type"] == "dataset"
    }
    assert datasets <= registry(engine)


def test_the_deletes_run_with_the_plan_out_of_the_collectors_full_passes(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was made before the deletes (the plan: millions of objects at 10,000
    projects) is frozen out of the garbage collector while the batches run (a full pass
    over it, 0.2-0.5 s, landed inside a batch's transaction), and put back after."""
    import gc

    scenario, expect, policy_dir, engine = _setup(db_url, tmp_path)
    frozen: list[int] = []
    real = engine_module._purge_or_skip

    def one(*args, **kwargs):  # type: ignore[no-untyped-def]
        frozen.append(gc.get_freeze_count())
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_purge_or_skip", one)
    before = gc.get_freeze_count()
    report = purge(worker(db_url, policy_dir, batch_size=37))
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert frozen and min(frozen) > before + 1000
    assert gc.get_freeze_count() == before


def test_plan_counts_match_the_purge(db_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, _ = _setup(db_url, tmp_path, seed=2)
    plan = engine_module.plan(worker(db_url, policy_dir))
    purged = purge(worker(db_url, policy_dir))
    planned = {t.key: t.counts.rows for t in plan.plan.targets}
    deleted = {o.target.key: o.rows for o in purged.outcomes}
    assert planned == deleted
    assert sum(planned.values()) == len(scenario.events) - len(expect.survivors(scenario))
    # targets without a policy or hold are not in the plan
    p = scenario.project_ids()
    keys = {t.key for t in plan.plan.targets}
    assert f"{p[1]}/dataset" not in keys
    assert f"{p[2]}/dataset" in keys  # held: listed, nothing deleted
    held = plan.plan.target(p[2], "dataset")  # type: ignore[arg-type]
    assert held is not None and held.resolution.held and held.counts.rows == 0


def test_rows_exactly_at_the_cutoff_survive(db_url: str, tmp_path: Path) -> None:
    project = UUID("11111111-1111-4111-8111-111111111111")
    dataset = UUID("22222222-2222-4222-8222-222222222222")
    scenario = Scenario()
    scenario.add_object("project_logs", project, project, NOW - timedelta(days=400))
    scenario.add_object("dataset", dataset, project, NOW - timedelta(days=400))
    logs_cutoff = NOW - timedelta(days=30)
    dataset_cutoff = NOW - timedelta(days=0.5)
    experiment_cutoff = NOW - timedelta(days=7)
    for name, object_type, object_id, cutoff in [
        ("logs", "project_logs", project, logs_cutoff),
        ("ds", "dataset", dataset, dataset_cutoff),
    ]:
        scenario.add_event(
            object_type, object_id, project, cutoff - timedelta(microseconds=1), f"{name}-before"
        )
        scenario.add_event(object_type, object_id, project, cutoff, f"{name}-at")
        scenario.add_event(
            object_type, object_id, project, cutoff + timedelta(microseconds=1), f"{name}-after"
        )
    at = UUID("33333333-3333-4333-8333-333333333333")
    before = UUID("44444444-4444-4444-8444-444444444444")
    scenario.add_object("experiment", at, project, experiment_cutoff)
    scenario.add_object(
        "experiment", before, project, experiment_cutoff - timedelta(microseconds=1)
    )
    scenario.add_event("experiment", at, project, NOW - timedelta(days=300), "exp-at-row")
    # the rows of an expired experiment go with it, however new they are
    scenario.add_event("experiment", before, project, NOW - timedelta(hours=1), "exp-before-row")
    engine = engine_for(db_url)
    insert(engine, scenario)
    policy_dir = write_policies(
        tmp_path / "p",
        policy_toml(
            projects=[(project, {"project_logs": 30, "dataset": 0.5, "experiment": 7})], floor=0.25
        ),
    )

    purge(worker(db_url, policy_dir, batch_size=1))

    assert surviving_rows(engine) == {"logs-at", "logs-after", "ds-at", "ds-after", "exp-at-row"}
    assert ("experiment", str(at)) in registry(engine)
    assert ("experiment", str(before)) not in registry(engine)


def test_floor_clamps_a_zero_day_policy(db_url: str, tmp_path: Path) -> None:
    project = UUID("55555555-5555-4555-8555-555555555555")
    scenario = Scenario()
    scenario.add_object("project_logs", project, project, NOW - timedelta(days=10))
    scenario.add_event("project_logs", project, project, NOW - timedelta(hours=23), "recent")
    scenario.add_event("project_logs", project, project, NOW - timedelta(hours=25), "old")
    engine = engine_for(db_url)
    insert(engine, scenario)
    policy_dir = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 0}))

    report = purge(worker(db_url, policy_dir))

    assert surviving_rows(engine) == {"recent"}
    target = report.plan.targets[0]
    assert target.resolution.floor_applied
    assert target.resolution.retention_days == 1.0
    assert any("below the safety floor" in w for w in report.warnings)


def test_no_policy_deletes_nothing(db_url: str, tmp_path: Path) -> None:
    scenario = generate(3, projects=2, events=300)
    engine = engine_for(db_url)
    insert(engine, scenario)
    report = purge(worker(db_url, write_policies(tmp_path / "p", "")))
    assert report.status is RunStatus.SUCCEEDED
    assert report.plan.targets == ()
    assert len(surviving_rows(engine)) == 300


def test_interrupted_run_resumes_with_its_pinned_now(db_url: str, tmp_path: Path) -> None:
    scenario, expect, policy_dir, engine = _setup(db_url, tmp_path, seed=4)
    first = purge(worker(db_url, policy_dir, batch_size=20, should_stop=StopAfter(7)))
    assert first.status is RunStatus.PARTIAL
    deleted_so_far = len(scenario.events) - len(surviving_rows(engine))
    assert deleted_so_far > 0

    # The resumed run is started a day later; it keeps the first run's pinned now.
    later = NOW + timedelta(days=1)
    second = purge(worker(db_url, policy_dir, batch_size=20, now=later))

    assert second.resumed and second.run_id == first.run_id
    assert second.plan.now == NOW
    assert second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert sum(o.rows for o in second.outcomes) == len(scenario.events) - len(
        expect.survivors(scenario)
    )
    with engine.connect() as conn:
        receipts = conn.exec_driver_sql("SELECT sum(rows) FROM retention_receipts").scalar()
        statuses = [r[0] for r in conn.exec_driver_sql("SELECT status FROM retention_runs")]
    assert receipts == len(scenario.events) - len(expect.survivors(scenario))
    assert statuses == ["succeeded"]


def test_checkpoint_and_receipts_agree_with_deleted_rows(db_url: str, tmp_path: Path) -> None:
    scenario, _, policy_dir, engine = _setup(db_url, tmp_path, seed=5)
    purge(worker(db_url, policy_dir, batch_size=25, should_stop=StopAfter(11)))
    deleted = len(scenario.events) - len(surviving_rows(engine))
    with engine.connect() as conn:
        checkpointed = conn.exec_driver_sql("SELECT sum(rows) FROM retention_checkpoints").scalar()
        receipted = conn.exec_driver_sql("SELECT sum(rows) FROM retention_receipts").scalar()
    assert checkpointed == receipted == deleted


def test_receipts_walk_keys_in_order(db_url: str, tmp_path: Path) -> None:
    _, _, policy_dir, engine = _setup(db_url, tmp_path, seed=6)
    purge(worker(db_url, policy_dir, batch_size=10))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT project_id, object_type, first_key, last_key, rows FROM retention_receipts "
                "WHERE rows > 0 AND object_type <> 'experiment' ORDER BY id"
            )
        ).all()
    assert rows
    last: dict[tuple[str, str], tuple[str, int]] = {}
    for project, object_type, first_key, last_key, count in rows:
        first = _key(first_key)
        previous = last.get((str(project), object_type))
        if previous is not None:
            assert first > previous  # a batch starts after the previous one ended
        assert _key(last_key) >= first
        assert 1 <= count <= 10
        last[(str(project), object_type)] = _key(last_key)


def _key(text: str) -> tuple[str, int]:
    created, _, sequence = text.rpartition("/")
    return created, int(sequence)


def test_changed_policy_on_resume_never_deletes_more(db_url: str, tmp_path: Path) -> None:
    _, _, policy_dir, engine = _setup(db_url, tmp_path, seed=7)
    purge(worker(db_url, policy_dir, batch_size=15, should_stop=StopAfter(3)))
    before = surviving_rows(engine)
    # every policy lengthened to 1000 days before the resume: nothing more may go
    write_policies(
        policy_dir,
        policy_toml(defaults={"project_logs": 1000, "experiment": 1000, "dataset": 1000}),
    )
    report = purge(worker(db_url, policy_dir))
    assert report.resumed
    assert surviving_rows(engine) == before
    assert all(t.resolution.retention_days == 1000 for t in report.plan.targets)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_batch_size_does_not_change_the_result(
    db_url: str, tmp_path: Path, batch_size: int
) -> None:
    scenario, expect, policy_dir, engine = _setup(db_url, tmp_path, seed=8, events=400)
    purge(worker(db_url, policy_dir, batch_size=batch_size))
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert registry(engine) == expect.registry(scenario)
